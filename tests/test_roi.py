"""roi_align, roi_pool, multi_level_roi_align and MultiScaleRoIAlign against plain float64
references written here from the papers' / torchvision's definitions (no torchvision)."""
import math

import numpy as np
import pytest
import torch

import pydetops  # noqa: F401
from pydetops import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


# ---------------------------------------------------------------- references

def ref_roi_align(x, rois, oh, ow, scale, sr, aligned):
    """Per RoI: every sample of every bin evaluated in 2-D, as Mask R-CNN's RoIAlign; float64.
    Differentiable in ``x`` (the gradient reference)."""
    x = x.double()
    N, C, H, W = x.shape
    outs = []
    for k in range(rois.shape[0]):
        n, x1, y1, x2, y2 = [float(v) for v in rois[k]]
        zero = x.new_zeros(C, oh, ow) + 0 * x.sum()
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or H == 0 or W == 0:
            outs.append(zero)
            continue
        off = 0.5 if aligned else 0.0
        sw, sh = x1 * scale - off, y1 * scale - off
        rw, rh = (x2 * scale - off) - sw, (y2 * scale - off) - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sr if sr > 0 else math.ceil(bh)
        gw = sr if sr > 0 else math.ceil(bw)
        count = max(gh * gw, 1)
        if gh <= 0 or gw <= 0:
            outs.append(zero)
            continue
        f64 = torch.float64
        Y = sh + torch.arange(oh, dtype=f64)[:, None] * bh + (torch.arange(gh, dtype=f64)[None, :] + 0.5) * bh / gh
        X = sw + torch.arange(ow, dtype=f64)[:, None] * bw + (torch.arange(gw, dtype=f64)[None, :] + 0.5) * bw / gw
        Yg = Y[:, :, None, None].expand(oh, gh, ow, gw)
        Xg = X[None, None, :, :].expand(oh, gh, ow, gw)
        valid = (Yg >= -1) & (Yg <= H) & (Xg >= -1) & (Xg <= W)
        y = Yg.clamp(0, H)
        xx = Xg.clamp(0, W)
        yl, xl = y.floor().long(), xx.floor().long()
        ey, ex = yl >= H - 1, xl >= W - 1
        yl = torch.where(ey, torch.full_like(yl, H - 1), yl)
        xl = torch.where(ex, torch.full_like(xl, W - 1), xl)
        yh = torch.where(ey, yl, yl + 1)
        xh = torch.where(ex, xl, xl + 1)
        y = torch.where(ey, yl.double(), y)
        xx = torch.where(ex, xl.double(), xx)
        ly, lx = y - yl, xx - xl
        hy, hx = 1 - ly, 1 - lx
        f = x[int(n)]
        v = (hy * hx) * f[:, yl, xl] + (hy * lx) * f[:, yl, xh] + (ly * hx) * f[:, yh, xl] + (ly * lx) * f[:, yh, xh]
        v = torch.where(valid, v, torch.zeros_like(v))
        outs.append(v.sum(dim=(2, 4)) / count)
    if not outs:
        return x.new_zeros(0, C, oh, ow)
    return torch.stack(outs)


