"""match_boxes, sigmoid_focal_loss and detection_postprocess against the real torchvision.

Skips as a whole where torchvision does not import or its compiled ops do not load
(CI runs it in its torch 2.14.1 + torchvision 0.29.1 stage).
"""
import math

import pytest
import torch

import pydetops.ops as P


def _load_torchvision():
    try:
        import torchvision
        from torchvision import ops as tv_ops

        tv_ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)  # its C++ ops must load
        return torchvision
    except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}", allow_module_level=True)


torchvision = _load_torchvision()
tv = torchvision.ops
from torchvision.models.detection import _utils as tv_det_utils  # noqa: E402


def random_boxes(n, scale=100.0, max_side=40.0, dtype=torch.float32, integer=False):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * max_side + 0.5
    b = torch.cat([xy, xy + wh], 1)
    return (b.round() if integer else b).to(dtype)


def tv_match(anchors, gt, high, low, allow):
    return tv_det_utils.Matcher(high, low, allow)(tv.box_iou(gt, anchors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("thr", [(0.7, 0.3), (0.5, 0.5), (0.5, 0.4)])
def test_matcher_random(dtype, allow, thr):
    anchors = random_boxes(2000, scale=300, dtype=dtype)
    gt = random_boxes(15, scale=300, max_side=90, dtype=dtype)
    m, v = P.match_boxes(anchors, gt, thr[0], thr[1], allow)
    assert torch.equal(m, tv_match(anchors, gt, thr[0], thr[1], allow))
    assert torch.equal(v, tv.box_iou(gt, anchors).max(dim=0).values)


@pytest.mark.parametrize("allow", [False, True])
def test_matcher_ties_degenerate_and_thresholds(allow):
    c = torch.arange(0, 96, 8.0)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    anchors = torch.cat([torch.stack([xx, yy, xx + s, yy + s], -1).reshape(-1, 4) for s in (16, 32)])
    anchors = torch.cat([anchors, anchors[:30], torch.tensor([[5.0, 5, 5, 5], [0, 0, 0, 0], [3, 3, 1, 1]])])
    gt = torch.tensor([[0, 0, 16, 16], [0, 0, 16, 16], [4, 4, 20, 20], [40, 40, 72, 72], [3, 5, 9, 11],
                       [90, 90, 95, 95], [8, 0, 24, 16], [0, 0, 32, 16], [5, 5, 5, 5]], dtype=torch.float32)
    for hi, lo in [(0.7, 0.3), (0.5, 0.5), (0.25, 0.25), (1.0, 0.0), (0.5, 1 / 3)]:
        for g in (gt, gt[:-1]):
            m, _ = P.match_boxes(anchors, g, hi, lo, allow)
            assert torch.equal(m, tv_match(anchors, g, hi, lo, allow)), (hi, lo)


def test_matcher_empty_ground_truth_as_detectors():
    # torchvision's Matcher raises on an empty matrix; its detectors label every anchor background.
    anchors = random_boxes(10)
    m, v = P.match_boxes(anchors, torch.zeros(0, 4), 0.7, 0.3, True)
    assert m.tolist() == [tv_det_utils.Matcher.BELOW_LOW_THRESHOLD] * 10
    with pytest.raises(ValueError):
        tv_det_utils.Matcher(0.7, 0.3)(torch.zeros(0, 10))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_focal_loss(reduction, alpha, gamma, dtype, tol):
    x = (torch.randn(64, 20, dtype=torch.float64) * 4).to(dtype)
    t = (torch.rand(64, 20) < 0.2).to(dtype)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    to, tt = t.clone().requires_grad_(), t.clone().requires_grad_()
    ours = P.sigmoid_focal_loss(xo, to, alpha, gamma, reduction)
    ref = tv.sigmoid_focal_loss(xt, tt, alpha, gamma, reduction)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    g = torch.rand_like(ours)
    ours.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xo.grad, xt.grad, rtol=tol * 10, atol=tol)
    torch.testing.assert_close(to.grad, tt.grad, rtol=tol * 10, atol=tol)


def test_focal_loss_bad_reduction():
    x = torch.randn(3)
    with pytest.raises(ValueError):
        tv.sigmoid_focal_loss(x, x, reduction="bad")
    with pytest.raises(ValueError, match="reduction"):
        P.sigmoid_focal_loss(x, x, reduction="bad")


def test_postprocess_roi_heads_style():
    # torchvision's RoIHeads.postprocess_detections on one image vs ours on the same
    # softmax scores (background column dropped) and per-class codes.
    torch.manual_seed(0)
    n, c = 300, 6
    proposals = random_boxes(n, scale=300, max_side=120)
    logits = torch.randn(n, c) * 2
    regression = torch.randn(n, 4 * c) * 0.2
    size = (280, 320)
    coder = tv_det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    pred_boxes = coder.decode(regression, [proposals]).reshape(n, c, 4)
    pred_boxes = tv.clip_boxes_to_image(pred_boxes, size)
    probs = torch.softmax(logits, -1)
    boxes = pred_boxes[:, 1:].reshape(-1, 4)
    scores = probs[:, 1:].reshape(-1)
    labels = torch.arange(1, c).repeat(n)
    inds = torch.where(scores > 0.05)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = tv.remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = tv.batched_nms(boxes, scores, labels, 0.5)[:100]
    ref_boxes, ref_scores, ref_labels = boxes[keep], scores[keep], labels[keep]

    out = P.detection_postprocess(probs[None, :, 1:], regression[None, :, 4:], proposals, [size], None, 0.05, -1, 0.5,
                                  100, (10.0, 10.0, 5.0, 5.0), math.log(1000.0 / 16), 1e-2)[0]
    # Equal scores may be ordered differently by torchvision's unstable sort: compare as sets of rows.
    assert len(out["boxes"]) == len(ref_boxes)
    ours = torch.cat([out["boxes"], out["scores"][:, None], (out["labels"] + 1)[:, None].float()], 1)
    ref = torch.cat([ref_boxes, ref_scores[:, None], ref_labels[:, None].float()], 1)
    key = lambda r: r[torch.argsort(r[:, 4] * 1e4 + r[:, 5], stable=True)]  # noqa: E731
    torch.testing.assert_close(key(ours), key(ref), rtol=1e-6, atol=1e-4)
