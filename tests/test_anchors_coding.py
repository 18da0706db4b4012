"""Anchors, SSD default boxes, the YOLO grid and R-CNN box coding against plain references.

References are written independently: Python loops over cells and anchors (numpy float32
where torchvision's rounding of base anchors must be reproduced), and the SPEC's box
regression formulas in float64.
"""
import math

import numpy as np
import pytest
import torch

import pydetops
from pydetops import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CLAMP = math.log(1000.0 / 16)


def _round_to(x: float, dtype: torch.dtype) -> float:
    """x rounded to ``dtype`` (as a Python float)."""
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def ref_base_anchors(sizes, ratios):
    """torchvision's zero-centred anchors: float32 arithmetic, rounded half to even."""
    rows = []
    for r in ratios:
        h_ratio = np.sqrt(np.float32(r))
        w_ratio = np.float32(1) / h_ratio
        for s in sizes:
            ws = w_ratio * np.float32(s)
            hs = h_ratio * np.float32(s)
            rows.append([float(np.round(v / np.float32(2))) for v in (-ws, -hs, ws, hs)])
    return rows


def ref_grid(base, h, w, sy, sx, dtype=torch.float64):
    """Loops over cells (row-major) and anchors; the integer shift is rounded to dtype first,
    then added to the (dtype) base value and the sum rounded to dtype."""
    out = []
    for y in range(h):
        for x in range(w):
            for a in base:
                shift = [x * sx, y * sy, x * sx, y * sy]
                out.append([_round_to(_round_to(float(s), dtype) + a[j], dtype) for j, s in enumerate(shift)])
    return out


def ref_encode(gt, prop, weights):
    wx, wy, ww, wh = weights
    out = []
    for g, p in zip(gt.tolist(), prop.tolist()):
        pw, ph = p[2] - p[0], p[3] - p[1]
        px, py = p[0] + pw / 2, p[1] + ph / 2
        gw, gh = g[2] - g[0], g[3] - g[1]
        gx, gy = g[0] + gw / 2, g[1] + gh / 2
        out.append([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * math.log(gw / pw), wh * math.log(gh / ph)])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)


def ref_decode(codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), clamp=CLAMP, image_size=None):
    wx, wy, ww, wh = weights
    n, k4 = codes.shape
    out = torch.empty(n, k4, dtype=torch.float64)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i].tolist()
        pw, ph = x2 - x1, y2 - y1
        px, py = x1 + pw / 2, y1 + ph / 2
        for c in range(k4 // 4):
            dx, dy, dw, dh = codes[i, 4 * c: 4 * c + 4].tolist()
            dx, dy = dx / wx, dy / wy
            dw, dh = min(dw / ww, clamp), min(dh / wh, clamp)
            gx, gy = pw * dx + px, ph * dy + py
            gw, gh = pw * math.exp(dw), ph * math.exp(dh)
            box = [gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2]
            if image_size is not None:
                hh, ww_ = image_size
                box = [min(max(box[0], 0), ww_), min(max(box[1], 0), hh), min(max(box[2], 0), ww_),
                       min(max(box[3], 0), hh)]
            out[i, 4 * c: 4 * c + 4] = torch.tensor(box, dtype=torch.float64)
    return out


def rand_boxes(n, scale=100.0, min_size=1.0, dtype=torch.float64):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * scale + min_size
    return torch.cat([xy, xy + wh], 1).to(dtype)


def tol(dtype):
    return {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 1e-1),
            torch.bfloat16: (1.6e-2, 1.0)}[dtype]


# ---------------------------------------------------------------------------
# anchors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes,ratios",
    [((128, 256, 512), (0.5, 1.0, 2.0)), ((32,), (0.5, 1.0, 2.0)), ((23, 45, 91), (0.25, 1 / 3, 1.0, 3.0, 7.0)),
     ((16, 17), (1.0,)), ((32, 40.3, 50.8), (0.5, 1.0, 2.0))],
)
def test_cell_anchors_match_torchvision_rounding(sizes, ratios):
    gen = ops.AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    assert gen.num_anchors_per_location() == [len(sizes) * len(ratios)]
    assert gen.cell_anchors[0].dtype == torch.float32
    assert gen.cell_anchors[0].tolist() == ref_base_anchors(sizes, ratios)


@pytest.mark.parametrize("h,w,sy,sx", [(1, 1, 1, 1), (3, 5, 8, 8), (7, 4, 16, 9), (0, 5, 4, 4), (5, 0, 4, 4), (2, 13, 1, 3)])
def test_grid_anchors_op(device, h, w, sy, sx):
    base = (torch.randn(3, 4, dtype=torch.float64) * 50).to(device)
    got = ops.grid_anchors(base, (h, w), (sy, sx))
    assert got.shape == (h * w * 3, 4) and got.dtype == torch.float64 and got.device.type == device
    want = torch.tensor(ref_grid(base.tolist(), h, w, sy, sx), dtype=torch.float64).reshape(-1, 4)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_anchors_dtypes_bitwise(device, dtype):
    # Shifts up to 29 * 97 = 2813 are not all representable in float16/bfloat16: the op must
    # round them exactly as torchvision's int64 + float tensor sum does.
    base = torch.tensor(ref_base_anchors((32, 181), (0.5, 1.0, 2.0)), dtype=dtype, device=device)
    got = ops.grid_anchors(base, (6, 30), (97, 97))
    assert got.dtype == dtype
    want = ref_grid(base.double().tolist(), 6, 30, 97, 97, dtype=dtype)
    assert got.double().cpu().tolist() == want


