"""nms, batched_nms, soft_nms against plain float64 references written with Python loops."""
import math

import numpy as np
import pytest
import torch

import pydetops.ops as P

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ------------------------------------------------------------------ references

def _iou64(a, b, f32=False):
    """IoU with the kernel's formula, inter / (area_a + area_b - inter), in float64,
    or (f32=True) with every operation rounded to float32 as the kernel does for
    float32/float16/bfloat16 boxes, so that IoUs exactly at the threshold (e.g.
    3/10 for integer boxes) are judged alike."""
    if f32:
        a = [np.float32(v) for v in a]
        b = [np.float32(v) for v in b]
        zero = np.float32(0)
    else:
        zero = 0.0
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(min(ax2, bx2) - max(ax1, bx1), zero)
    ih = max(min(ay2, by2) - max(ay1, by1), zero)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if inter == 0:
        return 0.0  # also 0/0 and 0/inf: never suppresses
    if union == 0 or math.isnan(union):
        return float("nan")
    return float(inter / union)


def _has_nan_or_inf(b):
    return any(not math.isfinite(v) for v in b)


def _score_order(scores):
    """Decreasing score, NaN last, ties by lower index."""
    s = [float(v) for v in scores]
    return sorted(range(len(s)), key=lambda i: (math.isnan(s[i]), -s[i] if not math.isnan(s[i]) else 0.0, i))


def _boxes64(boxes):
    # The values the kernel sees (float16/bfloat16 are exact in float64).
    return [[float(v) for v in row] for row in boxes.detach().cpu().to(torch.float64)]


def ref_nms(boxes, scores, thr):
    f32 = boxes.dtype != torch.float64
    b = _boxes64(boxes)
    order = _score_order(scores.detach().cpu().to(torch.float64))
    keep = []
    for i in order:
        ok = True
        for k in keep:
            iou = 0.0 if (_has_nan_or_inf(b[i]) or _has_nan_or_inf(b[k])) else _iou64(b[k], b[i], f32)
            if iou > thr:  # NaN compares False
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def ref_batched_nms(boxes, scores, idxs, thr):
    keep = []
    for c in sorted(set(idxs.tolist())):
        sel = [i for i in range(len(idxs)) if int(idxs[i]) == c]
        k = ref_nms(boxes[sel], scores[sel], thr)
        keep.extend(sel[j] for j in k)
    s = scores.detach().cpu().to(torch.float64).tolist()
    return sorted(keep, key=lambda i: (math.isnan(s[i]), -s[i] if not math.isnan(s[i]) else 0.0, i))


def ref_soft_nms(boxes, scores, thr, sigma, score_thr, method):
    f32 = boxes.dtype != torch.float64
    b = _boxes64(boxes)
    cur = scores.detach().cpu().to(torch.float64).tolist()
    alive = [not math.isnan(s) and s >= score_thr for s in cur]
    keep, out = [], []
    while any(alive):
        best = None
        for i in range(len(cur)):
            if alive[i] and (best is None or cur[i] > cur[best]):
                best = i
        alive[best] = False
        keep.append(best)
        out.append(cur[best])
        for j in range(len(cur)):
            if not alive[j]:
                continue
            iou = 0.0 if (_has_nan_or_inf(b[j]) or _has_nan_or_inf(b[best])) else _iou64(b[best], b[j], f32)
            if not iou > 0:
                continue
            if method == "gaussian":
                cur[j] *= math.exp(-iou * iou / sigma)
            elif method == "linear":
                if iou > thr:
                    cur[j] *= 1.0 - iou
            else:
                if iou > thr:
                    alive[j] = False
                    continue
            if not cur[j] >= score_thr:
                alive[j] = False
    return keep, out


def ref_nms_rows(boxes, scores, thr):
    """The same greedy NMS with one float64 IoU row per kept box (simple torch), for larger inputs."""
    b = boxes.detach().cpu().double()
    order = _score_order(scores.detach().cpu().double())
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    sup = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in order:
        if sup[i]:
            continue
        keep.append(i)
        iw = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        ih = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = iw * ih
        sup |= inter / (area[i] + area - inter) > thr
    return keep


