"""From a list of images of any size to one padded batch, and the detections back.

``DetectionTransform`` has torchvision's ``GeneralizedRCNNTransform`` semantics: normalise by
mean / std, resize so that the short side is ``min_size`` unless the long side would exceed
``max_size``, pad to a multiple of ``size_divisible`` (32), and map boxes back afterwards.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import ImageList

__all__ = ["DetectionTransform", "resize_boxes", "FixedSizeTransform", "check_images"]


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale Tensor[N, 4] (x1, y1, x2, y2) boxes from an image of ``original_size`` (h, w) to ``new_size``."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[0], dtype=torch.float32, device=boxes.device)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[1], dtype=torch.float32, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


class DetectionTransform(nn.Module):
    """Normalise, resize and batch images (and their target boxes) for a detector.

    ``min_size``: int or tuple (training picks one at random per image, eval uses the last);
    ``max_size``: the cap of the long side; ``image_mean`` / ``image_std``: per channel.
    ``fixed_size``: optional (width, height): every image is resized to exactly this size instead
    (torchvision's ``fixed_size``, used by SSD; the aspect ratio is not kept).
    ``forward(images: List[Tensor[3, H, W]], targets)`` -> (ImageList, resized targets).
    """

    def __init__(self, min_size, max_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                 size_divisible: int = 32, fixed_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        if fixed_size is not None and (len(fixed_size) != 2 or min(int(v) for v in fixed_size) < 1):
            raise ValueError(f"fixed_size must be (width, height) >= 1, got {fixed_size}")
        self.fixed_size = None if fixed_size is None else (int(fixed_size[0]), int(fixed_size[1]))
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[ImageList, Optional[List[Dict[str, Tensor]]]]:
        images = list(images)
        if targets is not None:
            targets = [dict(t) for t in targets]
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3:
                raise ValueError(f"images[{i}] must be Tensor[C, H, W], got "
                                 f"{list(image.shape) if isinstance(image, Tensor) else type(image)}")
            image = self.normalize(image)
            image, target = self.resize(image, targets[i] if targets is not None else None)
            images[i] = image
            if targets is not None and target is not None:
                targets[i] = target
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return ImageList(self.batch_images(images), image_sizes), targets

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be floating point tensors (values in [0, 1]), got {image.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None):
        h, w = image.shape[-2:]
        if self.training:
            # one draw from torch's generator, as torchvision (so seeded runs pick the same sizes)
            size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        else:
            size = self.min_size[-1]
        if self.fixed_size is not None:
            image = F.interpolate(image[None], size=(self.fixed_size[1], self.fixed_size[0]), mode="bilinear",
                                  align_corners=False)[0]
        else:
            short, long = float(min(h, w)), float(max(h, w))
            scale = min(float(size) / short, float(self.max_size) / long)
            image = F.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                                  recompute_scale_factor=True, align_corners=False)[0]
        if target is None:
            return image, None
        if "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[:, None].float(), size=image.shape[-2:], mode="nearest")[:, 0].byte()
        if "keypoints" in target:
            kp = target["keypoints"].clone()
            kp[..., 0] *= image.shape[-1] / w
            kp[..., 1] *= image.shape[-2] / h
            target["keypoints"] = kp
        return image, target

    def batch_images(self, images: List[Tensor]) -> Tensor:
        """Zero-pad to the largest H, W rounded up to ``size_divisible``: Tensor[B, C, H, W]."""
        stride = float(self.size_divisible)
        c = max(int(img.shape[0]) for img in images)
        h = int(math.ceil(max(int(img.shape[1]) for img in images) / stride) * stride)
        w = int(math.ceil(max(int(img.shape[2]) for img in images) / stride) * stride)
        batch = images[0].new_full((len(images), c, h, w), 0)
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        return batch

    def postprocess(self, result: List[Dict[str, Tensor]], image_shapes: List[Tuple[int, int]],
                    original_image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Boxes (and keypoints Tensor[D, K, 3]) from the resized images' pixels back to the original
        images'; masks Tensor[D, 1, M, M] (RoI-relative) pasted into the original image at their boxes
        with ``pydetops.ops.paste_masks`` (padding 1): Tensor[D, 1, H, W]."""
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            if "masks" in pred:
                pred["masks"] = ops.paste_masks(pred["masks"], pred["boxes"], (int(original[0]), int(original[1])), 1)
            if "keypoints" in pred:
                kp = pred["keypoints"].clone()
                kp[..., 0] *= torch.tensor(original[1], dtype=torch.float32) / torch.tensor(size[1], dtype=torch.float32)
                kp[..., 1] *= torch.tensor(original[0], dtype=torch.float32) / torch.tensor(size[0], dtype=torch.float32)
                pred["keypoints"] = kp
        return result

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, "
                f"std={self.image_std}" + (f", fixed_size={self.fixed_size}" if self.fixed_size else ""))


class FixedSizeTransform(nn.Module):
    """Normalise by mean / std and resize every image to one fixed ``size`` x ``size`` (aspect ratio
    not kept), for the networks whose fully connected layers fix the input size (localization as
    regression, YOLO v1). Boxes are then best expressed relative to the image ([0, 1] coordinates),
    which the resize leaves unchanged.

    ``forward(images: List[Tensor[3, H, W]])`` -> (``Tensor[N, 3, size, size]``, original sizes
    ``[(H, W), ...]``). Any H, W >= 1 is accepted (smaller images are upsampled).
    """

    def __init__(self, size: int, image_mean: Sequence[float], image_std: Sequence[float]):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"image_size: must be a positive int, got {size!r}")
        self.size = size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def forward(self, images: List[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        check_images(images)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        out = []
        for im in images:
            mean = torch.as_tensor(self.image_mean, dtype=im.dtype, device=im.device)[:, None, None]
            std = torch.as_tensor(self.image_std, dtype=im.dtype, device=im.device)[:, None, None]
            im = (im - mean) / std
            if tuple(im.shape[-2:]) != (self.size, self.size):
                im = F.interpolate(im[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            out.append(im)
        return torch.stack(out), sizes

    def extra_repr(self) -> str:
        return f"size={self.size}, mean={self.image_mean}, std={self.image_std}"


def check_images(images) -> None:
    """ValueError / TypeError naming the bad entry unless ``images`` is a non-empty list of
    floating point Tensor[3, H, W] with H, W >= 1."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
    for i, im in enumerate(images):
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"images[{i}]: expected Tensor[3, H, W], got "
                             f"{list(im.shape) if isinstance(im, Tensor) else type(im).__name__}")
        if not im.is_floating_point():
            raise TypeError(f"images[{i}]: expected a floating point tensor (values in [0, 1]), got {im.dtype}")
        if im.shape[1] < 1 or im.shape[2] < 1:
            raise ValueError(f"images[{i}]: empty image of size {list(im.shape[1:])}")
