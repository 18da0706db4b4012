"""SSD (pydetops.models.ssd): default boxes, matching, hard negative mining, training from scratch,
bad input, the command line, and torchvision parity (same weights -> same detections and losses).

The parity parts load a randomly initialised torchvision model's ``state_dict`` (no downloads);
they skip where torchvision does not import.
"""
import json
import math
import types

import pytest
import torch

from pydetops import evaluate, predict, train
from pydetops.checkpoint import load_checkpoint
from pydetops.data import synthetic
from pydetops.models import MODELS, SSD, ssd, ssd300_vgg16
from pydetops.models.assign import match_with_best_per_gt
from pydetops.models.ssd import hard_negative_mining
from pydetops.ops import DefaultBoxGenerator, ImageList, box_iou


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _synthetic_batch(size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs, targets = [], []
    for i in range(2):
        img = torch.rand(3, size, size, generator=g) * 0.2
        boxes, labels = [], []
        for j in range(2):
            x = int(torch.randint(0, size - 60, (1,), generator=g))
            y = int(torch.randint(0, size - 60, (1,), generator=g))
            w, h = 30 + 10 * j, 40 - 10 * j
            cls = 1 + (i + j) % 2
            img[cls - 1, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(cls)
        imgs.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return imgs, targets


def _check_detections(out, imgs, num_classes, max_det=200):
    assert len(out) == len(imgs)
    for det, img in zip(out, imgs):
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and n <= max_det
        if n:
            assert int(det["labels"].min()) >= 1 and int(det["labels"].max()) < num_classes
            assert bool((det["scores"][:-1] >= det["scores"][1:]).all())  # by decreasing score
            assert float(det["boxes"].min()) >= 0.0
            assert float(det["boxes"][:, 2].max()) <= img.shape[2] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= img.shape[1] + 1e-3


# ---------------------------------------------------------------- default boxes

def test_default_boxes_hand_computed():
    # one 2 x 2 map on a 100 x 60 image, scales 0.5 and 0.8, ratio 2: per cell (row-major) the boxes
    # (w, h) = (0.5, 0.5), (sqrt(0.4), sqrt(0.4)), (0.5 sqrt 2, 0.5 / sqrt 2), (0.5 / sqrt 2, 0.5 sqrt 2)
    # of the image's (width, height), centred at ((j + 0.5) / 2, (i + 0.5) / 2)
    gen = DefaultBoxGenerator([[2]], scales=[0.5, 0.8])
    assert gen.num_anchors_per_location() == [4]
    boxes = gen(ImageList(torch.zeros(1, 3, 60, 100), [(60, 100)]), [torch.zeros(1, 8, 2, 2)])[0]
    r = math.sqrt(2.0)
    whs = [(0.5, 0.5), (math.sqrt(0.4), math.sqrt(0.4)), (0.5 * r, 0.5 / r), (0.5 / r, 0.5 * r)]
    want = []
    for i in range(2):
        for j in range(2):
            cx, cy = (j + 0.5) / 2, (i + 0.5) / 2
            for w, h in whs:
                w, h = min(w, 1.0), min(h, 1.0)  # clip
                want.append([(cx - w / 2) * 100, (cy - h / 2) * 60, (cx + w / 2) * 100, (cy + h / 2) * 60])
    torch.testing.assert_close(boxes, torch.tensor(want, dtype=torch.float32), atol=1e-4, rtol=0)
    # steps: cell centres (j + 0.5) * step instead of tiling the image
    boxes = DefaultBoxGenerator([[2]], scales=[0.5, 0.8], steps=[20])(
        ImageList(torch.zeros(1, 3, 60, 100), [(60, 100)]), [torch.zeros(1, 8, 2, 2)])[0]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    torch.testing.assert_close(centres[::4], torch.tensor([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]]))


def test_ssd300_default_boxes_match_torchvision():
    anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
    ours = ssd300_vgg16(num_classes=3).anchor_generator
    theirs = anchor_utils.DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                              scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
                                              steps=[8, 16, 32, 64, 100, 300])
    feats = [torch.zeros(2, 1, s, s) for s in (38, 19, 10, 5, 3, 1)]
    il = ImageList(torch.zeros(2, 3, 300, 300), [(300, 300), (300, 300)])
    a, b = ours(il, feats), theirs(il, feats)
    assert a[0].shape == (8732, 4)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- matching and hard negatives

