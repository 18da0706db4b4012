"""RoI pooling: ``roi_align``, ``roi_pool``, ``MultiScaleRoIAlign``, with torchvision.ops' signatures.

Boxes are given either as a ``Tensor[K, 5]`` of rows ``(batch index, x1, y1, x2, y2)`` or as a
list with one ``Tensor[L_i, 4]`` of ``(x1, y1, x2, y2)`` boxes per image, in input (image)
coordinates; ``spatial_scale`` maps them onto the feature map. Outputs are
``Tensor[K, C, output_size[0], output_size[1]]``, contiguous, in the dtype of the input
(float16/bfloat16 computed in float32), in the order of the boxes. Channels-last inputs are read in
place. Gradients flow to the input (not to the boxes).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from ._utils import as_int, pair, roi_boxes_as_tensor

__all__ = ["roi_align", "RoIAlign", "roi_pool", "RoIPool", "multi_level_roi_align", "MultiScaleRoIAlign"]


def _output_size(output_size: BroadcastingList2[int]) -> List[int]:
    if torch.jit.is_scripting():
        size = _pair(output_size)
        return [size[0], size[1]]
    h, w = pair(output_size, "output_size")
    return [h, w]


def _check_input(input: Tensor) -> None:
    if not torch.jit.is_scripting():
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor[N, C, H, W], got {type(input).__name__}")


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN): the mean of bilinear samples in each output bin.

    Args:
        input: Tensor[N, C, H, W] (any layout; channels-last is read in place).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] per image,
            same dtype and device as ``input``.
        output_size: int or (height, width) of the pooled output.
        spatial_scale: maps box coordinates onto the feature map (e.g. 1/16).
        sampling_ratio: samples per bin along each axis, at most 64 (ValueError beyond); <= 0 uses
            ceil(roi size / output size).
        aligned: shift the box by -0.5 pixel (pixel centres at integer + 0.5); when False,
            boxes smaller than one pixel are enlarged to 1x1 as in the original Mask R-CNN.

    Returns:
        Tensor[K, C, output_size[0], output_size[1]], contiguous, dtype of ``input``. RoIs with
        NaN/Inf coordinates pool to zeros.
    """
    _check_input(input)
    size = _output_size(output_size)
    if not torch.jit.is_scripting():
        sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
    rois = roi_boxes_as_tensor(boxes)
    return torch.ops.pydetops.roi_align(input, rois, float(spatial_scale), size[0], size[1], int(sampling_ratio),
                                        bool(aligned))


