"""match_boxes, sigmoid_focal_loss and detection_postprocess against plain references.

* match_boxes: box_iou written plainly in float64 (or in the op's compute dtype for
  exact comparisons) + torchvision's Matcher logic written out here.
* sigmoid_focal_loss: torchvision's formula in float64; gradcheck of the fused backward.
* detection_postprocess: the composition of pydetops' decode_boxes (with the clip),
  remove_small_boxes and batched_nms on the same candidates.
"""
import math

import pytest
import torch

import pydetops.ops as P

# ------------------------------------------------------------------ matching reference


def ref_box_iou(gt, anchors):
    """box_iou(gt, anchors): Tensor[M, N], in the inputs' dtype, torchvision's operation order."""
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    lt = torch.max(gt[:, None, :2], anchors[None, :, :2])
    rb = torch.min(gt[:, None, 2:], anchors[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_g[:, None] + area_a[None, :] - inter)


def ref_match(anchors, gt, high, low, allow_low_quality):
    """torchvision's Matcher.__call__ and set_low_quality_matches_, written out."""
    n = anchors.shape[0]
    dtype = torch.float64 if torch.float64 in (anchors.dtype, gt.dtype) else torch.float32
    if gt.shape[0] == 0:
        return torch.full((n,), -1, dtype=torch.int64), torch.zeros(n, dtype=dtype)
    if n == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=dtype)
    q = ref_box_iou(gt.to(dtype), anchors.to(dtype))
    vals, matches = q.max(dim=0)
    all_matches = matches.clone()
    below = vals < low
    between = (vals >= low) & (vals < high)
    matches[below] = -1
    matches[between] = -2
    if allow_low_quality:
        best_per_gt, _ = q.max(dim=1)
        _, pred = torch.where(q == best_per_gt[:, None])
        matches[pred] = all_matches[pred]
    return matches, vals


def random_boxes(n, scale=100.0, max_side=40.0, dtype=torch.float64, integer=False):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * max_side + 0.5
    b = torch.cat([xy, xy + wh], 1)
    if integer:
        b = b.round()
    return b.to(dtype)


def grid_anchors(step=8, size=16, extent=96, dtype=torch.float64):
    """Integer anchors on a grid: many exact IoU ties with integer ground truths."""
    c = torch.arange(0, extent, step, dtype=torch.float64)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for s in (size, 2 * size):
        out.append(torch.stack([xx, yy, xx + s, yy + s], -1).reshape(-1, 4))
    return torch.cat(out).to(dtype)