def test_matching_threshold_and_best_default_box_per_gt():
    default_boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [50, 50, 60, 60],
                                  [100, 100, 110, 110]])
    gt = torch.tensor([[0.0, 0, 10, 10], [22, 22, 40, 40], [200, 200, 210, 210]])
    m = match_with_best_per_gt(gt, default_boxes, 0.5)
    # box 0: IoU 1 with gt 0; box 1: IoU 0.9 with gt 0; box 2: IoU 64/424 < 0.5 with gt 1, but it is
    # gt 1's best box; gt 2 overlaps nothing: it takes the first box of its (zero) best IoU, box 0
    assert m.tolist() == [2, 0, 1, -1, -1]
    assert match_with_best_per_gt(torch.zeros(0, 4), default_boxes, 0.5).tolist() == [-1] * 5
    # random cases against the rule written with the IoU matrix
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        xy = torch.rand(200, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 40 + 1], 1)
        q = torch.rand(4, 2, generator=g) * 100
        gts = torch.cat([q, q + torch.rand(4, 2, generator=g) * 50 + 1], 1)
        iou = box_iou(gts, boxes)
        best, idx = iou.max(dim=0)
        want = torch.where(best >= 0.5, idx, torch.full_like(idx, -1))
        want[iou.argmax(dim=1)] = torch.arange(4)
        assert torch.equal(match_with_best_per_gt(gts, boxes, 0.5), want)


def test_hard_negative_mining_three_per_positive():
    loss = torch.tensor([[0.1, 5.0, 0.3, 0.9, 0.2, 0.8, 0.7, 0.05, 0.6, 0.4],
                         [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.5],
                         [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]])
    positive = torch.zeros(3, 10, dtype=torch.bool)
    positive[0, 1] = True            # 1 positive -> the 3 hardest negatives: 0.9, 0.8, 0.7
    positive[1, [0, 8]] = True       # 2 positives -> 6 negatives (the positives' high losses are skipped)
    neg = hard_negative_mining(loss, positive, 3.0)   # image 2: no positive -> no negative
    assert torch.where(neg[0])[0].tolist() == [3, 5, 6]
    assert torch.where(neg[1])[0].tolist() == [2, 3, 4, 5, 6, 7]
    assert not neg[2].any()
    assert not (neg & positive).any()
    # more negatives wanted than there are: all non-positives
    pos = torch.ones(1, 10, dtype=torch.bool)
    pos[0, :3] = False
    assert torch.where(hard_negative_mining(loss[:1], pos, 3.0)[0])[0].tolist() == [0, 1, 2]
    # the ratio follows positive_fraction: 0.5 -> one negative per positive
    model = ssd(num_classes=3, positive_fraction=0.5)
    assert model.neg_to_pos_ratio == 1.0 and ssd(num_classes=3).neg_to_pos_ratio == 3.0


def test_classification_loss_is_positives_plus_hard_negatives_over_positives():
    torch.manual_seed(0)
    model = ssd(num_classes=3).train()
    imgs, targets = _synthetic_batch()
    captured = {}
    head = model.head.forward

    def spy(x):
        captured["out"] = head(x)
        return captured["out"]
    model.head.forward = spy
    losses = model(imgs, targets)
    logits = captured["out"]["cls_logits"].detach()
    anchors = model.anchor_generator(ImageList(torch.zeros(2, 3, 128, 128), [(128, 128)] * 2),
                                     [torch.zeros(1, 1, s, s) for s in (16, 8, 4, 2, 1)])
    total, n_pos = 0.0, 0
    for i in range(2):
        m = match_with_best_per_gt(targets[i]["boxes"], anchors[i], 0.5)
        labels = torch.zeros(len(m), dtype=torch.int64)
        labels[m >= 0] = targets[i]["labels"][m[m >= 0]]
        ce = torch.nn.functional.cross_entropy(logits[i].double(), labels, reduction="none")
        pos = labels > 0
        n_pos += int(pos.sum())
        neg_losses = ce[~pos].sort(descending=True).values[: 3 * int(pos.sum())]
        total += float(ce[pos].sum() + neg_losses.sum())
    assert n_pos >= 4  # every gt has at least its best default box
    assert float(losses["classification"].detach()) == pytest.approx(total / n_pos, rel=1e-4)


