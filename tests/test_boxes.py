"""Tests of the box ops (pydetops.ops.boxes) against a float64 reference written
plainly: a Python loop over box pairs, each pair computed with scalar torch ops
term by term as torchvision's formulas do (torchvision itself is not installable
here). Forms:

* matrix (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou,
  box_overlaps(aligned=False)): inter = clamp(w, 0) * clamp(h, 0), no eps in IoU;
* aligned (the *_box_iou_loss functions, box_overlaps(aligned=True)): inter =
  w * h only where w > 0 and h > 0, eps in IoU's denominator.
"""
import math
import subprocess
import sys

import pytest
import torch

import pydetops
from pydetops import ops

MODES = ["iou", "iof", "giou", "diou", "ciou"]
LOSSES = {
    "giou": ops.generalized_box_iou_loss,
    "diou": ops.distance_box_iou_loss,
    "ciou": ops.complete_box_iou_loss,
}
MATRIX_FNS = {
    "iou": lambda a, b: ops.box_iou(a, b),
    "iof": lambda a, b: ops.box_iof(a, b),
    "giou": lambda a, b: ops.generalized_box_iou(a, b),
    "diou": lambda a, b: ops.distance_box_iou(a, b),
    "ciou": lambda a, b: ops.complete_box_iou(a, b),
}
# The eps each public matrix function uses (torchvision's defaults).
MATRIX_EPS = {"iou": 0.0, "iof": 0.0, "giou": 0.0, "diou": 1e-7, "ciou": 1e-7}
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]
F64 = torch.float64

# ----------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------

def _clamp_at_zero(t):
    """max(t, 0) whose gradient at t == 0 is 1 (touching boxes pass the gradient on), as
    the kernels define it. Not Tensor.clamp: torch 2.14 changed clamp's gradient at the
    boundary to 0 (2.13 and earlier: 1), and the reference must not follow torch's version."""
    return torch.where(t < 0, torch.zeros_like(t), t)  # NaN stays NaN, as clamp


def _ref_pair(a, b, mode, aligned, eps):
    """One pair; a, b: float64 Tensor[4]. Differentiable (alpha of CIoU detached)."""
    ax1, ay1, ax2, ay2 = a.unbind()
    bx1, by1, bx2, by2 = b.unbind()
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)
    ih = torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    if aligned and mode != "iof":
        if bool(iw > 0) and bool(ih > 0):
            inter = iw * ih
        else:
            inter = torch.zeros((), dtype=F64)
    else:
        inter = _clamp_at_zero(iw) * _clamp_at_zero(ih)
    if mode == "iof":
        return inter / (area_a + eps) if aligned else inter / area_a
    union = area_a + area_b - inter
    iou = inter / (union + eps) if aligned else inter / union
    if mode == "iou":
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if not aligned:
        cw = _clamp_at_zero(cw)
        ch = _clamp_at_zero(ch)
    if mode == "giou":
        c = cw * ch
        return iou - (c - union) / (c + eps)
    diag2 = cw**2 + ch**2 + eps
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    diou = iou - (dx**2 + dy**2) / diag2
    if mode == "diou":
        return diou
    v = (4 / math.pi**2) * (torch.atan((ax2 - ax1) / (ay2 - ay1)) - torch.atan((bx2 - bx1) / (by2 - by1))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


_REF_CACHE = {}


def ref_overlaps(boxes1, boxes2, mode, aligned=False, eps=0.0):
    b1 = boxes1 if boxes1.dtype == F64 else boxes1.to(F64)
    b2 = boxes2 if boxes2.dtype == F64 else boxes2.to(F64)
    if not (b1.requires_grad or b2.requires_grad):
        # Many dtypes hold the same values (small integers): compute each once.
        b1, b2 = b1.cpu(), b2.cpu()
        key = (b1.numpy().tobytes(), tuple(b1.shape), b2.numpy().tobytes(), tuple(b2.shape), mode, aligned, eps)
        if key not in _REF_CACHE:
            with torch.no_grad():
                _REF_CACHE[key] = _ref_overlaps(b1, b2, mode, aligned, eps)
        return _REF_CACHE[key]
    return _ref_overlaps(b1, b2, mode, aligned, eps)


def _ref_overlaps(b1, b2, mode, aligned, eps):
    n, m = b1.shape[0], b2.shape[0]
    if aligned:
        if n == 0:
            return b1.sum(1) * 0
        return torch.stack([_ref_pair(b1[i], b2[i], mode, True, eps) for i in range(n)])
    if n == 0 or m == 0:
        return (b1.sum(1)[:, None] + b2.sum(1)[None, :]) * 0
    return torch.stack([torch.stack([_ref_pair(b1[i], b2[j], mode, False, eps) for j in range(m)]) for i in range(n)])


def ref_loss(boxes1, boxes2, mode, reduction, eps=1e-7):
    value = ref_overlaps(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), mode, True, eps)
    loss = (1 - value).reshape(boxes1.shape[:-1])
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