def ref_soft_nms_rows(boxes, scores, sigma, score_thr):
    """Gaussian Soft-NMS with one float64 row per selected box, for larger inputs."""
    b = boxes.detach().cpu().double()
    cur = scores.detach().cpu().double().clone()
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    alive = cur >= score_thr
    keep, out = [], []
    while bool(alive.any()):
        i = int(torch.where(alive, cur, torch.tensor(-math.inf, dtype=torch.float64)).argmax())  # first max
        keep.append(i)
        out.append(float(cur[i]))
        alive[i] = False
        iw = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        ih = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = iw * ih
        iou = torch.nan_to_num(inter / (area[i] + area - inter), nan=0.0)
        cur = torch.where(alive & (iou > 0), cur * torch.exp(-iou * iou / sigma), cur)
        alive &= cur >= score_thr
    return keep, out


# -------------------------------------------------------------------- inputs

def random_boxes(n, scale=100.0, max_side=30.0, integer=False, offset=0.0):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * max_side + 1
    if integer:
        xy, wh = xy.floor(), wh.floor()
    return torch.cat([xy, xy + wh], 1) + offset


def clustered_boxes(n, centers=4, jitter=3.0):
    """Many heavily overlapping boxes around a few centres (integer coordinates)."""
    c = (torch.rand(centers, 2, dtype=torch.float64) * 100).floor()
    pick = torch.randint(0, centers, (n,))
    xy = c[pick] + torch.randint(-int(jitter), int(jitter) + 1, (n, 2)).to(torch.float64)
    wh = torch.randint(15, 25, (n, 2)).to(torch.float64)
    return torch.cat([xy, xy + wh], 1)


def _to(boxes, dtype, device):
    return boxes.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------- nms

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_random(device, dtype, thr):
    # Integer coordinates: IoU is a ratio of small integers, so the float32
    # kernel and the float64 reference agree exactly on "IoU > thr".
    boxes = _to(random_boxes(260, integer=True), dtype, device)
    scores = torch.rand(260, device=device).to(dtype)
    got = P.nms(boxes, scores, thr)
    assert got.dtype == torch.int64 and got.device.type == device
    assert got.tolist() == ref_nms(boxes, scores, thr)


def test_nms_float64_continuous(device):
    boxes = random_boxes(400).to(device)
    scores = torch.rand(400, dtype=torch.float64, device=device)
    assert P.nms(boxes, scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_clustered(device, dtype):
    boxes = _to(clustered_boxes(400), dtype, device)
    scores = torch.rand(400, device=device).to(dtype)
    for thr in (0.1, 0.5, 0.8):
        assert P.nms(boxes, scores, thr).tolist() == ref_nms(boxes, scores, thr)


def test_nms_duplicates_and_tied_scores(device):
    base = random_boxes(20, integer=True)
    boxes = torch.cat([base, base, base]).to(device)  # every box three times
    scores = torch.cat([torch.full((30,), 0.5), torch.rand(30)]).to(device)  # many exact ties
    got = P.nms(boxes, scores, 0.5)
    assert got.tolist() == ref_nms(boxes, scores, 0.5)
    # all equal scores: processing order is the index order
    ones = torch.ones(60, device=device)
    got = P.nms(boxes, ones, 0.5)
    assert got.tolist() == ref_nms(boxes, ones, 0.5)
    assert got.tolist() == sorted(got.tolist())
    # identical boxes: only the first of each triple survives (IoU 1 > 0.5)
    assert set(got.tolist()) <= set(range(20))


def test_nms_signed_zero_scores_tie(device):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]], device=device)
    scores = torch.tensor([-0.0, 0.0], device=device)
    assert P.nms(boxes, scores, 0.5).tolist() == [0]