def test_grid_anchors_noncontiguous(device):
    big = torch.randn(4, 8, dtype=torch.float32, device=device)
    base = big[:, ::2]
    assert not base.is_contiguous()
    got = ops.grid_anchors(base, (3, 4), (2, 5))
    want = ops.grid_anchors(base.contiguous(), (3, 4), (2, 5))
    assert torch.equal(got, want)


def _ref_anchor_generator(sizes, ratios, image_hw, feature_hws):
    rows = []
    for s, r, (fh, fw) in zip(sizes, ratios, feature_hws):
        base = ref_base_anchors(s, r)
        rows += ref_grid(base, fh, fw, image_hw[0] // fh, image_hw[1] // fw)
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


@pytest.mark.parametrize(
    "image_hw,feature_hws",
    [((64, 96), [(8, 12)]), ((37, 53), [(5, 7), (3, 4)]), ((101, 67), [(13, 9), (7, 5), (4, 3)]),
     ((30, 30), [(30, 30), (1, 1)])],
)
def test_anchor_generator_matches_reference(device, image_hw, feature_hws):
    n = len(feature_hws)
    sizes = tuple((16 * 2 ** i, 23 * 2 ** i) for i in range(n))
    ratios = ((0.5, 1.0, 2.0),) * n
    gen = ops.AnchorGenerator(sizes, ratios)
    images = ops.ImageList(torch.zeros(2, 3, *image_hw, device=device), [image_hw, (image_hw[0] - 3, image_hw[1])])
    fmaps = [torch.zeros(2, 4, fh, fw, device=device) for fh, fw in feature_hws]
    out = gen(images, fmaps)
    want = _ref_anchor_generator(sizes, ratios, image_hw, feature_hws)
    assert len(out) == 2
    for a in out:
        assert a.dtype == torch.float32 and a.device.type == device
        assert torch.equal(a.double().cpu(), want)
    assert out[0].data_ptr() != out[1].data_ptr()  # one tensor per image, no aliasing


def test_anchor_generator_fpn_spot_check():
    # torchvision's default FPN anchors on an 800 x 1216 batch; compare random rows with the
    # loop reference evaluated at those rows only (the full loop is slow in Python).
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    gen = ops.AnchorGenerator(sizes, ratios)
    hws = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    images = ops.ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    (anchors,) = gen(images, [torch.zeros(1, 1, h, w) for h, w in hws])
    assert anchors.shape == (sum(h * w * 3 for h, w in hws), 4)
    offsets = np.cumsum([0] + [h * w * 3 for h, w in hws])
    for row in torch.randint(0, anchors.shape[0], (300,)).tolist() + [0, anchors.shape[0] - 1]:
        lvl = int(np.searchsorted(offsets, row, side="right") - 1)
        idx = row - offsets[lvl]
        h, w = hws[lvl]
        cell, a = divmod(idx, 3)
        y, x = divmod(cell, w)
        sy, sx = 800 // h, 1216 // w
        base = ref_base_anchors(sizes[lvl], ratios[lvl])[a]
        want = [base[0] + x * sx, base[1] + y * sy, base[2] + x * sx, base[3] + y * sy]
        assert anchors[row].tolist() == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_anchor_generator_dtypes(dtype):
    gen = ops.AnchorGenerator(((32, 64),), ((0.5, 1.0),))

    class Images:  # any object with .tensors and .image_sizes (e.g. torchvision's ImageList)
        tensors = torch.zeros(1, 3, 1000, 3000)
        image_sizes = [(1000, 3000)]

    (a,) = gen(Images(), [torch.zeros(1, 8, 10, 30, dtype=dtype)])
    assert a.dtype == dtype and gen.cell_anchors[0].dtype == dtype
    want = ref_grid(ref_base_anchors((32, 64), (0.5, 1.0)), 10, 30, 100, 100, dtype=dtype)
    assert a.double().tolist() == want


def test_anchor_generator_flat_arguments():
    gen = ops.AnchorGenerator(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))
    assert gen.sizes == ((32,), (64,)) and gen.num_anchors_per_location() == [3, 3]
    images = ops.ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    (a,) = gen(images, [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)])
    assert a.shape == (8 * 8 * 3 + 4 * 4 * 3, 4)


