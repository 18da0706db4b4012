"""roi_align / roi_pool / MultiScaleRoIAlign benchmarks.

Baseline: torchvision.ops when it imports here; otherwise plain-torch stand-ins written for this
benchmark (labelled as such):
  - roi_align: a vectorised gather implementation (all RoIs at once, fixed sampling ratio), the
    fastest pure-torch RoIAlign we know how to write; its backward is autograd through the gathers.
  - MultiScaleRoIAlign: torchvision's per-level loop around that gather roi_align.
  - roi_pool: a Python loop over RoIs (crop + adaptive_max_pool2d): no fair stand-in, no speed-up
    claimed (comparable=False).
"""
from typing import List

import torch

from pydetops import ops
from pydetops.bench._core import Case, baseline_torchvision


def _rois(num, image_hw, batch, gen, min_side=16.0, max_side=400.0, dtype=torch.float32):
    ih, iw = image_hw
    side_w = torch.rand(num, generator=gen) * (max_side - min_side) + min_side
    side_h = torch.rand(num, generator=gen) * (max_side - min_side) + min_side
    x1 = torch.rand(num, generator=gen) * (iw - side_w).clamp(min=1)
    y1 = torch.rand(num, generator=gen) * (ih - side_h).clamp(min=1)
    idx = torch.randint(0, batch, (num,), generator=gen).float()
    return torch.stack([idx, x1, y1, x1 + side_w, y1 + side_h], 1).to(dtype)


def _axis(v, size):
    valid = (v >= -1) & (v <= size)
    v = v.clamp(min=0)
    lo = v.floor().long()
    edge = lo >= size - 1
    lo = lo.clamp(max=size - 1)
    hi = torch.where(edge, lo, lo + 1)
    v = torch.where(edge, lo.to(v.dtype), v)
    l = v - lo
    return lo, hi, 1 - l, l, valid


