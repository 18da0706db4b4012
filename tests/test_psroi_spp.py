"""ps_roi_align, ps_roi_pool, spp_pool: against plain float64 references written
here (per RoI, per bin loops), with random and adversarial RoIs, every dtype,
channels-last and non-contiguous inputs, gradients, opcheck, compile, script,
thread-count determinism and bad input."""
import math

import numpy as np
import pytest
import torch

import pydetops.ops as P

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------
# References. Coordinates are computed in the kernels' accumulate precision
# (numpy float32 for float32/float16/bfloat16, float64 for float64) so that
# rounding and floor/ceil decisions are the same; the pooling itself is done
# in float64 torch ops, so that autograd gives the reference gradient.
# ----------------------------------------------------------------------------

def _acc(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _finite(*vals):
    return all(math.isfinite(float(v)) for v in vals)


def _axis_weights(start, bin_size, grid, size, acc):
    """Summed bilinear weights over the samples of one bin side (the tap is separable)."""
    w = torch.zeros(size, dtype=torch.float64)
    for s in range(grid):
        y = start + (acc(s) + acc(0.5)) * bin_size / acc(grid)
        if not (-1 <= y <= size):
            continue
        y = max(float(y), 0.0)
        lo = int(y)
        if lo >= size - 1:
            lo = hi = size - 1
            y = float(lo)
        else:
            hi = lo + 1
        frac = y - lo
        w[lo] += 1 - frac
        w[hi] += frac
    return w


def _grid(bin_size, sampling_ratio):
    if sampling_ratio > 0:
        return sampling_ratio
    g = np.ceil(bin_size)
    if not np.isfinite(g):
        return 0  # every sample position is NaN or infinite: nothing lands on the map
    return int(g) if g >= 1 else 0  # zero or negative size: no samples


def ref_ps_roi_align(x, rois, oh, ow, scale, sampling_ratio, acc):
    x = x.double()
    K = rois.shape[0]
    C = x.shape[1]
    H, W = x.shape[2], x.shape[3]
    c_out = C // (oh * ow)
    out = []
    for k in range(K):
        r = [acc(v) for v in rois[k].double().tolist()]
        b = int(r[0])
        sc = acc(scale)
        sw, sh, ew, eh = (r[1] * sc - acc(0.5), r[2] * sc - acc(0.5), r[3] * sc - acc(0.5), r[4] * sc - acc(0.5))
        bh, bw = (eh - sh) / acc(oh), (ew - sw) / acc(ow)
        gh, gw = _grid(bh, sampling_ratio), _grid(bw, sampling_ratio)
        cells = []
        for i in range(oh):
            for j in range(ow):
                chans = [(c * oh + i) * ow + j for c in range(c_out)]
                if gh == 0 or gw == 0:
                    cells.append(x.new_zeros(c_out) + 0 * x[b, chans].sum())
                    continue
                wy = _axis_weights(acc(i) * bh + sh, bh, gh, H, acc)
                wx = _axis_weights(acc(j) * bw + sw, bw, gw, W, acc)
                cells.append(torch.einsum("h,chw,w->c", wy, x[b, chans], wx) / (gh * gw))
        out.append(torch.stack(cells, 1).reshape(c_out, oh, ow))
    if not out:
        return x.new_zeros(0, c_out, oh, ow)
    return torch.stack(out)


def _round(v):
    return math.copysign(math.floor(abs(float(v)) + 0.5), float(v))  # half away from zero, as C round()


def _rounded_roi(r, scale, acc, end_offset):
    vals = [acc(v) * acc(scale) for v in r[1:]]
    if not _finite(*vals):
        return None
    x0, y0, x1, y1 = (int(_round(v)) for v in vals)
    return x0, y0, max(x1 - x0 + end_offset, 1), max(y1 - y0 + end_offset, 1)


def _bin(start, size, pooled, p, limit, acc):
    bin_size = acc(size) / acc(pooled)
    s = int(np.floor(acc(p) * bin_size)) + start
    e = int(np.ceil(acc(p + 1) * bin_size)) + start
    return min(max(s, 0), limit), min(max(e, 0), limit)


def ref_ps_roi_pool(x, rois, oh, ow, scale, acc):
    x = x.double()
    K, C, H, W = rois.shape[0], x.shape[1], x.shape[2], x.shape[3]
    c_out = C // (oh * ow)
    out = []
    for k in range(K):
        r = rois[k].double().tolist()
        b = int(r[0])
        rr = _rounded_roi(r, scale, acc, 0)
        cells = []
        for i in range(oh):
            for j in range(ow):
                vals = []
                for c in range(c_out):
                    cin = (c * oh + i) * ow + j
                    if rr is None:
                        vals.append(0 * x[b, cin, 0, 0] if H * W else x.new_zeros(()))
                        continue
                    # Clipped to [0, H - 1] / [0, W - 1], as torchvision's ps_roi_pool.
                    hs, he = _bin(rr[1], rr[3], oh, i, H - 1, acc)
                    ws, we = _bin(rr[0], rr[2], ow, j, W - 1, acc)
                    if he <= hs or we <= ws:
                        vals.append(x.new_zeros(()))
                    else:
                        vals.append(x[b, cin, hs:he, ws:we].mean())
                cells.append(torch.stack(vals))
        out.append(torch.stack(cells, 1).reshape(c_out, oh, ow))
    if not out:
        return x.new_zeros(0, c_out, oh, ow)
    return torch.stack(out)


def ref_spp(x, rois, levels, scale, acc):
    x = x.double()
    K, C, H, W = rois.shape[0], x.shape[1], x.shape[2], x.shape[3]
    rows = []
    for k in range(K):
        r = rois[k].double().tolist()
        b = int(r[0])
        rr = _rounded_roi(r, scale, acc, 1)
        parts = []
        for lv in levels:
            grid = []
            for i in range(lv):
                for j in range(lv):
                    if rr is None:
                        grid.append(x.new_zeros(C))
                        continue
                    hs, he = _bin(rr[1], rr[3], lv, i, H, acc)
                    ws, we = _bin(rr[0], rr[2], lv, j, W, acc)
                    if he <= hs or we <= ws:
                        grid.append(x.new_zeros(C))
                    else:
                        # The first maximum in row-major order takes the gradient (torch.argmax
                        # returns the first of equal maxima).
                        vals = x[b, :, hs:he, ws:we].reshape(C, -1)
                        grid.append(vals.gather(1, vals.argmax(1, keepdim=True))[:, 0])
            parts.append(torch.stack(grid, 1).reshape(-1))  # [C, l*l] flattened
        rows.append(torch.cat(parts))
    if not rows:
        return x.new_zeros(0, C * sum(v * v for v in levels))
    return torch.stack(rows)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

def random_rois(n_images, img_h, img_w, k, dtype=torch.float64, device="cpu"):
    b = torch.randint(0, n_images, (k, 1)).double()
    xy = torch.rand(k, 2, dtype=torch.float64) * torch.tensor([img_w, img_h]) * 1.1 - 2
    wh = torch.rand(k, 2, dtype=torch.float64) * torch.tensor([img_w, img_h]) * 0.7 + 0.2
    return torch.cat([b, xy, xy + wh], 1).to(dtype=dtype, device=device)


def adversarial_rois(n_images, img_h, img_w, dtype=torch.float64, device="cpu", nan=True, huge=True):
    rows = [
        [0, 0, 0, img_w, img_h],                       # whole image, end on the border
        [0, -10, -10, -2, -3],                         # off the map (top-left)
        [n_images - 1, img_w + 3, img_h + 3, img_w + 20, img_h + 9],  # off the map (bottom-right)
        [0, 3.3, 2.2, 3.31, 2.21],                     # tiny
        [0, 4, 4, 4, 4],                               # zero size
        [n_images - 1, 7, 6, 2, 1],                    # inverted
        [0, -3.5, 1.5, img_w / 2, img_h + 4.5],        # partly off
        [0, 0.5, 0.5, 1.5, 1.5],                       # rounding ties
        [n_images - 1, 2.5, 3.5, 2.5, 9.5],            # zero width
    ]
    if huge:
        rows.append([0, -300, -200, img_w + 400, img_h + 300])
    if nan:
        rows += [[0, float("nan"), 1, 5, 5], [0, 1, 1, float("inf"), 5], [n_images - 1, float("-inf"), 0, 3, 3]]
    return torch.tensor(rows, dtype=dtype, device=device)


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


# ----------------------------------------------------------------------------
# ps_roi_align
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3])
def test_ps_roi_align_matches_reference(device, sampling_ratio, scale):
    oh, ow = 3, 2
    x = torch.randn(2, 2 * oh * ow, 9, 11, dtype=torch.float64, device=device, requires_grad=True)
    img_h, img_w = 9 / scale, 11 / scale
    rois = torch.cat([random_rois(2, img_h, img_w, 10, device=device),
                      adversarial_rois(2, img_h, img_w, device=device)])
    out = P.ps_roi_align(x, rois, (oh, ow), scale, sampling_ratio)
    xr = x.detach().cpu().requires_grad_()
    ref = ref_ps_roi_align(xr, rois.cpu(), oh, ow, scale, sampling_ratio, np.float64)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    (out * g.to(device)).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-10, atol=1e-10)