def test_anchor_generator_bad_input():
    gen = ops.AnchorGenerator(((32,),), ((1.0,),))
    images = ops.ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with pytest.raises(ValueError, match="feature_maps"):
        gen(images, [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="feature_maps"):
        gen(images, [torch.zeros(1, 1, 128, 8)])  # larger than the image: stride 0
    with pytest.raises(ValueError, match="feature_maps"):
        gen(images, [])
    with pytest.raises(ValueError, match="aspect_ratios"):
        ops.AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,), (2.0,)))


def test_grid_anchors_bad_input():
    base = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="base_anchors"):
        ops.grid_anchors(torch.zeros(3, 5), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="base_anchors"):
        ops.grid_anchors(torch.zeros(4), (2, 2), (1, 1))
    with pytest.raises(TypeError, match="base_anchors"):
        ops.grid_anchors(torch.zeros(3, 4, dtype=torch.int64), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="feature_size"):
        ops.grid_anchors(base, (-1, 2), (1, 1))
    with pytest.raises(ValueError, match="stride"):
        ops.grid_anchors(base, (2, 2), (0, 1))
    with pytest.raises(ValueError, match="stride"):
        ops.grid_anchors(base, (2, 2), (4, -4))
    with pytest.raises(ValueError, match="stride"):
        ops.grid_anchors(base, (2, 2), (1, 2, 3))
    with pytest.raises(ValueError, match="feature_size"):
        torch.ops.pydetops.grid_anchors(base, [2, 2, 2], [1, 1])
    with pytest.raises(ValueError, match="anchors|feature_size"):
        ops.grid_anchors(base, (2 ** 40, 2 ** 40), (1, 1))
    with pytest.raises(ValueError, match="overflows"):
        ops.grid_anchors(base, (2, 2), (2 ** 62, 1))


def test_grid_anchors_not_differentiable():
    base = torch.randn(2, 4, requires_grad=True)
    out = ops.grid_anchors(base, (2, 2), (4, 4))
    with pytest.raises(RuntimeError, match="not implemented"):
        out.sum().backward()


# ---------------------------------------------------------------------------
# SSD default boxes
# ---------------------------------------------------------------------------


def _ref_default_boxes(aspect_ratios, scales, steps, clip, image_hw, feature_hws, dtype):
    rows = []
    ih, iw = image_hw
    for k, (fh, fw) in enumerate(feature_hws):
        s, s_next = scales[k], scales[k + 1]
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for ar in aspect_ratios[k]:
            wh += [(s * math.sqrt(ar), s / math.sqrt(ar)), (s / math.sqrt(ar), s * math.sqrt(ar))]
        wh = [(float(np.float32(a)), float(np.float32(b))) for a, b in wh]  # stored as float32
        if clip:
            wh = [(min(max(a, 0.0), 1.0), min(max(b, 0.0), 1.0)) for a, b in wh]
        x_div = iw / steps[k] if steps else fw
        y_div = ih / steps[k] if steps else fh
        for i in range(fh):
            cy = _round_to((i + 0.5) / y_div, dtype)
            for j in range(fw):
                cx = _round_to((j + 0.5) / x_div, dtype)
                for w, h in wh:
                    rows.append([(cx - w / 2) * iw, (cy - h / 2) * ih, (cx + w / 2) * iw, (cy + h / 2) * ih])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(steps=[8, 16, 32]), dict(clip=False), dict(scales=[0.07, 0.15, 0.33, 0.51]),
     dict(min_ratio=0.2, max_ratio=0.95, clip=False)],
)
def test_default_box_generator(kw):
    ars = [[2], [2, 3], [2, 3]]
    gen = ops.DefaultBoxGenerator(ars, **kw)
    assert gen.num_anchors_per_location() == [4, 6, 6]
    image_hw = (300, 200)
    hws = [(38, 25), (19, 13), (10, 7)]
    images = ops.ImageList(torch.zeros(2, 3, *image_hw), [image_hw, image_hw])
    out = gen(images, [torch.zeros(2, 1, h, w) for h, w in hws])
    want = _ref_default_boxes(ars, gen.scales, kw.get("steps"), kw.get("clip", True), image_hw, hws, torch.float32)
    assert len(out) == 2 and out[0].dtype == torch.float32
    torch.testing.assert_close(out[0].double(), want, rtol=1e-5, atol=1e-3)
    assert torch.equal(out[0], out[1]) and out[0].data_ptr() != out[1].data_ptr()


def test_default_box_generator_scales_rule():
    gen = ops.DefaultBoxGenerator([[2], [2, 3], [2, 3], [2]], min_ratio=0.2, max_ratio=0.8)
    assert gen.scales == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert ops.DefaultBoxGenerator([[2]]).scales == [0.15, 0.9]
    with pytest.raises(ValueError, match="steps"):
        ops.DefaultBoxGenerator([[2], [3]], steps=[8])


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_box_generator_dtypes(dtype):
    gen = ops.DefaultBoxGenerator([[2, 3]], clip=False)
    image_hw = (512, 640)
    images = ops.ImageList(torch.zeros(1, 3, *image_hw), [image_hw])
    (out,) = gen(images, [torch.zeros(1, 1, 13, 17, dtype=dtype)])
    # torchvision's output: float64 for float64 maps, float32 otherwise (centres rounded to dtype).
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = _ref_default_boxes([[2, 3]], gen.scales, None, False, image_hw, [(13, 17)], dtype)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------
# YOLO grid
# ---------------------------------------------------------------------------


