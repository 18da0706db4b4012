"""Autocast: inside torch.autocast the box and RoI ops run in float32 and return the dtype of
their first tensor argument (torchvision's autocast policy), so half features may meet float32
boxes. Each result must equal the same op called by hand on float32 copies, then cast."""
import pytest
import torch

from pydetops import ops


def _half(device):
    return torch.float16 if device == "cuda" else torch.bfloat16


def _autocast(device):
    return torch.autocast(device_type=device, dtype=_half(device))


def _rois(device, k=12, size=40.0, batch=2):
    xy = torch.rand(k, 2, device=device) * size
    wh = torch.rand(k, 2, device=device) * size / 2 + 1
    idx = torch.randint(0, batch, (k, 1), device=device).float()
    return torch.cat([idx, xy, xy + wh], dim=1)


ROI_OPS = {
    "roi_align": lambda x, b: ops.roi_align(x, b, 3, 0.5, 2, aligned=True),
    "roi_pool": lambda x, b: ops.roi_pool(x, b, (2, 3), 0.5),
    "ps_roi_align": lambda x, b: ops.ps_roi_align(x, b, 3, 0.5, 2),
    "ps_roi_pool": lambda x, b: ops.ps_roi_pool(x, b, 3, 0.5),
    "spp_pool": lambda x, b: ops.spp_pool(x, b, [3, 1], 0.5),
}


@pytest.mark.parametrize("name", sorted(ROI_OPS))
def test_roi_ops_take_half_features_with_float32_boxes(device, name):
    op, half = ROI_OPS[name], _half(device)
    x = torch.randn(2, 18, 24, 20, device=device).to(half)
    boxes = _rois(device)
    expected = op(x.float(), boxes).to(half)
    with _autocast(device):
        got = op(x, boxes)
    assert got.dtype == half
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", sorted(ROI_OPS))
def test_roi_ops_gradient_through_autocast(device, name):
    op, half = ROI_OPS[name], _half(device)
    x = torch.randn(2, 18, 24, 20, device=device).to(half)
    boxes = _rois(device)
    xa = x.clone().requires_grad_(True)
    with _autocast(device):
        out = op(xa, boxes)
    g = torch.randn(out.shape, device=device).to(half)
    out.backward(g)
    xf = x.float().requires_grad_(True)
    op(xf, boxes).backward(g.float())
    assert xa.grad.dtype == half
    torch.testing.assert_close(xa.grad, xf.grad.to(half))


def test_float32_and_float64_inputs_unchanged(device):
    x = torch.randn(2, 6, 16, 16, device=device, dtype=torch.float64)
    boxes = _rois(device, size=30.0).double()
    ref64 = ops.roi_align(x, boxes, 2, 1.0, 2)
    ref32 = ops.roi_align(x.float(), boxes.float(), 2, 1.0, 2)
    with _autocast(device):
        got64 = ops.roi_align(x, boxes, 2, 1.0, 2)
        got32 = ops.roi_align(x.float(), boxes.float(), 2, 1.0, 2)
    assert got64.dtype == torch.float64 and torch.equal(got64, ref64)
    assert got32.dtype == torch.float32 and torch.equal(got32, ref32)


def test_nms_family_in_float32(device):
    half = _half(device)
    xy = torch.rand(300, 2, device=device) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, device=device) * 60 + 1], dim=1).to(half)
    scores = torch.rand(300, device=device)
    idxs = torch.randint(0, 5, (300,), device=device)
    with _autocast(device):
        keep = ops.nms(boxes, scores, 0.5)
        keep_b = ops.batched_nms(boxes, scores, idxs, 0.5)
        keep_s, scores_s = ops.soft_nms(boxes, scores, 0.3, 0.5, 0.01, "linear")
    assert torch.equal(keep, ops.nms(boxes.float(), scores, 0.5))
    assert torch.equal(keep_b, ops.batched_nms(boxes.float(), scores, idxs, 0.5))
    ref_keep, ref_scores = ops.soft_nms(boxes.float(), scores, 0.3, 0.5, 0.01, "linear")
    assert torch.equal(keep_s, ref_keep)
    assert scores_s.dtype == half and torch.equal(scores_s, ref_scores.to(half))


