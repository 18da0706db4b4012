"""Benchmarks of ps_roi_align, ps_roi_pool and spp_pool.

Baseline: torchvision.ops when it imports and works here. Otherwise plain-torch
equivalents written here: a vectorised gather for ps_roi_align (fixed
sampling_ratio, so every RoI has the same sample count) and a summed-area
table for ps_roi_pool (fair stand-ins, comparable=True); for spp_pool a
Python loop of adaptive_max_pool2d over each RoI's crop (comparable=False).
"""
from typing import List

import torch
import torch.nn.functional as F

import pydetops.ops as P
from pydetops.bench._core import Case, baseline_torchvision


def _rois(k: int, n_images: int, img_h: float, img_w: float, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, n_images, (k, 1), generator=g).float()
    xy = torch.rand(k, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.8
    wh = torch.rand(k, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.4 + 16
    # Inside the image, so that the per-crop adaptive pooling of the SPP baseline bins as RoI pooling does.
    x2y2 = torch.minimum(xy + wh, torch.tensor([img_w - 16.0, img_h - 16.0]))
    return torch.cat([b, xy, x2y2], 1).to(device)


def torch_ps_roi_align(x: torch.Tensor, rois: torch.Tensor, oh: int, ow: int, scale: float, sr: int) -> torch.Tensor:
    """Plain-torch PS-RoIAlign for a fixed sampling_ratio (vectorised over RoIs, bins and samples)."""
    n, c, h, w = x.shape
    cout = c // (oh * ow)
    dev = x.device
    b = rois[:, 0].long()
    x1, y1 = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5
    bw, bh = (rois[:, 3] * scale - 0.5 - x1) / ow, (rois[:, 4] * scale - 0.5 - y1) / oh
    s = torch.arange(sr, device=dev, dtype=x.dtype)

    def axis(start, bin_size, pooled, size):
        p = torch.arange(pooled, device=dev, dtype=x.dtype)
        v = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] + \
            (s[None, None, :] + 0.5) * bin_size[:, None, None] / sr
        valid = (v >= -1) & (v <= size)
        v = v.clamp(min=0)
        lo = v.long()
        end = lo >= size - 1
        lo = torch.where(end, torch.full_like(lo, size - 1), lo)
        hi = torch.where(end, lo, lo + 1)
        frac = torch.where(end, torch.zeros_like(v), v - lo.to(v.dtype))
        wl, wh = (1 - frac) * valid, frac * valid
        return lo, hi, wl, wh  # [K, pooled, sr]

    ylo, yhi, wyl, wyh = axis(y1, bh, oh, h)
    xlo, xhi, wxl, wxh = axis(x1, bw, ow, w)
    cin = ((torch.arange(cout, device=dev)[:, None, None] * oh + torch.arange(oh, device=dev)[None, :, None]) * ow
           + torch.arange(ow, device=dev)[None, None, :])
    bi = b[:, None, None, None, None, None]
    ci = cin[None, :, :, :, None, None]
    out = 0
    for yi, wy in ((ylo, wyl), (yhi, wyh)):
        for xi, wx in ((xlo, wxl), (xhi, wxh)):
            vals = x[bi, ci, yi[:, None, :, None, :, None], xi[:, None, None, :, None, :]]
            out = out + vals * (wy[:, None, :, None, :, None] * wx[:, None, None, :, None, :])
    return out.mean(dim=(-2, -1))


def torch_ps_roi_pool(x: torch.Tensor, rois: torch.Tensor, oh: int, ow: int, scale: float) -> torch.Tensor:
    """Plain-torch PS-RoIPool: bin means from a summed-area table (vectorised)."""
    n, c, h, w = x.shape
    cout = c // (oh * ow)
    dev = x.device
    sat = F.pad(x.cumsum(2).cumsum(3), (1, 0, 1, 0))
    r = torch.round(rois[:, 1:] * scale).long()
    rw = (r[:, 2] - r[:, 0]).clamp(min=1).to(x.dtype)
    rh = (r[:, 3] - r[:, 1]).clamp(min=1).to(x.dtype)
    pi = torch.arange(oh, device=dev, dtype=x.dtype)
    pj = torch.arange(ow, device=dev, dtype=x.dtype)
    hs = (torch.floor(pi[None] * (rh[:, None] / oh)).long() + r[:, 1:2]).clamp(0, h - 1)
    he = (torch.ceil((pi[None] + 1) * (rh[:, None] / oh)).long() + r[:, 1:2]).clamp(0, h - 1)
    ws = (torch.floor(pj[None] * (rw[:, None] / ow)).long() + r[:, 0:1]).clamp(0, w - 1)
    we = (torch.ceil((pj[None] + 1) * (rw[:, None] / ow)).long() + r[:, 0:1]).clamp(0, w - 1)
    cin = ((torch.arange(cout, device=dev)[:, None, None] * oh + torch.arange(oh, device=dev)[None, :, None]) * ow
           + torch.arange(ow, device=dev)[None, None, :])
    bi = rois[:, 0].long()[:, None, None, None]
    ci = cin[None]
    H0, H1 = hs[:, None, :, None], he[:, None, :, None]
    W0, W1 = ws[:, None, None, :], we[:, None, None, :]
    total = sat[bi, ci, H1, W1] - sat[bi, ci, H0, W1] - sat[bi, ci, H1, W0] + sat[bi, ci, H0, W0]
    area = ((H1 - H0) * (W1 - W0)).to(x.dtype)
    return torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))


