"""3x3 convolution by Winograd's minimal filtering F(2x2, 3x3), CPU, inference.

``conv3x3_winograd(input, winograd_weight(w), bias, residual, activation)`` computes
``activation(conv2d(input, w, bias, stride=1, padding=1) + residual)`` with 16 instead of 36
multiply-adds per 2x2 outputs and input channel: the 3x3 stride-1 convolutions of ResNet's
layers, the FPN, the RPN / RetinaNet heads and the mask / keypoint heads run about 1.5-1.9x
faster than oneDNN's direct convolution on CPUs from 128 channels (benchmarks/NOTES.md). The result is the
same sum of products ordered differently: it differs from ``conv2d``'s by float rounding, no
more than the direct convolution's own error against float64 (tests/test_winograd.py).

:func:`winograd_conv2d` is the differentiable form for training: ``conv2d(input, weight, bias,
padding=1)`` with the plain filters (transformed at each call), its input gradient by Winograd too
(the same convolution of the output gradient with the flipped filters), the filters' and bias'
gradients by ATen's ``convolution_backward``.

Shapes: ``input`` Tensor[N, C, H, W] (channels-last is read in place; other layouts are
copied), ``weight`` the transformed filters Tensor[16, C, K] from :func:`winograd_weight`,
``bias`` Tensor[K], ``residual`` Tensor[N, K, H, W]; the output is Tensor[N, K, H, W] in
channels-last. float32 and float64. Inference only (no autograd; see :func:`winograd_applies`
for when callers should use it) and CPU only: on CUDA, cuDNN chooses Winograd by itself.
"""
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["winograd_weight", "conv3x3_winograd", "winograd_conv2d", "winograd_applies"]

# G of F(2x2, 3x3) (Lavin & Gray 2015): U = G g G^T turns a 3x3 filter into its 4x4 transform.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(weight: Tensor) -> Tensor:
    """Conv2d filters Tensor[K, C, 3, 3] -> their Winograd transform Tensor[16, C, K] (row e = 4a + b
    holds (G g G^T)[a, b]), computed in float64 and returned in ``weight``'s dtype. Once per layer."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor[K, C, 3, 3], got {type(weight).__name__}")
    if weight.dim() != 4 or weight.shape[2] != 3 or weight.shape[3] != 3:
        raise ValueError(f"weight must be a Tensor[K, C, 3, 3], got shape {list(weight.shape)}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"weight must be float32 or float64, got {weight.dtype}")
    k, c = weight.shape[0], weight.shape[1]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(16, c, k).to(weight.dtype).contiguous()


def conv3x3_winograd(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     residual: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    """``activation(conv2d(input, w, bias, padding=1) + residual)`` for a 3x3 filter bank ``w``
    given as ``weight = winograd_weight(w)`` (Tensor[16, C, K]).

    Args:
        input: Tensor[N, C, H, W], float32 or float64, CPU.
        weight: Tensor[16, C, K] from :func:`winograd_weight`, input's dtype.
        bias: Tensor[K] or None.
        residual: Tensor[N, K, H, W] added before the activation (a residual connection), or None.
        activation: ``"none"`` or ``"relu"``.

    Returns Tensor[N, K, H, W], channels-last. Not differentiable: raises if an argument requires
    grad while grad mode is on (use ``torch.nn.functional.conv2d`` for training).
    """
    if torch.is_grad_enabled():
        for name, t in (("input", input), ("weight", weight), ("bias", bias), ("residual", residual)):
            if t is not None and t.requires_grad:
                raise RuntimeError(f"conv3x3_winograd is inference-only: {name} requires grad "
                                   "(run under torch.no_grad() / inference_mode, or use conv2d)")
    _check_cpu(input)
    return torch.ops.pydetops.conv3x3_winograd(input, weight, bias, residual, activation)


def winograd_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``conv2d(input, weight, bias, stride=1, padding=1)`` for 3x3 filters by Winograd F(2x2, 3x3),
    differentiable in all three (once: double backward raises). CPU, float32 / float64.

    Args:
        input: Tensor[N, C, H, W] (channels-last is read in place).
        weight: Tensor[K, C, 3, 3].
        bias: Tensor[K] or None.

    Returns Tensor[N, K, H, W], channels-last.
    """
    _check_cpu(input)
    return torch.ops.pydetops.winograd_conv2d(input, weight, bias)