def test_nms_zero_area_inverted_off_image(device):
    boxes = torch.tensor(
        [
            [10.0, 10, 10, 20],  # zero width
            [10.0, 10, 10, 10],  # point
            [20.0, 20, 10, 10],  # inverted
            [10.0, 10, 20, 20],
            [11.0, 11, 21, 21],
            [-50.0, -50, -40, -40],  # off image
            [-51.0, -51, -40, -40],
            [10.0, 10, 10, 20],  # duplicate zero-area box: IoU 0/0 = NaN
            [20.0, 20, 10, 10],  # duplicate inverted box
        ],
        device=device,
    )
    scores = torch.linspace(1, 0.1, boxes.shape[0], device=device)
    for thr in (0.0, 0.5):
        got = P.nms(boxes, scores, thr).tolist()
        assert got == ref_nms(boxes, scores, thr)
        for i in (0, 1, 2, 7, 8):  # intersect nothing: always kept
            assert i in got


def test_nms_nan_and_inf(device):
    boxes = random_boxes(60, integer=True)
    boxes[3, 0] = float("nan")
    boxes[7] = boxes[8]  # boxes 7/8 identical but 7's score is NaN
    boxes[10, 2] = float("inf")
    boxes[11] = torch.tensor([-float("inf"), 0.0, float("inf"), 1e9])
    boxes[12] = boxes[13]
    boxes[12, 3] = float("nan")
    boxes = boxes.to(device)
    scores = torch.rand(60, dtype=torch.float64, device=device)
    scores[7] = float("nan")
    scores[20] = float("nan")
    got = P.nms(boxes, scores, 0.5).tolist()
    assert got == ref_nms(boxes, scores, 0.5)
    for i in (3, 10, 11, 12):  # a non-finite box never suppresses nor is suppressed
        assert i in got
    # NaN scores come last, in index order
    nan_pos = [k for k, i in enumerate(got) if math.isnan(float(scores[i]))]
    assert nan_pos == list(range(len(got) - len(nan_pos), len(got)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_empty(device, dtype):
    got = P.nms(torch.zeros(0, 4, dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device), 0.5)
    assert got.shape == (0,) and got.dtype == torch.int64


def test_nms_single(device):
    got = P.nms(torch.tensor([[0.0, 0, 1, 1]], device=device), torch.tensor([0.3], device=device), 0.5)
    assert got.tolist() == [0]


def test_nms_non_contiguous(device):
    boxes = random_boxes(200, integer=True).to(device)
    scores = torch.rand(200, device=device)
    wide = torch.zeros(200, 8, dtype=torch.float64, device=device)
    wide[:, ::2] = boxes  # stride 2 columns
    nc_boxes = wide[:, ::2]
    nc_scores = torch.stack([scores, scores], 1)[:, 1]
    assert not nc_boxes.is_contiguous() and not nc_scores.is_contiguous()
    assert P.nms(nc_boxes, nc_scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)
    # transposed storage (column-major)
    t_boxes = boxes.t().contiguous().t()
    assert P.nms(t_boxes, scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)


def test_nms_half_large_coordinates(device):
    # float16 areas at the 1e4 scale overflow float16 (max 65504); computed in float32 they do not.
    boxes = (random_boxes(150, scale=30000, max_side=3000, integer=True)).to(torch.float16).to(device)
    assert torch.isfinite(boxes).all()
    scores = torch.rand(150, device=device).half()
    assert P.nms(boxes, scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)


def test_nms_large_culling_cases(device):
    # one huge box and many small ones: the running max of x2 covers everything
    boxes = random_boxes(500, scale=1000, max_side=50, integer=True)
    boxes[0] = torch.tensor([0.0, 0, 2000, 2000])
    boxes[1] = torch.tensor([-5.0, 500, 3000, 520])
    scores = torch.rand(500, dtype=torch.float64)
    boxes, scores = boxes.to(device), scores.to(device)
    assert P.nms(boxes, scores, 0.3).tolist() == ref_nms(boxes, scores, 0.3)


def test_nms_mixed_score_dtype(device):
    boxes = random_boxes(100, integer=True).to(device).half()
    scores = torch.rand(100, dtype=torch.float64, device=device)
    assert P.nms(boxes, scores, 0.5).tolist() == ref_nms(boxes, scores, 0.5)


def test_nms_threshold_rounding(device):
    # IoU of these two boxes is exactly 0.5 in float32 and float64: not suppressed at 0.5.
    boxes = torch.tensor([[0.0, 0, 3, 1], [1.0, 0, 4, 1]], device=device)  # inter 2, union 4
    scores = torch.tensor([0.9, 0.8], device=device)
    assert P.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert P.nms(boxes, scores, 0.4999999).tolist() == [0]
    # float32 IoU 0.7f is above the double 0.7 only if float(0.7) > 0.7; the comparison is the double one
    f = torch.tensor(0.7, dtype=torch.float32).item()
    assert P.nms(boxes, scores, f).tolist() == [0, 1]


def test_nms_requires_grad_inputs(device):
    boxes = random_boxes(50, integer=True).to(device).requires_grad_()
    scores = torch.rand(50, device=device, dtype=torch.float64, requires_grad=True)
    got = P.nms(boxes, scores, 0.5)
    assert not got.requires_grad
    assert got.tolist() == ref_nms(boxes, scores, 0.5)


def test_nms_thread_count_independent():
    boxes = random_boxes(3000, scale=500, max_side=60)
    scores = torch.rand(3000, dtype=torch.float64)
    idxs = torch.randint(0, 5, (3000,))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = P.nms(boxes, scores, 0.5)
        b = P.batched_nms(boxes, scores, idxs, 0.5)
        c = P.soft_nms(boxes, scores)
        torch.set_num_threads(max(2, old))
        assert torch.equal(a, P.nms(boxes, scores, 0.5))
        assert torch.equal(b, P.batched_nms(boxes, scores, idxs, 0.5))
        c2 = P.soft_nms(boxes, scores)
        assert torch.equal(c[0], c2[0]) and torch.equal(c[1], c2[1])
    finally:
        torch.set_num_threads(old)


def test_row_reference_agrees_with_loop_reference():
    boxes = clustered_boxes(150)
    scores = torch.rand(150, dtype=torch.float64)
    assert ref_nms_rows(boxes, scores, 0.5) == ref_nms(boxes, scores, 0.5)
    k, s = ref_soft_nms_rows(boxes, scores, 0.5, 0.01)
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.01, "gaussian")
    assert k == rk
    torch.testing.assert_close(torch.tensor(s), torch.tensor(rs))


@pytest.mark.parametrize("layout", ["uniform", "dense", "one_row", "tall_and_wide"])
def test_nms_large_many_strips(device, layout):
    # Large enough for the culling index to cut the boxes into many y strips.
    n = 3000
    if layout == "uniform":
        boxes = random_boxes(n, scale=1024, max_side=128)
    elif layout == "dense":
        boxes = random_boxes(n, scale=200, max_side=60)
    elif layout == "one_row":  # all the same y: strips split ties
        boxes = random_boxes(n, scale=1024, max_side=40)
        boxes[:, 1] = 5.0
        boxes[:, 3] = 25.0
    else:  # a few boxes spanning everything in x or y
        boxes = random_boxes(n, scale=1024, max_side=30)
        boxes[:20, 1] = -100.0
        boxes[:20, 3] = 2000.0
        boxes[20:40, 0] = -100.0
        boxes[20:40, 2] = 2000.0
    boxes[50:60] = boxes[60:70]  # duplicates
    scores = torch.rand(n, dtype=torch.float64)
    got = P.nms(boxes.to(device), scores.to(device), 0.5).tolist()
    assert got == ref_nms_rows(boxes, scores, 0.5)


def test_soft_nms_large(device):
    boxes = random_boxes(1500, scale=400, max_side=60)
    scores = torch.rand(1500, dtype=torch.float64)
    keep, dec = P.soft_nms(boxes.to(device), scores.to(device), 0.3, 0.5, 0.05, "gaussian")
    rk, rs = ref_soft_nms_rows(boxes, scores, 0.5, 0.05)
    assert keep.tolist() == rk
    torch.testing.assert_close(dec.cpu(), torch.tensor(rs, dtype=torch.float64))


# --------------------------------------------------------------- batched_nms

@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_random(device, dtype):
    boxes = _to(clustered_boxes(300, centers=3), dtype, device)
    scores = torch.rand(300, device=device).to(dtype)
    idxs = torch.randint(0, 5, (300,), device=device)
    got = P.batched_nms(boxes, scores, idxs, 0.5)
    assert got.dtype == torch.int64
    assert got.tolist() == ref_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_equals_per_class_nms(device):
    boxes = random_boxes(500, scale=200, integer=True).to(device)
    scores = torch.rand(500, device=device)
    idxs = torch.randint(-3, 7, (500,), device=device)
    got = P.batched_nms(boxes, scores, idxs, 0.4)
    keep = []
    for c in idxs.unique().tolist():
        sel = torch.where(idxs == c)[0]
        keep.append(sel[P.nms(boxes[sel], scores[sel], 0.4)])
    keep = torch.cat(keep)
    # merged in decreasing score, ties by lower index
    order = sorted(keep.tolist(), key=lambda i: (-float(scores[i]), i))
    assert got.tolist() == order


@pytest.mark.parametrize("offset", [1e6, -1e6, -12345.5])
def test_batched_nms_huge_and_negative_coordinates(device, offset):
    # At 1e6 the coordinate-offset trick (boxes + idx * (max + 1)) would lose the
    # float32 precision needed here; grouping by class does not.
    boxes = random_boxes(300, scale=50, max_side=10, integer=True, offset=offset)
    scores = torch.rand(300, dtype=torch.float64)
    idxs = torch.randint(0, 40, (300,))
    for dtype in (torch.float32, torch.float64):
        b = boxes.to(dtype).to(device)
        assert torch.equal(b.double().cpu(), boxes)  # exactly representable
        got = P.batched_nms(b, scores.to(device), idxs.to(device), 0.5)
        assert got.tolist() == ref_batched_nms(b, scores, idxs, 0.5)


def test_batched_nms_fp16(device):
    boxes = random_boxes(300, scale=500, max_side=100, integer=True).to(torch.float16).to(device)
    scores = torch.rand(300, device=device).half()
    idxs = torch.randint(0, 3, (300,), device=device, dtype=torch.int32)
    got = P.batched_nms(boxes, scores, idxs, 0.5)
    assert got.tolist() == ref_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_sparse_class_ids(device):
    # class ids far apart (and the int64 extremes): grouped by a comparison sort, not a counting sort
    boxes = clustered_boxes(200)
    scores = torch.rand(200, dtype=torch.float64)
    ids = torch.tensor([-(2**63), 2**63 - 1, 10**12, -5, 0])
    idxs = ids[torch.randint(0, 5, (200,))]
    got = P.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    assert got.tolist() == ref_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_identical_boxes_other_classes(device):
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], device=device)
    idxs = torch.tensor([0, 1, 0, 2], device=device)
    assert P.batched_nms(boxes, scores, idxs, 0.5).tolist() == [3, 0, 1]


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8])
def test_batched_nms_idx_dtypes(device, idx_dtype):
    boxes = clustered_boxes(200).to(device)
    scores = torch.rand(200, dtype=torch.float64, device=device)
    idxs = torch.randint(0, 4, (200,), device=device).to(idx_dtype)
    assert P.batched_nms(boxes, scores, idxs, 0.5).tolist() == ref_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_empty_nan_noncontiguous(device):
    e = P.batched_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                      torch.zeros(0, dtype=torch.int64, device=device), 0.5)
    assert e.shape == (0,) and e.dtype == torch.int64
    boxes = clustered_boxes(120)
    boxes[5, 1] = float("nan")
    scores = torch.rand(120, dtype=torch.float64)
    scores[9] = float("nan")
    idxs = torch.randint(0, 3, (240,))[::2]
    assert not idxs.is_contiguous()
    got = P.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    assert got.tolist() == ref_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_single_class_equals_nms(device):
    boxes = clustered_boxes(300).to(device)
    scores = torch.rand(300, device=device)
    idxs = torch.full((300,), 7, device=device)
    assert torch.equal(P.batched_nms(boxes, scores, idxs, 0.5), P.nms(boxes, scores, 0.5))