def _round_half_away(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def ref_roi_pool(x, rois, oh, ow, scale, bin_dtype=np.float64):
    """Per RoI and bin: Fast R-CNN's RoIPool (rounded box, floor/ceil bins, first maximum).
    Returns (output float64, argmax flat h * W + w or -1)."""
    x = x.double()
    N, C, H, W = x.shape
    K = rois.shape[0]
    out = torch.zeros(K, C, oh, ow, dtype=torch.float64)
    arg = torch.full((K, C, oh, ow), -1, dtype=torch.int64)
    for k in range(K):
        n, x1, y1, x2, y2 = [float(v) for v in rois[k]]
        if not all(math.isfinite(v * scale) for v in (x1, y1, x2, y2)):
            continue
        n = int(n)
        sw, sh = int(_round_half_away(x1 * scale)), int(_round_half_away(y1 * scale))
        ew, eh = int(_round_half_away(x2 * scale)), int(_round_half_away(y2 * scale))
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh = bin_dtype(rh) / bin_dtype(oh)
        bw = bin_dtype(rw) / bin_dtype(ow)
        for ph in range(oh):
            hs = min(max(int(math.floor(bin_dtype(ph) * bh)) + sh, 0), H)
            he = min(max(int(math.ceil(bin_dtype(ph + 1) * bh)) + sh, 0), H)
            for pw in range(ow):
                ws = min(max(int(math.floor(bin_dtype(pw) * bw)) + sw, 0), W)
                we = min(max(int(math.ceil(bin_dtype(pw + 1) * bw)) + sw, 0), W)
                if he <= hs or we <= ws:
                    continue
                region = x[n, :, hs:he, ws:we].reshape(C, -1)
                m, r = region.max(dim=1)
                # first maximum in row-major order (torch.max may pick any tie): recompute
                first = (region == m[:, None]).int().argmax(dim=1)
                out[k, :, ph, pw] = m
                arg[k, :, ph, pw] = (hs + first // (we - ws)) * W + ws + first % (we - ws)
    return out, arg


def ref_roi_pool_grad(grad, arg, shape, rois):
    N, C, H, W = shape
    gi = torch.zeros(N, C * H * W, dtype=torch.float64)
    for k in range(arg.shape[0]):
        n = int(rois[k, 0])
        for c in range(C):
            a = arg[k, c].reshape(-1)
            g = grad[k, c].reshape(-1).double()
            m = a >= 0
            gi[n].index_add_(0, c * H * W + a[m], g[m])
    return gi.reshape(N, C, H, W)


# ---------------------------------------------------------------- inputs

def random_rois(K, N, H, W, scale, kinds=True, dtype=torch.float64):
    """Boxes in image coordinates (map size / scale): inside, partly and wholly off the map, tiny,
    huge, inverted and degenerate ones."""
    ih, iw = H / scale, W / scale
    x1 = torch.rand(K) * iw * 1.2 - 0.1 * iw
    y1 = torch.rand(K) * ih * 1.2 - 0.1 * ih
    w = torch.rand(K) * iw * 0.6 + 0.2
    h = torch.rand(K) * ih * 0.6 + 0.2
    b = torch.stack([x1, y1, x1 + w, y1 + h], 1).double()
    if kinds and K >= 8:
        b[0] = torch.tensor([0.0, 0.0, iw, ih])                       # the whole map
        b[1] = torch.tensor([-3 * iw, -3 * ih, -2 * iw, -2 * ih])     # wholly off the map
        b[2] = torch.tensor([iw * 0.5, ih * 0.5, iw * 0.5 + 0.1, ih * 0.5 + 0.05])  # tiny
        b[3] = torch.tensor([-iw, -ih, 2 * iw, 2 * ih])               # huge, covers the map
        b[4] = torch.tensor([iw * 0.6, ih * 0.6, iw * 0.3, ih * 0.2])  # inverted
        b[5] = torch.tensor([iw * 0.4, ih * 0.4, iw * 0.4, ih * 0.4])  # a point
        b[6] = torch.tensor([iw - 1, ih - 1, iw + 5, ih + 5])          # the far corner
        b[7] = torch.tensor([-0.9 / scale, 0.2, 0.3, ih + 0.9 / scale])  # just over the edges
    idx = torch.randint(0, N, (K, 1)).double()
    return torch.cat([idx, b], 1).to(dtype)


def randn_map(N, C, H, W, dtype=torch.float64):
    return torch.randn(N, C, H, W, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------- roi_align

@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_align_float64_matches_reference(device, aligned, sampling_ratio, scale):
    x = randn_map(2, 5, 9, 11).to(device)
    rois = random_rois(14, 2, 9, 11, scale).to(device)
    out = ops.roi_align(x, rois, (3, 4), scale, sampling_ratio, aligned)
    ref = ref_roi_align(x.cpu(), rois.cpu(), 3, 4, scale, sampling_ratio, aligned)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("K", [2, 40])  # few RoIs: plane by plane; many: transposed blocks
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("C", [1, 37])
def test_roi_align_paths_and_layouts(device, K, layout, C):
    x = randn_map(2, C, 10, 12).to(device)
    rois = random_rois(K, 2, 10, 12, 0.5).to(device)
    if layout == "channels_last":
        xi = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        xi = randn_map(2, C, 20, 36).to(device)[:, :, ::2, 1::3]
        xi = xi.transpose(2, 3).contiguous().transpose(2, 3)
        assert not xi.is_contiguous()
        x = xi.contiguous()
    else:
        xi = x
    out = ops.roi_align(xi, rois, 5, 0.5, 2, True)
    assert out.is_contiguous()
    torch.testing.assert_close(out.cpu(), ref_roi_align(x.cpu(), rois.cpu(), 5, 5, 0.5, 2, True), atol=1e-10, rtol=0)
    # and the gradient
    xg = xi.detach().clone().requires_grad_()
    g = torch.randn_like(out)
    (out2,) = [ops.roi_align(xg, rois, 5, 0.5, 2, True)]
    (gi,) = torch.autograd.grad(out2, xg, g)
    xr = x.detach().cpu().clone().requires_grad_()
    (gr,) = torch.autograd.grad(ref_roi_align(xr, rois.cpu(), 5, 5, 0.5, 2, True), xr, g.cpu())
    torch.testing.assert_close(gi.cpu(), gr, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_dtypes(device, dtype, channels_last):
    x = randn_map(2, 20, 12, 10, dtype).to(device)
    rois = random_rois(30, 2, 12, 10, 0.25, dtype=dtype).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = ops.roi_align(x, rois, 4, 0.25, -1, False)
    assert out.dtype == dtype and out.shape == (30, 20, 4, 4)
    ref = ref_roi_align(x.cpu().double(), rois.cpu().double(), 4, 4, 0.25, -1, False)
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=tol)
    xg = x.detach().clone().requires_grad_()
    g = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(device)
    (gi,) = torch.autograd.grad(ops.roi_align(xg, rois, 4, 0.25, -1, False), xg, g)
    assert gi.dtype == dtype
    xr = x.detach().cpu().double().requires_grad_()
    (gr,) = torch.autograd.grad(ref_roi_align(xr, rois.cpu().double(), 4, 4, 0.25, -1, False), xr, g.cpu().double())
    torch.testing.assert_close(gi.cpu().double(), gr, atol=tol * 4, rtol=tol)


def test_roi_align_list_of_boxes_and_module(device):
    x = randn_map(3, 4, 8, 8).to(device)
    boxes = [random_rois(n, 1, 8, 8, 1.0, kinds=False)[:, 1:].to(device) for n in (3, 0, 5)]
    out = ops.roi_align(x, boxes, [2, 3], 1.0, 2, True)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype, device=device), b], 1)
                      for i, b in enumerate(boxes)])
    torch.testing.assert_close(out, ops.roi_align(x, rois, (2, 3), 1.0, 2, True), atol=0, rtol=0)
    torch.testing.assert_close(out.cpu(), ref_roi_align(x.cpu(), rois.cpu(), 2, 3, 1.0, 2, True))
    m = ops.RoIAlign((2, 3), 1.0, 2, aligned=True)
    torch.testing.assert_close(m(x, boxes), out, atol=0, rtol=0)
    assert "RoIAlign" in repr(m)