def test_ps_roi_align_huge_roi_adaptive(device):
    # A box hundreds of cells wide: the adaptive grid has hundreds of samples a side,
    # most off the map; the kernel visits only the ones that can land on it.
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64, device=device)
    rois = torch.tensor([[0, -900.0, -700.0, 800.0, 1000.0], [0, -2000.0, 1.0, 3.0, 4.0]], dtype=torch.float64,
                        device=device)
    out = P.ps_roi_align(x, rois, 2, 1.0, -1)
    ref = ref_ps_roi_align(x.cpu(), rois.cpu(), 2, 2, 1.0, -1, np.float64)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ps_roi_align_dtypes(device, dtype):
    oh = ow = 2
    x = (torch.randn(2, 3 * oh * ow, 8, 10, device=device) * 3).to(dtype).requires_grad_()
    rois = torch.cat([random_rois(2, 8, 10, 12), adversarial_rois(2, 8, 10, huge=False)]).to(device=device,
                                                                                             dtype=dtype)
    out = P.ps_roi_align(x, rois, oh, 1.0, 2)
    assert out.dtype == dtype and out.shape == (rois.shape[0], 3, oh, ow)
    xr = x.detach().cpu().double().requires_grad_()
    ref = ref_ps_roi_align(xr, rois.cpu(), oh, ow, 1.0, 2, _acc(dtype))
    tol = _tol(dtype)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol * 4)
    g = torch.randn_like(ref)
    (out * g.to(device=device, dtype=dtype)).sum().backward()
    (ref * g.to(dtype).double()).sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, rtol=tol, atol=tol * 4)