# ------------------------------------------------------------------ soft_nms

@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_soft_nms_float64(device, method):
    boxes = torch.cat([clustered_boxes(150), random_boxes(100)]).to(device)
    scores = torch.rand(250, dtype=torch.float64, device=device)
    keep, dec = P.soft_nms(boxes, scores, 0.3, 0.5, 0.01, method)
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.01, method)
    assert keep.dtype == torch.int64 and dec.dtype == torch.float64
    assert keep.tolist() == rk
    torch.testing.assert_close(dec.cpu(), torch.tensor(rs, dtype=torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_dtypes(device, dtype, method):
    # Well separated score levels so float32 rounding cannot swap the selection order.
    boxes = _to(clustered_boxes(60, centers=3), dtype, device)
    scores = (torch.randperm(60).to(torch.float64) / 60 + 0.2).to(dtype).to(device)
    keep, dec = P.soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
    assert dec.dtype == dtype
    # compare the common prefix where the order is certain, then the set
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    ref = dict(zip(rk, rs))
    assert set(keep.tolist()) == set(rk) or len(keep) == len(rk)
    for i, s in zip(keep.tolist(), dec.double().cpu().tolist()):
        if i in ref:
            assert abs(s - ref[i]) <= tol * max(1.0, abs(ref[i])) + 1e-6


def test_soft_nms_hard_equals_nms(device):
    boxes = clustered_boxes(300).to(device)
    scores = torch.rand(300, device=device)
    keep, dec = P.soft_nms(boxes, scores, 0.5, 0.5, -float("inf"), "hard")
    assert keep.tolist() == P.nms(boxes, scores, 0.5).tolist()
    assert torch.equal(dec, scores[keep])


def test_soft_nms_defaults_and_threshold(device):
    boxes = clustered_boxes(100).to(device)
    scores = torch.rand(100, dtype=torch.float64, device=device)
    scores[:10] = 1e-4  # below the default score_threshold: dropped from the start
    keep, dec = P.soft_nms(boxes, scores)
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.001, "gaussian")
    assert keep.tolist() == rk
    assert not set(range(10)) & set(keep.tolist())
    assert (dec >= 0.001).all()
    # selected scores are non-increasing (scores >= 0 only decay)
    assert (dec[1:] <= dec[:-1]).all()


def test_soft_nms_ties_nan_nonfinite_empty(device):
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[float("nan"), 0, 1, 1], [0.0, 0, float("inf"), 10]],
                         dtype=torch.float64, device=device)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.4], dtype=torch.float64, device=device)
    keep, dec = P.soft_nms(boxes, scores, 0.3, 0.5, 0.0, "linear")
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.0, "linear")
    assert keep.tolist() == rk
    assert keep.tolist()[:2] == [3, 0]  # NaN box first (highest score), then the lowest of the tied
    torch.testing.assert_close(dec.cpu(), torch.tensor(rs, dtype=torch.float64))
    scores[1] = float("nan")  # NaN score: dropped
    keep, _ = P.soft_nms(boxes, scores, 0.3, 0.5, 0.0, "gaussian")
    assert 1 not in keep.tolist()
    k, d = P.soft_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device))
    assert k.shape == (0,) and d.shape == (0,) and k.dtype == torch.int64