def _check_match(anchors, gt, high, low, allow, device):
    m, v = P.match_boxes(anchors.to(device), gt.to(device), high, low, allow)
    rm, rv = ref_match(anchors, gt, high, low, allow)
    assert m.dtype == torch.int64 and v.dtype == rv.dtype
    assert torch.equal(m.cpu(), rm), (m.cpu(), rm)
    torch.testing.assert_close(v.cpu(), rv, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("thr", [(0.7, 0.3), (0.5, 0.5), (0.5, 0.4)])
def test_match_random(device, dtype, allow, thr):
    anchors = random_boxes(700, dtype=dtype)
    gt = random_boxes(13, max_side=60, dtype=dtype)
    _check_match(anchors, gt, thr[0], thr[1], allow, device)


def test_match_float64_reference_for_float32(device):
    # float32 boxes: the IoU (computed in float32) is within float32 rounding of the float64 IoU.
    anchors, gt = random_boxes(500), random_boxes(9, max_side=60)
    m, v = P.match_boxes(anchors.float().to(device), gt.float().to(device), 0.7, 0.3, True)
    rv = ref_box_iou(gt.float().double(), anchors.float().double()).max(dim=0).values
    torch.testing.assert_close(v.cpu().double(), rv, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("allow", [False, True])
def test_match_ties_and_duplicates(device, allow):
    anchors = grid_anchors()
    anchors = torch.cat([anchors, anchors[:40]])  # duplicated anchors: tied everywhere
    gt = torch.tensor([[0, 0, 16, 16], [0, 0, 16, 16], [4, 4, 20, 20], [40, 40, 72, 72], [3, 5, 9, 11],
                       [90, 90, 95, 95], [8, 0, 24, 16]], dtype=torch.float64)
    for thr in [(0.7, 0.3), (0.5, 0.5), (1.0, 0.0), (0.25, 0.1)]:
        _check_match(anchors, gt, thr[0], thr[1], allow, device)
    m, _ = P.match_boxes(anchors.to(device), gt.to(device), 0.7, 0.3, allow)
    assert int(m[0]) == 0  # identical ground truths 0 and 1: the lower index wins


def test_match_iou_exactly_at_thresholds(device):
    gt = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    anchors = torch.tensor([[0.0, 0.0, 1.0, 1.0],   # IoU 0.5
                            [0.0, 0.0, 2.0, 1.0],   # IoU 1
                            [1.5, 0.0, 3.5, 1.0],   # IoU 0.5 / 3.5 = 1/7
                            [5.0, 5.0, 6.0, 6.0]])  # IoU 0
    for dt in (torch.float32, torch.float64):
        for hi, lo in [(0.5, 0.5), (0.5, 1 / 7), (1.0, 0.5), (0.6, 0.5)]:
            for allow in (False, True):
                _check_match(anchors.to(dt), gt.to(dt), hi, lo, allow, device)
    m, v = P.match_boxes(anchors.to(device), gt.to(device), 0.5, 0.5)
    assert m.tolist() == [0, 0, -1, -1] and v[0].item() == 0.5


def test_match_degenerate_boxes(device):
    # Zero-area boxes: two of them give 0 / 0 = NaN (which torch.max, and so
    # torchvision's Matcher, treats as the maximum); inverted boxes; far boxes.
    gt = torch.tensor([[5, 5, 5, 5], [0, 0, 10, 10], [20, 20, 20, 30], [12, 0, 10, 4]], dtype=torch.float64)
    anchors = torch.tensor([[5, 5, 5, 5], [0, 0, 10, 10], [1, 1, 9, 9], [20, 25, 20, 26], [30, 30, 40, 40],
                            [0, 0, 0, 0], [2, 2, 1, 1], [100, 100, 101, 101]], dtype=torch.float64)
    for allow in (False, True):
        for thr in [(0.7, 0.3), (0.5, 0.5)]:
            _check_match(anchors, gt, thr[0], thr[1], allow, device)
            _check_match(anchors, gt[1:2], thr[0], thr[1], allow, device)


def test_match_empty(device):
    anchors = random_boxes(30)
    m, v = P.match_boxes(anchors.to(device), torch.zeros(0, 4, dtype=torch.float64, device=device), 0.7, 0.3, True)
    assert m.tolist() == [-1] * 30 and v.abs().sum().item() == 0
    m, v = P.match_boxes(torch.zeros(0, 4, device=device), random_boxes(3).float().to(device), 0.7, 0.3, True)
    assert m.shape == (0,) and v.shape == (0,) and v.dtype == torch.float32
    m, v = P.match_boxes(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device), 0.7, 0.3)
    assert m.shape == (0,)


def test_match_many_blocks_low_quality(device):
    # More anchors than one CPU block (512): a ground truth's best anchors tie
    # in several far-apart blocks, and one ground truth overlaps nothing (best 0).
    anchors = random_boxes(3000, scale=400, max_side=30)
    tie = torch.tensor([[50.0, 50.0, 70.0, 70.0]], dtype=torch.float64)
    anchors[[5, 1700, 2999]] = tie
    gt = torch.cat([random_boxes(20, scale=400, max_side=80), tie * 1.0 + 1.0,
                    torch.tensor([[1000.0, 1000.0, 1010.0, 1010.0]], dtype=torch.float64)])
    for allow in (False, True):
        _check_match(anchors, gt, 0.7, 0.3, allow, device)
        _check_match(anchors.float(), gt.float(), 0.7, 0.3, allow, device)


def test_match_dtypes(device):
    anchors = random_boxes(200, integer=True)
    gt = random_boxes(7, integer=True, max_side=60)
    ref = ref_match(anchors.float(), gt.float(), 0.6, 0.4, True)
    for dt in (torch.int64, torch.int32, torch.float16, torch.bfloat16):
        a, g = anchors.to(dt), gt.to(dt)  # integers below 256: exact in every dtype
        m, v = P.match_boxes(a.to(device), g.to(device), 0.6, 0.4, True)
        assert torch.equal(m.cpu(), ref[0]) and torch.equal(v.cpu(), ref[1]), dt
    # mixed: float64 wins
    m, v = P.match_boxes(anchors.float().to(device), gt.to(device), 0.6, 0.4, True)
    assert v.dtype == torch.float64


def test_match_thread_count_independent():
    anchors, gt = random_boxes(5000, scale=300), random_boxes(25, scale=300, max_side=80)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = P.match_boxes(anchors, gt, 0.7, 0.3, True)
        torch.set_num_threads(max(2, old))
        b = P.match_boxes(anchors, gt, 0.7, 0.3, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_box_matcher_class(device):
    anchors, gt = random_boxes(300).to(device), random_boxes(6).to(device)
    mt = P.BoxMatcher(0.7, 0.3, allow_low_quality_matches=True)
    assert torch.equal(mt(anchors, gt), P.match_boxes(anchors, gt, 0.7, 0.3, True)[0])
    assert P.BoxMatcher.BELOW_LOW_THRESHOLD == -1 and P.BoxMatcher.BETWEEN_THRESHOLDS == -2
    with pytest.raises(ValueError, match="low_threshold"):
        P.BoxMatcher(0.3, 0.7)


def test_match_bad_input(device):
    a = random_boxes(5).to(device)
    with pytest.raises(ValueError, match="anchors"):
        P.match_boxes(a[:, :3], a, 0.7, 0.3)
    with pytest.raises(ValueError, match="gt_boxes"):
        P.match_boxes(a, a[None], 0.7, 0.3)
    with pytest.raises(TypeError, match="anchors"):
        P.match_boxes(a.bool(), a, 0.7, 0.3)
    with pytest.raises(ValueError, match="low_threshold"):
        P.match_boxes(a, a, 0.3, 0.7)
    with pytest.raises(ValueError, match="high_threshold"):
        P.match_boxes(a, a, float("nan"), 0.3)


def test_match_requires_grad_inputs(device):
    a = random_boxes(20).to(device).requires_grad_()
    g = random_boxes(3).to(device)
    m, v = P.match_boxes(a, g, 0.5, 0.4)
    assert not v.requires_grad and torch.equal(m.cpu(), ref_match(a.detach().cpu(), g.cpu(), 0.5, 0.4, False)[0])


# ------------------------------------------------------------------ focal loss reference


def ref_focal(x, t, alpha, gamma, reduction):
    x, t = x.double(), t.double()
    p = torch.sigmoid(x)
    ce = torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-x.abs()))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def focal_inputs(shape, soft=False):
    x = torch.randn(shape, dtype=torch.float64) * 3
    t = torch.rand(shape, dtype=torch.float64) if soft else (torch.rand(shape) < 0.3).double()
    return x, t


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5), (0.9, 1.0), (0.25, 3.0)])
def test_focal_forward_float64(device, reduction, alpha, gamma):
    x, t = focal_inputs((37, 11))
    out = P.sigmoid_focal_loss(x.to(device), t.to(device), alpha, gamma, reduction)
    torch.testing.assert_close(out.cpu(), ref_focal(x, t, alpha, gamma, reduction), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_focal_forward_low_precision(device, dtype, tol):
    x, t = focal_inputs((64, 9))
    xl, tl = x.to(dtype), t.to(dtype)
    for reduction in ("none", "sum", "mean"):
        out = P.sigmoid_focal_loss(xl.to(device), tl.to(device), 0.25, 2.0, reduction)
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), ref_focal(xl, tl, 0.25, 2.0, reduction), rtol=tol, atol=tol)