def _check_cpu(input: Tensor) -> None:
    if input.device.type != "cpu":
        raise ValueError(f"input must be a CPU tensor, got {input.device}: the Winograd kernels are CPU-only "
                         "(on CUDA cuDNN chooses Winograd by itself: use torch.nn.functional.conv2d)")


def winograd_applies(conv: nn.Module, min_channels: int = 64) -> bool:
    """Whether the convolution ``conv`` (an ``nn.Conv2d``, or any module with its ``weight``,
    ``stride``, ``padding``, ``dilation`` and ``groups``) is one :func:`conv3x3_winograd` computes,
    and one where it pays: 3x3, stride 1, padding 1, dilation 1, no groups, zero padding, and at
    least ``min_channels`` input and output channels (1.2x oneDNN's direct kernel at 64 channels,
    1.5x at 128, 1.7-2x from 256 on this package's test CPU; smaller GEMMs do not pay:
    benchmarks/NOTES.md)."""
    weight = getattr(conv, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        return False
    pair = lambda v: tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return (tuple(weight.shape[2:]) == (3, 3) and pair(conv.stride) == (1, 1) and pair(conv.dilation) == (1, 1)
            and pair(conv.padding) == (1, 1) and int(conv.groups) == 1
            and getattr(conv, "padding_mode", "zeros") == "zeros"
            and min(int(weight.shape[0]), int(weight.shape[1])) >= min_channels)


# ------------------------------------------------------------------ fake kernels

def _check_winograd_conv2d(input, weight, bias):
    if input.dim() != 4:
        raise ValueError(f"input must be a Tensor[N, C, H, W], got shape {list(input.shape)}")
    if weight.dim() != 4 or weight.shape[2] != 3 or weight.shape[3] != 3:
        raise ValueError(f"weight must be a Tensor[K, C, 3, 3], got shape {list(weight.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"input must be float32 or float64, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    torch._check(weight.shape[1] == input.shape[1], lambda: "weight's C must equal input's channels")


@torch.library.register_fake("pydetops::winograd_conv2d")
def _winograd_conv2d_fake(input, weight, bias=None):
    _check_winograd_conv2d(input, weight, bias)
    n, _, h, w = input.shape
    return input.new_empty((n, weight.shape[0], h, w)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("pydetops::_winograd_conv2d_backward")
def _winograd_conv2d_backward_fake(grad_output, input, weight, output_mask):
    _check_winograd_conv2d(input, weight, None)
    grad_input = input.new_empty(input.shape).contiguous(memory_format=torch.channels_last) if output_mask[0] else None
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("pydetops::conv3x3_winograd")
def _conv3x3_winograd_fake(input, weight, bias=None, residual=None, activation="none"):
    if input.dim() != 4:
        raise ValueError(f"input must be a Tensor[N, C, H, W], got shape {list(input.shape)}")
    if weight.dim() != 3 or weight.shape[0] != 16:
        raise ValueError(f"weight must be the Winograd-transformed filters, a Tensor[16, C, K], got shape "
                         f"{list(weight.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"input must be float32 or float64, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    torch._check(weight.shape[1] == input.shape[1], lambda: "weight's C must equal input's channels")
    if activation not in ("none", "relu"):
        raise ValueError(f"activation must be 'none' or 'relu', got '{activation}'")
    n, _, h, w = input.shape
    return input.new_empty((n, weight.shape[2], h, w)).contiguous(memory_format=torch.channels_last)