def test_yolo_grid():
    g = ops.yolo_grid(7)
    assert g.shape == (7, 7, 2)
    g = ops.yolo_grid((3, 5), dtype=torch.float64)
    assert g.shape == (3, 5, 2) and g.dtype == torch.float64
    for i in range(3):
        for j in range(5):
            assert g[i, j].tolist() == [j, i]
    with pytest.raises(ValueError, match="size"):
        ops.yolo_grid((1, 2, 3))


@pytest.mark.parametrize("sqrt_wh", [True, False])
def test_yolo_decode(sqrt_wh):
    sy, sx, nb = 3, 4, 2
    pred = torch.rand(2, sy, sx, nb, 4, dtype=torch.float64)
    img_h, img_w = 448.0, 600.0
    out = ops.yolo_decode(pred, (448, 600), sqrt_wh=sqrt_wh)
    assert out.shape == pred.shape
    for n in range(2):
        for i in range(sy):
            for j in range(sx):
                for b in range(nb):
                    x, y, w, h = pred[n, i, j, b].tolist()
                    if sqrt_wh:
                        w, h = w * w, h * h
                    cx, cy = (j + x) / sx * img_w, (i + y) / sy * img_h
                    want = [cx - w * img_w / 2, cy - h * img_h / 2, cx + w * img_w / 2, cy + h * img_h / 2]
                    assert out[n, i, j, b].tolist() == pytest.approx(want, rel=1e-12, abs=1e-9)
    pred.requires_grad_(True)
    ops.yolo_decode(pred, (448, 600)).sum().backward()
    assert pred.grad is not None
    with pytest.raises(ValueError, match="boxes"):
        ops.yolo_decode(torch.zeros(3, 4, 4), (10, 10))


# ---------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (0.5, 2.0, 3.0, 0.25)])
def test_encode_matches_spec(device, dtype, weights):
    gt = rand_boxes(200)
    prop = rand_boxes(200)
    got = ops.encode_boxes(gt.to(dtype).to(device), prop.to(dtype).to(device), torch.tensor(weights, dtype=dtype))
    assert got.dtype == dtype and got.shape == (200, 4)
    want = ref_encode(gt.to(dtype).double(), prop.to(dtype).double(), [float(torch.tensor(w, dtype=dtype)) for w in weights])
    rtol, atol = tol(dtype)
    torch.testing.assert_close(got.cpu().double(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 5])
def test_decode_matches_spec(device, dtype, k):
    boxes = rand_boxes(100)
    codes = torch.randn(100, 4 * k, dtype=torch.float64)
    weights = (10.0, 10.0, 5.0, 5.0)
    got = ops.decode_boxes(codes.to(dtype).to(device), boxes.to(dtype).to(device), weights)
    assert got.dtype == dtype and got.shape == (100, 4 * k)
    want = ref_decode(codes.to(dtype).double(), boxes.to(dtype).double(), weights)
    rtol, atol = tol(dtype)
    torch.testing.assert_close(got.cpu().double(), want, rtol=rtol, atol=atol)


def test_decode_clamp_and_clip(device):
    boxes = rand_boxes(60, scale=200)
    codes = torch.randn(60, 8, dtype=torch.float64) * 3
    codes[::3, 2] = 50.0  # far above the clamp: exp would overflow float32 without it
    codes[1::3, 3] = 1e30
    codes[2::3, 6] = -50.0
    for image_size in [None, (150, 230)]:
        for clamp in [CLAMP, 1.0, math.inf]:
            c = codes if math.isfinite(clamp) else codes.clamp(max=5)
            got = ops.decode_boxes(c.to(device), boxes.to(device), clamp=clamp, image_size=image_size)
            want = ref_decode(c, boxes, clamp=clamp, image_size=image_size)
            torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-9)
            assert torch.isfinite(got).all()
    got32 = ops.decode_boxes(codes.float().to(device), boxes.float().to(device))
    assert torch.isfinite(got32).all()