# ---------------------------------------------------------------- the small model

def test_model_contract_and_loss_falls():
    torch.manual_seed(0)
    model = MODELS["ssd"](num_classes=3)
    assert isinstance(model, SSD) and model.transform.fixed_size == (128, 128)
    imgs, targets = _synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    totals = []
    for _ in range(40):
        losses = model(imgs, targets)
        assert set(losses) == {"bbox_regression", "classification"}
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.4 * sum(totals[:3]) / 3, totals
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    _check_detections(out, imgs, 3)
    # it has learnt the two objects of each image: each is found (IoU >= 0.5, right class) among the
    # image's 4 best detections (ranks 0-1 measured, with 1 or 2 threads and other seeds)
    for det, t in zip(out, targets):
        for box, label in zip(t["boxes"], t["labels"]):
            top = det["labels"][:4] == label
            assert top.any() and float(box_iou(box[None], det["boxes"][:4][top]).max()) >= 0.5


def test_images_of_other_sizes_map_back_to_their_pixels():
    torch.manual_seed(0)
    model = ssd(num_classes=4, score_thresh=0.0, detections_per_img=50).eval()
    imgs = [torch.rand(3, 90, 200), torch.rand(3, 150, 60), torch.rand(3, 5, 3), torch.rand(3, 1, 1)]
    with torch.no_grad():
        out = model(imgs)  # 5 x 3 and 1 x 1 images: smaller than the stride, resized up like any other
    _check_detections(out, imgs, 4, max_det=50)
    assert all(len(d["boxes"]) == 50 for d in out)


def test_autocast_bfloat16_trains_and_detects_in_float32():
    torch.manual_seed(0)
    model = ssd(num_classes=3)
    imgs, targets = _synthetic_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(imgs, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        with torch.no_grad():
            out = model.eval()(imgs)
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in out)
    _check_detections(out, imgs, 3)


def test_channels_last_gives_the_same_detections():
    torch.manual_seed(0)
    model = ssd(num_classes=4, score_thresh=0.05).eval()
    imgs, _ = _synthetic_batch()
    with torch.no_grad():
        a = model(imgs)
        b = model.optimize_for_inference()(imgs)
    assert model.channels_last and not model.training
    for x, y in zip(a, b):
        assert len(x["boxes"]) > 0 and torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=0)