def test_roi_align_nonfinite_and_huge_boxes(device):
    x = randn_map(1, 3, 6, 7).to(device)
    rois = torch.tensor([[0, float("nan"), 0, 3, 3], [0, 0, float("inf"), 3, 3], [0, -float("inf"), 0, 3, 3],
                         [0, -1e300, -1e300, 1e300, 1e300], [0, 1, 1, 4, 5], [0, -1e9, 2, 1e9, 3]],
                        dtype=torch.float64, device=device)
    for sr in (-1, 2):
        out = ops.roi_align(x, rois, 2, 1.0, sr, False)
        assert torch.isfinite(out).all()
        assert (out[:4] == 0).all()
        torch.testing.assert_close(out[4].cpu(), ref_roi_align(x.cpu(), rois[4:5].cpu(), 2, 2, 1.0, sr, False)[0])
    xg = x.clone().requires_grad_()
    ops.roi_align(xg, rois, 2, 1.0, -1, True).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_roi_align_zero_rois_and_empty_map(device):
    x = randn_map(2, 3, 5, 5).to(device).requires_grad_()
    rois = torch.zeros(0, 5, dtype=torch.float64, device=device)
    out = ops.roi_align(x, rois, 3, 1.0, 2, True)
    assert out.shape == (0, 3, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and (x.grad == 0).all()
    e = torch.zeros(1, 2, 0, 4, dtype=torch.float64, device=device)
    r = torch.tensor([[0, 0, 0, 2, 2.0]], dtype=torch.float64, device=device)
    assert (ops.roi_align(e, r, 2, 1.0, 2, False) == 0).all()


def test_roi_align_gradcheck(device):
    x = randn_map(2, 3, 6, 7).to(device).requires_grad_()
    rois = random_rois(10, 2, 6, 7, 0.5).to(device)
    for sr, aligned in ((-1, False), (2, True)):
        assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, (2, 3), 0.5, sr, aligned), (x,), fast_mode=True)
    xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, 2, 0.5, 1, False), (xcl,), fast_mode=True)