def rand_boxes(n, scale=100.0, dtype=torch.float32, device="cpu", min_size=1.0):
    """Valid random boxes: 0 <= x1 < x2, 0 <= y1 < y2."""
    if not dtype.is_floating_point:
        hi = 100 if dtype == torch.uint8 else 1000
        xy = torch.randint(0, hi // 2, (n, 2))
        wh = torch.randint(1, hi // 2, (n, 2))
        return torch.cat([xy, xy + wh], 1).to(dtype=dtype, device=device)
    xy = torch.rand(n, 2, dtype=F64) * scale
    wh = torch.rand(n, 2, dtype=F64) * (scale / 2) + min_size
    return torch.cat([xy, xy + wh], 1).to(dtype=dtype, device=device)


# Ties, duplicates, touching, nested, shared sides, zero-area, inverted, off-image.
ADVERSARIAL = [
    [0, 0, 10, 10],
    [0, 0, 10, 10],        # duplicate
    [5, 5, 15, 15],        # partial overlap
    [10, 0, 20, 10],       # touches the first along x = 10
    [10, 10, 20, 20],      # touches it at a corner
    [2, 2, 8, 8],          # nested
    [0, 0, 10, 5],         # shares three sides with the first (ties in max/min)
    [3, 3, 3, 7],          # zero width
    [4, 4, 4, 4],          # a point
    [8, 8, 2, 2],          # inverted (x2 < x1, y2 < y1)
    [6, 1, 2, 9],          # inverted in x only
    [-30, -20, -5, -1],    # off the image, negative
    [100, 120, 130, 125],  # far away
]
VALID_KINKS = [  # valid boxes (positive area) with ties, touching, nesting, duplicates
    [0, 0, 10, 10],
    [0, 0, 10, 10],
    [10, 0, 20, 10],
    [10, 10, 20, 20],
    [2, 2, 8, 8],
    [0, 0, 10, 5],
    [5, 0, 15, 10],
    [0, 3, 4, 10],
]
NONFINITE = [
    [0, 0, 10, 10],
    [float("nan"), 0, 10, 10],
    [0, 0, float("nan"), 10],
    [0, 0, float("inf"), 10],
    [float("-inf"), float("-inf"), float("inf"), float("inf")],
    [float("inf"), 0, float("inf"), 10],
    [float("nan")] * 4,
    [2, 2, 8, 8],
]


def box_set(name, dtype, device="cpu"):
    if name == "random":
        return rand_boxes(9, dtype=dtype, device=device), rand_boxes(11, dtype=dtype, device=device)
    base = {"adversarial": ADVERSARIAL, "huge": ADVERSARIAL, "tiny": ADVERSARIAL, "nonfinite": NONFINITE}[name]
    t = torch.tensor(base, dtype=F64)
    if name == "huge":
        t = t * 1e6
    elif name == "tiny":
        t = t * 1e-4
    t = t.to(dtype=dtype, device=device)
    return t, t.flip(0)


def tol(dtype):
    # Output vs the float64 reference of the same (rounded) inputs: float64
    # computes in float64, every other dtype in float32.
    return dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)


def assert_matches(out, ref, dtype):
    torch.testing.assert_close(out.to(F64).cpu(), ref.detach(), equal_nan=True, check_dtype=False, **tol(dtype))


def expected_dtype(dtype):
    return F64 if dtype == F64 else torch.float32


# ----------------------------------------------------------------------------
# Forward: values and dtypes
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("kind", ["random", "adversarial", "huge", "tiny", "nonfinite"])
def test_matrix_matches_reference(device, mode, dtype, kind):
    if kind in ("tiny", "nonfinite") and not dtype.is_floating_point:
        pytest.skip("not representable in integers")
    if kind in ("adversarial", "huge") and dtype == torch.uint8:
        pytest.skip("negative coordinates")
    b1, b2 = box_set(kind, dtype, device)
    out = MATRIX_FNS[mode](b1, b2)
    assert out.dtype == expected_dtype(dtype)
    assert out.shape == (b1.shape[0], b2.shape[0])
    assert out.device == b1.device
    assert_matches(out, ref_overlaps(b1, b2, mode, False, MATRIX_EPS[mode]), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int64], ids=str)
