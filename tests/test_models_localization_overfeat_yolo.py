"""Classification + localization as regression, OverFeat and YOLO v1 (pydetops/models/localization.py,
overfeat.py, yolo.py) and the localization metrics (pydetops/evaluation/localization.py): the model
contract, the losses against plain references written here, the FC -> conv equality on every window,
decoding, bad input, a few seconds of training, and the command-line train / evaluate / predict."""
import json
import math

import pytest
import torch

from pydetops import evaluate, predict, train
from pydetops.checkpoint import load_checkpoint
from pydetops.data import synthetic
from pydetops.evaluation import classification_accuracy, localization_metrics, box_mean_iou, pck
from pydetops.models import MODELS, localization, overfeat, yolo_v1
from pydetops.models.localization import LocalizationNet, localization_loss
from pydetops.models.overfeat import fully_convolutional
from pydetops.models.yolo import build_yolo_targets, yolo_v1_loss


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(model, std=0.05):
    """Random (non-trivial) weights everywhere, so that equalities are not between zeros."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (0.01 if p.dim() == 1 else 0.0))
        for name, b in model.named_buffers():  # BatchNorm statistics too
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------------------
# plain references
# ---------------------------------------------------------------------------


def _iou_ref(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _smooth_l1_ref(d, beta=1.0 / 9):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def _yolo_loss_ref(params, conf, probs, targets, lc, ln, rescore):
    """The paper's loss with Python loops: params [N, S, S, B, 4] (x, y, sqrt w, sqrt h), conf
    [N, S, S, B], probs [N, S, S, C]; targets: relative x1y1x2y2 boxes and labels 1..C."""
    N, S, _, B, _ = params.shape
    C = probs.shape[-1]
    total = {"coord": 0.0, "obj": 0.0, "noobj": 0.0, "class": 0.0}
    for n in range(N):
        owner = {}
        boxes, labels = targets[n]["boxes"].tolist(), targets[n]["labels"].tolist()
        for box, lab in zip(boxes, labels):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            cell = (min(int(cy * S), S - 1), min(int(cx * S), S - 1))
            area = (box[2] - box[0]) * (box[3] - box[1])
            if cell not in owner or area > owner[cell][2]:
                owner[cell] = (box, lab, area)
        for i in range(S):
            for j in range(S):
                resp = -1
                if (i, j) in owner:
                    box, lab, _ = owner[(i, j)]
                    ious = []
                    for b in range(B):
                        x, y, sw, sh = params[n, i, j, b].tolist()
                        pcx, pcy, pw, ph = (j + x) / S, (i + y) / S, sw * sw, sh * sh
                        ious.append(_iou_ref([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], box))
                    resp = max(range(B), key=lambda b: ious[b])
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    tx, ty = cx * S - j, cy * S - i
                    tw, th = math.sqrt(box[2] - box[0]), math.sqrt(box[3] - box[1])
                    x, y, sw, sh = params[n, i, j, resp].tolist()
                    total["coord"] += lc * ((x - tx) ** 2 + (y - ty) ** 2 + (sw - tw) ** 2 + (sh - th) ** 2)
                    target = ious[resp] if rescore else 1.0
                    total["obj"] += (float(conf[n, i, j, resp]) - target) ** 2
                    for c in range(C):
                        total["class"] += (float(probs[n, i, j, c]) - (1.0 if c == lab - 1 else 0.0)) ** 2
                for b in range(B):
                    if b != resp:
                        total["noobj"] += ln * float(conf[n, i, j, b]) ** 2
    return {k: v / N for k, v in total.items()}


# ---------------------------------------------------------------------------
# classification + localization
# ---------------------------------------------------------------------------


def test_localization_contract_and_options():
    imgs = [torch.rand(3, 70, 90), torch.rand(3, 50, 40)]
    targets = [{"boxes": torch.tensor([[10.0, 5.0, 60.0, 40.0]]), "labels": torch.tensor([2]),
                "keypoints": torch.rand(1, 5, 3) * 40},
               {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 30.0, 45.0]]), "labels": torch.tensor([1, 3]),
                "keypoints": torch.rand(2, 5, 3) * 30}]
    for kw in ({}, {"class_agnostic": False, "box_loss": "l2"}, {"num_keypoints": 5}):
        m = localization(4, **kw).train()
        losses = m(imgs, targets)
        want = {"loss_classifier", "loss_box_reg"} | ({"loss_keypoint"} if kw.get("num_keypoints") else set())
        assert set(losses) == want and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        m.eval()
        with torch.no_grad():
            out = m(imgs)
        assert len(out) == 2
        for o, im in zip(out, imgs):
            assert o["boxes"].shape == (1, 4) and o["labels"].dtype == torch.int64 and o["scores"].shape == (1,)
            assert 1 <= int(o["labels"]) <= 3 and 0 < float(o["scores"]) <= 1
            h, w = im.shape[1:]
            assert float(o["boxes"][0, 2]) <= w and float(o["boxes"][0, 3]) <= h and float(o["boxes"].min()) >= 0
            if kw.get("num_keypoints"):
                assert o["keypoints"].shape == (1, 5, 3) and bool((o["keypoints"][..., 2] == 1).all())
            else:
                assert "keypoints" not in o
    assert "keypoints" in localization.optional_target_fields


def test_localization_targets_are_codes_against_the_image():
    m = localization(4, num_keypoints=5)
    b = torch.tensor([[3.0, 4.0, 30.0, 45.0], [10.0, 10.0, 20.0, 20.0]])
    kps = torch.rand(2, 5, 3) * 40
    labels, codes, rel = m.select_targets([{"boxes": b, "labels": torch.tensor([3, 1]), "keypoints": kps}], [(50, 40)])
    # the larger object; (dx, dy, dw, dh) against the box (0, 0, 40, 50)
    W, H = 40.0, 50.0
    want = [((3 + 30) / 2 - W / 2) / W, ((4 + 45) / 2 - H / 2) / H, math.log(27 / W), math.log(41 / H)]
    assert labels.tolist() == [3]
    torch.testing.assert_close(codes[0], torch.tensor(want), rtol=0, atol=1e-6)
    torch.testing.assert_close(rel[0, :, 0], kps[0, :, 0] / W)
    torch.testing.assert_close(rel[0, :, 1], kps[0, :, 1] / H)


def test_localization_loss_is_the_weighted_sum_of_plain_references():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, generator=g)
    labels = torch.tensor([2, 0, 3])  # the background row has no box loss
    pred = torch.randn(3, 4, 4, generator=g) * 0.3  # per class
    tgt = torch.randn(3, 4, generator=g) * 0.3
    kp_pred = torch.rand(3, 2, 2, generator=g)
    vis = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]], [[2.0], [1.0]]])
    kp_tgt = torch.cat([torch.rand(3, 2, 2, generator=g), vis], -1)
    for kind in ("smooth_l1", "l2"):
        out = localization_loss(logits, pred, labels, tgt, kind, 2.5, kp_pred, kp_tgt, 0.75)
        ce = sum(-math.log(math.exp(logits[i, labels[i]]) / sum(math.exp(v) for v in logits[i])) for i in range(3)) / 3
        f = _smooth_l1_ref if kind == "smooth_l1" else (lambda d: d * d)
        box = sum(f(float(pred[i, labels[i], k] - tgt[i, k])) for i in (0, 2) for k in range(4)) / 3
        kp = sum(f(float(kp_pred[i, j, k] - kp_tgt[i, j, k])) for i in (0, 2) for j in range(2) for k in range(2)
                 if kp_tgt[i, j, 2] > 0) / 3
        assert float(out["loss_classifier"]) == pytest.approx(ce, rel=1e-5)
        assert float(out["loss_box_reg"]) == pytest.approx(2.5 * box, rel=1e-5)
        assert float(out["loss_keypoint"]) == pytest.approx(0.75 * kp, rel=1e-5)
    # class-agnostic: one box per row
    out = localization_loss(logits, pred[:, 0], labels, tgt, "l2", 1.0)
    assert set(out) == {"loss_classifier", "loss_box_reg"}
    assert float(out["loss_box_reg"]) == pytest.approx(
        sum(float(pred[i, 0, k] - tgt[i, k]) ** 2 for i in (0, 2) for k in range(4)) / 3, rel=1e-5)


def test_localization_bad_input():
    m = localization(4).train()
    img = [torch.rand(3, 32, 32)]
    with pytest.raises(ValueError, match="labels"):
        m(img, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match=r"targets\[0\]: localization needs an object"):
        m(img, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(ValueError, match="keypoints"):
        localization(4, num_keypoints=5).train()(img, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]),
                                                         "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="images"):
        m.eval()([])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        m.eval()([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="backbone"):
        localization(4, backbone="vgg99")
    with pytest.raises(ValueError, match="image_size"):
        localization(4, image_size=16)  # the OverFeat-like trunk needs more than 16 pixels
    with pytest.raises(ValueError, match="box_loss"):
        localization(4, box_loss="l3")
    m.eval()
    with torch.no_grad():  # an image smaller than the trunk's stride is resized: a defined result
        out = m([torch.rand(3, 3, 5)])[0]
    assert out["boxes"].shape == (1, 4) and float(out["boxes"][0, 2]) <= 5 and float(out["boxes"][0, 3]) <= 3


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    assert classification_accuracy(torch.tensor([1, 2, 3, 3]), torch.tensor([1, 2, 2, 3])) == 0.75
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 1.0, 1.0]])
    assert box_mean_iou(pred, gt) == pytest.approx((1.0 + 50.0 / 150.0 + 0.0) / 3)
    # two objects, three points; ref sizes 10 and 100, alpha 0.2 -> radii 2 and 20
    g = torch.tensor([[[0.0, 0.0, 2.0], [5.0, 5.0, 2.0], [9.0, 9.0, 0.0]],
                      [[50.0, 50.0, 1.0], [10.0, 10.0, 2.0], [0.0, 0.0, 2.0]]])
    p = torch.tensor([[[1.0, 1.0], [8.0, 5.0], [9.0, 9.0]],  # 1.41 ok, 3 no, invisible
                      [[50.0, 69.0], [30.0, 10.0], [15.0, 15.0]]])  # 19 ok, 20 ok (<=), 21.2 no
    assert pck(p, g, torch.tensor([10.0, 100.0]), 0.2) == pytest.approx(3 / 5)
    assert pck(p, g * torch.tensor([1.0, 1.0, 0.0]), torch.tensor([10.0, 100.0])) is None
    with pytest.raises(ValueError, match="pred_boxes"):
        box_mean_iou(pred, gt[:2])
    with pytest.raises(ValueError, match="ref_size"):
        pck(p, g, torch.tensor([1.0]))


def test_localization_metrics_on_coco_dicts():
    kp = lambda x, y: [x, y, 2, x + 10, y, 2]  # noqa: E731
    gt = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
          "categories": [{"id": 1}, {"id": 7}],
          "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "keypoints": kp(0, 0)},
                          {"image_id": 2, "category_id": 7, "bbox": [0, 0, 20, 10], "keypoints": kp(0, 0)},
                          {"image_id": 3, "category_id": 7, "bbox": [0, 0, 10, 10], "keypoints": kp(0, 0)},
                          {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9, "keypoints": kp(1, 0)},
            {"image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 10], "score": 0.2, "keypoints": kp(50, 50)},
            {"image_id": 2, "category_id": 1, "bbox": [10, 0, 10, 10], "score": 0.5, "keypoints": kp(0, 5)}]
    m = localization_metrics(gt, dets)
    # image 1: right class, IoU 1, both points within 0.2 * 10; image 2: wrong class, IoU 1/2, points 5 > 4
    # off; image 3 (its crowd box ignored): no detection
    assert m["images"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["mean_IoU"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert m["PCK@0.2"] == pytest.approx(2 / 6)
    gt["annotations"].append({"image_id": 1, "category_id": 7, "bbox": [30, 30, 5, 5]})
    assert localization_metrics(gt, dets) is None  # not one object per image


# ---------------------------------------------------------------------------
# OverFeat
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("class_agnostic", [True, False])
def test_overfeat_convolutional_network_equals_the_fc_network_on_every_window(class_agnostic):
    net = _randomize(LocalizationNet(4, image_size=40, hidden=32, class_agnostic=class_agnostic,
                                     num_keypoints=2)).eval()
    dense = fully_convolutional(net)
    assert dense.stride == 8 and dense.window == 40
    x = torch.randn(1, 3, 40 + 8 * 3, 40 + 8 * 2, dtype=torch.float64)
    net.double()
    dense = fully_convolutional(net)
    with torch.no_grad():
        assert dense(x[..., :40, :40])["class_logits"].shape[-2:] == (1, 1)  # the seeds' 14x14 -> 1x1
        assert dense(x[..., :48, :48])["class_logits"].shape[-2:] == (2, 2)  # 16x16 -> 2x2
        out = dense(x)
        assert out["class_logits"].shape == (1, 4, 4, 3)
        for i in range(4):
            for j in range(3):
                ref = net.heads(x[..., i * 8:i * 8 + 40, j * 8:j * 8 + 40])
                torch.testing.assert_close(out["class_logits"][0, :, i, j], ref["class_logits"][0],
                                           rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(out["boxes"][0, :, i, j], ref["boxes"][0].reshape(-1), rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(out["keypoints"][0, :, i, j], ref["keypoints"][0].reshape(-1),
                                           rtol=1e-9, atol=1e-9)
    # weights copied, not shared: changing the FC network later does not change the converted one
    with torch.no_grad():
        net.fc6.weight.add_(1.0)
    assert not torch.equal(dense.fc6.weight.flatten(1), net.fc6.weight)


def test_overfeat_detects_from_its_windows_and_scales():
    torch.manual_seed(0)
    m = _randomize(overfeat(4, image_size=40, hidden=32, scales=(1.0, 2.0), min_size=64,
                            score_thresh=0.0, nms_thresh=1.0, detections_per_img=10 ** 6), std=0.02).eval()
    img = torch.rand(3, 64, 80)
    with torch.no_grad():
        out = m([img])[0]
        wins, probs, codes = m.dense_windows(fully_convolutional(m.net), img)
    # scale 1: 64 x 80 -> 4 x 6 windows; scale 2: 128 x 160 -> 12 x 16 windows (of 20 x 20 input pixels)
    assert wins.shape == (4 * 6 + 12 * 16, 4) and probs.shape == (wins.shape[0], 4)
    torch.testing.assert_close(wins[0], torch.tensor([0.0, 0.0, 40.0, 40.0]))
    torch.testing.assert_close(wins[6 + 1], torch.tensor([8.0, 8.0, 48.0, 48.0]))
    torch.testing.assert_close(wins[24 + 16 + 2], torch.tensor([8.0, 4.0, 28.0, 24.0]))
    # no threshold, no suppression: every (window, class) is a detection, decoded against its window
    assert out["boxes"].shape[0] == wins.shape[0] * 3
    from pydetops.ops import decode_boxes
    boxes = decode_boxes(codes, wins, image_size=(64, 80))
    best = int(out["scores"].argmax())
    a, c = divmod(int(probs[:, 1:].argmax()), 3)
    assert int(out["labels"][best]) == c + 1 and float(out["scores"][best]) == pytest.approx(float(probs[a, c + 1]))
    torch.testing.assert_close(out["boxes"][best], boxes[a], rtol=1e-5, atol=1e-4)
    # with NMS, per class
    m.nms_thresh = 0.3
    with torch.no_grad():
        kept = m([img])[0]
    from pydetops.ops import box_iou
    for c in (1, 2, 3):
        b = kept["boxes"][kept["labels"] == c]
        iou = box_iou(b, b) - torch.eye(len(b))
        assert len(b) > 0 and float(iou.max()) <= 0.3 + 1e-6


def test_overfeat_training_windows_and_bad_input():
    torch.manual_seed(1)
    m = overfeat(4, image_size=32, hidden=16, positives_per_image=2, negatives_per_image=3)
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0], [60.0, 50.0, 90.0, 70.0]])
    for _ in range(5):
        wins, labels, tboxes = m.sample_windows(boxes, torch.tensor([1, 3]), 80, 100)
        for w, lab, tb in zip(wins, labels, tboxes):
            assert float(w[2] - w[0]) == pytest.approx(float(w[3] - w[1]))  # square
            assert w[0] >= -1e-4 and w[1] >= -1e-4 and w[2] <= 100 + 1e-4 and w[3] <= 80 + 1e-4
            if lab > 0:  # the object inside its window, 1.15-2x its longer side
                assert bool((tb[:2] >= w[:2] - 1e-4).all() and (tb[2:] <= w[2:] + 1e-4).all())
                side = float(max(tb[2] - tb[0], tb[3] - tb[1]))
                assert 1.15 * side - 1e-3 <= float(w[2] - w[0]) <= 2.0 * side + 1e-3
            else:  # no object more than 25 % inside
                iw = (boxes[:, 2].clamp(max=float(w[2])) - boxes[:, 0].clamp(min=float(w[0]))).clamp(min=0)
                ih = (boxes[:, 3].clamp(max=float(w[3])) - boxes[:, 1].clamp(min=float(w[1]))).clamp(min=0)
                assert bool((iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) <= 0.25).all())
        assert int((labels > 0).sum()) == 2
    m.train()
    imgs = [torch.rand(3, 80, 100), torch.rand(3, 48, 40)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = m(imgs, [{"boxes": boxes, "labels": torch.tensor([1, 3])}, empty])
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    losses = m(imgs[1:], [empty])  # no object: background crops only, no box loss
    assert float(losses["loss_box_reg"].detach()) == 0.0 and float(losses["loss_classifier"].detach()) > 0
    with pytest.raises(ValueError, match="labels"):
        m(imgs[:1], [{"boxes": boxes, "labels": torch.tensor([1, 9])}])
    with pytest.raises(ValueError, match="scales"):
        overfeat(4, scales=())
    with pytest.raises(ValueError, match="num_keypoints"):
        overfeat(4, num_keypoints=3)
    m.eval()
    with torch.no_grad():  # a window larger than the image: upsampled to one window, a defined result
        out = m([torch.rand(3, 10, 12)])[0]
    assert out["boxes"].shape[1] == 4 and bool((out["boxes"][:, 2] <= 12 + 1e-4).all())


# ---------------------------------------------------------------------------
# YOLO v1
# ---------------------------------------------------------------------------


def test_yolo_targets_one_object_per_cell():
    boxes = torch.tensor([[0.05, 0.05, 0.2, 0.2], [0.0, 0.0, 0.45, 0.45], [0.6, 0.1, 0.9, 0.3]])
    cells, gt, params, labels = build_yolo_targets(boxes, torch.tensor([1, 2, 3]), 2)
    # objects 0 and 1 both centre in cell (0, 0): the larger (1) owns it; object 2 in cell (0, 1)
    assert cells.tolist() == [0, 1] and labels.tolist() == [2, 3]
    torch.testing.assert_close(params[0], torch.tensor([0.45, 0.45, math.sqrt(0.45), math.sqrt(0.45)]))
    torch.testing.assert_close(params[1], torch.tensor([0.5, 0.4, math.sqrt(0.3), math.sqrt(0.2)]))


def test_yolo_loss_against_the_papers_formula():
    S, B, C = 2, 2, 3
    g = torch.Generator().manual_seed(5)
    params = torch.rand(2, S, S, B, 4, generator=g, dtype=torch.float64) * 0.8 + 0.1
    # cell (1, 0) of image 0: predictor 1 is placed on the object, predictor 0 far off -> 1 is responsible
    params[0, 1, 0, 1] = torch.tensor([0.5, 0.5, math.sqrt(0.3), math.sqrt(0.3)])
    params[0, 1, 0, 0] = torch.tensor([0.0, 0.0, 0.1, 0.1])
    conf = torch.rand(2, S, S, B, generator=g, dtype=torch.float64)
    probs = torch.rand(2, S, S, C, generator=g, dtype=torch.float64).softmax(-1)
    targets = [{"boxes": torch.tensor([[0.1, 0.6, 0.4, 0.9], [0.55, 0.05, 0.95, 0.35]], dtype=torch.float64),
                "labels": torch.tensor([2, 3])},
               {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}]
    for lc, ln, rescore in ((5.0, 0.5, True), (1.0, 1.0, False), (2.0, 0.1, True)):
        out = yolo_v1_loss(params, conf, probs, targets, lc, ln, rescore)
        ref = _yolo_loss_ref(params, conf, probs, targets, lc, ln, rescore)
        for k in ("coord", "obj", "noobj", "class"):
            assert float(out["loss_" + k]) == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    # responsible predictor 1 of cell (1, 0): its error enters the coordinate term, predictor 0's
    # confidence the no-object term
    p2 = params.clone()
    p2[0, 1, 0, 0, :2] += 0.05  # moving the non-responsible predictor changes nothing but through IoU
    a = yolo_v1_loss(params, conf, probs, targets)
    b = yolo_v1_loss(p2, conf, probs, targets)
    assert float(a["loss_coord"]) == float(b["loss_coord"])
    # an image without objects: only the no-object term, lambda_noobj * sum of its squared confidences
    out = yolo_v1_loss(params[1:], conf[1:], probs[1:], targets[1:], 5.0, 0.5)
    assert float(out["loss_coord"]) == float(out["loss_obj"]) == float(out["loss_class"]) == 0.0
    assert float(out["loss_noobj"]) == pytest.approx(0.5 * float((conf[1] ** 2).sum()))
    # square roots of w and h: a box of the right centre and w = h = 0.25 costs lambda (0.5 - sqrt(.3))^2 * 2
    p3 = params[:1].clone()
    p3[0, 1, 0, 1] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    p3[0, 1, 0, 0] = torch.tensor([0.0, 0.0, 0.01, 0.01])
    one = [{"boxes": targets[0]["boxes"][:1], "labels": targets[0]["labels"][:1]}]
    out = yolo_v1_loss(p3, conf[:1], probs[:1], one, 5.0, 0.5)
    assert float(out["loss_coord"]) == pytest.approx(5.0 * 2 * (0.5 - math.sqrt(0.3)) ** 2)


def test_yolo_model_contract_decoding_and_bad_input():
    torch.manual_seed(0)
    m = yolo_v1(4, image_size=64).train()
    imgs = [torch.rand(3, 64, 64), torch.rand(3, 40, 56)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = m(imgs, targets)
    assert set(losses) == {"loss_coord", "loss_obj", "loss_noobj", "loss_class"}
    sum(losses.values()).backward()
    raw = m.head[-1].out_features
    assert raw == 7 * 7 * (5 * 2 + 3)  # S x S x (5B + C)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        m(imgs[:1], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        m(imgs[:1], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="boxes"):
        m(imgs[:1], [{"boxes": torch.tensor([1.0, 1.0, 9.0, 9.0]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="grid_size"):
        yolo_v1(4, grid_size=0)
    with torch.no_grad():  # the default: sigmoid / softmax outputs
        p, c, pr = m.predict_grid(torch.randn(2, 3, 64, 64))
    assert float(p.min()) > 0 and float(p.max()) < 1 and float(c.min()) > 0 and float(c.max()) < 1
    torch.testing.assert_close(pr.sum(-1), torch.ones(2, 7, 7))
    lin = _randomize(yolo_v1(4, image_size=64, linear=True))  # the paper's linear last layer
    with torch.no_grad():
        p, c, pr = lin.predict_grid(torch.randn(2, 3, 64, 64))
    assert float(p.min()) < 0 or float(p.max()) > 1 or float(c.min()) < 0  # unbounded
    assert set(lin.train()(imgs, targets)) == {"loss_coord", "loss_obj", "loss_noobj", "loss_class"}
    lin.eval()
    with torch.no_grad():
        o = lin(imgs)[0]
    assert bool((o["scores"] >= 0).all() and (o["scores"] <= 1).all())  # clamped when decoded
    m.eval()
    with torch.no_grad():
        out = m(imgs + [torch.rand(3, 5, 3)])  # the last smaller than the stride (32): resized, defined
    assert len(out) == 3
    for o, im in zip(out, imgs + [torch.rand(3, 5, 3)]):
        assert o["boxes"].shape[1] == 4 and o["labels"].dtype == torch.int64
        assert bool((o["boxes"][:, 2] <= im.shape[2] + 1e-4).all() and (o["boxes"][:, 3] <= im.shape[1] + 1e-4).all())
        assert bool(((o["labels"] >= 1) & (o["labels"] <= 3)).all())

    # decoding by hand: S = 2, B = 2, C = 2, one confident box in cell (row 1, col 0)
    m2 = yolo_v1(3, image_size=64, grid_size=2, score_thresh=0.1, nms_thresh=0.5)
    params = torch.full((1, 2, 2, 2, 4), 0.5)
    conf = torch.zeros(1, 2, 2, 2)
    probs = torch.full((1, 2, 2, 2), 0.5)
    params[0, 1, 0, 0] = torch.tensor([0.5, 0.25, 0.6, 0.4])
    conf[0, 1, 0, 0] = 0.9
    probs[0, 1, 0] = torch.tensor([0.2, 0.8])
    # a second box, same cell, overlapping heavily, lower confidence: suppressed for the same class
    params[0, 1, 0, 1] = torch.tensor([0.52, 0.25, 0.6, 0.4])
    conf[0, 1, 0, 1] = 0.5
    det = m2.decode(params, conf, probs, [(100, 200)])[0]
    # centre ((0 + 0.5) / 2 * 200, (1 + 0.25) / 2 * 100) = (50, 62.5); size (0.36 * 200, 0.16 * 100)
    want = torch.tensor([50 - 36.0, 62.5 - 8.0, 50 + 36.0, 62.5 + 8.0])
    # class 2: 0.8 x 0.9 (box 0) and 0.8 x 0.5 (box 1, suppressed by box 0: NMS within the class);
    # class 1: 0.2 x 0.9 (box 0 again: another class) and 0.2 x 0.5 (not above the threshold 0.1)
    assert det["labels"].tolist() == [2, 1]
    torch.testing.assert_close(det["boxes"][0], want, rtol=0, atol=1e-3)
    torch.testing.assert_close(det["boxes"][1], want, rtol=0, atol=1e-3)
    torch.testing.assert_close(det["scores"], torch.tensor([0.72, 0.18]))


# ---------------------------------------------------------------------------
# training: the loss falls
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lyo")
    synthetic.generate(str(root / "single"), images=4, seed=2, size=(64, 64), single_object=True)
    synthetic.generate(str(root / "multi"), images=4, seed=3, size=(64, 64))
    return root


def _load(root, kind):
    from pydetops.data import CocoDetection, ToTensor
    ds = CocoDetection(str(root / kind / "images"), str(root / kind / "annotations.json"), keypoints=True,
                       transforms=ToTensor())
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("name,kind,kwargs", [
    ("localization", "single", {"num_keypoints": 5}),
    ("overfeat", "multi", {"image_size": 32, "hidden": 64}),
    ("yolo_v1", "multi", {"image_size": 64}),
])
def test_loss_falls_in_a_few_seconds(tiny_data, name, kind, kwargs):
    torch.manual_seed(0)
    samples = _load(tiny_data, kind)
    images = [s[0] for s in samples]
    targets = [{k: v for k, v in s[1].items() if k in ("boxes", "labels", "keypoints")} for s in samples]
    model = MODELS[name](num_classes=4, **kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(30):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.6 * sum(totals[:3]) / 3, totals


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,kind,size", [("localization", "single", "64"), ("overfeat", "multi", "32"),
                                            ("yolo_v1", "multi", "64")])
def test_cli_train_evaluate_predict(tiny_data, tmp_path, name, kind, size):
    d = tiny_data / kind
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", name, "--image-size", size, "--train-images", str(d / "images"),
                       "--train-annotations", str(d / "annotations.json"), "--val-images", str(d / "images"),
                       "--val-annotations", str(d / "annotations.json"), "--out", str(out), "--epochs", "1",
                       "--batch-size", "2", "--warmup-steps", "1"]) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model=name)
    want_kwargs = {"image_size": int(size)}
    if name == "localization":  # the dataset has keypoints: the model regresses them too
        want_kwargs["num_keypoints"] = 5
    assert ck["model_kwargs"] == want_kwargs
    ev = tmp_path / "ev"
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(ev)]) == 0
    em = json.loads((ev / "metrics.json").read_text())
    assert em["model"] == name and em["images"] == 4 and 0.0 <= em["AP50"] <= 1.0
    if name == "localization":
        loc = em["localization"]
        assert set(loc) == {"accuracy", "mean_IoU", "PCK@0.2", "images"} and loc["images"] == 4
        assert all(0.0 <= loc[k] <= 1.0 for k in ("accuracy", "mean_IoU", "PCK@0.2"))
        assert "keypoints" in em  # keypoint AP too
        dets = json.loads((ev / "detections.json").read_text())
        assert len(dets) == 4 and all(len(x["keypoints"]) == 15 for x in dets)
    else:
        assert "localization" not in em  # several objects per image
    pr = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(pr), "--score-threshold", "0",
                         str(d / "images" / "000001.png")]) == 0
    p = json.loads((pr / "predictions.json").read_text())
    assert all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4 for det in p[0]["detections"])
    assert (pr / "000001.png").is_file()


def test_bench_cases_run_and_report_images_per_second():
    from pydetops.bench import _core, models_yolo
    cases = models_yolo.model_cases("cpu", 1, (48, 48))
    assert [c.op for c in cases] == [f"{m} {k}" for m in ("localization", "overfeat", "yolo_v1")
                                     for k in ("inference", "train step")]
    assert len(models_yolo.cases("cpu", True)) == 6
    out = cases[2].ours()  # overfeat inference (the slowest: 4 scales) once, untimed
    assert len(out) == 1 and out[0]["boxes"].shape[1] == 4
    rows = _core.run_cases([c for c in cases if c.op != "overfeat inference"], 3, progress=lambda msg: None)
    for row in rows:
        assert row["ours_ms"] > 0 and row["baseline_ms"] is None and row["speedup"] is None
        rate = float(row["details"].split(" images/s")[0])
        assert rate == pytest.approx(1 / (row["ours_ms"] / 1e3), abs=0.05 + 1e-9)  # printed with one decimal