def torch_roi_align(x, rois, oh, ow, scale, sr, aligned):
    """Plain-torch RoIAlign (fixed sampling_ratio sr > 0): gathers over all RoIs at once."""
    N, C, H, W = x.shape
    off = 0.5 if aligned else 0.0
    b = rois[:, 1:] * scale - off
    idx = rois[:, 0].long()
    rw, rh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        rw, rh = rw.clamp(min=1), rh.clamp(min=1)
    bh, bw = rh / oh, rw / ow
    jy = torch.arange(oh * sr, device=x.device)
    jx = torch.arange(ow * sr, device=x.device)
    fy = (jy // sr).to(x.dtype) + ((jy % sr).to(x.dtype) + 0.5) / sr
    fx = (jx // sr).to(x.dtype) + ((jx % sr).to(x.dtype) + 0.5) / sr
    Y = b[:, 1:2] + bh[:, None] * fy[None]
    X = b[:, 0:1] + bw[:, None] * fx[None]
    ylo, yhi, wyl, wyh, vy = _axis(Y, H)
    xlo, xhi, wxl, wxh, vx = _axis(X, W)
    xf = x.permute(0, 2, 3, 1)  # NHWC view: the gathers read C-vectors
    n = idx[:, None, None]

    def g(yy, xx):
        return xf[n, yy[:, :, None], xx[:, None, :]]

    mask = (vy[:, :, None] & vx[:, None, :]).to(x.dtype)[..., None]
    v = ((wyl[:, :, None] * wxl[:, None, :])[..., None] * g(ylo, xlo) +
         (wyl[:, :, None] * wxh[:, None, :])[..., None] * g(ylo, xhi) +
         (wyh[:, :, None] * wxl[:, None, :])[..., None] * g(yhi, xlo) +
         (wyh[:, :, None] * wxh[:, None, :])[..., None] * g(yhi, xhi)) * mask
    K = rois.shape[0]
    v = v.reshape(K, oh, sr, ow, sr, C).mean(dim=(2, 4))
    return v.permute(0, 3, 1, 2).contiguous()


def torch_roi_pool_loop(x, rois, oh, ow, scale):
    """Plain-torch RoIPool stand-in: per-RoI crop + adaptive_max_pool2d (boxes inside the map)."""
    outs = []
    H, W = x.shape[-2:]
    for r in rois.tolist():
        n = int(r[0])
        x1, y1, x2, y2 = [int(round(v * scale)) for v in r[1:]]
        x1, y1 = min(max(x1, 0), W - 1), min(max(y1, 0), H - 1)
        x2, y2 = min(max(x2, x1), W - 1), min(max(y2, y1), H - 1)
        outs.append(torch.nn.functional.adaptive_max_pool2d(x[n:n + 1, :, y1:y2 + 1, x1:x2 + 1], (oh, ow)))
    return torch.cat(outs)


def _multiscale_torch(feats, scales, boxes, oh, ow, sr):
    """torchvision's MultiScaleRoIAlign loop (levels by FPN eq. 1) around torch_roi_align."""
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    cat = torch.cat(boxes)
    s = torch.sqrt((cat[:, 2] - cat[:, 0]) * (cat[:, 3] - cat[:, 1]))
    k_min, k_max = 2, 5
    lv = torch.clamp(torch.floor(4 + torch.log2(s / 224) + 1e-6), k_min, k_max).long() - k_min
    result = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], oh, ow)
    for level, (f, sc) in enumerate(zip(feats, scales)):
        i = torch.where(lv == level)[0]
        result[i] = torch_roi_align(f, rois[i], oh, ow, sc, sr, False)
    return result


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    gen = torch.Generator().manual_seed(0)
    out: List[Case] = []

    # roi_align / roi_pool: 512 RoIs (sides 16-400 px) over 1x256x50x68 (scale 1/16), 7x7
    C = 64 if quick else 256
    x = torch.randn(1, C, 50, 68, generator=gen).to(device)
    rois = _rois(128 if quick else 512, (800, 1088), 1, gen).to(device)
    cfg = f"{rois.shape[0]} RoIs 1x{C}x50x68 7x7 sr2 aligned f32"
    if tv is not None:
        base_name = f"torchvision {tv_version}"
        base_fwd = lambda: tv.roi_align(x, rois, 7, 1 / 16, 2, True)  # noqa: E731
        base_pool = lambda: tv.roi_pool(x, rois, 7, 1 / 16)  # noqa: E731
        pool_comparable = True
    else:
        base_name = "plain torch (vectorised gathers)"
        base_fwd = lambda: torch_roi_align(x, rois, 7, 7, 1 / 16, 2, True)  # noqa: E731
        base_pool = lambda: torch_roi_pool_loop(x, rois, 7, 7, 1 / 16)  # noqa: E731
        pool_comparable = False
    out.append(Case("roi_align", cfg, lambda: ops.roi_align(x, rois, 7, 1 / 16, 2, True), base_fwd, base_name,
                    device))
    xcl = x.contiguous(memory_format=torch.channels_last)
    out.append(Case("roi_align", cfg + " channels-last", lambda: ops.roi_align(xcl, rois, 7, 1 / 16, 2, True),
                    base_fwd, base_name, device))

    xg = x.clone().requires_grad_()
    grad = torch.randn(rois.shape[0], C, 7, 7, generator=gen).to(device)

    def ours_fb():
        y = ops.roi_align(xg, rois, 7, 1 / 16, 2, True)
        return torch.autograd.grad(y, xg, grad)

    def base_fb():
        y = (tv.roi_align(xg, rois, 7, 1 / 16, 2, True) if tv is not None
             else torch_roi_align(xg, rois, 7, 7, 1 / 16, 2, True))
        return torch.autograd.grad(y, xg, grad)

    out.append(Case("roi_align_fwd_bwd", cfg, ours_fb, base_fb, base_name, device))
    out.append(Case("roi_pool", f"{rois.shape[0]} RoIs 1x{C}x50x68 7x7 f32",
                    lambda: ops.roi_pool(x, rois, 7, 1 / 16), base_pool,
                    base_name if tv is not None else "plain torch (Python loop over RoIs, adaptive_max_pool2d)",
                    device, comparable=pool_comparable,
                    note="" if pool_comparable else "loop baseline: not a fair stand-in"))

    # MultiScaleRoIAlign: 4 FPN levels, 2 images x 1000 RoIs, 7x7, sr 2
    Cm = 64 if quick else 256
    sizes = [(200, 272), (100, 136), (50, 68), (25, 34)]
    if quick:
        sizes = [(h // 2, w // 2) for h, w in sizes]
    feats = {f"p{i + 2}": torch.randn(2, Cm, h, w, generator=gen).to(device) for i, (h, w) in enumerate(sizes)}
    image_hw = (sizes[0][0] * 4, sizes[0][1] * 4)
    nper = 250 if quick else 1000
    boxes = [_rois(nper, image_hw, 1, gen, 8.0, 600.0)[:, 1:].to(device) for _ in range(2)]
    shapes = [image_hw, image_hw]
    m = ops.MultiScaleRoIAlign(list(feats), 7, 2)
    mcfg = f"2x{nper} RoIs, 4 levels 2x{Cm}x{sizes[0][0]}x{sizes[0][1]}.. 7x7 sr2 f32"
    if tv is not None:
        tvm = tv.MultiScaleRoIAlign(list(feats), 7, 2)
        mbase = lambda: tvm(feats, boxes, shapes)  # noqa: E731
        mname = f"torchvision {tv_version}"
    else:
        fl = list(feats.values())
        scl = [0.25, 0.125, 0.0625, 0.03125]
        mbase = lambda: _multiscale_torch(fl, scl, boxes, 7, 7, 2)  # noqa: E731
        mname = "plain torch (per-level loop, vectorised gathers)"
    out.append(Case("multiscale_roi_align", mcfg, lambda: m(feats, boxes, shapes), mbase, mname, device))
    return out
