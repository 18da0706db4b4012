"""Transposed 2-D convolution with ``torch.nn.functional.conv_transpose2d``'s meaning,
computed by pydetops' own CPU kernels (one batched GEMM + col2im / im2col).

Shapes: ``input`` Tensor[N, C_in, H, W] (or unbatched Tensor[C_in, H, W]),
``weight`` Tensor[C_in, C_out / groups, kH, kW], ``bias`` Tensor[C_out] or None;
the output is Tensor[N, C_out, H_out, W_out] with
``H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``
(likewise W_out), always in the contiguous (NCHW) layout. float16/bfloat16
inputs are computed in float32 and returned in their own dtype.
"""
from typing import List, Optional

import torch
from torch import Tensor, nn
from torch._jit_internal import BroadcastingList2

from ._utils import as_int, int_pair_list

__all__ = ["conv_transpose2d", "ConvTranspose2d", "bilinear_upsampling_weight_"]


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: BroadcastingList2[int] = 1,
    padding: BroadcastingList2[int] = 0,
    output_padding: BroadcastingList2[int] = 0,
    groups: int = 1,
    dilation: BroadcastingList2[int] = 1,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.conv_transpose2d`` (same arguments, same result).

    Args:
        input: Tensor[N, C_in, H, W] or Tensor[C_in, H, W]; any strides (channels-last accepted).
        weight: Tensor[C_in, C_out / groups, kH, kW].
        bias: Tensor[C_out] or None.
        stride, padding, output_padding, dilation: an int or a pair (height, width).
            ``output_padding`` must be smaller than ``stride`` or ``dilation``.
        groups: divides C_in; C_out = groups * weight.shape[1].

    Returns Tensor[N, C_out, H_out, W_out] (Tensor[C_out, H_out, W_out] when unbatched), contiguous.
    Differentiable in input, weight and bias (once: double backward raises).
    """
    if not torch.jit.is_scripting():
        stride = int_pair_list(stride, "stride")
        padding = int_pair_list(padding, "padding")
        output_padding = int_pair_list(output_padding, "output_padding")
        dilation = int_pair_list(dilation, "dilation")
        groups = as_int(groups, "groups")
    return torch.ops.pydetops.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def _bilinear_filter(size: int) -> Tensor:
    # FCN's up-sampling filter along one axis: a triangle centred in the kernel.
    factor = (size + 1) // 2
    center = factor - 1.0 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    return 1.0 - (og - center).abs() / factor


def bilinear_upsampling_weight_(weight: Tensor, groups: int = 1) -> Tensor:
    """Fill a conv_transpose2d ``weight`` (Tensor[C_in, C_out / groups, kH, kW]) in place with
    bilinear up-sampling, FCN's starting point, and return it.

    Each input channel i of a group feeds output channel i of the same group (the
    "diagonal" pairs, as many as min(C_in / groups, C_out / groups)) with the separable
    bilinear filter ``f_h(y) * f_w(x)``, ``f(t) = 1 - |t - center| / factor``,
    ``factor = (k + 1) // 2``; every other entry is zero. For an up-sampling factor s
    use kernel ``2 * s - s % 2``, ``stride=s`` and ``padding=(s - s % 2) // 2``: the output is
    then exactly s times larger and matches bilinear interpolation away from the border.
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D Tensor[C_in, C_out / groups, kH, kW], got shape {list(weight.shape)}")
    if groups <= 0 or weight.shape[0] % groups != 0:
        raise ValueError(f"groups must be positive and divide weight.shape[0] ({weight.shape[0]}), got {groups}")
    cin_g = weight.shape[0] // groups
    cout_g = weight.shape[1]
    filt = _bilinear_filter(weight.shape[2])[:, None] * _bilinear_filter(weight.shape[3])[None, :]
    filt = filt.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        weight.zero_()
        for g in range(groups):
            for j in range(min(cin_g, cout_g)):
                weight[g * cin_g + j, j].copy_(filt)
    return weight


class ConvTranspose2d(nn.ConvTranspose2d):
    """Drop-in for ``torch.nn.ConvTranspose2d`` (same constructor, parameters ``weight``/``bias``,
    state_dict keys and initialisation; ``padding_mode='zeros'`` only) whose forward runs
    :func:`conv_transpose2d`. ``forward(input, output_size=None)`` picks output_padding from
    ``output_size`` exactly as torch does.
    """

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation  # type: ignore[arg-type]
        )
        return torch.ops.pydetops.conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

    @torch.jit.unused
    def init_bilinear_(self) -> "ConvTranspose2d":
        """Make this layer bilinear up-sampling (see :func:`bilinear_upsampling_weight_`); bias is zeroed."""
        bilinear_upsampling_weight_(self.weight, self.groups)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()
        return self


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

def _pair(v) -> List[int]:
    v = list(v) if not isinstance(v, int) else [v]
    return [v[0], v[0]] if len(v) == 1 else [v[0], v[1]]


@torch.library.register_fake("pydetops::conv_transpose2d")
def _conv_transpose2d_fake(input, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1,
                           dilation=(1, 1)):
    torch._check(input.dim() in (3, 4), lambda: f"Expected 3D (unbatched) or 4D (batched) input, got {input.shape}")
    torch._check(weight.dim() == 4, lambda: f"weight must be 4-D, got {weight.shape}")
    torch._check(weight.dtype == input.dtype, lambda: "weight must have the dtype of input")
    torch._check(groups > 0, lambda: "non-positive groups is not supported")
    torch._check(input.shape[-3] == weight.shape[0], lambda: "input channels must match weight.shape[0]")
    s, p, op, d = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    hw = []
    for a in range(2):
        size = (input.shape[-2 + a] - 1) * s[a] - 2 * p[a] + d[a] * (weight.shape[2 + a] - 1) + op[a] + 1
        torch._check(size > 0, lambda: "Output size is too small")
        hw.append(size)
    c_out = weight.shape[1] * groups
    if input.dim() == 3:
        return input.new_empty((c_out, hw[0], hw[1]))
    return input.new_empty((input.shape[0], c_out, hw[0], hw[1]))


@torch.library.register_fake("pydetops::_conv_transpose2d_backward")
def _conv_transpose2d_backward_fake(grad_output, input, weight, stride, padding, output_padding, groups, dilation,
                                    output_mask):
    empty = input.new_empty((0,))
    gi = input.new_empty(input.shape) if output_mask[0] else empty
    gw = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
    gb = input.new_empty((weight.shape[1] * groups,)) if output_mask[2] else input.new_empty((0,))
    return gi, gw, gb