def test_decode_zero_width_boxes(device):
    # Zero-width/height boxes decode to zero-width/height boxes at their centre: never NaN for
    # finite codes (also with huge dw, thanks to the clamp).
    boxes = torch.tensor([[10.0, 20.0, 10.0, 20.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]], device=device)
    codes = torch.tensor([[1.0, -2.0, 100.0, -100.0], [3.0, 0.5, 1e30, 0.2], [-1e30, 1e30, 0.0, 0.0]], device=device)
    got = ops.decode_boxes(codes, boxes).cpu()
    assert torch.isfinite(got).all()
    assert got[0].tolist() == [10.0, 20.0, 10.0, 20.0]
    assert got[1, 0].item() == got[1, 2].item() == 5.0
    assert got[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_decode_nan_codes_propagate(device):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    got = ops.decode_boxes(torch.tensor([[0.0, 0.0, math.nan, 0.0]], device=device), boxes).cpu()
    assert math.isnan(got[0, 0].item()) and math.isnan(got[0, 2].item())
    assert got[0, 1].item() == 0.0 and got[0, 3].item() == 10.0


def _ulps(got: torch.Tensor, want64: torch.Tensor) -> torch.Tensor:
    """|got - want| in units of the float32 spacing at want (float64 want, exact reference)."""
    w32 = want64.float()
    spacing = (torch.nextafter(w32.abs(), torch.tensor(math.inf)) - w32.abs()).double()
    return (got.double() - want64).abs() / spacing


def test_float32_exp_and_log_accuracy_and_special_values(device):
    # The float32 kernels evaluate exp/log with their own vectorisable routines (CPU:
    # csrc/cpu/vec_math_cpu.h): within about 1 ulp of the exact value over the whole range,
    # with std::exp/std::log's special values. Isolate them through the ops:
    # decode of the box (-1, -1, 1, 1) (centre 0, width 2) with code (0, 0, d, d) and no clamp
    # gives x2 = 0.5 * (exp(d) * 2) = exp(d) exactly; encode of G = (0, 0, g, g) against
    # P = (0, 0, 1, 1) with weights 1 gives t_w = log(g / 1) = log(g).
    # (exp(d) * 2 must not overflow: d <= 88; larger d are checked to give inf below)
    d = torch.cat([torch.linspace(-110.0, 88.0, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.99, 1.0,
                                                                     -87.3, -103.3, -103.98, -104.0])])
    codes = torch.stack([torch.zeros_like(d), torch.zeros_like(d), d, d], 1)
    boxes = torch.tensor([[-1.0, -1.0, 1.0, 1.0]]).expand(len(d), 4)
    got = ops.decode_boxes(codes.to(device), boxes.to(device), (1.0, 1.0, 1.0, 1.0), math.inf).cpu()[:, 2]
    want = torch.exp(d.double())
    finite = torch.isfinite(want.float()) & (want.float() != 0)
    max_ulps = 1.5 if device == "cpu" else 2.5  # CUDA's expf/logf: 2 ulp
    assert _ulps(got[finite], want[finite]).max().item() <= max_ulps
    assert torch.equal(got[~finite], want[~finite].float())  # underflow -> 0 where float64's value rounds to 0
    specials = torch.tensor([math.inf, -math.inf, math.nan, 89.0, 95.0, 1e4])
    sc = torch.stack([torch.zeros(6), torch.zeros(6), specials, specials], 1)
    got = ops.decode_boxes(sc.to(device), boxes[:6].to(device), (1.0, 1.0, 1.0, 1.0), math.inf).cpu()[:, 2]
    assert got[0].item() == math.inf and got[1].item() == 0.0 and math.isnan(got[2].item())
    assert (got[3:] == math.inf).all()  # overflow

    exps = torch.linspace(-149.0, 127.9, 30001, dtype=torch.float64)
    g = torch.cat([torch.pow(2.0, exps).float(), torch.tensor([1.0, 1.0000001, 0.9999999, 1e-45, 3e-39])])
    gt = torch.stack([torch.zeros_like(g), torch.zeros_like(g), g, g], 1)
    prop = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(g), 4)
    w = torch.ones(4)
    got = ops.encode_boxes(gt.to(device), prop.to(device), w).cpu()[:, 2]
    want = torch.log(g.double())
    nz = want != 0
    assert _ulps(got[nz], want[nz]).max().item() <= max_ulps
    assert (got[~nz] == 0).all()
    specials = torch.tensor([0.0, -1.0, math.inf, math.nan, -math.inf])
    gt = torch.stack([torch.zeros(5), torch.zeros(5), specials, specials], 1)
    got = ops.encode_boxes(gt.to(device), prop[:5].to(device), w).cpu()[:, 2]
    assert got[0].item() == -math.inf and math.isnan(got[1].item()) and got[2].item() == math.inf
    assert math.isnan(got[3].item()) and math.isnan(got[4].item())


@pytest.mark.parametrize("k", [2, 3, 15, 16, 40])
@pytest.mark.parametrize("clip", [False, True])
def test_decode_classes_bitwise_equal_to_one_class_rows(device, k, clip):
    # The CPU kernel takes different loops for K = 1, K < 16 and K >= 16 (and blocks of rows):
    # every (box, class) pair must come out with the same bits as when decoded on its own.
    n = 700
    boxes = rand_boxes(n).to(device)
    codes = (torch.randn(n, 4 * k) * 2).to(device)
    size = (300, 500) if clip else None
    got = ops.decode_boxes(codes, boxes, (10.0, 10.0, 5.0, 5.0), CLAMP, size)
    flat = ops.decode_boxes(codes.reshape(n * k, 4), boxes.repeat_interleave(k, dim=0), (10.0, 10.0, 5.0, 5.0),
                            CLAMP, size)
    assert torch.equal(got.reshape(n * k, 4), flat)