def test_soft_nms_negative_scores(device):
    boxes = clustered_boxes(50).to(device)
    scores = (torch.rand(50, dtype=torch.float64) - 0.5).to(device)
    keep, dec = P.soft_nms(boxes, scores, 0.3, 0.5, -1.0, "gaussian")
    rk, rs = ref_soft_nms(boxes, scores, 0.3, 0.5, -1.0, "gaussian")
    assert keep.tolist() == rk
    torch.testing.assert_close(dec.cpu(), torch.tensor(rs, dtype=torch.float64))


# ------------------------------------------------------------------ bad input

def test_bad_input(device):
    b = torch.rand(5, 4, device=device)
    s = torch.rand(5, device=device)
    i = torch.zeros(5, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="boxes"):
        P.nms(torch.rand(5, 3, device=device), s, 0.5)
    with pytest.raises(ValueError, match="boxes"):
        P.nms(torch.rand(20, device=device), s, 0.5)
    with pytest.raises(ValueError, match="scores"):
        P.nms(b, torch.rand(5, 1, device=device), 0.5)
    with pytest.raises(ValueError, match="scores"):
        P.nms(b, torch.rand(4, device=device), 0.5)
    with pytest.raises(TypeError, match="boxes"):
        P.nms(b.long(), s, 0.5)
    with pytest.raises(TypeError, match="scores"):
        P.nms(b, s.long(), 0.5)
    for thr in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="iou_threshold"):
            P.nms(b, s, thr)
        with pytest.raises(ValueError, match="iou_threshold"):
            P.batched_nms(b, s, i, thr)
        with pytest.raises(ValueError, match="iou_threshold"):
            P.soft_nms(b, s, thr)
    with pytest.raises(TypeError, match="idxs"):
        P.batched_nms(b, s, i.float(), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        P.batched_nms(b, s, i.bool(), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        P.batched_nms(b, s, i[:4], 0.5)
    with pytest.raises(ValueError, match="idxs"):
        P.batched_nms(b, s, i[None], 0.5)
    with pytest.raises(ValueError, match="sigma"):
        P.soft_nms(b, s, 0.3, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        P.soft_nms(b, s, 0.3, float("nan"))
    with pytest.raises(ValueError, match="score_threshold"):
        P.soft_nms(b, s, 0.3, 0.5, float("nan"))
    with pytest.raises(ValueError, match="method"):
        P.soft_nms(b, s, method="cubic")
    with pytest.raises(ValueError, match="boxes"):
        P.soft_nms(b[:, :2], s)


def test_bad_device():
    b = torch.rand(5, 4)
    s = torch.rand(5)
    with pytest.raises(ValueError, match="device"):
        P.nms(b, s.to("meta"), 0.5)
    with pytest.raises(ValueError, match="device"):
        P.batched_nms(b, s, torch.zeros(5, dtype=torch.int64, device="meta"), 0.5)


# ------------------------------------------------------ opcheck / compile / script

def _samples(device):
    boxes = clustered_boxes(80).float().to(device)
    scores = torch.rand(80, device=device)
    idxs = torch.randint(0, 3, (80,), device=device)
    return boxes, scores, idxs


def test_opcheck(device):
    boxes, scores, idxs = _samples(device)
    torch.library.opcheck(torch.ops.pydetops.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.pydetops.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.pydetops.soft_nms.default, (boxes, scores, 0.3, 0.5, 0.01, "linear"))
    torch.library.opcheck(torch.ops.pydetops.nms.default, (boxes.double().requires_grad_(), scores.double(), 0.5))


def test_torch_compile_fullgraph(device):
    boxes, scores, idxs = _samples(device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(b, s, i):
        k1 = P.nms(b, s, 0.5)
        k2 = P.batched_nms(b, s, i, 0.5)
        k3, d3 = P.soft_nms(b, s, 0.3, 0.5, 0.01, "gaussian")
        return k1, b[k2], k3, d3 * 2

    k1, bk2, k3, d3 = f(boxes, scores, idxs)
    assert torch.equal(k1, P.nms(boxes, scores, 0.5))
    assert torch.equal(bk2, boxes[P.batched_nms(boxes, scores, idxs, 0.5)])
    rk3, rd3 = P.soft_nms(boxes, scores, 0.3, 0.5, 0.01, "gaussian")
    assert torch.equal(k3, rk3) and torch.equal(d3, rd3 * 2)


def test_torch_compile_inductor(device):
    boxes, scores, idxs = _samples(device)
    f = torch.compile(lambda b, s: b[P.nms(b, s, 0.5)].sum(1), fullgraph=True)
    torch.testing.assert_close(f(boxes, scores), boxes[P.nms(boxes, scores, 0.5)].sum(1))


@pytest.mark.torchscript
def test_torch_jit_script(device):
    boxes, scores, idxs = _samples(device)
    s_nms = torch.jit.script(P.nms)
    s_bnms = torch.jit.script(P.batched_nms)
    s_soft = torch.jit.script(P.soft_nms)
    assert torch.equal(s_nms(boxes, scores, 0.5), P.nms(boxes, scores, 0.5))
    assert torch.equal(s_bnms(boxes, scores, idxs, 0.5), P.batched_nms(boxes, scores, idxs, 0.5))
    k, d = s_soft(boxes, scores)
    rk, rd = P.soft_nms(boxes, scores)
    assert torch.equal(k, rk) and torch.equal(d, rd)