def test_weights_file_round_trip(tmp_path):
    a = ssd(num_classes=3).eval()
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = ssd(num_classes=3, weights=str(tmp_path / "w.pt")).eval()
    imgs, _ = _synthetic_batch()
    with torch.no_grad():
        for x, y in zip(a(imgs), b(imgs)):
            assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
    with pytest.raises(ValueError, match="weights"):
        ssd(num_classes=3, weights=str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------- bad input

def test_images_without_objects():
    torch.manual_seed(0)
    model = ssd(num_classes=3).train()
    imgs, targets = _synthetic_batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(imgs, [targets[0], empty])  # one image without objects: no positives, no negatives
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.zero_grad()
    losses = model(imgs, [empty, empty])  # none at all: zero losses, still differentiable
    assert float(losses["bbox_regression"].detach()) == 0.0 and float(losses["classification"].detach()) == 0.0
    sum(losses.values()).backward()


@pytest.mark.parametrize("change,message", [
    (lambda t: t[1].update(labels=torch.tensor([3, 1])), r"targets\[1\]\['labels'\].*\[1, 2\]"),
    (lambda t: t[0].update(labels=torch.tensor([0, 1])), r"targets\[0\]\['labels'\]"),
    (lambda t: t[0].update(labels=torch.tensor([-4, 1])), r"targets\[0\]\['labels'\]"),
    (lambda t: t[0].update(boxes=torch.zeros(2, 5)), r"targets\[0\]\['boxes'\]"),
    (lambda t: t[0].update(boxes=torch.tensor([[5.0, 5, 5, 9], [1, 1, 4, 4]])), r"targets\[0\]\['boxes'\]\[0\]"),
    (lambda t: t.pop(), r"targets: expected a list of 2"),
])
def test_bad_targets_raise(change, message):
    model = ssd(num_classes=3).train()
    imgs, targets = _synthetic_batch()
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(imgs, targets)


def test_bad_calls_raise():
    model = ssd(num_classes=3).train()
    imgs, _ = _synthetic_batch()
    with pytest.raises(ValueError, match="targets"):
        model(imgs)
    with pytest.raises(ValueError, match="images"):
        model.eval()([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        model.eval()([imgs[0], torch.rand(3, 0, 10)])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model.eval()([torch.rand(32, 32)])
    with pytest.raises(TypeError, match="floating"):
        model.eval()([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="num_classes"):
        ssd(num_classes=1)
    with pytest.raises(ValueError, match="backbone"):
        ssd(num_classes=3, backbone="vgg99")
    with pytest.raises(ValueError, match="image_size"):
        ssd(num_classes=3, image_size=16)
    with pytest.raises(ValueError, match="image_size"):
        ssd(num_classes=3, backbone="vgg16", image_size=128)
    with pytest.raises(ValueError, match="positive_fraction"):
        ssd(num_classes=3, positive_fraction=0.0)
    with pytest.raises(TypeError, match="unexpected"):
        ssd(num_classes=3, min_size=64)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        ssd300_vgg16(trainable_backbone_layers=6)


# ---------------------------------------------------------------- the command line

def test_cli_train_evaluate_predict(tmp_path):
    d = tmp_path / "d"
    synthetic.generate(str(d), images=2, seed=4, size=(64, 64))
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", "ssd", "--backbone", "tiny", "--image-size", "64",
                       "--train-images", str(d / "images"), "--train-annotations", str(d / "annotations.json"),
                       "--val-images", str(d / "images"), "--val-annotations", str(d / "annotations.json"),
                       "--out", str(out), "--epochs", "1", "--batch-size", "2"]) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model="ssd")
    assert ck["model_kwargs"] == {"backbone": "tiny", "image_size": 64}
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == "ssd" and em["images"] == 2 and 0.0 <= em["AP"] <= 1.0
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert p[0]["detections"] and all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4
                                      for det in p[0]["detections"])


# ---------------------------------------------------------------- torchvision parity

def _tv_detection():
    try:
        import torchvision
        import torchvision.models.detection as det
        torchvision.ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)
        return det
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")


@pytest.mark.parametrize("topk,max_det,background", [(400, 200, 0.0), (30, 40, 0.0), (400, 200, 4.0)])
def test_postprocess_matches_torchvisions(topk, max_det, background):
    # torchvision's own SSD.postprocess_detections (per image, per class loops) on the same head
    # outputs: 21 classes, many above the threshold, so the per-class top-k and the cut both act
    # (with a background offset only some classes of some images hit the top-k)
    _tv_detection()
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.ssd import SSD as TvSSD
    model = ssd(num_classes=21, topk_candidates=topk, detections_per_img=max_det).eval()
    g = torch.Generator().manual_seed(3)
    anchors_one = model.anchor_generator(ImageList(torch.zeros(2, 3, 128, 128), [(128, 128)] * 2),
                                         [torch.zeros(1, 1, s, s) for s in (16, 8, 4, 2, 1)])
    a = anchors_one[0].shape[0]
    head = {"bbox_regression": torch.randn(2, a, 4, generator=g) * 0.5,
            "cls_logits": torch.randn(2, a, 21, generator=g) * 2}
    head["cls_logits"][:, :, 0] += background
    head["cls_logits"][0, :, 3] += background  # class 3 of image 0 keeps many candidates
    fake = types.SimpleNamespace(box_coder=det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=0.01,
                                 topk_candidates=topk, nms_thresh=0.45, detections_per_img=max_det)
    shapes = [(128, 128), (128, 128)]
    want = TvSSD.postprocess_detections(fake, head, anchors_one, shapes)
    got = model.postprocess_detections(head, anchors_one, shapes)
    over = (torch.softmax(head["cls_logits"], -1) > 0.01).sum(1)[:, 1:] > topk
    assert over.any() and (background == 0.0 or not over.all())
    for x, y in zip(got, want):
        assert len(y["boxes"]) == max_det
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(x["scores"], y["scores"], atol=0, rtol=0)