def test_decode_noncontiguous_and_mixed_dtypes(device):
    boxes = rand_boxes(50).to(device)
    codes = torch.randn(50, 12, dtype=torch.float64, device=device)
    codes_nc = torch.randn(12, 50, dtype=torch.float64, device=device).t()
    boxes_nc = torch.cat([boxes, boxes], 1)[:, ::2]
    assert not codes_nc.is_contiguous() and not boxes_nc.is_contiguous()
    torch.testing.assert_close(ops.decode_boxes(codes_nc, boxes_nc), ops.decode_boxes(codes_nc.contiguous(), boxes_nc.contiguous()),
                               rtol=0, atol=0)
    # boxes are cast to the codes' dtype (as torchvision): float64 boxes with float32 codes.
    got = ops.decode_boxes(codes.float(), boxes)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ops.decode_boxes(codes.float(), boxes.float()), rtol=0, atol=0)
    # integer boxes are accepted
    ib = boxes.round().to(torch.int64)
    torch.testing.assert_close(ops.decode_boxes(codes, ib), ops.decode_boxes(codes, ib.double()), rtol=0, atol=0)


def test_encode_noncontiguous_and_integer(device):
    gt, prop = rand_boxes(40).to(device), rand_boxes(40).to(device)
    w = torch.tensor([10.0, 10.0, 5.0, 5.0], dtype=torch.float64)
    gt_nc = torch.stack([gt, gt], 2)[:, :, 0]
    assert not gt_nc.is_contiguous()
    got = ops.encode_boxes(gt_nc, prop.t().contiguous().t(), w)
    torch.testing.assert_close(got, ops.encode_boxes(gt, prop, w), rtol=0, atol=0)
    gi, pi = (gt * 10).round().int(), (prop * 10).round().int() + torch.tensor([0, 0, 1, 1], device=device, dtype=torch.int32)
    got = ops.encode_boxes(gi, pi, w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), ref_encode(gi.double(), pi.double(), w.tolist()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_decode_round_trip(device, dtype):
    gt, prop = rand_boxes(500).to(dtype).to(device), rand_boxes(500).to(dtype).to(device)
    coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    codes = coder.encode_single(gt, prop)
    back = coder.decode_single(codes, prop)
    torch.testing.assert_close(back, gt, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-3 if dtype == torch.float32 else 1e-9)


def test_box_coder_lists_and_shapes(device):
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    gts = [rand_boxes(n).float().to(device) for n in (3, 0, 5)]
    props = [rand_boxes(n).float().to(device) for n in (3, 0, 5)]
    targets = coder.encode(gts, props)
    assert isinstance(targets, tuple) and [t.shape[0] for t in targets] == [3, 0, 5]
    torch.testing.assert_close(torch.cat(targets), coder.encode_single(torch.cat(gts), torch.cat(props)))
    codes = torch.randn(8, 3 * 4, device=device)
    pred = coder.decode(codes, props)
    assert pred.shape == (8, 3, 4)
    torch.testing.assert_close(pred.reshape(8, 12), ops.decode_boxes(codes, torch.cat(props)))
    # codes may come flattened (torchvision reshapes them to [N, -1])
    torch.testing.assert_close(coder.decode(codes.reshape(-1, 4), props), pred)
    empty = coder.decode(torch.zeros(0, 4, device=device), [torch.zeros(0, 4, device=device)])
    assert empty.shape == (0, 4)
    with pytest.raises(TypeError, match="boxes"):
        coder.decode(codes, torch.cat(props))


def test_decode_empty(device):
    out = ops.decode_boxes(torch.zeros(0, 8, device=device), torch.zeros(0, 4, device=device))
    assert out.shape == (0, 8)
    out = ops.decode_boxes(torch.zeros(5, 0, device=device), torch.zeros(5, 4, device=device))
    assert out.shape == (5, 0)
    out = ops.encode_boxes(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device), torch.ones(4))
    assert out.shape == (0, 4)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------


def _decode_grad_inputs(device, k=3):
    boxes = rand_boxes(12, scale=50, min_size=2.0).to(device)
    codes = (torch.rand(12, 4 * k, dtype=torch.float64) * 2 - 1).to(device)
    # Some codes well inside the clamp region (gradient zero there), none at the kink.
    codes[0, 2] = 7.0
    codes[3, 3 + 4 * (k - 1)] = 9.0
    return codes.requires_grad_(True), boxes.requires_grad_(True)


