"""Transforms on ``(image, target)`` pairs, as detectors need them.

Images are ``Tensor[3, H, W]`` float (``ToTensor`` turns a PIL image into one, in
[0, 1]); targets carry ``boxes`` (x1, y1, x2, y2, absolute pixels) and optionally
``masks`` ``[N, H, W]`` and ``keypoints`` ``[N, K, 3]``. Coordinates are continuous:
pixel ``i`` covers ``[i, i + 1)``, so a horizontal flip maps ``x`` to ``W - x``.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Compose", "ToTensor", "Resize", "RandomHorizontalFlip", "Normalize", "hflip",
           "resize", "batch_images"]

Target = Dict[str, torch.Tensor]


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


def _to_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


class ToTensor:
    """PIL image -> ``Tensor[3, H, W]`` float32 in [0, 1]."""

    def __call__(self, image, target):
        return _to_tensor(image), target


def resize(image: torch.Tensor, target: Optional[Target], min_size: int, max_size: int):
    """Scale so that the short side is ``min_size`` unless the long side would pass
    ``max_size`` (then the long side is ``max_size``); boxes, masks, keypoints and
    areas follow."""
    image = _to_tensor(image)
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, target
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    if target is None:
        return image, None
    sx, sy = nw / w, nh / h
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    if "masks" in target and target["masks"].numel() > 0:
        m = target["masks"]
        target["masks"] = F.interpolate(m[:, None].float(), size=(nh, nw), mode="nearest")[:, 0].to(m.dtype)
    elif "masks" in target:
        target["masks"] = target["masks"].new_zeros((target["masks"].shape[0], nh, nw))
    if "keypoints" in target:
        kp = target["keypoints"].clone()
        kp[..., 0] *= sx
        kp[..., 1] *= sy
        target["keypoints"] = kp
    return image, target


class Resize:
    """:func:`resize` with fixed ``min_size`` / ``max_size``."""

    def __init__(self, min_size: int, max_size: int):
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"Resize: min_size and max_size must be positive, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        return resize(image, target, self.min_size, self.max_size)


def hflip(image: torch.Tensor, target: Optional[Target], flip_indices: Optional[Sequence[int]] = None):
    """Horizontal flip of the image, boxes, masks and keypoints. ``flip_indices[k]`` is
    the keypoint that keypoint ``k`` becomes (left <-> right); identity if None."""
    image = _to_tensor(image)
    W = image.shape[-1]
    image = image.flip(-1)
    if target is None:
        return image, None
    target = dict(target)
    if "boxes" in target:
        b = target["boxes"]
        target["boxes"] = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        kp = target["keypoints"].clone()
        labelled = kp[..., 2] > 0
        kp[..., 0] = torch.where(labelled, W - kp[..., 0], kp[..., 0])
        if flip_indices is not None:
            if len(flip_indices) != kp.shape[1]:
                raise ValueError(f"hflip: flip_indices has {len(flip_indices)} entries, keypoints have {kp.shape[1]}")
            kp = kp[:, list(flip_indices)]
        target["keypoints"] = kp
    return image, target


class RandomHorizontalFlip:
    """Flip with probability ``p`` (draws from torch's global generator)."""

    def __init__(self, p: float = 0.5, flip_indices: Optional[Sequence[int]] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p
        self.flip_indices = list(flip_indices) if flip_indices is not None else None

    def __call__(self, image, target):
        if torch.rand(()) < self.p:
            return hflip(image, target, self.flip_indices)
        return _to_tensor(image), target


class Normalize:
    """``(image - mean) / std`` per channel (ImageNet's by default)."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image, target):
        image = _to_tensor(image)
        return (image - self.mean.to(image)) / self.std.to(image), target


def batch_images(images: List[torch.Tensor], size_divisible: int = 32,
                 pad_value: float = 0.0) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Pad images of different sizes (bottom and right) into one ``[B, C, Hp, Wp]``
    tensor whose sides are multiples of ``size_divisible``; returns it and the original
    ``(H, W)`` of each image."""
    if len(images) == 0:
        raise ValueError("batch_images: images is empty")
    if size_divisible <= 0:
        raise ValueError(f"batch_images: size_divisible must be positive, got {size_divisible}")
    C = images[0].shape[0]
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != C:
            raise ValueError(f"batch_images: images[{i}] has shape {tuple(im.shape)}, expected [{C}, H, W]")
    H = max(im.shape[1] for im in images)
    W = max(im.shape[2] for im in images)
    H = (H + size_divisible - 1) // size_divisible * size_divisible
    W = (W + size_divisible - 1) // size_divisible * size_divisible
    out = images[0].new_full((len(images), C, H, W), pad_value)
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]].copy_(im)
    return out, [(int(im.shape[1]), int(im.shape[2])) for im in images]
