"""Unpooling: ``max_unpool2d`` (torch.nn.functional.max_unpool2d's meaning) and two
fixed-pattern unpoolings by an integer scale, ``nearest_unpool2d`` and
``bed_of_nails_unpool2d``. All take Tensor[N, C, H, W] or Tensor[C, H, W], any
strides (channels-last accepted), float32/float64/float16/bfloat16, and return a
contiguous tensor of the input's dtype; all are differentiable in ``input``.
"""
from typing import List, Optional

import torch
from torch import Tensor, nn
from torch._jit_internal import BroadcastingList2

from ._utils import int_list, int_pair_list

__all__ = [
    "max_unpool2d",
    "nearest_unpool2d",
    "bed_of_nails_unpool2d",
    "MaxUnpool2d",
    "NearestUnpool2d",
    "BedOfNailsUnpool2d",
]


def max_unpool2d(
    input: Tensor,
    indices: Tensor,
    kernel_size: BroadcastingList2[int],
    stride: Optional[BroadcastingList2[int]] = None,
    padding: BroadcastingList2[int] = 0,
    output_size: Optional[List[int]] = None,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.max_unpool2d``: the partial inverse of ``max_pool2d``.

    Args:
        input: Tensor[N, C, H, W] or Tensor[C, H, W], the pooled values.
        indices: int64 Tensor of input's shape, from ``max_pool2d(..., return_indices=True)``:
            the flat position (y * W_out + x) of each value in its H_out x W_out output plane.
        kernel_size, stride (default: kernel_size), padding: those of the max_pool2d.
        output_size: (H_out, W_out) or (N, C, H_out, W_out); default
            ``(H - 1) * stride - 2 * padding + kernel_size``; torch's range rule applies.

    Returns Tensor[N, C, H_out, W_out] (or [C, H_out, W_out]): zeros except at ``indices``.
    An index outside the plane raises ValueError (nothing is written out of bounds). Where
    several inputs of one plane share an index, the one last in row-major order wins, and
    the gradient of that output position goes to the winner only (the others get 0).
    """
    if stride is None:
        stride = kernel_size
    if not torch.jit.is_scripting():
        kernel_size = int_pair_list(kernel_size, "kernel_size")
        stride = int_pair_list(stride, "stride")
        padding = int_pair_list(padding, "padding")
        if output_size is not None:
            output_size = int_list(output_size, "output_size")
    return torch.ops.pydetops.max_unpool2d(input, indices, kernel_size, stride, padding, output_size)


def nearest_unpool2d(input: Tensor, scale_factor: BroadcastingList2[int]) -> Tensor:
    """Nearest-neighbour unpooling: each value copied to its whole s_h x s_w block.

    ``input`` Tensor[N, C, H, W] or Tensor[C, H, W]; ``scale_factor`` a positive int or a pair
    (s_h, s_w). Returns Tensor[.., H * s_h, W * s_w] (equal to
    ``F.interpolate(input, scale_factor=s, mode='nearest')`` for integer s). The backward sums
    each block (in float32 for float16/bfloat16).
    """
    if not torch.jit.is_scripting():
        scale_factor = int_pair_list(scale_factor, "scale_factor")
    return torch.ops.pydetops.nearest_unpool2d(input, scale_factor)


def bed_of_nails_unpool2d(input: Tensor, scale_factor: BroadcastingList2[int]) -> Tensor:
    """Bed-of-nails unpooling: each value at the top-left corner of its s_h x s_w block, zeros elsewhere.

    ``input`` Tensor[N, C, H, W] or Tensor[C, H, W]; ``scale_factor`` a positive int or a pair.
    Returns Tensor[.., H * s_h, W * s_w].
    """
    if not torch.jit.is_scripting():
        scale_factor = int_pair_list(scale_factor, "scale_factor")
    return torch.ops.pydetops.bed_of_nails_unpool2d(input, scale_factor)


class MaxUnpool2d(nn.Module):
    """Drop-in for ``torch.nn.MaxUnpool2d(kernel_size, stride=None, padding=0)`` running :func:`max_unpool2d`:
    ``forward(input, indices, output_size=None)``. Like torch's module it has no parameters."""

    def __init__(self, kernel_size: BroadcastingList2[int], stride: Optional[BroadcastingList2[int]] = None,
                 padding: BroadcastingList2[int] = 0) -> None:
        super().__init__()
        self.kernel_size: List[int] = _pair_list(kernel_size, "kernel_size")
        self.stride: List[int] = _pair_list(stride if stride is not None else kernel_size, "stride")
        self.padding: List[int] = _pair_list(padding, "padding")

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        return torch.ops.pydetops.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding,
                                               output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.kernel_size)}, stride={tuple(self.stride)}, padding={tuple(self.padding)}"