def test_decode_gradcheck(device):
    codes, boxes = _decode_grad_inputs(device)
    f = lambda c, b: ops.decode_boxes(c, b, (10.0, 10.0, 5.0, 5.0), clamp=1.2)  # noqa: E731
    assert torch.autograd.gradcheck(f, (codes, boxes))
    assert torch.autograd.gradgradcheck is not None  # (no double backward: not claimed)


def test_decode_gradcheck_with_clip(device):
    codes, boxes = _decode_grad_inputs(device)
    with torch.no_grad():
        codes[:, 0::4] *= 3  # push some boxes across the image border (clip active)
    f = lambda c, b: ops.decode_boxes(c, b, (1.0, 2.0, 1.0, 0.5), image_size=(40, 55))  # noqa: E731
    out = f(codes, boxes)
    assert ((out == 0) | (out == 55) | (out == 40)).any()  # the clip is active somewhere
    assert torch.autograd.gradcheck(f, (codes, boxes))


def test_decode_grad_zero_where_clamped(device):
    codes, boxes = _decode_grad_inputs(device, k=1)
    out = ops.decode_boxes(codes, boxes, clamp=2.0)
    # The width x2 - x1 depends on dw (a plain sum would not: its dw terms cancel).
    (out[:, 2] - out[:, 0]).sum().backward()
    assert codes.grad[0, 2].item() == 0.0  # clamped: 7.0 > 2.0
    assert (codes.grad[1:, 2] != 0).all()


def test_decode_matches_autograd_of_reference():
    # The backward against torch autograd through a plain-torch decode (SPEC formulas), per class.
    codes, boxes = _decode_grad_inputs("cpu", k=4)

    def plain(c, b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx, cy = b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h
        dx, dy = c[:, 0::4] / 10, c[:, 1::4] / 10
        dw, dh = torch.clamp(c[:, 2::4] / 5, max=1.0), torch.clamp(c[:, 3::4] / 5, max=1.0)
        px, py = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
        pw, ph = torch.exp(dw) * w[:, None], torch.exp(dh) * h[:, None]
        out = torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], 2).flatten(1)
        return torch.stack([out[:, 0::2].clamp(0, 60), out[:, 1::2].clamp(0, 45)], 2).flatten(1)

    g = torch.randn(12, 16, dtype=torch.float64)
    ours = torch.autograd.grad(ops.decode_boxes(codes, boxes, (10, 10, 5, 5), 1.0, (45, 60)), (codes, boxes), g)
    ref = torch.autograd.grad(plain(codes, boxes), (codes, boxes), g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_backward_dtypes(dtype):
    codes, boxes = _decode_grad_inputs("cpu")
    c = codes.detach().to(dtype).requires_grad_(True)
    b = boxes.detach().to(dtype).requires_grad_(True)
    ops.decode_boxes(c, b).sum().backward()
    assert c.grad.dtype == dtype and b.grad.dtype == dtype
    c64 = c.detach().double().requires_grad_(True)
    b64 = b.detach().double().requires_grad_(True)
    ops.decode_boxes(c64, b64).sum().backward()
    rtol, atol = tol(dtype)
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=rtol, atol=atol * 10)