def test_box_iou_and_coding_in_float32(device):
    half = _half(device)
    a = torch.rand(50, 4, device=device) * 100
    a[:, 2:] += a[:, :2] + 1
    b = torch.rand(40, 4, device=device) * 100
    b[:, 2:] += b[:, :2] + 1
    codes = torch.randn(50, 4, device=device) * 0.3
    with _autocast(device):
        iou = ops.box_iou(a.to(half), b)
        giou = ops.generalized_box_iou(a.to(half), b.to(half))
        decoded = ops.decode_boxes(codes.to(half), a, (10.0, 10.0, 5.0, 5.0))
    assert iou.dtype == half and torch.equal(iou, ops.box_iou(a.to(half).float(), b).to(half))
    assert giou.dtype == half
    assert torch.equal(giou, ops.generalized_box_iou(a.to(half).float(), b.to(half).float()).to(half))
    expected = ops.decode_boxes(codes.to(half).float(), a, (10.0, 10.0, 5.0, 5.0)).to(half)
    assert decoded.dtype == half and torch.equal(decoded, expected)


def test_multi_scale_roi_align_with_half_features(device):
    half = _half(device)
    pooler = ops.MultiScaleRoIAlign(["p2", "p3", "p4"], 4, 2)
    feats = {name: torch.randn(2, 5, 64 // s, 64 // s, device=device).to(half)
             for name, s in (("p2", 4), ("p3", 8), ("p4", 16))}
    sizes = [(256, 256), (256, 256)]
    boxes = []
    for _ in range(2):
        xy = torch.rand(15, 2, device=device) * 180
        boxes.append(torch.cat([xy, xy + torch.rand(15, 2, device=device) * 70 + 8], dim=1))
    expected = pooler({k: v.float() for k, v in feats.items()}, boxes, sizes).to(half)
    with _autocast(device):
        got = pooler(feats, boxes, sizes)
    assert got.dtype == half and torch.equal(got, expected)


def test_torch_compile_under_autocast(device):
    half = _half(device)
    x = torch.randn(2, 8, 20, 20, device=device).to(half)
    boxes = _rois(device, size=30.0)

    def f(x, boxes):
        return ops.roi_align(x, boxes, 3, 0.5, 2)

    with _autocast(device):
        eager = f(x, boxes)
        compiled = torch.compile(f, fullgraph=True, backend="eager")(x, boxes)
    assert compiled.dtype == eager.dtype == half
    assert torch.equal(compiled, eager)


def test_conv_transpose2d_takes_half_input_with_float32_weight(device):
    # Inside autocast a decoder's input is the previous layer's half output while its own
    # weight stays float32: the op runs in float32 and returns the input's dtype.
    half = _half(device)
    x = torch.randn(2, 4, 5, 6, device=device).to(half).requires_grad_(True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)
    with _autocast(device):
        y = ops.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
    xf = x.detach().float().requires_grad_(True)
    wf = w.detach().clone().requires_grad_(True)
    bf = b.detach().clone().requires_grad_(True)
    ref = ops.conv_transpose2d(xf, wf, bf, stride=2, padding=1, output_padding=1)
    assert y.dtype == half and y.shape == (2, 3, 10, 12)
    assert torch.equal(y, ref.to(half))
    g = torch.randn_like(ref)
    y.backward(g.to(half))
    ref.backward(g.to(half).float())
    assert x.grad.dtype == half and w.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, xf.grad.to(half))
    torch.testing.assert_close(w.grad, wf.grad)


def test_detection_head_ops_keep_float32_outputs(device):
    half = _half(device)
    logits = torch.randn(30, 5, device=device)
    targets = (torch.rand(30, 5, device=device) > 0.8).float()
    anchors = torch.rand(40, 4, device=device) * 50
    anchors[:, 2:] += anchors[:, :2] + 2
    gt = anchors[:3].clone() + 0.5
    with _autocast(device):
        loss = ops.sigmoid_focal_loss(logits.to(half), targets, reduction="sum")
        matched = ops.match_boxes(anchors.to(half), gt, 0.5, 0.4)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, ops.sigmoid_focal_loss(logits.to(half).float(), targets, reduction="sum"))
    ref = ops.match_boxes(anchors.to(half).float(), gt, 0.5, 0.4)
    for got, want in zip(matched if isinstance(matched, tuple) else (matched,),
                         ref if isinstance(ref, tuple) else (ref,)):
        assert got.dtype == want.dtype and torch.equal(got, want)