# ----------------------------------------------------------------------------
# ps_roi_pool
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 0.5, 0.37])
@pytest.mark.parametrize("size", [(2, 2), (3, 2), (1, 1)])
def test_ps_roi_pool_matches_reference(device, scale, size):
    oh, ow = size
    x = torch.randn(2, 2 * oh * ow, 9, 11, dtype=torch.float64, device=device, requires_grad=True)
    img_h, img_w = 9 / scale, 11 / scale
    rois = torch.cat([random_rois(2, img_h, img_w, 12, device=device),
                      adversarial_rois(2, img_h, img_w, device=device)])
    out = P.ps_roi_pool(x, rois, size, scale)
    xr = x.detach().cpu().requires_grad_()
    ref = ref_ps_roi_pool(xr, rois.cpu(), oh, ow, scale, np.float64)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    (out * g.to(device)).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-12, atol=1e-12)


def test_ps_roi_pool_last_row_and_column(device):
    # As torchvision's forward: bins are clipped to [0, H - 1] x [0, W - 1], so a box over the
    # whole map averages all but the last row and column, and a 1x1 map pools to 0. The
    # gradient goes exactly to the cells the forward read.
    x = torch.arange(16, dtype=torch.float64, device=device).reshape(1, 1, 4, 4).requires_grad_()
    box = torch.tensor([[0, 0, 0, 4, 4.0]], dtype=torch.float64, device=device)
    out = P.ps_roi_pool(x, box, 1)
    assert out.item() == x.detach()[0, 0, :3, :3].mean().item()
    out.sum().backward()
    expected_grad = torch.zeros(4, 4, dtype=torch.float64)
    expected_grad[:3, :3] = 1 / 9
    torch.testing.assert_close(x.grad[0, 0].cpu(), expected_grad)
    one = torch.full((1, 1, 1, 1), 5.0, dtype=torch.float64, device=device)
    assert P.ps_roi_pool(one, torch.tensor([[0, 0, 0, 1, 1.0]], dtype=torch.float64, device=device), 1).item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_ps_roi_pool_dtypes(device, dtype):
    oh = ow = 2
    x = (torch.randn(2, 3 * oh * ow, 8, 10, device=device) * 3).to(dtype).requires_grad_()
    rois = torch.cat([random_rois(2, 16, 20, 12), adversarial_rois(2, 16, 20, huge=False)]).to(device=device,
                                                                                               dtype=dtype)
    out = P.ps_roi_pool(x, rois, oh, 0.5)
    assert out.dtype == dtype
    xr = x.detach().cpu().double().requires_grad_()
    ref = ref_ps_roi_pool(xr, rois.cpu(), oh, ow, 0.5, _acc(dtype))
    tol = _tol(dtype)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol * 4)
    g = torch.randn_like(ref)
    (out * g.to(device=device, dtype=dtype)).sum().backward()
    (ref * g.to(dtype).double()).sum().backward()
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, rtol=tol, atol=tol * 4)