class NearestUnpool2d(nn.Module):
    """Module form of :func:`nearest_unpool2d`."""

    def __init__(self, scale_factor: BroadcastingList2[int]) -> None:
        super().__init__()
        self.scale_factor: List[int] = _pair_list(scale_factor)

    def forward(self, input: Tensor) -> Tensor:
        return torch.ops.pydetops.nearest_unpool2d(input, self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={tuple(self.scale_factor)}"


class BedOfNailsUnpool2d(nn.Module):
    """Module form of :func:`bed_of_nails_unpool2d`."""

    def __init__(self, scale_factor: BroadcastingList2[int]) -> None:
        super().__init__()
        self.scale_factor: List[int] = _pair_list(scale_factor)

    def forward(self, input: Tensor) -> Tensor:
        return torch.ops.pydetops.bed_of_nails_unpool2d(input, self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={tuple(self.scale_factor)}"


def _pair_list(v, name: str = "scale_factor") -> List[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    if len(v) == 1:
        return [v[0], v[0]]
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

def _max_unpool_out_hw(input, kernel_size, stride, padding, output_size) -> List[int]:
    k, s, p = _pair_list(kernel_size), _pair_list(stride), _pair_list(padding)
    default = [(input.shape[-2 + d] - 1) * s[d] + k[d] - 2 * p[d] for d in range(2)]
    if output_size is None:
        return default
    os = list(output_size)
    torch._check(len(os) in (2, 4), lambda: "output_size should be a sequence containing 2 or 4 elements")
    os = os[-2:]
    for d in range(2):
        torch._check(default[d] - s[d] < os[d] < default[d] + s[d], lambda: f"invalid output_size {output_size}")
    return os


@torch.library.register_fake("pydetops::max_unpool2d")
def _max_unpool2d_fake(input, indices, kernel_size, stride, padding=(0, 0), output_size=None):
    torch._check(input.dim() in (3, 4), lambda: "input to max_unpool2d should be a 3d or 4d Tensor")
    torch._check(indices.dtype == torch.int64, lambda: "elements in indices should be type int64")
    torch._check(indices.shape == input.shape, lambda: "Expected shape of indices to be same as that of the input")
    hw = _max_unpool_out_hw(input, kernel_size, stride, padding, output_size)
    return input.new_empty(tuple(input.shape[:-2]) + (hw[0], hw[1]))


@torch.library.register_fake("pydetops::_max_unpool2d_backward")
def _max_unpool2d_backward_fake(grad_output, indices):
    return grad_output.new_empty(indices.shape)


def _scaled_fake(t, scale_factor, up: bool):
    torch._check(t.dim() in (3, 4), lambda: "input must be a 3-D or 4-D Tensor")
    s = _pair_list(scale_factor)
    torch._check(s[0] >= 1 and s[1] >= 1, lambda: "scale_factor must be positive integers")
    if up:
        hw = (t.shape[-2] * s[0], t.shape[-1] * s[1])
    else:
        hw = (t.shape[-2] // s[0], t.shape[-1] // s[1])
    return t.new_empty(tuple(t.shape[:-2]) + hw)


@torch.library.register_fake("pydetops::nearest_unpool2d")
def _nearest_unpool2d_fake(input, scale_factor):
    return _scaled_fake(input, scale_factor, True)


@torch.library.register_fake("pydetops::_nearest_unpool2d_backward")
def _nearest_unpool2d_backward_fake(grad_output, scale_factor):
    return _scaled_fake(grad_output, scale_factor, False)


@torch.library.register_fake("pydetops::bed_of_nails_unpool2d")
def _bed_of_nails_unpool2d_fake(input, scale_factor):
    return _scaled_fake(input, scale_factor, True)


@torch.library.register_fake("pydetops::_bed_of_nails_unpool2d_backward")
def _bed_of_nails_unpool2d_backward_fake(grad_output, scale_factor):
    return _scaled_fake(grad_output, scale_factor, False)