def test_focal_extreme_logits_and_soft_targets(device):
    x = torch.tensor([-200.0, -50.0, -1e-8, 0.0, 1e-8, 30.0, 200.0], dtype=torch.float64)
    for t in (torch.zeros(7, dtype=torch.float64), torch.ones(7, dtype=torch.float64), torch.full((7,), 0.3, dtype=torch.float64)):
        out = P.sigmoid_focal_loss(x.to(device), t.to(device))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.cpu(), ref_focal(x, t, 0.25, 2.0, "none"), rtol=1e-12, atol=1e-300)
    x, t = focal_inputs((50,), soft=True)
    torch.testing.assert_close(P.sigmoid_focal_loss(x.to(device), t.to(device), 0.4, 1.5).cpu(),
                               ref_focal(x, t, 0.4, 1.5, "none"), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.5), (0.7, 0.0), (0.25, 1.0)])
def test_focal_gradcheck(device, reduction, alpha, gamma):
    x, t = focal_inputs((6, 5), soft=True)
    x = x.to(device).requires_grad_()
    t = t.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: P.sigmoid_focal_loss(a, b, alpha, gamma, reduction), (x, t))


def test_focal_backward_matches_autograd_of_reference(device):
    x, t = focal_inputs((40, 7))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xo = x.to(dtype).to(device).clone().requires_grad_()
        P.sigmoid_focal_loss(xo, t.to(dtype).to(device), 0.25, 2.0, "mean").backward()
        xr = x.to(dtype).double().clone().requires_grad_()
        ref_focal(xr, t, 0.25, 2.0, "mean").backward()
        torch.testing.assert_close(xo.grad.cpu().double(), xr.grad, rtol=tol, atol=tol * 1e-3)