@pytest.mark.parametrize("kind", ["random", "adversarial", "huge", "tiny", "nonfinite"])
def test_aligned_matches_reference(device, mode, dtype, kind):
    if kind in ("tiny", "nonfinite") and not dtype.is_floating_point:
        pytest.skip("not representable in integers")
    b1, b2 = box_set(kind, dtype, device)
    b2 = b2[: b1.shape[0]] if kind == "random" else b2
    b1 = b1[: b2.shape[0]]
    eps = 1e-7
    out = ops.box_overlaps(b1, b2, mode, True, eps)
    assert out.dtype == expected_dtype(dtype) and out.shape == (b1.shape[0],)
    assert_matches(out, ref_overlaps(b1, b2, mode, True, eps), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [0.0, 1e-7, 0.5])
def test_box_overlaps_eps(mode, eps):
    b1, b2 = torch.tensor(ADVERSARIAL[:7], dtype=F64), rand_boxes(5, scale=12, dtype=F64)
    assert_matches(ops.box_overlaps(b1, b2, mode, False, eps), ref_overlaps(b1, b2, mode, False, eps), F64)
    b2 = rand_boxes(7, scale=12, dtype=F64)
    assert_matches(ops.box_overlaps(b1, b2, mode, True, eps), ref_overlaps(b1, b2, mode, True, eps), F64)


def test_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 5.0, 10.0]])
    torch.testing.assert_close(ops.box_iou(a, b), torch.tensor([[25 / 175, 1.0, 0.0, 0.5]]))
    torch.testing.assert_close(ops.box_iof(a, b), torch.tensor([[0.25, 1.0, 0.0, 0.5]]))
    # enclosing box of the first pair 15 x 15 = 225, union 175
    torch.testing.assert_close(ops.generalized_box_iou(a, b), torch.tensor([[25 / 175 - 50 / 225, 1.0, -1 / 3, 0.5]]))
    # torchvision's own test values for the losses (test_ops.py)
    box1 = torch.tensor([-1, -1, 1, 1], dtype=torch.float32)
    box2 = torch.tensor([0, 0, 1, 1], dtype=torch.float32)
    box3 = torch.tensor([0, 1, 1, 2], dtype=torch.float32)
    box4 = torch.tensor([1, 1, 2, 2], dtype=torch.float32)
    for fn, expected in [(ops.generalized_box_iou_loss, [0.0, 0.75, 1.0, 1.5]),
                         (ops.distance_box_iou_loss, [0.0, 0.8125, 1.1923, 1.25]),
                         (ops.complete_box_iou_loss, [0.0, 0.8125, 1.1923, 1.25])]:
        pairs = [(box1, box1), (box1, box2), (box1, box3), (box1, box4)]
        if fn is ops.generalized_box_iou_loss:
            pairs = [(box1, box1), (box1, box2), (box2, box3), (box2, box4)]
        got = [float(fn(p, q)) for p, q in pairs]
        assert got == pytest.approx(expected, abs=1e-4), fn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", [(0, 0), (0, 5), (5, 0)])
def test_empty(device, mode, n, m):
    b1, b2 = rand_boxes(n, device=device), rand_boxes(m, device=device)
    out = MATRIX_FNS[mode](b1, b2)
    assert out.shape == (n, m) and out.dtype == torch.float32
    out = ops.box_overlaps(b1, b1, mode, True, 1e-7)
    assert out.shape == (n,)
    # backward through empty inputs gives empty gradients
    b1.requires_grad_(True)
    b2.requires_grad_(True)
    MATRIX_FNS[mode](b1, b2).sum().backward()
    assert b1.grad.shape == (n, 4) and b2.grad.shape == (m, 4)


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous(device, mode):
    base1 = rand_boxes(14, dtype=F64, device=device)
    base2 = rand_boxes(10, dtype=F64, device=device)
    cases = [
        (base1.t().contiguous().t(), base2.t().contiguous().t()),        # column-major
        (torch.cat([base1, base1], 1)[:, ::2], base2[::2]),               # strided columns / rows
        (base1[3:4].expand(6, 4), base2.flip(0)),                         # stride 0, negative-order copy
    ]
    for b1, b2 in cases:
        assert_matches(MATRIX_FNS[mode](b1, b2), ref_overlaps(b1, b2, mode, False, MATRIX_EPS[mode]), F64)
        k = min(b1.shape[0], b2.shape[0])
        assert_matches(ops.box_overlaps(b1[:k], b2[:k], mode, True, 1e-7),
                       ref_overlaps(b1[:k], b2[:k], mode, True, 1e-7), F64)