# ----------------------------------------------------------------------------
# spp_pool
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [(6, 3, 2, 1), (1,), (2, 5), (4, 4)])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3])
def test_spp_matches_reference(device, levels, scale):
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64, device=device, requires_grad=True)
    img_h, img_w = 9 / scale, 11 / scale
    rois = torch.cat([random_rois(3, img_h, img_w, 12, device=device),
                      adversarial_rois(3, img_h, img_w, device=device)])
    out = P.spp_pool(x, rois, list(levels), scale)
    assert out.shape == (rois.shape[0], 4 * sum(v * v for v in levels))
    xr = x.detach().cpu().requires_grad_()
    ref = ref_spp(xr, rois.cpu(), levels, scale, np.float64)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    (out * g.to(device)).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spp_dtypes(device, dtype):
    x = (torch.randn(2, 5, 8, 10, device=device) * 3).to(dtype).requires_grad_()
    rois = torch.cat([random_rois(2, 16, 20, 10), adversarial_rois(2, 16, 20, huge=False)]).to(device=device,
                                                                                               dtype=dtype)
    levels = [3, 2, 1]
    out = P.spp_pool(x, rois, levels, 0.5)
    assert out.dtype == dtype
    xr = x.detach().cpu().double().requires_grad_()
    ref = ref_spp(xr, rois.cpu(), levels, 0.5, _acc(dtype))
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=0)  # a max is exact in any dtype
    g = torch.randn_like(ref).to(dtype).double()
    (out * g.to(device=device, dtype=dtype)).sum().backward()
    (ref * g).sum().backward()
    tol = _tol(dtype)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, rtol=tol, atol=tol * 4)