def test_roi_align_thread_count_determinism():
    x = randn_map(2, 40, 30, 34, torch.float32)
    rois = random_rois(300, 2, 30, 34, 0.25, dtype=torch.float32)
    g = torch.randn(300, 40, 7, 7)
    results = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            out = ops.roi_align(xg, rois, 7, 0.25, -1, True)
            (gi,) = torch.autograd.grad(out, xg, g)
            results.append((out, gi))
    finally:
        torch.set_num_threads(prev)
    for out, gi in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(gi, results[0][1])


# ---------------------------------------------------------------- roi_pool

@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("size", [(2, 2), (3, 5), (7, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_roi_pool_float64_matches_reference(device, scale, size, layout):
    x = randn_map(2, 18, 9, 11).to(device)
    rois = random_rois(16, 2, 9, 11, scale).to(device)
    xi = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    out, arg = torch.ops.pydetops.roi_pool(xi, rois, scale, size[0], size[1])
    ref, ref_arg = ref_roi_pool(x.cpu(), rois.cpu(), size[0], size[1], scale)
    torch.testing.assert_close(out.cpu(), ref, atol=0, rtol=0)
    assert torch.equal(arg.cpu(), ref_arg)
    assert torch.equal(ops.roi_pool(xi, rois, size, scale), out)
    g = torch.randn_like(out)
    xg = xi.detach().clone().requires_grad_()
    (gi,) = torch.autograd.grad(ops.roi_pool(xg, rois, size, scale), xg, g)
    torch.testing.assert_close(gi.cpu(), ref_roi_pool_grad(g.cpu(), ref_arg, x.shape, rois.cpu()), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_dtypes(device, dtype):
    x = randn_map(2, 5, 10, 10, dtype).to(device)
    rois = random_rois(20, 2, 10, 10, 0.5, dtype=dtype).to(device)
    out = ops.roi_pool(x, rois, 3, 0.5)
    assert out.dtype == dtype
    bin_dtype = np.float64 if dtype == torch.float64 else np.float32
    ref, arg = ref_roi_pool(x.cpu().double(), rois.cpu().double(), 3, 3, 0.5, bin_dtype)
    torch.testing.assert_close(out.cpu().double(), ref, atol=0, rtol=0)  # a max is exact in any dtype
    xg = x.detach().clone().requires_grad_()
    g = torch.randn(out.shape).to(dtype).to(device)
    (gi,) = torch.autograd.grad(ops.roi_pool(xg, rois, 3, 0.5), xg, g)
    tol = TOL[dtype]
    torch.testing.assert_close(gi.cpu().double(), ref_roi_pool_grad(g.cpu(), arg, x.shape, rois.cpu()),
                               atol=tol * 4, rtol=tol)


def test_roi_pool_ties_empty_bins_and_nonfinite(device):
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64, device=device)
    x[0, 0, 2:4, 2:4] = 5.0  # a 2x2 tie: the first (row-major) wins
    x[0, 1] = torch.arange(36.0).reshape(6, 6)
    rois = torch.tensor([[0, 0, 0, 5, 5], [0, 20, 20, 30, 30], [0, float("nan"), 0, 2, 2], [0, 1, 1, 1, 1],
                         [0, -1e30, -1e30, 1e30, 1e30]], dtype=torch.float64, device=device)
    out, arg = torch.ops.pydetops.roi_pool(x, rois, 1.0, 1, 1)
    assert out[0, 0, 0, 0] == 5 and arg[0, 0, 0, 0] == 2 * 6 + 2
    assert out[0, 1, 0, 0] == 35 and arg[0, 1, 0, 0] == 35
    assert (out[1] == 0).all() and (arg[1] == -1).all()   # off the map: empty bins
    assert (out[2] == 0).all() and (arg[2] == -1).all()   # NaN box
    assert out[3, 1, 0, 0] == 7 and arg[3, 1, 0, 0] == 7  # a point -> 1x1 RoI
    assert out[4, 1, 0, 0] == 35                          # huge: the whole map
    ref, ref_arg = ref_roi_pool(x.cpu(), rois[[0, 1, 3]].cpu(), 2, 3, 1.0)
    out2, arg2 = torch.ops.pydetops.roi_pool(x, rois[[0, 1, 3]], 1.0, 2, 3)
    assert torch.equal(out2.cpu(), ref) and torch.equal(arg2.cpu(), ref_arg)


def test_roi_pool_gradcheck_and_zero_rois(device):
    # distinct values: no ties within finite-difference steps
    x = (torch.randperm(2 * 3 * 7 * 8).double().reshape(2, 3, 7, 8) / 10).to(device).requires_grad_()
    rois = random_rois(9, 2, 7, 8, 0.5).to(device)
    assert torch.autograd.gradcheck(lambda t: ops.roi_pool(t, rois, (2, 3), 0.5), (x,))
    e = ops.roi_pool(x, rois[:0], 2, 0.5)
    assert e.shape == (0, 3, 2, 2)
    e.sum().backward()
    assert (x.grad == 0).all()
    m = ops.RoIPool(2, 0.5)
    assert torch.equal(m(x, rois), ops.roi_pool(x, rois, 2, 0.5)) and "RoIPool" in repr(m)


def test_roi_pool_thread_count_determinism():
    x = randn_map(2, 40, 30, 34, torch.float32)
    rois = random_rois(300, 2, 30, 34, 0.25, dtype=torch.float32)
    g = torch.randn(300, 40, 7, 7)
    results = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            out = ops.roi_pool(xg, rois, 7, 0.25)
            (gi,) = torch.autograd.grad(out, xg, g)
            results.append((out, gi))
    finally:
        torch.set_num_threads(prev)
    for out, gi in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(gi, results[0][1])


# ---------------------------------------------------------------- multi-level

def test_multi_level_roi_align_matches_per_level(device):
    feats = [randn_map(2, 19, 16 // 2**i, 20 // 2**i).to(device) for i in range(3)]
    scales = [0.5, 0.25, 0.125]
    rois = random_rois(30, 2, 8, 10, 1.0).to(device) * torch.tensor([1, 4, 4, 4, 4.0], dtype=torch.float64,
                                                                     device=device)
    levels = torch.randint(-1, 4, (30,), device=device)  # -1 and 3: no level -> zeros
    out = ops.multi_level_roi_align(feats, rois, levels, scales, (3, 2), 2, False)
    for k in range(30):
        l = int(levels[k])
        if 0 <= l < 3:
            ref = ref_roi_align(feats[l].cpu(), rois[k:k + 1].cpu(), 3, 2, scales[l], 2, False)[0]
        else:
            ref = torch.zeros(19, 3, 2, dtype=torch.float64)
        torch.testing.assert_close(out[k].cpu(), ref, atol=1e-10, rtol=0)
    fg = [f[:, :2].detach().clone().requires_grad_() for f in feats]
    fg[1] = fg[1].detach().to(memory_format=torch.channels_last).requires_grad_()
    rois_g = rois[:8]
    lv = levels[:8].clamp(0, 2)
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.multi_level_roi_align([a, b, c], rois_g, lv, scales, 2, 1, True), tuple(fg),
        fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [19, 48])
def test_multi_level_roi_align_all_channels_last(device, dtype, C):
    # Every map channels-last takes the CPU kernel's RoI-parallel path: the same bits as the contiguous
    # maps' channel-block path, RoIs without a level pooling to zeros, for any thread count.
    feats = [randn_map(2, C, 24 // 2**i, 30 // 2**i, dtype).to(device) for i in range(3)]
    scales = [0.5, 0.25, 0.125]
    rois = (random_rois(300, 2, 12, 15, 1.0) * torch.tensor([1, 4, 4, 4, 4.0], dtype=torch.float64)).to(dtype)
    levels = torch.randint(-1, 4, (300,))
    rois, levels = rois.to(device), levels.to(device)
    feats_cl = [f.to(memory_format=torch.channels_last) for f in feats]
    want = ops.multi_level_roi_align(feats, rois, levels, scales, 7, 2, True)
    prev = torch.get_num_threads()
    try:
        for threads in (1, max(2, prev)):
            torch.set_num_threads(threads)
            got = ops.multi_level_roi_align(feats_cl, rois, levels, scales, 7, 2, True)
            assert torch.equal(got, want)
    finally:
        torch.set_num_threads(prev)
    assert (want[(levels < 0) | (levels > 2)] == 0).all() and want.abs().sum() > 0


def _ref_level_mapper(boxes, k_min, k_max, s0=224, k0=4, eps=1e-6):
    out = []
    for b in torch.cat(boxes).double().tolist():
        area = (b[2] - b[0]) * (b[3] - b[1])
        if not area >= 0:
            out.append(None)
            continue
        lvl = math.floor(k0 + math.log2(math.sqrt(area) / s0 + 1e-300) + eps)
        out.append(min(max(lvl, k_min), k_max) - k_min)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multiscale_roi_align_matches_reference(device, dtype):
    image_shapes = [(128, 160), (120, 150)]
    x = {"p2": randn_map(2, 6, 32, 40, dtype), "p3": randn_map(2, 6, 16, 20, dtype),
         "skip": randn_map(2, 6, 8, 10, dtype), "p4": randn_map(2, 6, 8, 10, dtype),
         "p5": randn_map(2, 6, 4, 5, dtype)}
    x = {k: v.to(device) for k, v in x.items()}
    boxes = []
    for n in (25, 17):
        xy = torch.rand(n, 2) * 130
        wh = torch.rand(n, 2) ** 2 * 150 + 1
        boxes.append(torch.cat([xy, xy + wh], 1).to(dtype).to(device))
    boxes[0][0] = torch.tensor([10, 10, 5, 5])  # inverted: no level (NaN size) -> zeros, as torchvision
    m = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2)
    out = m(x, boxes, image_shapes)
    assert m.scales == [0.25, 0.125, 0.0625, 0.03125]
    names, scales = ["p2", "p3", "p4", "p5"], m.scales
    lv = _ref_level_mapper(boxes, 2, 5)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=dtype, device=device), b], 1)
                      for i, b in enumerate(boxes)])
    assert out.shape == (42, 6, 3, 3)
    for k in range(42):
        if lv[k] is None:
            assert (out[k] == 0).all()
            continue
        ref = ref_roi_align(x[names[lv[k]]].cpu().double(), rois[k:k + 1].cpu().double(), 3, 3, scales[lv[k]], 2,
                            False)[0]
        torch.testing.assert_close(out[k].cpu().double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    # one level: plain roi_align with the inferred scale
    m1 = ops.MultiScaleRoIAlign(["p3"], (2, 3), -1)
    o1 = m1(x, boxes, image_shapes)
    torch.testing.assert_close(o1, ops.roi_align(x["p3"], boxes, (2, 3), 0.125, -1, False))
    # differentiable w.r.t. every level
    xg = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    m(xg, boxes, image_shapes).sum().backward()
    assert all(xg[k].grad is not None for k in names) and xg["skip"].grad is None


@pytest.mark.torchscript
def test_multiscale_scriptable():
    m = torch.jit.script(ops.MultiScaleRoIAlign(["a", "b"], 2, 2))
    x = {"a": torch.randn(1, 3, 16, 16), "b": torch.randn(1, 3, 8, 8)}
    boxes = [torch.tensor([[0.0, 0, 20, 20], [1, 1, 60, 50]])]
    eager = ops.MultiScaleRoIAlign(["a", "b"], 2, 2)(x, boxes, [(64, 64)])
    torch.testing.assert_close(m(x, boxes, [(64, 64)]), eager)


def test_multi_level_thread_count_determinism():
    feats = [randn_map(2, 32, 40 // 2**i, 44 // 2**i, torch.float32) for i in range(3)]
    rois = random_rois(200, 2, 40, 44, 1.0, dtype=torch.float32)
    levels = torch.randint(0, 3, (200,))
    g = torch.randn(200, 32, 7, 7)
    results = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fg = [f.clone().requires_grad_() for f in feats]
            out = ops.multi_level_roi_align(fg, rois, levels, [1.0, 0.5, 0.25], 7, -1, True)
            results.append([out] + list(torch.autograd.grad(out, fg, g)))
    finally:
        torch.set_num_threads(prev)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


# ---------------------------------------------------------------- bad input

def test_bad_input(device):
    x = randn_map(2, 3, 5, 5).to(device)
    ok = torch.tensor([[0, 0, 0, 2, 2.0]], dtype=torch.float64, device=device)
    for fn in (lambda i, b, **kw: ops.roi_align(i, b, 2, **kw), lambda i, b, **kw: ops.roi_pool(i, b, 2, **kw)):
        for bad in ([[2, 0, 0, 1, 1.0]], [[-1, 0, 0, 1, 1.0]], [[0.5, 0, 0, 1, 1.0]], [[float("nan"), 0, 0, 1, 1]]):
            with pytest.raises(ValueError, match="batch index"):
                fn(x, torch.tensor(bad, dtype=torch.float64, device=device))
        with pytest.raises(ValueError, match="boxes"):
            fn(x, ok[:, 1:])
        with pytest.raises(ValueError, match="boxes"):
            fn(x, [ok])
        with pytest.raises(TypeError, match="boxes"):
            fn(x, "boxes")
        with pytest.raises(ValueError, match="input"):
            fn(x[0], ok)
        with pytest.raises(TypeError, match="input"):
            fn(x.long(), ok.long())
        with pytest.raises(TypeError, match="input"):
            fn([x], ok)
        with pytest.raises(TypeError, match="boxes"):
            fn(x, ok.float())
        for s in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="spatial_scale"):
                fn(x, ok, spatial_scale=s)
    for size in (0, (2, -1)):
        with pytest.raises(ValueError, match="output_size"):
            ops.roi_align(x, ok, size)
        with pytest.raises(ValueError, match="output_size"):
            ops.roi_pool(x, ok, size)
    with pytest.raises(ValueError, match="output_size"):
        ops.roi_align(x, ok, (1, 2, 3))
    lv = torch.zeros(1, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="spatial_scales"):
        ops.multi_level_roi_align([x], ok, lv, [1.0, 2.0], 2)
    with pytest.raises(ValueError, match="features"):
        ops.multi_level_roi_align([x, x[:1]], ok, lv, [1.0, 0.5], 2)
    with pytest.raises(TypeError, match="levels"):
        ops.multi_level_roi_align([x], ok, lv.float(), [1.0], 2)
    with pytest.raises(ValueError, match="levels"):
        ops.multi_level_roi_align([x], ok, lv[:0], [1.0], 2)
    with pytest.raises(ValueError, match="features"):
        ops.multi_level_roi_align([], ok, lv, [], 2)


# ---------------------------------------------------------------- torch integration

def test_opcheck(device):
    x = randn_map(2, 3, 6, 7).to(device)
    rois = random_rois(6, 2, 6, 7, 0.5).to(device)
    g = torch.randn(6, 3, 2, 3, dtype=torch.float64, device=device)
    out, arg = torch.ops.pydetops.roi_pool(x, rois, 0.5, 2, 3)
    feats = [x, randn_map(2, 3, 3, 4).to(device)]
    lv = torch.randint(0, 2, (6,), device=device)
    cases = [
        (torch.ops.pydetops.roi_align.default, (x.requires_grad_(), rois, 0.5, 2, 3, 2, True)),
        (torch.ops.pydetops.roi_align.default, (x.detach(), rois, 0.5, 2, 3, -1, False)),
        (torch.ops.pydetops._roi_align_backward.default, (g, rois, 0.5, 2, 3, 2, 3, 6, 7, 2, True)),
        (torch.ops.pydetops.roi_pool.default, (x.detach().requires_grad_(), rois, 0.5, 2, 3)),
        (torch.ops.pydetops._roi_pool_backward.default, (g, rois, arg, 0.5, 2, 3, 2, 3, 6, 7)),
        (torch.ops.pydetops.multi_level_roi_align.default,
         ([f.detach().requires_grad_() for f in feats], rois, lv, [0.5, 0.25], 2, 3, 2, False)),
        (torch.ops.pydetops._multi_level_roi_align_backward.default,
         (g, rois, lv, [0.5, 0.25], 2, 3, 2, False, 2, 3, [6, 3], [7, 4])),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.torchscript
def test_compile_and_script(device):
    x = randn_map(2, 3, 8, 9, torch.float32).to(device)
    rois = random_rois(5, 2, 8, 9, 0.5, dtype=torch.float32).to(device)

    def f(t, r):
        return ops.roi_align(t, r, (2, 3), 0.5, 2, True).sum() + ops.roi_pool(t, r, 2, 0.5).sum()

    xg = x.clone().requires_grad_()
    eager = f(xg, rois)
    (ge,) = torch.autograd.grad(eager, xg)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    res = compiled(xc, rois)
    (gc,) = torch.autograd.grad(res, xc)
    torch.testing.assert_close(res, eager)
    torch.testing.assert_close(gc, ge)
    for fn in (ops.roi_align, ops.roi_pool):
        s = torch.jit.script(fn)
        torch.testing.assert_close(s(x, rois, [2, 2], 0.5), fn(x, rois, 2, 0.5))
        torch.testing.assert_close(s(x, [rois[:3, 1:], rois[3:, 1:]], [2, 2], 0.5),
                                   fn(x, [rois[:3, 1:], rois[3:, 1:]], 2, 0.5))