def test_focal_empty(device):
    x = torch.zeros(0, 3, device=device)
    assert P.sigmoid_focal_loss(x, x).shape == (0, 3)
    assert P.sigmoid_focal_loss(x, x, reduction="sum").item() == 0
    assert math.isnan(P.sigmoid_focal_loss(x, x, reduction="mean").item())


def test_focal_non_contiguous(device):
    x, t = focal_inputs((20, 30))
    xs, ts = x.to(device).t(), t.to(device).t()
    torch.testing.assert_close(P.sigmoid_focal_loss(xs, ts).cpu(), ref_focal(x.t(), t.t(), 0.25, 2, "none"))


def test_focal_thread_count_independent():
    x, t = focal_inputs((300, 100))
    x = x.float()
    t = t.float()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = P.sigmoid_focal_loss(x, t, reduction="sum")
        torch.set_num_threads(max(2, old))
        b = P.sigmoid_focal_loss(x, t, reduction="sum")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)


def test_focal_bad_input(device):
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="targets"):
        P.sigmoid_focal_loss(x, x[:, :2])
    with pytest.raises(TypeError, match="inputs"):
        P.sigmoid_focal_loss(x.long(), x)
    with pytest.raises(TypeError, match="targets"):
        P.sigmoid_focal_loss(x, x.long())
    with pytest.raises(ValueError, match="reduction"):
        P.sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        P.sigmoid_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        P.sigmoid_focal_loss(x, x, alpha=float("nan"))


# ------------------------------------------------------------------ post-processing reference


def ref_postprocess(scores, codes, anchors, image_sizes, level_sizes, score_thresh, topk, nms_thresh, max_det,
                    weights, clip, min_size, nms_by_level, topk_per_class=-1):
    """The pipeline as a composition of pydetops ops (decode_boxes, remove_small_boxes, batched_nms)."""
    nb, na, nc = scores.shape
    per_class = codes.shape[2] == 4 * nc and nc != 1
    levels = level_sizes or [na]
    out = []
    for b in range(nb):
        anc = anchors if anchors.dim() == 2 else anchors[b]
        all_boxes, all_scores, all_labels, all_groups = [], [], [], []
        start = 0
        for lvl, size in enumerate(levels):
            s = scores[b, start:start + size].reshape(-1)
            idx = torch.where(s > score_thresh)[0]
            if topk_per_class >= 0:  # each class's first topk_per_class in (score desc, index asc) order
                by_class = []
                for cls in range(nc):
                    ci = idx[idx % nc == cls]
                    by_class.append(ci[torch.argsort(s[ci], descending=True, stable=True)[:topk_per_class]])
                idx = torch.sort(torch.cat(by_class)).values
            order = torch.argsort(s[idx], descending=True, stable=True)
            if topk >= 0:
                order = order[:topk]
            flat = idx[order]
            a = flat // nc + start
            c = flat % nc
            if per_class:
                cols = (4 * c)[:, None] + torch.arange(4)
                code = codes[b, a][torch.arange(len(a))[:, None], cols]
            else:
                code = codes[b, a, :4]
            boxes = P.decode_boxes(code, anc[a].to(codes.dtype), weights, clip, image_size=image_sizes[b])
            keep = P.remove_small_boxes(boxes, min_size)
            all_boxes.append(boxes[keep])
            all_scores.append(s[flat][keep])
            all_labels.append(c[keep])
            all_groups.append((lvl * nc + c if nms_by_level else c)[keep])
            start += size
        boxes, sc, labels, groups = (torch.cat(x) for x in (all_boxes, all_scores, all_labels, all_groups))
        keep = P.batched_nms(boxes, sc, groups, nms_thresh)[:max_det]
        out.append((boxes[keep], sc[keep], labels[keep]))
    return out