def test_spp_one_kernel_call_matches_per_level(device):
    x = torch.randn(2, 3, 12, 12, device=device)
    rois = random_rois(2, 12, 12, 7, dtype=torch.float32, device=device)
    whole = P.spp_pool(x, rois, [4, 2, 1], 1.0)
    parts = [P.spp_pool(x, rois, [lv], 1.0) for lv in (4, 2, 1)]
    assert torch.equal(whole, torch.cat(parts, 1))


def test_spp_ties_nan_and_argmax(device):
    x = torch.zeros(1, 1, 4, 4, device=device)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = 3.0  # a tie: the first maximum (row-major) takes the gradient
    x.requires_grad_()
    rois = torch.tensor([[0, 0, 0, 3, 3.0]], device=device)
    out = P.spp_pool(x, rois, [1], 1.0)
    out.sum().backward()
    assert out.item() == 3.0 and x.grad[0, 0, 1, 1] == 1 and x.grad.sum() == 1
    y = torch.randn(1, 1, 4, 4, device=device)
    y[0, 0, 2, 1] = float("nan")
    assert torch.isnan(P.spp_pool(y, rois, [1], 1.0)).all()


# ----------------------------------------------------------------------------
# All three ops: layouts, box forms, empty inputs, NaN boxes, gradcheck, ...
# ----------------------------------------------------------------------------

def _call(name, x, rois, **kw):
    if name == "ps_roi_align":
        return P.ps_roi_align(x, rois, kw.get("size", 2), kw.get("scale", 0.5), kw.get("sr", -1))
    if name == "ps_roi_pool":
        return P.ps_roi_pool(x, rois, kw.get("size", 2), kw.get("scale", 0.5))
    return P.spp_pool(x, rois, kw.get("levels", [3, 2, 1]), kw.get("scale", 0.5))


OPS = ["ps_roi_align", "ps_roi_pool", "spp_pool"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_channels_last_and_non_contiguous(device, op, dtype):
    x = torch.randn(2, 8, 10, 12, device=device).to(dtype)
    rois = torch.cat([random_rois(2, 20, 24, 9), adversarial_rois(2, 20, 24)]).to(device=device, dtype=dtype)
    base = _call(op, x, rois)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert cl.stride(1) == 1
    nc = torch.randn(2, 12, 10, 8, device=device).to(dtype).permute(0, 3, 2, 1)
    nc.copy_(x)
    assert not nc.is_contiguous()
    sliced = torch.randn(2, 16, 10, 24, device=device).to(dtype)[:, ::2, :, ::2]
    sliced.copy_(x)
    for variant in (cl, nc, sliced):
        assert torch.equal(_call(op, variant, rois), base)
    # Gradients of the channels-last input equal those of the contiguous one.
    a = x.clone().requires_grad_()
    b = cl.clone().requires_grad_()
    g = torch.randn_like(base)
    (_call(op, a, rois) * g).sum().backward()
    (_call(op, b, rois) * g).sum().backward()
    assert torch.equal(a.grad, b.grad.contiguous())


@pytest.mark.parametrize("op", OPS)
def test_list_of_boxes_equals_tensor_form(device, op):
    x = torch.randn(3, 8, 9, 9, device=device)
    per_image = [torch.rand(n, 4, device=device) * 9 for n in (3, 0, 4)]
    per_image = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1) for b in per_image]
    rows = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=device), b], 1)
                      for i, b in enumerate(per_image)])
    assert torch.equal(_call(op, x, per_image, scale=1.0), _call(op, x, rows, scale=1.0))


@pytest.mark.parametrize("op", OPS)
def test_zero_rois_and_empty_maps(device, op):
    x = torch.randn(2, 8, 6, 6, device=device, requires_grad=True)
    out = _call(op, x, torch.zeros(0, 5, device=device))
    assert out.shape[0] == 0
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # An empty feature map: every bin is empty, output 0.
    e = torch.randn(1, 8, 0, 5, device=device, requires_grad=True)
    out = _call(op, e, torch.tensor([[0, 0, 0, 4, 4.0]], device=device))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert e.grad.shape == e.shape