def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN): the maximum over each output bin of the rounded, projected box.

    Args:
        input: Tensor[N, C, H, W].
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] per image.
        output_size: int or (height, width).
        spatial_scale: maps box coordinates onto the feature map.

    Returns:
        Tensor[K, C, output_size[0], output_size[1]], contiguous; empty bins (and RoIs with
        NaN/Inf coordinates) give 0. The gradient goes to the first maximum of each bin.
    """
    _check_input(input)
    size = _output_size(output_size)
    rois = roi_boxes_as_tensor(boxes)
    output, _ = torch.ops.pydetops.roi_pool(input, rois, float(spatial_scale), size[0], size[1])
    return output


def multi_level_roi_align(
    features: List[Tensor],
    boxes: Tensor,
    levels: Tensor,
    spatial_scales: List[float],
    output_size: BroadcastingList2[int],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of each RoI from its own feature map, in one kernel call.

    Args:
        features: L Tensor[N, C, H_l, W_l] (same N, C, dtype, device).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2).
        levels: int64 Tensor[K], the feature map of each RoI; a value outside [0, L) gives zeros.
        spatial_scales: L floats, the scale of each feature map.
        output_size, sampling_ratio, aligned: as in :func:`roi_align` (sampling_ratio at most 64).

    Returns:
        Tensor[K, C, output_size[0], output_size[1]], contiguous, in the order of ``boxes``.
    """
    size = _output_size(output_size)
    if not torch.jit.is_scripting():
        sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
    return torch.ops.pydetops.multi_level_roi_align(features, boxes, levels, spatial_scales, size[0], size[1],
                                                    int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


# ---- MultiScaleRoIAlign (FPN) ------------------------------------------------

def _infer_scale(feature: Tensor, original_size: List[int]) -> float:
    # The scale is assumed to be 2 ** -k with k an integer; inferred from the heights.
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _box_levels(boxes: List[Tensor], k_min: int, k_max: int, canonical_scale: int, canonical_level: int,
                eps: float = 1e-6) -> Tensor:
    """FPN eq. 1: floor(k0 + log2(sqrt(area) / s0) + eps), clamped to [k_min, k_max], minus k_min."""
    areas: List[Tensor] = []
    for b in boxes:
        if b.is_floating_point() and b.dtype != torch.float64:
            b = b.float()
        areas.append((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    s = torch.sqrt(torch.cat(areas))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return (lvl.to(torch.int64) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """Multi-scale RoIAlign (FPN), torchvision's ``MultiScaleRoIAlign``: every box is pooled from
    the level ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` (clamped to
    the levels present), all levels in one kernel call.

    Args:
        featmap_names: names of the feature maps of ``x`` to pool from (in ``x``'s order).
        output_size: int or (height, width).
        sampling_ratio: as in :func:`roi_align` (``aligned=False``, as torchvision).
        canonical_scale, canonical_level: ``224`` and ``k0 = 4`` of the FPN paper's eq. 1.

    forward(x: Dict[str, Tensor[N, C, H_l, W_l]], boxes: List[Tensor[L_i, 4]] (x1, y1, x2, y2) in
    image coordinates, image_shapes: List[(height, width)]) -> Tensor[sum L_i, C, oh, ow] in the
    order of the concatenated boxes. The scale of each level, 2 ** round(log2(H_l / max height)), is
    inferred on the first call and kept, as torchvision does.
    """

    __annotations__ = {"scales": Optional[List[float]]}

    def __init__(
        self,
        featmap_names: List[str],
        output_size: Union[int, Tuple[int], List[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        oh, ow = pair(output_size, "output_size")
        if oh <= 0 or ow <= 0:
            raise ValueError(f"output_size must be positive, got {output_size}")
        output_size = (oh, ow)
        sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
        if sampling_ratio > 64:
            raise ValueError(f"sampling_ratio must be <= 64 (samples per bin side; <= 0 picks them adaptively), "
                             f"got {sampling_ratio}")
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: Optional[List[float]] = None
        self.k_min = 0
        self.k_max = 0
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _setup_scales(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> List[float]:
        if len(image_shapes) == 0:
            raise ValueError("image_shapes should not be empty")
        max_h = 0
        max_w = 0
        for shape in image_shapes:
            if len(shape) != 2 or shape[0] <= 0 or shape[1] <= 0:
                raise ValueError(f"image_shapes must hold (height, width) pairs of positive sizes, got {shape}")
            max_h = max(shape[0], max_h)
            max_w = max(shape[1], max_w)
        scales = [_infer_scale(f, [max_h, max_w]) for f in features]
        self.k_min = int(-torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item())
        self.k_max = int(-torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item())
        self.scales = scales
        return scales

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features: List[Tensor] = []
        for k, v in x.items():
            if k in self.featmap_names:
                features.append(v)
        if len(features) == 0:
            raise ValueError("x holds none of the feature maps named in featmap_names")
        if len(boxes) == 0:
            raise ValueError("boxes must hold one Tensor[L, 4] per image, got an empty list")
        scales = self.scales
        if scales is None:
            scales = self._setup_scales(features, image_shapes)
        rois = roi_boxes_as_tensor(boxes)
        oh, ow = self.output_size[0], self.output_size[-1]
        dtype = features[0].dtype
        features = [f.to(dtype) for f in features]
        # The ops take boxes in the features' dtype, except under autocast: there they run in
        # float32 anyway, and rounding the boxes to half first would move them (by up to a
        # pixel at 200 px in bfloat16).
        under_autocast = False
        if not torch.jit.is_scripting():  # (TorchScript skips this block)
            under_autocast = torch.is_autocast_enabled(features[0].device.type)
        if not under_autocast:
            rois = rois.to(dtype)
        if len(features) == 1:
            return torch.ops.pydetops.roi_align(features[0], rois, scales[0], oh, ow, self.sampling_ratio, False)
        levels = _box_levels(boxes, self.k_min, self.k_max, self.canonical_scale, self.canonical_level)
        return torch.ops.pydetops.multi_level_roi_align(features, rois, levels, scales, oh, ow,
                                                        self.sampling_ratio, False)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

def _check_fake_rois(boxes: Tensor) -> None:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 5, lambda: f"boxes must be a Tensor[K, 5], got {boxes.shape}")


@torch.library.register_fake("pydetops::roi_align")
def _roi_align_fake(input, boxes, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"input must be a Tensor[N, C, H, W], got {input.shape}")
    _check_fake_rois(boxes)
    torch._check(boxes.dtype == input.dtype, lambda: "boxes must have the dtype of input")
    return input.new_empty((boxes.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("pydetops::_roi_align_backward")
def _roi_align_backward_fake(grad, boxes, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                             width, sampling_ratio, aligned):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("pydetops::roi_pool")
def _roi_pool_fake(input, boxes, spatial_scale, pooled_height, pooled_width):
    torch._check(input.dim() == 4, lambda: f"input must be a Tensor[N, C, H, W], got {input.shape}")
    _check_fake_rois(boxes)
    shape = (boxes.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("pydetops::_roi_pool_backward")
def _roi_pool_backward_fake(grad, boxes, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                            height, width):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("pydetops::multi_level_roi_align")
def _multi_level_roi_align_fake(features, boxes, levels, spatial_scales, pooled_height, pooled_width,
                                sampling_ratio, aligned):
    torch._check(len(features) > 0, lambda: "features must hold at least one Tensor[N, C, H, W]")
    _check_fake_rois(boxes)
    f0 = features[0]
    return f0.new_empty((boxes.shape[0], f0.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("pydetops::_multi_level_roi_align_backward")
def _multi_level_roi_align_backward_fake(grad, boxes, levels, spatial_scales, pooled_height, pooled_width,
                                         sampling_ratio, aligned, batch_size, channels, heights, widths):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]