def make_detection_inputs(nb=2, levels=(300, 80, 20), nc=5, per_class=False, shared=True, dtype=torch.float32,
                          tie_scores=False):
    na = sum(levels)
    anchors = random_boxes(na if shared else nb * na, scale=200, max_side=60).reshape(-1, na, 4)
    anchors = anchors[0] if shared else anchors
    scores = torch.rand(nb, na, nc, dtype=torch.float64)
    if tie_scores:
        scores = (scores * 8).floor() / 8  # many exactly equal scores
    codes = torch.randn(nb, na, 4 * nc if per_class else 4, dtype=torch.float64) * 0.3
    return scores.to(dtype), codes.to(dtype), anchors.to(dtype)


def _check_postprocess(device, scores, codes, anchors, image_sizes, level_sizes, score_thresh=0.05, topk=100,
                       nms_thresh=0.5, max_det=50, weights=(1.0, 1.0, 1.0, 1.0), clip=math.log(1000.0 / 16),
                       min_size=1.0, nms_by_level=False, topk_per_class=-1):
    ref = ref_postprocess(scores, codes, anchors, image_sizes, level_sizes, score_thresh, topk, nms_thresh, max_det,
                          weights, clip, min_size, nms_by_level, topk_per_class)
    boxes, sc, labels, counts = P.detection_postprocess_padded(
        scores.to(device), codes.to(device), anchors.to(device), image_sizes, level_sizes, score_thresh, topk,
        nms_thresh, max_det, weights, clip, min_size, nms_by_level, topk_per_class)
    assert boxes.shape == (scores.shape[0], max_det, 4) and sc.shape == labels.shape == (scores.shape[0], max_det)
    assert boxes.dtype == codes.dtype and sc.dtype == scores.dtype and labels.dtype == torch.int64
    for b, (rb, rs, rl) in enumerate(ref):
        k = int(counts[b])
        assert k == len(rb), (b, k, len(rb))
        assert torch.equal(boxes[b, :k].cpu(), rb) and torch.equal(sc[b, :k].cpu(), rs)
        assert torch.equal(labels[b, :k].cpu(), rl)
        assert (labels[b, k:] == -1).all() and (sc[b, k:] == 0).all() and (boxes[b, k:] == 0).all()
    lst = P.detection_postprocess(scores.to(device), codes.to(device), anchors.to(device), image_sizes, level_sizes,
                                  score_thresh, topk, nms_thresh, max_det, weights, clip, min_size, nms_by_level,
                                  topk_per_class)
    for b, d in enumerate(lst):
        assert torch.equal(d["boxes"], boxes[b, :int(counts[b])]) and torch.equal(d["labels"], labels[b, :int(counts[b])])
    return counts


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_postprocess_random(device, per_class, shared):
    scores, codes, anchors = make_detection_inputs(per_class=per_class, shared=shared)
    counts = _check_postprocess(device, scores, codes, anchors, [(180, 200), (150, 120)], [300, 80, 20])
    assert (counts > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_postprocess_ties_weights_and_options(device, dtype):
    scores, codes, anchors = make_detection_inputs(nb=3, nc=3, per_class=True, dtype=dtype, tie_scores=True)
    sizes = [(200, 200), (64, 300), (100, 50)]
    _check_postprocess(device, scores, codes, anchors, sizes, [300, 80, 20], score_thresh=0.3, topk=40,
                       weights=(10.0, 10.0, 5.0, 5.0), max_det=30)
    _check_postprocess(device, scores, codes, anchors, sizes, [300, 80, 20], topk=-1, nms_thresh=0.3, max_det=1000)
    _check_postprocess(device, scores, codes, anchors, sizes, None, topk=500, nms_by_level=True, min_size=0.0)
    _check_postprocess(device, scores, codes, anchors, sizes, [300, 80, 20], nms_by_level=True, max_det=5)
    _check_postprocess(device, scores, codes, anchors, sizes, [300, 0, 100], topk=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_postprocess_topk_per_class(device, dtype):
    # SSD's per-class cap, alone and with the per-level one; ties (scores in steps of 1/8) broken by the index
    scores, codes, anchors = make_detection_inputs(nb=2, levels=(300, 80, 20), nc=4, per_class=True, dtype=dtype,
                                                   tie_scores=True)
    sizes = [(200, 200), (120, 90)]
    for per_class, topk, levels in ((7, -1, None), (7, 12, [300, 80, 20]), (0, -1, None), (30, 50, [300, 80, 20]),
                                    (1000, -1, None)):
        counts = _check_postprocess(device, scores, codes, anchors, sizes, levels, score_thresh=0.1, topk=topk,
                                    max_det=300, topk_per_class=per_class)
        assert (counts > 0).all() == (per_class > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_postprocess_large_levels(device, dtype):
    # levels larger than the CPU scan's chunk (65536 pairs), lengths not multiples of the SIMD width,
    # scores rounded to dtype (ties, values at the threshold), NaN and -inf among them
    g = torch.Generator().manual_seed(3)
    levels, nc = [9001, 2203, 7], 13
    na = sum(levels)
    scores = (torch.rand(2, na, nc, generator=g) ** 6).to(dtype)
    scores[0, 17, 3] = float("nan")
    scores[1, 4000:4100] = float("-inf")
    scores[0, 100:110, :] = 0.05  # exactly the threshold: does not pass
    codes = (torch.randn(2, na, 4, generator=g) * 0.2).to(dtype)
    anchors = random_boxes(na, scale=300, max_side=50).to(dtype)
    counts = _check_postprocess(device, scores, codes, anchors, [(300, 320), (310, 300)], levels, score_thresh=0.05,
                                topk=4000, max_det=400, min_size=0.0)
    assert (counts > 100).all()
    _check_postprocess(device, scores, codes, anchors, [(300, 320), (310, 300)], None, score_thresh=0.5, topk=-1,
                       max_det=200, topk_per_class=60, min_size=0.0)


def test_postprocess_selection_against_a_misleading_sample(device):
    # The CPU kernel's top-k pre-filters with a pivot from 256 evenly spaced candidates: here exactly
    # those score highest, so the pivot keeps too few and the kernel must fall back to the full selection.
    na, k = 4096, 300
    scores = torch.rand(1, na, 1, dtype=torch.float64) * 0.5
    scores[0, (torch.arange(256) * na) // 256, 0] = 0.9 + torch.rand(256, dtype=torch.float64) * 0.1
    codes = torch.zeros(1, na, 4, dtype=torch.float64)
    anchors = random_boxes(na, scale=2000, max_side=20)
    for per_class, topk in ((k, -1), (-1, k)):
        counts = _check_postprocess(device, scores.float(), codes.float(), anchors.float(), [(2100, 2100)], None,
                                    score_thresh=float("-inf"), topk=topk, nms_thresh=0.9, max_det=k,
                                    topk_per_class=per_class, min_size=0.0)
        assert counts.tolist() == [k]


def test_postprocess_rpn_like(device):
    # One class (objectness), levels, NMS per level, a large top-k and no score threshold.
    scores, codes, anchors = make_detection_inputs(nb=2, levels=(600, 150, 40), nc=1)
    _check_postprocess(device, scores, codes, anchors, [(250, 260), (260, 250)], [600, 150, 40],
                       score_thresh=float("-inf"), topk=2000, nms_thresh=0.7, max_det=300, min_size=1e-3,
                       nms_by_level=True)


def test_postprocess_empty_images(device):
    scores, codes, anchors = make_detection_inputs(nb=3)
    scores[1] = 0.01                      # below the threshold
    scores[2, :, :] = float("-inf")       # padding
    scores[0, 5:, :] = float("nan")       # NaN never passes
    counts = _check_postprocess(device, scores, codes, anchors, [(200, 200)] * 3, [300, 80, 20])
    assert counts[1] == 0 and counts[2] == 0 and counts[0] > 0
    # zero-size image: every box is clipped to a line and removed by min_size
    counts = _check_postprocess(device, scores, codes, anchors, [(0, 200), (200, 0), (0, 0)], [300, 80, 20])
    assert counts.tolist() == [0, 0, 0]
    # no anchors, no images, max_det 0
    b, s, l, c = P.detection_postprocess_padded(scores[:, :0].to(device), codes[:, :0].to(device),
                                                anchors[:0].to(device), [(10, 10)] * 3)
    assert b.shape == (3, 100, 4) and c.tolist() == [0, 0, 0]
    b, s, l, c = P.detection_postprocess_padded(scores[:0].to(device), codes[:0].to(device), anchors.to(device), [])
    assert b.shape == (0, 100, 4)
    b, s, l, c = P.detection_postprocess_padded(scores.to(device), codes.to(device), anchors.to(device),
                                                [(10, 10)] * 3, max_det=0)
    assert b.shape == (3, 0, 4) and c.tolist() == [0, 0, 0]


def test_postprocess_identical_boxes(device):
    # Identical anchors and codes: equal boxes suppress each other within a class only.
    anchors = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(6, 1)
    scores = torch.tensor([[[0.9, 0.9], [0.9, 0.8], [0.7, 0.9], [0.6, 0.6], [0.9, 0.9], [0.2, 0.95]]])
    codes = torch.zeros(1, 6, 4)
    counts = _check_postprocess(device, scores, codes, anchors, [(100, 100)], None, max_det=10)
    assert counts.tolist() == [2]


@pytest.mark.parametrize("nb, levels, nc, per_class", [(4, (300, 80, 20), 5, 50), (1, (50000, 10000), 21, 50),
                                                       (1, (50000, 10000), 21, -1)])
def test_postprocess_thread_count_independent(nb, levels, nc, per_class):
    # the larger cases: one image whose scan (1.26 M pairs) and per-class cap are split over the threads
    scores, codes, anchors = make_detection_inputs(nb=nb, levels=levels, nc=nc, tie_scores=True)
    args = (scores, codes, anchors, [(200, 200)] * nb, list(levels), 0.05, 1000, 0.5, 100, (1.0, 1.0, 1.0, 1.0),
            math.log(1000.0 / 16), 0.0, False, per_class)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = P.detection_postprocess_padded(*args)
        torch.set_num_threads(max(2, old))
        b = P.detection_postprocess_padded(*args)
    finally:
        torch.set_num_threads(old)
    assert int(a[3].min()) > 0
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_postprocess_bad_input(device):
    scores, codes, anchors = (t.to(device) for t in make_detection_inputs(nb=2, levels=(10,), nc=3))
    sizes = [(50, 50)] * 2
    with pytest.raises(ValueError, match="scores"):
        P.detection_postprocess_padded(scores[0], codes, anchors, sizes)
    with pytest.raises(ValueError, match="codes"):
        P.detection_postprocess_padded(scores, codes[..., :3], anchors, sizes)
    with pytest.raises(ValueError, match="anchors"):
        P.detection_postprocess_padded(scores, codes, anchors[:5], sizes)
    with pytest.raises(ValueError, match="level_sizes"):
        P.detection_postprocess_padded(scores, codes, anchors, sizes, [4, 4])
    with pytest.raises(ValueError, match="image_sizes"):
        P.detection_postprocess_padded(scores, codes, anchors, sizes[:1])
    with pytest.raises(ValueError, match="nms_thresh"):
        P.detection_postprocess_padded(scores, codes, anchors, sizes, nms_thresh=-0.1)
    with pytest.raises(ValueError, match="max_det"):
        P.detection_postprocess_padded(scores, codes, anchors, sizes, max_det=-1)
    with pytest.raises(ValueError, match="weights"):
        P.detection_postprocess_padded(scores, codes, anchors, sizes, weights=(1.0, 0.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="scores"):
        P.detection_postprocess_padded(scores.long(), codes, anchors, sizes)
    for bad in (2.5, True, None):
        with pytest.raises(TypeError, match="topk_per_class"):
            P.detection_postprocess_padded(scores, codes, anchors, sizes, topk_per_class=bad)


# ------------------------------------------------------------------ opcheck / compile / script


def test_opcheck(device):
    anchors, gt = random_boxes(60).float().to(device), random_boxes(5).float().to(device)
    torch.library.opcheck(torch.ops.pydetops.match_boxes.default, (anchors, gt, 0.7, 0.3, True))
    torch.library.opcheck(torch.ops.pydetops.match_boxes.default, (anchors, gt[:0], 0.5, 0.5, False))
    x, t = (v.to(device) for v in focal_inputs((5, 4), soft=True))
    for reduction in ("none", "mean", "sum"):
        torch.library.opcheck(torch.ops.pydetops.sigmoid_focal_loss.default,
                              (x.requires_grad_(), t, 0.25, 2.0, reduction))
    scores, codes, anch = (v.to(device) for v in make_detection_inputs(nb=2, levels=(30, 10), nc=3, per_class=True))
    torch.library.opcheck(torch.ops.pydetops.detection_postprocess.default,
                          (scores, codes, anch, [30, 10], [60, 60, 50, 70], 0.2, 10, 0.5, 20,
                           [1.0, 1.0, 1.0, 1.0], 4.0, 0.5, False))
    torch.library.opcheck(torch.ops.pydetops.detection_postprocess.default,
                          (scores, codes, anch, [30, 10], [60, 60, 50, 70], 0.2, 10, 0.5, 20,
                           [1.0, 1.0, 1.0, 1.0], 4.0, 0.5, False, 3))


def test_torch_compile_fullgraph(device):
    anchors, gt = random_boxes(60).float().to(device), random_boxes(5).float().to(device)
    x, t = (v.float().to(device) for v in focal_inputs((5, 4)))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(a, g, x, t):
        m, v = P.match_boxes(a, g, 0.7, 0.3, True)
        return m + 1, v * 2, P.sigmoid_focal_loss(x, t, reduction="sum")

    m, v, loss = f(anchors, gt, x, t)
    rm, rv = P.match_boxes(anchors, gt, 0.7, 0.3, True)
    assert torch.equal(m, rm + 1) and torch.equal(v, rv * 2)
    torch.testing.assert_close(loss, P.sigmoid_focal_loss(x, t, reduction="sum"))

    scores, codes, anch = (v.to(device) for v in make_detection_inputs(nb=2, levels=(30, 10), nc=3))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def g(s, c, a):
        boxes, sc, labels, counts = P.detection_postprocess_padded(s, c, a, [(60, 60), (50, 70)], [30, 10])
        return boxes * 2, sc, labels, counts  # fixed shapes: no data-dependent size

    got = g(scores, codes, anch)
    want = P.detection_postprocess_padded(scores, codes, anch, [(60, 60), (50, 70)], [30, 10])
    assert torch.equal(got[0], want[0] * 2) and all(torch.equal(a, b) for a, b in zip(got[1:], want[1:]))


@pytest.mark.torchscript
def test_torch_jit_script(device):
    anchors, gt = random_boxes(60).to(device), random_boxes(5).to(device)
    s_match = torch.jit.script(P.match_boxes)
    assert torch.equal(s_match(anchors, gt, 0.7, 0.3, True)[0], P.match_boxes(anchors, gt, 0.7, 0.3, True)[0])
    s_focal = torch.jit.script(P.sigmoid_focal_loss)
    x, t = (v.to(device) for v in focal_inputs((5, 4)))
    assert torch.equal(s_focal(x, t, 0.25, 2.0, "mean"), P.sigmoid_focal_loss(x, t, 0.25, 2.0, "mean"))
    s_post = torch.jit.script(P.detection_postprocess)
    scores, codes, anch = (v.to(device) for v in make_detection_inputs(nb=2, levels=(30, 10), nc=3))
    a = s_post(scores, codes, anch, [(60, 60), (50, 70)], [30, 10])
    b = P.detection_postprocess(scores, codes, anch, [(60, 60), (50, 70)], [30, 10])
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a, b))