def test_nonfinite_gives_nan_never_a_crash(device):
    b = torch.tensor(NONFINITE, device=device)
    for mode in MODES:
        out = MATRIX_FNS[mode](b, b)
        assert torch.isnan(out[1]).all() and torch.isnan(out[:, 1]).all(), mode  # NaN coordinate: NaN row/col
        out = ops.box_overlaps(b, b.roll(1, 0), mode, True, 1e-7)
        assert torch.isnan(out[1]) and torch.isnan(out[2]), mode
        bb = b.clone().requires_grad_(True)
        MATRIX_FNS[mode](bb, b).sum().backward()  # must not raise


def test_matrix_dtypes_follow_torchvision():
    b = rand_boxes(3, dtype=F64)
    for dt in FLOAT_DTYPES + INT_DTYPES:
        x = b.to(dt)
        for mode in MODES:
            assert MATRIX_FNS[mode](x, x).dtype == expected_dtype(dt), (dt, mode)


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int64], ids=str)
def test_losses_match_reference(device, mode, reduction, dtype):
    fn = LOSSES[mode]
    for shape in [(7,), (2, 3), ()]:
        b1 = rand_boxes(max(1, math.prod(shape)), dtype=dtype, device=device).reshape(*shape, 4)
        b2 = rand_boxes(max(1, math.prod(shape)), dtype=dtype, device=device).reshape(*shape, 4)
        out = fn(b1, b2, reduction=reduction)
        # torchvision upcasts everything but float32/float64 to float32 (_upcast_non_float)
        assert out.dtype == expected_dtype(dtype)
        ref = ref_loss(b1, b2, mode, reduction)
        assert out.shape == ref.shape
        assert_matches(out, ref, dtype)
    adv = torch.tensor(ADVERSARIAL, dtype=F64).to(dtype) if dtype != torch.uint8 else None
    if adv is not None:
        assert_matches(fn(adv, adv.flip(0), reduction=reduction), ref_loss(adv, adv.flip(0), mode, reduction), dtype)


@pytest.mark.parametrize("mode", list(LOSSES))
@pytest.mark.parametrize("eps", [0.0, 1e-7, 1e-2])
def test_losses_eps(mode, eps):
    b1, b2 = rand_boxes(6, dtype=F64, scale=3), rand_boxes(6, dtype=F64, scale=3)
    assert_matches(LOSSES[mode](b1, b2, eps=eps), ref_loss(b1, b2, mode, "none", eps), F64)


@pytest.mark.parametrize("mode", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, F64], ids=str)
def test_losses_empty(device, mode, dtype):
    b1 = torch.zeros(0, 4, dtype=dtype, device=device, requires_grad=True)
    b2 = torch.zeros(0, 4, dtype=dtype, device=device, requires_grad=True)
    loss = LOSSES[mode](b1, b2, reduction="mean")
    assert loss.shape == () and float(loss.detach()) == 0.0  # torchvision: 0.0 * loss.sum() for empty input
    loss.backward()
    assert b1.grad is not None and b1.grad.shape == (0, 4) and b2.grad is not None
    assert LOSSES[mode](b1, b2, reduction="none").shape == (0,)
    assert float(LOSSES[mode](b1, b2, reduction="sum").detach()) == 0.0


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------

def _separated_boxes(n, device="cpu"):
    # Distinct, well-spread random coordinates: no ties, no sides near 0.
    return rand_boxes(n, scale=10.0, dtype=F64, device=device, min_size=2.0).requires_grad_(True)


