"""Benchmarks of conv_transpose2d, the Winograd 3x3 convolution and the unpooling ops against
torch's own CPU ops (torchvision has none of them): F.conv_transpose2d / F.conv2d (oneDNN),
F.max_unpool2d, F.interpolate(mode='nearest'), and for bed-of-nails a zero-fill + strided copy."""
from typing import List

import torch
import torch.nn.functional as F

from pydetops import ops
from pydetops.bench._core import Case


def _conv_cases(device: str, label: str, n, cin, cout, k, s, p, hw, bias: bool) -> List[Case]:
    x = torch.randn(n, cin, hw, hw, device=device)
    w = torch.randn(cin, cout, k, k, device=device) / (cin * k * k) ** 0.5
    b = torch.randn(cout, device=device) if bias else None
    kw = dict(stride=s, padding=p)
    base = f"torch {torch.__version__.split('+')[0]} F.conv_transpose2d"
    cases = [Case("conv_transpose2d", f"fwd {label}", lambda: ops.conv_transpose2d(x, w, b, **kw),
                  lambda: F.conv_transpose2d(x, w, b, **kw), base, device)]
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True) if b is not None else None
    g = torch.randn_like(F.conv_transpose2d(x, w, b, **kw))
    params = [t for t in (xg, wg, bg) if t is not None]

    def fwd_bwd(fn):
        def run():
            out = fn(xg, wg, bg, **kw)
            torch.autograd.grad(out, params, g)
        return run

    cases.append(Case("conv_transpose2d", f"fwd+bwd {label}", fwd_bwd(ops.conv_transpose2d),
                      fwd_bwd(F.conv_transpose2d), base, device))
    return cases


def _winograd_case(device: str, label: str, n, c, k, h, w) -> List[Case]:
    # Inference, as the detectors' fast path runs it: channels-last float32, bias + ReLU fused
    # (torch's side: oneDNN's direct conv2d then an in-place ReLU).
    if device != "cpu":
        return []  # CPU only: on CUDA cuDNN picks Winograd itself
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
    bias = torch.randn(k)
    packed = ops.winograd_weight(weight)

    def ours():
        with torch.no_grad():
            return ops.conv3x3_winograd(x, packed, bias, None, "relu")

    def theirs():
        with torch.no_grad():
            return F.conv2d(x, weight, bias, padding=1).relu_()
    return [Case("conv3x3_winograd", f"{label} {n}x{c}->{k} {h}x{w} +ReLU f32 NHWC", ours, theirs,
                 f"torch {torch.__version__.split('+')[0]} F.conv2d (oneDNN direct)", device)]


def _winograd_train_case(device: str, label: str, n, c, k, h, w) -> List[Case]:
    # Training: winograd_conv2d forward + backward (input, filters, bias) against F.conv2d's.
    if device != "cpu":
        return []
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = (torch.randn(k, c, 3, 3) / (9 * c) ** 0.5).requires_grad_(True)
    bias = torch.randn(k, requires_grad=True)
    grad = torch.randn(n, k, h, w).contiguous(memory_format=torch.channels_last)

    def fwd_bwd(fn):
        def run():
            torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), grad)
        return run
    return [Case("winograd_conv2d", f"fwd+bwd {label} {n}x{c}->{k} {h}x{w} f32 NHWC", fwd_bwd(ops.winograd_conv2d),
                 fwd_bwd(lambda a, b, bb: F.conv2d(a, b, bb, padding=1)),
                 f"torch {torch.__version__.split('+')[0]} F.conv2d (oneDNN direct)", device)]


def cases(device: str, quick: bool) -> List[Case]:
    out: List[Case] = []
    if quick:
        out += _winograd_case(device, "tiny", 1, 128, 128, 12, 16)
    else:
        out += _winograd_case(device, "FPN P4 / R50 layer3", 1, 256, 256, 50, 68)
        out += _winograd_case(device, "FPN P2 / RPN head", 1, 256, 256, 200, 272)
        out += _winograd_case(device, "keypoint head, 54 RoIs", 54, 512, 512, 14, 14)
        out += _winograd_case(device, "R50 layer4", 1, 512, 512, 25, 34)
        out += _winograd_train_case(device, "FPN P3", 1, 256, 256, 100, 136)
    if quick:
        out += _conv_cases(device, "2x16->8 k4 s2 p1 16x16 f32", 2, 16, 8, 4, 2, 1, 16, True)
    else:
        out += _conv_cases(device, "8x64->32 k4 s2 p1 32x32 f32", 8, 64, 32, 4, 2, 1, 32, True)
        out += _conv_cases(device, "FCN 1x21->21 k64 s32 p16 16x16 f32", 1, 21, 21, 64, 32, 16, 16, False)
        out += _conv_cases(device, "DCGAN 16x512->256 k4 s2 p1 4x4 f32", 16, 512, 256, 4, 2, 1, 4, False)

    n, c, hw = (2, 8, 16) if quick else (8, 64, 64)
    src = torch.randn(n, c, 2 * hw, 2 * hw, device=device)
    pooled, idx = F.max_pool2d(src, 2, return_indices=True)
    cfg = f"{n}x{c}x{hw}x{hw} k2 f32"
    out.append(Case("max_unpool2d", f"fwd {cfg}", lambda: ops.max_unpool2d(pooled, idx, 2),
                    lambda: F.max_unpool2d(pooled, idx, 2), "torch F.max_unpool2d", device))
    pg = pooled.clone().requires_grad_(True)
    gu = torch.randn_like(src)
    out.append(Case("max_unpool2d", f"fwd+bwd {cfg}",
                    lambda: torch.autograd.grad(ops.max_unpool2d(pg, idx, 2), pg, gu),
                    lambda: torch.autograd.grad(F.max_unpool2d(pg, idx, 2), pg, gu), "torch F.max_unpool2d", device))
    out.append(Case("nearest_unpool2d", f"fwd {cfg.replace('k2', 's2')}", lambda: ops.nearest_unpool2d(pooled, 2),
                    lambda: F.interpolate(pooled, scale_factor=2, mode="nearest"),
                    "torch F.interpolate(mode='nearest')", device))
    out.append(Case("nearest_unpool2d", f"fwd+bwd {cfg.replace('k2', 's2')}",
                    lambda: torch.autograd.grad(ops.nearest_unpool2d(pg, 2), pg, gu),
                    lambda: torch.autograd.grad(F.interpolate(pg, scale_factor=2, mode="nearest"), pg, gu),
                    "torch F.interpolate(mode='nearest')", device))

    def bed_of_nails_torch():
        o = pooled.new_zeros(n, c, 2 * hw, 2 * hw)
        o[..., ::2, ::2] = pooled
        return o

    out.append(Case("bed_of_nails_unpool2d", f"fwd {cfg.replace('k2', 's2')}",
                    lambda: ops.bed_of_nails_unpool2d(pooled, 2), bed_of_nails_torch,
                    "torch zeros + strided copy", device))
    return out