def _pair(num_classes=5):
    det = _tv_detection()
    torch.manual_seed(0)
    theirs = det.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
    with torch.no_grad():  # moderate class scores: distinct, not all saturated at 1.0
        for conv in theirs.head.classification_head.module_list:
            conv.weight.mul_(0.25)
    ours = ssd300_vgg16(num_classes=num_classes)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(a) == list(b) and a == b  # same keys, order and shapes
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    return ours, theirs


def _parity_images():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 200, 250, generator=g), torch.rand(3, 320, 280, generator=g)]
    imgs[0][:, 40:120, 60:200] = 0.9
    return imgs


def test_torchvision_weights_give_the_same_detections_and_losses():
    ours, theirs = _pair()
    imgs = _parity_images()
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        da, db = ours(imgs), theirs(imgs)
    for x, y in zip(da, db):
        assert len(y["boxes"]) == 200
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(x["scores"], y["scores"], atol=1e-5, rtol=1e-4)
    # training losses on one image (the batch normalisation is checked on the small model above)
    targets = [{"boxes": torch.tensor([[60.0, 40.0, 200.0, 120.0], [10.0, 150.0, 50.0, 190.0]]),
                "labels": torch.tensor([1, 4])}]
    ours.train()
    theirs.train()
    with torch.no_grad():
        la, lb = ours(imgs[:1], targets), theirs(imgs[:1], targets)
    assert list(la) == list(lb)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_ssd300_defaults_as_torchvisions(tmp_path):
    det = _tv_detection()
    ours = ssd300_vgg16()
    theirs = det.ssd300_vgg16(weights=None, weights_backbone=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for attr in ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "neg_to_pos_ratio"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.transform.image_mean == theirs.transform.image_mean
    assert ours.transform.image_std == theirs.transform.image_std
    # a VGG-16 classification checkpoint (torchvision's keys) as the backbone: 4 stages train
    vgg = {f"features.{k}": v + 1.0 for k, v in theirs.backbone.features.state_dict().items()}
    vgg.update({f"features.{23 + int(k.split('.')[0])}.{k.split('.')[1]}": v
                for k, v in theirs.backbone.extra[0].state_dict().items() if int(k.split(".")[0]) < 7})
    vgg["classifier.0.weight"] = torch.zeros(3, 3)
    torch.save(vgg, tmp_path / "vgg.pt")
    model = ssd300_vgg16(weights_backbone=str(tmp_path / "vgg.pt"), num_classes=3)
    assert torch.equal(model.backbone.features[0].weight, vgg["features.0.weight"])
    assert torch.equal(model.backbone.extra[0][5].weight, vgg["features.28.weight"])
    assert not model.backbone.features[2].weight.requires_grad and model.backbone.features[5].weight.requires_grad
    del vgg["features.0.weight"]
    torch.save(vgg, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="weights_backbone"):
        ssd300_vgg16(weights_backbone=str(tmp_path / "bad.pt"))


# ---------------------------------------------------------------- the benchmark cases

def test_bench_cases_and_stage_timer():
    from pydetops.bench import _core, models_ssd
    cases = models_ssd.cases("cpu", quick=True)  # the models are built on a case's first call, not here
    assert [c.op for c in cases] == ["ssd300_vgg16 inference", "ssd300_vgg16 inference optimized",
                                     "ssd300_vgg16 postprocess", "ssd300_vgg16 postprocess", "ssd_tiny train step"]
    rows = _core.run_cases(cases[-1:], 3, progress=lambda msg: None)
    assert rows[0]["calls"] == 3 and rows[0]["baseline_ms"] is None and "images/s" in rows[0]["details"]
    model = ssd(num_classes=3).eval()
    timer = models_ssd.SSDStageTimer(model)
    with torch.no_grad():
        model([torch.rand(3, 64, 80)])
    assert list(timer.medians()) == list(models_ssd.STAGES)