def test_encode_gradcheck(device):
    gt = rand_boxes(10, min_size=2.0).to(device).requires_grad_(True)
    prop = rand_boxes(10, min_size=2.0).to(device).requires_grad_(True)
    w = torch.tensor([10.0, 10.0, 5.0, 5.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.encode_boxes(a, b, w), (gt, prop))


def test_backward_deterministic_across_threads():
    codes = torch.randn(3000, 40, dtype=torch.float32, requires_grad=True)
    boxes = rand_boxes(3000).float().requires_grad_(True)
    g = torch.randn(3000, 40)
    prev = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.autograd.grad(ops.decode_boxes(codes, boxes), (codes, boxes), g))
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_decode_bad_input():
    b = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="rel_codes"):
        ops.decode_boxes(torch.zeros(4, 6), b)
    with pytest.raises(ValueError, match="rel_codes"):
        ops.decode_boxes(torch.zeros(4, 2, 4), b)
    with pytest.raises(TypeError, match="rel_codes"):
        ops.decode_boxes(torch.zeros(4, 4, dtype=torch.int32), b)
    with pytest.raises(ValueError, match="boxes"):
        ops.decode_boxes(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="rows"):
        ops.decode_boxes(torch.zeros(3, 4), b)
    with pytest.raises(ValueError, match="weights"):
        ops.decode_boxes(torch.zeros(4, 4), b, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        ops.decode_boxes(torch.zeros(4, 4), b, (1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        torch.ops.pydetops.decode_boxes(torch.zeros(4, 4), b, [1.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="clamp"):
        ops.decode_boxes(torch.zeros(4, 4), b, clamp=math.nan)
    with pytest.raises(ValueError, match="image_size"):
        ops.decode_boxes(torch.zeros(4, 4), b, image_size=(-1, 5))
    with pytest.raises(ValueError, match="image_size"):
        torch.ops.pydetops.decode_boxes(torch.zeros(4, 4), b, [1.0] * 4, 1.0, [1, 2, 3])


def test_encode_bad_input():
    b = torch.zeros(4, 4)
    w = torch.ones(4)
    with pytest.raises(ValueError, match="reference_boxes"):
        ops.encode_boxes(torch.zeros(4, 3), b, w)
    with pytest.raises(ValueError, match="proposals"):
        ops.encode_boxes(b, torch.zeros(4), w)
    with pytest.raises(ValueError, match="proposals"):
        ops.encode_boxes(b, torch.zeros(5, 4), w)
    with pytest.raises(ValueError, match="weights"):
        ops.encode_boxes(b, b, torch.ones(3))
    with pytest.raises(TypeError, match="reference_boxes"):
        ops.encode_boxes(b.bool(), b, w)


# ---------------------------------------------------------------------------
# opcheck, torch.compile, TorchScript
# ---------------------------------------------------------------------------


def test_opcheck(device):
    base = torch.randn(6, 4, device=device)
    torch.library.opcheck(torch.ops.pydetops.grid_anchors.default, (base, [3, 5], [8, 4]))
    torch.library.opcheck(torch.ops.pydetops.grid_anchors.default, (base.half(), [0, 5], [8, 4]))
    codes, boxes = _decode_grad_inputs(device)
    torch.library.opcheck(torch.ops.pydetops.decode_boxes.default, (codes, boxes, [10.0, 10.0, 5.0, 5.0], 1.5, [40, 50]))
    torch.library.opcheck(torch.ops.pydetops.decode_boxes.default, (codes.detach().float(), boxes.detach().half()))
    gt = rand_boxes(9, min_size=2.0).to(device).requires_grad_(True)
    prop = rand_boxes(9, min_size=2.0).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.pydetops.encode_boxes.default, (gt, prop, torch.tensor([1.0, 2.0, 3.0, 4.0])))
    torch.library.opcheck(torch.ops.pydetops.encode_boxes.default, (gt.detach().half(), prop.detach().float(), torch.ones(4)))


def test_torch_compile(device):
    base = torch.randn(6, 4, device=device)
    codes, boxes = _decode_grad_inputs(device)
    gt, prop = rand_boxes(12).to(device), rand_boxes(12).to(device)
    w = torch.tensor([10.0, 10.0, 5.0, 5.0], dtype=torch.float64)

    def f(base, codes, boxes, gt, prop):
        a = ops.grid_anchors(base, (4, 3), (16, 8))
        d = ops.decode_boxes(codes, boxes, (10.0, 10.0, 5.0, 5.0), 2.0, (60, 70))
        e = ops.encode_boxes(gt, prop, w)
        return a, d, e

    eager = f(base, codes, boxes, gt, prop)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(base, codes, boxes, gt, prop)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)
    # training through the compiled decode
    cd = torch.compile(lambda c, b: ops.decode_boxes(c, b, (10.0, 10.0, 5.0, 5.0)).sum(), fullgraph=True,
                       backend="aot_eager")
    g1 = torch.autograd.grad(cd(codes, boxes), codes)[0]
    g2 = torch.autograd.grad(ops.decode_boxes(codes, boxes, (10.0, 10.0, 5.0, 5.0)).sum(), codes)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.torchscript
def test_torchscript():
    grid = torch.jit.script(ops.grid_anchors)
    dec = torch.jit.script(ops.decode_boxes)
    enc = torch.jit.script(ops.encode_boxes)
    base = torch.randn(3, 4)
    assert torch.equal(grid(base, (2, 3), (4, 5)), ops.grid_anchors(base, (2, 3), (4, 5)))
    codes, boxes = torch.randn(5, 8), rand_boxes(5).float()
    assert torch.equal(dec(codes, boxes, (1.0, 2.0, 3.0, 4.0), 1.0, (30, 40)),
                       ops.decode_boxes(codes, boxes, (1.0, 2.0, 3.0, 4.0), 1.0, (30, 40)))
    assert torch.equal(dec(codes, boxes), ops.decode_boxes(codes, boxes))
    gt, prop, w = rand_boxes(5).float(), rand_boxes(5).float(), torch.ones(4)
    assert torch.equal(enc(gt, prop, w), ops.encode_boxes(gt, prop, w))


@pytest.mark.torchscript
def test_anchor_generator_torchscript_and_compile():
    gen = ops.AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    images = ops.ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    fmaps = [torch.zeros(1, 1, 8, 12), torch.zeros(1, 1, 4, 6)]
    want = gen(images, fmaps)
    scripted = torch.jit.script(gen)
    assert torch.equal(scripted(images, fmaps)[0], want[0])
    compiled = torch.compile(gen.forward, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(images, fmaps)[0], want[0])


def test_ops_registered():
    names = ops.registered_op_names()
    for n in ["grid_anchors", "decode_boxes", "_decode_boxes_backward", "encode_boxes", "_encode_boxes_backward"]:
        assert n in names
    assert pydetops.ops.BoxCoder is ops.BoxCoder