def torch_spp_loop(x: torch.Tensor, rois: torch.Tensor, levels: List[int], scale: float) -> torch.Tensor:
    """Per-RoI Python loop: crop the rounded box, adaptive_max_pool2d per level, concatenate."""
    h, w = x.shape[2], x.shape[3]
    rows = []
    for r in rois.tolist():
        x0, y0, x1, y1 = (int(round(v * scale)) for v in r[1:])
        crop = x[int(r[0]), :, max(y0, 0):min(y1 + 1, h), max(x0, 0):min(x1 + 1, w)]
        rows.append(torch.cat([F.adaptive_max_pool2d(crop, lv).flatten() for lv in levels]))
    return torch.stack(rows)


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    k = 128 if quick else 512
    h, w = (25, 34) if quick else (50, 68)
    scale = 1.0 / 16
    rois = _rois(k, 1, h / scale, w / scale, device)
    out: List[Case] = []

    # ps_roi_align: R-FCN-style 7x7 bins, 10 output channels (490 input channels).
    x = torch.randn(1, 49 * 10, h, w, device=device)
    cfg = f"{k} RoIs, 1x490x{h}x{w}, 7x7, sr=2, f32"
    if tv is not None:
        base = (lambda: tv.ps_roi_align(x, rois, 7, scale, 2)), f"torchvision {tv_version}", True
    else:
        base = (lambda: torch_ps_roi_align(x, rois, 7, 7, scale, 2)), "plain torch (vectorised gather)", True
    out.append(Case("ps_roi_align", cfg, lambda: P.ps_roi_align(x, rois, 7, scale, 2), base[0], base[1], device,
                    base[2]))
    xg = x.clone().requires_grad_()
    g = torch.randn(k, 10, 7, 7, device=device)

    def ours_fb():
        (gx,) = torch.autograd.grad(P.ps_roi_align(xg, rois, 7, scale, 2), xg, g)
        return gx

    if tv is not None:
        def base_fb():
            return torch.autograd.grad(tv.ps_roi_align(xg, rois, 7, scale, 2), xg, g)[0]
        name = f"torchvision {tv_version}"
    else:
        def base_fb():
            return torch.autograd.grad(torch_ps_roi_align(xg, rois, 7, 7, scale, 2), xg, g)[0]
        name = "plain torch (vectorised gather)"
    out.append(Case("ps_roi_align fwd+bwd", cfg, ours_fb, base_fb, name, device, True))
    cfg_a = f"{k} RoIs, 1x490x{h}x{w}, 7x7, sr=-1 (adaptive), f32"
    out.append(Case("ps_roi_align", cfg_a, lambda: P.ps_roi_align(x, rois, 7, scale, -1),
                    (lambda: tv.ps_roi_align(x, rois, 7, scale, -1)) if tv is not None else None,
                    f"torchvision {tv_version}" if tv is not None else "none (adaptive grid: no vectorised stand-in)",
                    device, tv is not None))

    # ps_roi_pool: same shapes.
    cfg = f"{k} RoIs, 1x490x{h}x{w}, 7x7, f32"
    if tv is not None:
        out.append(Case("ps_roi_pool", cfg, lambda: P.ps_roi_pool(x, rois, 7, scale),
                        lambda: tv.ps_roi_pool(x, rois, 7, scale), f"torchvision {tv_version}", device))
    else:
        out.append(Case("ps_roi_pool", cfg, lambda: P.ps_roi_pool(x, rois, 7, scale),
                        lambda: torch_ps_roi_pool(x, rois, 7, 7, scale), "plain torch (summed-area table)", device))

    # spp_pool: SPPNet on a 256-channel map, levels (6, 3, 2, 1).
    xs = torch.randn(1, 256, h, w, device=device)
    levels = [6, 3, 2, 1]
    cfg = f"{k} RoIs, 1x256x{h}x{w}, levels 6,3,2,1, f32"
    out.append(Case("spp_pool", cfg, lambda: P.spp_pool(xs, rois, levels, scale),
                    lambda: torch_spp_loop(xs, rois, levels, scale),
                    "plain torch: per-RoI loop of adaptive_max_pool2d", device, comparable=False,
                    note="Python loop over RoIs; no speed-up claimed"))
    xsg = xs.clone().requires_grad_()
    gs = torch.randn(k, 256 * 50, device=device)
    out.append(Case("spp_pool fwd+bwd", cfg,
                    lambda: torch.autograd.grad(P.spp_pool(xsg, rois, levels, scale), xsg, gs)[0],
                    None, "none (the per-RoI loop's backward takes many seconds)", device, comparable=False))
    xcl = xs.contiguous(memory_format=torch.channels_last)
    out.append(Case("spp_pool", cfg + ", channels-last", lambda: P.spp_pool(xcl, rois, levels, scale),
                    None, "none (same op, channels-last input read in place)", device, comparable=False))
    return out
