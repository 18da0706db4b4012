"""Position-sensitive RoI pooling (``ps_roi_align``, ``ps_roi_pool``, with
torchvision.ops' signatures) and SPPNet's spatial pyramid pooling of RoIs
(``spp_pool``).

Boxes are ``Tensor[K, 5]`` rows ``(batch index, x1, y1, x2, y2)`` or a list of
``Tensor[L, 4]`` ``(x1, y1, x2, y2)``, one per image, in input-image
coordinates (``spatial_scale`` maps them onto the feature map). Every op is
differentiable with respect to ``input`` (not the boxes). float16/bfloat16 are
computed in float32 and returned in their own dtype. Channels-last and
non-contiguous inputs are read in place.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn, Tensor

from torch.jit.annotations import BroadcastingList2

from ._utils import as_int, int_list, pair, roi_boxes_as_tensor

def _pooled_size(output_size: BroadcastingList2[int]) -> Tuple[int, int]:
    """An int or a pair of ints -> (ph, pw); TorchScript broadcasts an int to a pair itself."""
    if not torch.jit.is_scripting():
        return pair(output_size, "output_size")
    if isinstance(output_size, int):
        return output_size, output_size
    if len(output_size) != 2:
        raise ValueError("output_size must be an int or a pair of ints (height, width)")
    return int(output_size[0]), int(output_size[1])


__all__ = [
    "ps_roi_align",
    "ps_roi_pool",
    "spp_pool",
    "PSRoIAlign",
    "PSRoIPool",
    "SpatialPyramidPooling",
]


def ps_roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign (Light-Head R-CNN), as ``torchvision.ops.ps_roi_align``.

    Args:
        input: Tensor[N, C, H, W], C a multiple of ``output_size[0] * output_size[1]``.
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4] per image.
        output_size: int or (height, width) of the pooled grid, (ph, pw).
        spatial_scale: feature-map cells per input-image unit (e.g. 1/16), > 0.
        sampling_ratio: samples per bin side, at most 64 (ValueError beyond); <= 0 uses
            ceil(bin size) (adaptive).

    Returns:
        Tensor[K, C / (ph * pw), ph, pw]: bin (i, j) of output channel c averages
        bilinear samples of input channel (c * ph + i) * pw + j over the bin, the box
        being shifted by -0.5 cell (aligned). Zero-size, inverted-with-adaptive-sampling
        and NaN boxes give 0 where torchvision gives NaN.
    """
    rois = roi_boxes_as_tensor(boxes)
    oh, ow = _pooled_size(output_size)
    if not torch.jit.is_scripting():
        sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
    return torch.ops.pydetops.ps_roi_align(input, rois, float(spatial_scale), oh, ow, int(sampling_ratio))


def ps_roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling (R-FCN), as ``torchvision.ops.ps_roi_pool``.

    Args:
        input: Tensor[N, C, H, W], C a multiple of ``output_size[0] * output_size[1]``.
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4] per image.
        output_size: int or (height, width) of the pooled grid, (ph, pw).
        spatial_scale: feature-map cells per input-image unit, > 0.

    Returns:
        Tensor[K, C / (ph * pw), ph, pw]: the mean of input channel (c * ph + i) * pw + j over
        bin (i, j) of the rounded box (size end - start, at least 1; bins floor/ceil,
        clipped to rows [0, H - 1] and columns [0, W - 1] exactly as torchvision clips them,
        so the map's last row and column never enter a bin; an empty bin gives 0). The
        gradient is the exact one of this output (torchvision's backward clips to H / W).
    """
    rois = roi_boxes_as_tensor(boxes)
    oh, ow = _pooled_size(output_size)
    return torch.ops.pydetops.ps_roi_pool(input, rois, float(spatial_scale), oh, ow)


def spp_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    levels: Optional[List[int]] = None,
    spatial_scale: float = 1.0,
) -> Tensor:
    """Spatial pyramid pooling of RoIs (SPPNet, He et al. 2014), in one kernel call.

    For each level ``l`` the box is max-pooled into an l x l grid with Fast R-CNN's RoI
    pooling bins (corners rounded after scaling, inclusive end, size at least 1, bins
    floor/ceil clipped to the map, an empty bin gives 0); each level's [C, l, l] result
    is flattened and the levels are concatenated in the given order.

    Args:
        input: Tensor[N, C, H, W].
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4] per image.
        levels: the grid sizes, each > 0, any sequence of ints (None: (6, 3, 2, 1), SPPNet's).
        spatial_scale: feature-map cells per input-image unit, > 0.

    Returns:
        Tensor[K, C * sum(l * l for l in levels)]; its gradient flows to each bin's maximum.
    """
    rois = roi_boxes_as_tensor(boxes)
    lv: List[int] = [6, 3, 2, 1]
    if levels is not None:
        if torch.jit.is_scripting():
            lv = [int(v) for v in levels]
        else:
            lv = int_list(levels, "levels")
    if len(lv) == 0:
        raise ValueError("levels must hold at least one pyramid level")
    return torch.ops.pydetops.spp_pool(input, rois, lv, float(spatial_scale))[0]


class PSRoIAlign(nn.Module):
    """See :func:`ps_roi_align`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float,
                 sampling_ratio: int):
        super().__init__()
        self.output_size = _pooled_size(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = as_int(sampling_ratio, "sampling_ratio")

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio})")