@pytest.mark.parametrize("mode", ["iou", "iof", "giou", "diou"])
@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_box_overlaps(device, mode, aligned):
    b1 = _separated_boxes(5, device)
    b2 = _separated_boxes(5 if aligned else 6, device)
    eps = 1e-7 if mode != "giou" or aligned else 0.0
    assert torch.autograd.gradcheck(lambda x, y: ops.box_overlaps(x, y, mode, aligned, eps), (b1, b2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("kind", ["random", "kinks"])
def test_backward_matches_reference_autograd(mode, aligned, kind):
    # CIoU holds alpha constant in its gradient (torchvision: no_grad), which a
    # numerical gradcheck cannot see; so every mode is also compared with the
    # reference's autograd, at kinks too (ties split in half, clamp at 0 passes).
    if kind == "random":
        b1, b2 = _separated_boxes(5).detach(), _separated_boxes(5 if aligned else 6).detach()
    else:
        b1 = torch.tensor(VALID_KINKS, dtype=F64)
        b2 = b1.flip(0).clone() if aligned else b1.clone()
    eps = 1e-7
    g = torch.randn((b1.shape[0],) if aligned else (b1.shape[0], b2.shape[0]), dtype=F64)
    x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    ops.box_overlaps(x1, x2, mode, aligned, eps).backward(g)
    r1, r2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    ref_overlaps(r1, r2, mode, aligned, eps).backward(g)
    torch.testing.assert_close(x1.grad, r1.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x2.grad, r2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["giou", "diou"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_losses(device, mode, reduction):
    b1, b2 = _separated_boxes(6, device), _separated_boxes(6, device)
    assert torch.autograd.gradcheck(lambda x, y: LOSSES[mode](x, y, reduction=reduction), (b1, b2))
    b1, b2 = b1.detach()[:4].reshape(2, 2, 4).requires_grad_(True), b2.detach()[:4].reshape(2, 2, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: LOSSES[mode](x, y, reduction=reduction), (b1, b2))


@pytest.mark.parametrize("mode", list(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_backward_matches_reference(mode, reduction):
    b1, b2 = _separated_boxes(6).detach(), _separated_boxes(6).detach()
    x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    out = LOSSES[mode](x1, x2, reduction=reduction)
    g = torch.randn_like(out)
    out.backward(g)
    r1, r2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    ref_loss(r1, r2, mode, reduction).backward(g)
    torch.testing.assert_close(x1.grad, r1.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x2.grad, r2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_backward_low_precision(dtype):
    b1, b2 = rand_boxes(5, dtype=dtype).requires_grad_(True), rand_boxes(4, dtype=dtype).requires_grad_(True)
    ops.distance_box_iou(b1, b2).sum().backward()
    assert b1.grad.dtype == dtype and b2.grad.dtype == dtype
    r1, r2 = b1.detach().to(F64).requires_grad_(True), b2.detach().to(F64).requires_grad_(True)
    ref_overlaps(r1, r2, "diou", False, 1e-7).sum().backward()
    t = dict(rtol=1e-2, atol=1e-3) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b1.grad.to(F64), r1.grad, **t)
    torch.testing.assert_close(b2.grad.to(F64), r2.grad, **t)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
def test_deterministic_across_threads(mode, aligned):
    n, m = 700, 200  # >1 task in the forward (64k pairs each), 11 64-row chunks in the backward
    b1 = rand_boxes(n, dtype=torch.float32)
    b2 = rand_boxes(n if aligned else m, dtype=torch.float32)
    g = torch.randn((n,) if aligned else (n, m))
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
            out = ops.box_overlaps(x1, x2, mode, aligned, 1e-7)
            out.backward(g)
            results.append((out.detach(), x1.grad, x2.grad))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for u, v in zip(results[0], other):
            assert torch.equal(u, v)


# ----------------------------------------------------------------------------
# The composite utilities
# ----------------------------------------------------------------------------

def _ref_area(b):
    return torch.tensor([(float(x[2]) - float(x[0])) * (float(x[3]) - float(x[1])) for x in b.to(F64)], dtype=F64)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + INT_DTYPES, ids=str)
def test_box_area(device, dtype):
    b = torch.cat([rand_boxes(6, dtype=dtype), torch.tensor([[3, 3, 3, 7], [8, 8, 2, 2]]).to(dtype)]).to(device)
    if dtype == torch.uint8:
        b = b[:6]
    out = ops.box_area(b)
    # torchvision's _upcast: float16/bfloat16 -> float32, int8/int16/uint8 -> int32
    expected = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.int16: torch.int32,
                torch.uint8: torch.int32}.get(dtype, dtype)
    assert out.dtype == expected and out.shape == (b.shape[0],)
    torch.testing.assert_close(out.to(F64).cpu(), _ref_area(b), rtol=1e-6, atol=1e-6)
    assert ops.box_area(b[:0]).shape == (0,)


def _ref_convert(box, in_fmt, out_fmt):
    a, b, c, d = (float(v) for v in box)
    if in_fmt == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    if out_fmt == "xyxy":
        return [x1, y1, x2, y2]
    if out_fmt == "xywh":
        return [x1, y1, x2 - x1, y2 - y1]
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


FMTS = ["xyxy", "xywh", "cxcywh"]


@pytest.mark.parametrize("in_fmt", FMTS)
@pytest.mark.parametrize("out_fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.int64], ids=str)
def test_box_convert(device, in_fmt, out_fmt, dtype):
    b = rand_boxes(6, dtype=dtype, device=device)
    out = ops.box_convert(b, in_fmt, out_fmt)
    ref = torch.tensor([_ref_convert(x, in_fmt, out_fmt) for x in b], dtype=F64)
    assert out.shape == b.shape
    t = dict(rtol=1e-2, atol=0.1) if dtype == torch.float16 else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.to(F64).cpu(), ref, **t)
    if in_fmt == out_fmt:
        assert out.dtype == b.dtype and out.data_ptr() != b.data_ptr()  # a copy, like torchvision
    # leading dimensions and non-contiguous input
    b3 = b.reshape(2, 3, 4).transpose(0, 1)
    torch.testing.assert_close(ops.box_convert(b3, in_fmt, out_fmt), ops.box_convert(b3.contiguous(), in_fmt, out_fmt))
    # round trip
    if dtype in (torch.float32, F64):
        back = ops.box_convert(out, out_fmt, in_fmt)
        torch.testing.assert_close(back, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.int64], ids=str)
def test_clip_boxes_to_image(device, dtype):
    b = (rand_boxes(8, scale=200, dtype=F64) - 50).to(dtype=dtype, device=device)
    size = (90, 120)  # (height, width)
    out = ops.clip_boxes_to_image(b, size)
    assert out.dtype == b.dtype and out.shape == b.shape
    ref = [[min(max(float(v), 0), size[1] if k % 2 == 0 else size[0]) for k, v in enumerate(x)] for x in b]
    torch.testing.assert_close(out.to(F64).cpu(), torch.tensor(ref, dtype=F64), rtol=0, atol=0)
    b3 = b.reshape(2, 4, 4)
    torch.testing.assert_close(ops.clip_boxes_to_image(b3, size), out.reshape(2, 4, 4))
    nan = torch.tensor([[float("nan"), -1.0, 500.0, 5.0]])
    out = ops.clip_boxes_to_image(nan, (10, 20))
    assert torch.isnan(out[0, 0]) and out[0, 1:].tolist() == [0.0, 20.0, 5.0]


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.int64], ids=str)
def test_remove_small_boxes(device, dtype):
    b = torch.cat([rand_boxes(10, scale=6, dtype=F64, min_size=0.0), torch.tensor([[0, 0, 2, 2], [0, 0, 1, 5], [3, 3, 1, 9]], dtype=F64)])
    b = b.to(dtype=dtype, device=device)
    for min_size in [0.0, 1.0, 2.0, 2.5]:
        keep = ops.remove_small_boxes(b, min_size)
        ref = [i for i, x in enumerate(b.to(F64).tolist()) if x[2] - x[0] >= min_size and x[3] - x[1] >= min_size]
        assert keep.dtype == torch.int64 and keep.tolist() == ref
    assert ops.remove_small_boxes(b[:0], 1.0).shape == (0,)
    nan = torch.tensor([[0.0, 0.0, float("nan"), 4.0], [0.0, 0.0, 4.0, 4.0]])
    assert ops.remove_small_boxes(nan, 1.0).tolist() == [1]


def test_composites_differentiable():
    b = rand_boxes(5, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(ops.box_area, (b,))
    assert torch.autograd.gradcheck(lambda x: ops.box_convert(x, "xyxy", "cxcywh"), (b,))
    assert torch.autograd.gradcheck(lambda x: ops.clip_boxes_to_image(x, (40, 60)), (b,))


# ----------------------------------------------------------------------------
# opcheck, torch.compile, TorchScript
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
def test_opcheck_box_overlaps(device, mode, aligned):
    b1 = rand_boxes(5, dtype=F64, device=device).requires_grad_(True)
    b2 = rand_boxes(5 if aligned else 3, dtype=F64, device=device).requires_grad_(True)
    torch.library.opcheck(torch.ops.pydetops.box_overlaps.default, (b1, b2),
                          {"mode": mode, "aligned": aligned, "eps": 1e-7})
    h1, h2 = b1.detach().half(), b2.detach().half()
    torch.library.opcheck(torch.ops.pydetops.box_overlaps.default, (h1, h2, mode, aligned, 0.0))


def test_opcheck_box_overlaps_backward():
    b1, b2 = rand_boxes(4, dtype=F64), rand_boxes(3, dtype=F64)
    torch.library.opcheck(torch.ops.pydetops._box_overlaps_backward.default,
                          (torch.randn(4, 3, dtype=F64), b1, b2, "giou", False, 0.0))


def test_opcheck_composites(device):
    b = rand_boxes(5, dtype=torch.float32, device=device).requires_grad_(True)
    torch.library.opcheck(torch.ops.pydetops.box_area.default, (b,))
    torch.library.opcheck(torch.ops.pydetops.box_convert.default, (b, "xyxy", "cxcywh"))
    torch.library.opcheck(torch.ops.pydetops.clip_boxes_to_image.default, (b, [30, 40]))
    # data-dependent output size (nonzero): schema and autograd registration
    torch.library.opcheck(torch.ops.pydetops.remove_small_boxes.default, (b.detach(), 10.0),
                          test_utils=("test_schema", "test_autograd_registration"))


def test_compile_fullgraph():
    torch._dynamo.reset()
    b1, b2 = rand_boxes(6), rand_boxes(5)

    def matrices(x, y):
        return (ops.box_iou(x, y), ops.box_iof(x, y), ops.generalized_box_iou(x, y), ops.distance_box_iou(x, y),
                ops.complete_box_iou(x, y), ops.box_overlaps(x, y[:1].expand(6, 4), "giou", True, 1e-7))

    def utils(x):
        return (ops.box_area(x), ops.box_convert(x, "xyxy", "xywh"), ops.clip_boxes_to_image(x, (40, 50)))

    def losses(x, y):
        return (ops.generalized_box_iou_loss(x, y, reduction="mean") + ops.distance_box_iou_loss(x, y, reduction="sum")
                + ops.complete_box_iou_loss(x, y).sum())

    for fn, args in [(matrices, (b1, b2)), (utils, (b1,))]:
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        for got, want in zip(compiled(*args), fn(*args)):
            torch.testing.assert_close(got, want)
    # training through the compiled loss (fake kernels of the op and its backward)
    x1, x2 = b1.clone().requires_grad_(True), b1.flip(0).clone().requires_grad_(True)
    torch.compile(losses, fullgraph=True, backend="aot_eager")(x1, x2).backward()
    y1, y2 = b1.clone().requires_grad_(True), b1.flip(0).clone().requires_grad_(True)
    losses(y1, y2).backward()
    torch.testing.assert_close(x1.grad, y1.grad)
    torch.testing.assert_close(x2.grad, y2.grad)


def test_compile_inductor_dynamic():
    torch._dynamo.reset()
    fn = torch.compile(lambda x, y: ops.box_iou(x, y) * 2, fullgraph=True, dynamic=True)
    for n, m in [(6, 5), (9, 3)]:
        b1, b2 = rand_boxes(n), rand_boxes(m)
        torch.testing.assert_close(fn(b1, b2), ops.box_iou(b1, b2) * 2)


@pytest.mark.torchscript
def test_torchscript():
    b1, b2 = rand_boxes(5), rand_boxes(4)
    for name in ["box_iou", "box_iof", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]:
        fn = getattr(ops, name)
        torch.testing.assert_close(torch.jit.script(fn)(b1, b2), fn(b1, b2))
    s = torch.jit.script(ops.box_overlaps)
    torch.testing.assert_close(s(b1, b1.flip(0), "ciou", True, 1e-7), ops.box_overlaps(b1, b1.flip(0), "ciou", True, 1e-7))
    for name in ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]:
        fn = getattr(ops, name)
        torch.testing.assert_close(torch.jit.script(fn)(b1, b1.flip(0), "mean", 1e-7), fn(b1, b1.flip(0), "mean", 1e-7))
    torch.testing.assert_close(torch.jit.script(ops.box_area)(b1), ops.box_area(b1))
    torch.testing.assert_close(torch.jit.script(ops.box_convert)(b1, "xyxy", "cxcywh"), ops.box_convert(b1, "xyxy", "cxcywh"))
    torch.testing.assert_close(torch.jit.script(ops.clip_boxes_to_image)(b1, (10, 20)), ops.clip_boxes_to_image(b1, (10, 20)))
    torch.testing.assert_close(torch.jit.script(ops.remove_small_boxes)(b1, 20.0), ops.remove_small_boxes(b1, 20.0))


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def test_bad_input_box_overlaps(device):
    good = rand_boxes(3, device=device)
    with pytest.raises(ValueError, match="boxes1"):
        ops.box_iou(torch.zeros(3, 5, device=device), good)
    with pytest.raises(ValueError, match="boxes2"):
        ops.box_iou(good, torch.zeros(4, device=device))
    with pytest.raises(ValueError, match="boxes1"):
        ops.generalized_box_iou(torch.zeros(2, 3, 4, device=device), good)
    with pytest.raises(TypeError, match="boxes1 and boxes2"):
        ops.box_iou(good, good.double())
    with pytest.raises(TypeError, match="boxes1"):
        ops.box_iou(good.bool(), good.bool())
    with pytest.raises(TypeError, match="boxes1"):
        ops.box_iou(good.to(torch.complex64), good.to(torch.complex64))
    with pytest.raises(ValueError, match="mode"):
        ops.box_overlaps(good, good, "dice")
    with pytest.raises(ValueError, match="mode"):
        ops.box_overlaps(good[:0], good[:0], "IoU")  # checked before any kernel, even when empty
    with pytest.raises(ValueError, match="eps"):
        ops.distance_box_iou(good, good, eps=-1e-7)
    with pytest.raises(ValueError, match="eps"):
        ops.box_overlaps(good, good, "iou", True, float("nan"))
    with pytest.raises(ValueError, match="eps"):
        ops.complete_box_iou_loss(good, good, eps=float("inf"))
    with pytest.raises(ValueError, match="boxes2"):
        ops.box_overlaps(good, good[:2], "iou", True)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.pydetops._box_overlaps_backward(torch.zeros(2, 2), good, good, "iou", False, 0.0)


def test_bad_input_losses_and_utils():
    good = rand_boxes(3)
    for fn in LOSSES.values():
        with pytest.raises(ValueError, match="reduction"):
            fn(good, good, reduction="xyz")
        with pytest.raises(ValueError, match="boxes1 and boxes2"):
            fn(good, good[:2])
        with pytest.raises(ValueError, match="boxes1"):
            fn(torch.zeros(3, 5), torch.zeros(3, 5))
        with pytest.raises(TypeError, match="boxes1 and boxes2"):
            fn(good, good.double())
    with pytest.raises(ValueError, match="in_fmt"):
        ops.box_convert(good, "xyz", "xyxy")
    with pytest.raises(ValueError, match="out_fmt"):
        ops.box_convert(good, "xyxy", "XYXY")
    with pytest.raises(ValueError, match="boxes"):
        ops.box_convert(torch.zeros(3, 5), "xyxy", "xywh")
    with pytest.raises(ValueError, match="boxes"):
        ops.box_area(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="boxes"):
        ops.box_area(good.bool())
    with pytest.raises(ValueError, match="boxes"):
        ops.clip_boxes_to_image(torch.zeros(3, 2), (10, 10))
    with pytest.raises(ValueError, match="size"):
        ops.clip_boxes_to_image(good, (-1, 10))
    with pytest.raises(ValueError, match="boxes"):
        ops.remove_small_boxes(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="min_size"):
        ops.remove_small_boxes(good, float("nan"))


# ----------------------------------------------------------------------------
# Package: info and the import-time check
# ----------------------------------------------------------------------------

def test_info_module():
    out = subprocess.run([sys.executable, "-m", "pydetops.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"pydetops {pydetops.__version__}" in out.stdout
    assert "ops:" in out.stdout and "box_overlaps" in out.stdout


def test_loader_rejects_mismatched_torch(monkeypatch):
    from pydetops import _loader

    monkeypatch.setattr(torch, "__version__", "2.99.0")
    with pytest.raises(ImportError, match="Rebuild") as info:
        _loader.load_extension()
    assert "2.99.0" in str(info.value)


def test_loader_reports_missing_extension(monkeypatch):
    from pydetops import _loader

    def fail(name, *args, **kwargs):
        raise ImportError(f"No module named '{name}'")

    monkeypatch.setattr(_loader.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="Rebuild"):
        _loader.load_extension()