@pytest.mark.parametrize("op", OPS)
def test_nan_inf_boxes_give_zeros(device, op):
    x = torch.randn(1, 8, 7, 7, device=device) + 5
    bad = torch.tensor([[0, float("nan"), 0, 3, 3], [0, 0, float("inf"), 3, 3], [0, float("-inf"), 0, 3, 3],
                        [0, 0, 0, float("nan"), float("nan")], [0, -1e38, -1e38, 1e38, 1e38]], device=device)
    for sr in (-1, 2):
        out = _call(op, x, bad, sr=sr, scale=1.0)
        assert torch.isfinite(out).all()
        assert torch.equal(out[:4], torch.zeros_like(out[:4]))


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(device, op):
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    rois = torch.cat([random_rois(2, 10, 12, 3), adversarial_rois(2, 10, 12, nan=False, huge=False)[::2]]).to(device)
    for kw in ({"sr": 2, "levels": [3, 1]}, {"sr": -1, "scale": 0.8, "levels": [2]}):
        assert torch.autograd.gradcheck(lambda t: _call(op, t, rois, **kw), (x,), fast_mode=False)


def test_opcheck(device):
    x = torch.randn(2, 8, 5, 6, device=device, requires_grad=True)
    rois = random_rois(2, 10, 12, 6, dtype=torch.float32, device=device)
    torch.library.opcheck(torch.ops.pydetops.ps_roi_align, (x, rois, 0.5, 2, 2, -1))
    torch.library.opcheck(torch.ops.pydetops.ps_roi_align, (x, rois, 0.5, 1, 4, 2))
    torch.library.opcheck(torch.ops.pydetops.ps_roi_pool, (x, rois, 0.5, 2, 2))
    torch.library.opcheck(torch.ops.pydetops.spp_pool, (x, rois, [3, 2, 1], 0.5))
    g = torch.randn(6, 2, 2, 2, device=device)
    torch.library.opcheck(torch.ops.pydetops._ps_roi_align_backward, (g, rois, 0.5, 2, 2, -1, 2, 8, 5, 6))
    torch.library.opcheck(torch.ops.pydetops._ps_roi_pool_backward, (g, rois, 0.5, 2, 2, 2, 8, 5, 6))
    out, argmax = torch.ops.pydetops.spp_pool(x.detach(), rois, [3, 2, 1], 0.5)
    torch.library.opcheck(torch.ops.pydetops._spp_pool_backward,
                          (torch.randn_like(out), rois, argmax, [3, 2, 1], 2, 8, 5, 6))


def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def f(x, rois):
        a = P.ps_roi_align(x, rois, 2, 0.5, 2)
        b = P.ps_roi_pool(x, rois, 2, 0.5)
        c = P.spp_pool(x, rois, [2, 1], 0.5)
        return a.sum() + b.square().sum() + c.sum()

    x = torch.randn(2, 8, 9, 9, device=device, requires_grad=True)
    rois = random_rois(2, 18, 18, 6, dtype=torch.float32, device=device)
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(x, rois)
    (gx,) = torch.autograd.grad(out, x)
    ref = f(x, rois)
    (rx,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rx)


@pytest.mark.torchscript
def test_torchscript(device):
    x = torch.randn(2, 8, 9, 9, device=device)
    rois = random_rois(2, 18, 18, 5, dtype=torch.float32, device=device)
    per_image = [rois[:2, 1:], rois[2:, 1:]]
    for fn, args in ((P.ps_roi_align, (2, 0.5, 2)), (P.ps_roi_pool, ((2, 2), 0.5)), (P.spp_pool, ([2, 1], 0.5))):
        s = torch.jit.script(fn)
        assert torch.equal(s(x, rois, *args), fn(x, rois, *args))
        assert torch.equal(s(x, per_image, *args), fn(x, per_image, *args))
    for mod in (P.PSRoIAlign(2, 0.5, -1), P.PSRoIPool((2, 2), 0.5), P.SpatialPyramidPooling((3, 1), 0.5)):
        s = torch.jit.script(mod)
        assert torch.equal(s(x, rois), mod(x, rois))
    assert repr(P.SpatialPyramidPooling((3, 1), 0.5)) == "SpatialPyramidPooling(levels=[3, 1], spatial_scale=0.5)"
    assert P.SpatialPyramidPooling().output_features(8) == 8 * 50
    assert torch.equal(P.spp_pool(x, rois), P.spp_pool(x, rois, (6, 3, 2, 1)))  # default levels, a tuple works
    assert P.spp_pool(x, rois).shape == (5, 8 * 50)