class PSRoIPool(nn.Module):
    """See :func:`ps_roi_pool`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = _pooled_size(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


class SpatialPyramidPooling(nn.Module):
    """See :func:`spp_pool`: Tensor[N, C, H, W], boxes -> Tensor[K, C * sum(l * l)]."""

    def __init__(self, levels: Sequence[int] = (6, 3, 2, 1), spatial_scale: float = 1.0):
        super().__init__()
        self.levels: List[int] = int_list(levels, "levels")
        if len(self.levels) == 0 or any(v <= 0 for v in self.levels):
            raise ValueError(f"levels must be a non-empty sequence of positive grid sizes, got {list(levels)}")
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return spp_pool(input, rois, self.levels, self.spatial_scale)

    def output_features(self, channels: int) -> int:
        """Length of each RoI's vector for ``channels`` input channels."""
        return channels * sum(v * v for v in self.levels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(levels={self.levels}, spatial_scale={self.spatial_scale})"


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

def _ps_out_channels(input, pooled_height, pooled_width):
    torch._check(input.dim() == 4, lambda: f"input must be a Tensor[N, C, H, W], got {input.shape}")
    torch._check(pooled_height > 0 and pooled_width > 0, lambda: "output_size must be positive")
    cells = pooled_height * pooled_width
    torch._check(input.shape[1] % cells == 0,
                 lambda: f"input channels ({input.shape[1]}) must be a multiple of output_size[0] * output_size[1]")
    return input.shape[1] // cells


def _check_rois_fake(rois):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"boxes must be a Tensor[K, 5], got {rois.shape}")


@torch.library.register_fake("pydetops::ps_roi_align")
def _ps_roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    _check_rois_fake(rois)
    c_out = _ps_out_channels(input, pooled_height, pooled_width)
    return input.new_empty((rois.shape[0], c_out, pooled_height, pooled_width))


@torch.library.register_fake("pydetops::_ps_roi_align_backward")
def _ps_roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("pydetops::ps_roi_pool")
def _ps_roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    _check_rois_fake(rois)
    c_out = _ps_out_channels(input, pooled_height, pooled_width)
    return input.new_empty((rois.shape[0], c_out, pooled_height, pooled_width))


@torch.library.register_fake("pydetops::_ps_roi_pool_backward")
def _ps_roi_pool_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                               height, width):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("pydetops::spp_pool")
def _spp_pool_fake(input, rois, levels, spatial_scale):
    _check_rois_fake(rois)
    torch._check(input.dim() == 4, lambda: f"input must be a Tensor[N, C, H, W], got {input.shape}")
    torch._check(len(levels) > 0 and all(v > 0 for v in levels), lambda: "levels must be positive grid sizes")
    cells = sum(v * v for v in levels)
    shape = (rois.shape[0], input.shape[1] * cells)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("pydetops::_spp_pool_backward")
def _spp_pool_backward_fake(grad, rois, argmax, levels, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))