@pytest.mark.parametrize("op", OPS)
def test_backward_deterministic_across_thread_counts(op):
    x = torch.randn(2, 32, 24, 24)
    rois = torch.cat([random_rois(2, 48, 48, 300, dtype=torch.float32), adversarial_rois(2, 48, 48)])
    g = None
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            xi = x.clone().requires_grad_()
            out = _call(op, xi, rois, size=(4, 2), sr=-1)
            if g is None:
                g = torch.randn_like(out)
            (out * g).sum().backward()
            results.append((out.detach(), xi.grad))
    finally:
        torch.set_num_threads(old)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0])
        assert torch.equal(grad, results[0][1])


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_bad_input(device, op):
    x = torch.randn(2, 8, 6, 6, device=device)
    rois = torch.tensor([[0, 0, 0, 4, 4.0]], device=device)
    with pytest.raises(ValueError, match="batch index"):
        _call(op, x, torch.tensor([[2, 0, 0, 4, 4.0]], device=device))
    with pytest.raises(ValueError, match="batch index"):
        _call(op, x, torch.tensor([[-1, 0, 0, 4, 4.0]], device=device))
    with pytest.raises(ValueError, match="batch index"):
        _call(op, x, torch.tensor([[float("nan"), 0, 0, 4, 4.0]], device=device))
    with pytest.raises(ValueError, match="boxes"):
        _call(op, x, torch.zeros(3, 4, device=device))
    with pytest.raises(ValueError, match="boxes"):
        _call(op, x, [torch.zeros(3, 5, device=device)])
    with pytest.raises(TypeError, match="boxes"):
        _call(op, x, torch.zeros(1, 5, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="input"):
        _call(op, x[0], rois)
    with pytest.raises(TypeError, match="input"):
        _call(op, x.long(), rois)
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="spatial_scale"):
            _call(op, x, rois, scale=scale)


def test_bad_sizes_and_levels(device):
    x = torch.randn(1, 8, 6, 6, device=device)
    rois = torch.tensor([[0, 0, 0, 4, 4.0]], device=device)
    for fn in (lambda s: P.ps_roi_align(x, rois, s), lambda s: P.ps_roi_pool(x, rois, s)):
        with pytest.raises(ValueError, match="output_size"):
            fn(0)
        with pytest.raises(ValueError, match="output_size"):
            fn((2, -1))
        with pytest.raises(ValueError, match="input channels.*output_size"):
            fn(3)
        with pytest.raises(ValueError, match="output_size"):
            fn((1, 2, 3))
    with pytest.raises(ValueError, match="levels"):
        P.spp_pool(x, rois, [], 1.0)
    with pytest.raises(ValueError, match="levels"):
        P.spp_pool(x, rois, [2, 0], 1.0)
    with pytest.raises(ValueError, match="levels"):
        P.SpatialPyramidPooling((3, -1))
    with pytest.raises(ValueError, match="grad"):
        torch.ops.pydetops._ps_roi_align_backward(torch.zeros(1, 2, 2, 3, device=device), rois, 1.0, 2, 2, -1,
                                                  1, 8, 6, 6)
    with pytest.raises(ValueError, match="argmax"):
        torch.ops.pydetops._spp_pool_backward(torch.zeros(1, 8, device=device), rois,
                                              torch.zeros(1, 8, device=device), [1], 1, 8, 6, 6)
