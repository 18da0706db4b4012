"""RetinaNet (pydetops.models.retinanet): contract, matching, focal-loss normalisation, post-processing,
training from scratch, bad input, CLI, and torchvision parity (same weights -> same detections and
losses; skipped where torchvision does not import).
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pydetops.models import MODELS, RetinaNet, retinanet, retinanet_resnet50_fpn
from pydetops.models.backbones import LastLevelP6P7
from pydetops.models.retinanet import concat_levels, logit_threshold


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 140, 110, generator=g)]
    imgs[0][:, 20:70, 30:90] = 0.9
    imgs[1][:, 50:120, 10:60] = 0.1
    return imgs


def _targets():
    return [
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0], [100.0, 80.0, 150.0, 115.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 50.0, 60.0, 120.0]]), "labels": torch.tensor([2])},
    ]


def _plain_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


# ---------------------------------------------------------------- contract

def test_contract_train_losses_and_eval_detections():
    assert MODELS["retinanet"] is retinanet
    torch.manual_seed(0)
    model = retinanet(num_classes=3, backbone="tiny", image_size=96)
    feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]  # P3..P7
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]  # strides 8..128
    bias = model.head.classification_head.cls_logits.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))  # prior probability
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    model.train()
    losses = model(_images(), _targets())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert len(out) == 2
    for det, img in zip(out, _images()):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["labels"].dtype == torch.int64 and det["boxes"].shape[1] == 4
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]


def test_p6_from_c5_or_p5():
    c5 = LastLevelP6P7(512, 64)
    p5 = LastLevelP6P7(64, 64)
    assert not c5.use_P5 and p5.use_P5
    results = [torch.rand(1, 64, 8, 8)]
    inputs = [torch.rand(1, 512, 8, 8)]
    out, names = c5(results, ["0"], inputs)
    assert names == ["0", "p6", "p7"] and out[1].shape == (1, 64, 4, 4) and out[2].shape == (1, 64, 2, 2)
    torch.testing.assert_close(out[1], c5.p6(inputs[0]))
    torch.testing.assert_close(out[2], c5.p7(F.relu(c5.p6(inputs[0]))))
    out, _ = p5(results, ["0"], inputs)
    torch.testing.assert_close(out[1], p5.p6(results[0]))


def test_concat_levels_order_and_channels_last():
    maps = [torch.randn(2, 3 * 5, 4, 6), torch.randn(2, 3 * 5, 2, 3)]
    got = concat_levels(maps, 5)
    want = torch.cat([m.view(2, 3, 5, m.shape[2], m.shape[3]).permute(0, 3, 4, 1, 2).reshape(2, -1, 5)
                      for m in maps], 1)
    assert torch.equal(got, want)
    assert torch.equal(concat_levels([m.contiguous(memory_format=torch.channels_last) for m in maps], 5), want)


# ---------------------------------------------------------------- matching and losses

def test_matching_thresholds_ignored_and_low_quality_matches():
    model = retinanet(num_classes=3, backbone="tiny")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 12.0],    # IoU 0.833 with gt 0: foreground
        [0.0, 0.0, 10.0, 22.0],    # 0.4545: between 0.4 and 0.5, ignored
        [0.0, 0.0, 10.0, 20.0],    # 0.5 exactly: foreground (>=)
        [0.0, 0.0, 10.0, 25.0],    # 0.4: background is < 0.4, so ignored
        [0.0, 0.0, 10.0, 26.0],    # 0.385: background
        [100.0, 100.0, 130.0, 130.0],  # 0.111, but gt 1's best anchor: kept (low-quality match)
        [100.0, 100.0, 140.0, 140.0],  # 0.0625: background
        [50.0, 50.0, 60.0, 60.0],  # no overlap: background
    ])
    matched = model.match_anchors(anchors, gt)
    assert matched.tolist() == [0, -2, 0, -2, -1, 1, -1, -1]
    assert model.match_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 8


def _reference_losses(model, cls_logits, box_codes, anchors, targets):
    """Plain float64 RetinaNet losses: IoU matrix, thresholds, the focal formula, mean of per-image
    sums divided by the foreground count."""
    cls_total, box_total = 0.0, 0.0
    for logits, codes, t in zip(cls_logits.double(), box_codes.double(), targets):
        gt = t["boxes"].double()
        if len(gt) == 0:
            matched = torch.full((len(anchors),), -1)
        else:
            iou = _plain_iou(gt, anchors.double())
            best, idx = iou.max(0)
            matched = torch.where(best >= 0.5, idx, torch.where(best < 0.4, -1, -2))
        for j in range(gt.shape[0]):  # low-quality: every anchor at gt j's best IoU
            ties = torch.where(iou[j] == iou[j].max())[0]
            matched[ties] = idx[ties]
        fg = matched >= 0
        onehot = torch.zeros_like(logits)
        onehot[torch.where(fg)[0], t["labels"][matched[fg]]] = 1.0
        valid = matched != -2
        p = torch.sigmoid(logits[valid])
        y = onehot[valid]
        ce = F.binary_cross_entropy_with_logits(logits[valid], y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        a_t = 0.25 * y + 0.75 * (1 - y)
        n = max(1, int(fg.sum()))
        cls_total += float((a_t * ce * (1 - p_t) ** 2).sum()) / n
        a = anchors.double()[fg]
        g = gt[matched[fg]]
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        target = torch.stack([(g[:, 0] + gw / 2 - a[:, 0] - aw / 2) / aw, (g[:, 1] + gh / 2 - a[:, 1] - ah / 2) / ah,
                              torch.log(gw / aw), torch.log(gh / ah)], 1)
        box_total += float((codes[fg] - target).abs().sum()) / n
    return cls_total / len(targets), box_total / len(targets)


def test_focal_and_box_loss_normalisation_against_a_plain_reference():
    torch.manual_seed(0)
    model = retinanet(num_classes=4, backbone="tiny", box_loss="l1")
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=gen) * 80
    anchors = torch.cat([xy, xy + 8 + torch.rand(300, 2, generator=gen) * 30], 1)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 35.0], [50.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[5.0, 40.0, 30.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # no objects
    cls_logits = torch.randn(3, 300, 4, generator=gen) * 2
    box_codes = torch.randn(3, 300, 4, generator=gen) * 0.3
    losses = model.compute_loss(targets, cls_logits, box_codes, [anchors] * 3)
    want_cls, want_box = _reference_losses(model, cls_logits, box_codes, anchors, targets)
    assert losses["classification"].item() == pytest.approx(want_cls, rel=1e-5)
    assert losses["bbox_regression"].item() == pytest.approx(want_box, rel=1e-5)
    # the image without objects: every anchor negative, divided by 1, no box term
    alone = model.compute_loss(targets[2:], cls_logits[2:], box_codes[2:], [anchors])
    p = torch.sigmoid(cls_logits[2].double())
    assert alone["classification"].item() == pytest.approx(float((0.75 * -torch.log(1 - p) * p ** 2).sum()), rel=1e-5)
    assert alone["bbox_regression"].item() == 0.0


def test_box_losses_vanish_at_the_target():
    model = retinanet(num_classes=3, backbone="tiny")
    anchors = torch.tensor([[10.0, 10.0, 40.0, 30.0], [0.0, 5.0, 20.0, 50.0]])
    gt = torch.tensor([[12.0, 8.0, 45.0, 33.0], [2.0, 4.0, 18.0, 40.0]])
    exact = model.box_coder.encode_single(gt, anchors)
    for kind in ("l1", "smooth_l1", "giou"):
        model.box_loss = kind
        assert model.box_regression_loss(exact, anchors, gt).item() == pytest.approx(0.0, abs=1e-5)
        assert model.box_regression_loss(exact + 0.2, anchors, gt).item() > 0.01
    with pytest.raises(ValueError, match="box_loss"):
        retinanet(num_classes=3, backbone="tiny", box_loss="l3")


# ---------------------------------------------------------------- post-processing

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_logit_threshold_is_exact(dtype):
    for p in (0.05, 0.3, 0.5, 0.9, 0.0):
        t = logit_threshold(p, dtype, torch.device("cpu"))
        centre = math.log(p / (1 - p)) if p > 0 else t
        x = torch.linspace(centre - 0.01, centre + 0.01, 20001, dtype=torch.float64).to(dtype)
        x = torch.cat([x, torch.tensor([t], dtype=dtype), torch.tensor([t], dtype=dtype).nextafter(
            torch.tensor(math.inf, dtype=dtype))])
        assert torch.equal(x > t, torch.sigmoid(x) > p), (p, dtype)
    assert logit_threshold(1.0, torch.float32, torch.device("cpu")) == math.inf


def _reference_postprocess(model, cls_logits, box_codes, anchors, image_sizes, level_sizes):
    # torchvision's per-image, per-level steps with plain torch and our decode / batched_nms
    from pydetops.ops import batched_nms, clip_boxes_to_image, decode_boxes
    out = []
    for logits, codes, size in zip(cls_logits, box_codes, image_sizes):
        boxes_all, scores_all, labels_all = [], [], []
        for lg, cd, an in zip(logits.split(level_sizes), codes.split(level_sizes), anchors.split(level_sizes)):
            k = lg.shape[-1]
            s = torch.sigmoid(lg).flatten()
            idx = torch.where(s > model.score_thresh)[0]
            s, order = s[idx].sort(descending=True, stable=True)
            idx = idx[order][: model.topk_candidates]
            s = s[: model.topk_candidates]
            a = idx // k
            boxes_all.append(clip_boxes_to_image(decode_boxes(cd[a], an[a]), size))
            scores_all.append(s)
            labels_all.append(idx % k)
        b, s, lab = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(b, s, lab, model.nms_thresh)[: model.detections_per_img]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return out


def test_fused_postprocess_matches_the_per_level_steps():
    model = retinanet(num_classes=6, backbone="tiny", detections_per_img=150, topk_candidates=60).eval()
    gen = torch.Generator().manual_seed(11)
    level_sizes = [400, 120, 36]
    xy = torch.rand(sum(level_sizes), 2, generator=gen) * 90
    anchors = torch.cat([xy, xy + 4 + torch.rand(sum(level_sizes), 2, generator=gen) * 40], 1)
    cls_logits = torch.randn(2, sum(level_sizes), 6, generator=gen) * 1.5 - 2.5
    box_codes = torch.randn(2, sum(level_sizes), 4, generator=gen) * 0.4
    sizes = [(100, 110), (80, 120)]
    got = model.postprocess_detections(cls_logits, box_codes, anchors, sizes, level_sizes)
    want = _reference_postprocess(model, cls_logits, box_codes, anchors, sizes, level_sizes)
    for g, w in zip(got, want):
        assert 20 < len(w["boxes"]) <= 150
        assert g["labels"].tolist() == w["labels"].tolist()
        torch.testing.assert_close(g["boxes"], w["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], w["scores"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- training from scratch

def _synthetic_batch():
    g = torch.Generator().manual_seed(0)
    imgs, targets = [], []
    for i in range(2):
        img = torch.rand(3, 96, 96, generator=g) * 0.2
        boxes, labels = [], []
        for j in range(2):
            x, y = int(torch.randint(0, 50, (1,), generator=g)), int(torch.randint(0, 50, (1,), generator=g))
            w, h = 28 + 8 * j, 36 - 8 * j
            cls = 1 + (i + j) % 2
            img[cls - 1, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(cls)
        imgs.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return imgs, targets


def test_small_model_loss_falls_and_it_finds_the_objects():
    torch.manual_seed(0)
    model = retinanet(num_classes=3, backbone="tiny", image_size=96, score_thresh=0.2)
    imgs, targets = _synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    totals = []
    for _ in range(40):
        losses = model(imgs, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.5 * sum(totals[:3]) / 3, totals
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    for det, t in zip(out, targets):  # overfitted: each object found with its label
        for box, label in zip(t["boxes"], t["labels"]):
            iou = _plain_iou(box[None], det["boxes"])[0] if len(det["boxes"]) else torch.zeros(0)
            hit = (iou > 0.5) & (det["labels"] == label)
            assert bool(hit.any()), (box, det)


@pytest.mark.parametrize("backbone", ["resnet18", "tiny"])
def test_variants_and_weights_round_trip(backbone, tmp_path):
    torch.manual_seed(0)
    a = retinanet(num_classes=3, backbone=backbone, image_size=64, score_thresh=0.0).eval()
    path = tmp_path / "w.pt"
    torch.save(a.state_dict(), path)
    b = retinanet(num_classes=3, backbone=backbone, image_size=64, score_thresh=0.0, weights=str(path)).eval()
    with torch.no_grad():
        da, db = a(_images()), b(_images())
    for x, y in zip(da, db):
        assert len(x["boxes"]) > 0 and torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
    # channels-last, BatchNorm-free backbone, fused: the same detections within float tolerance (Winograd's
    # other rounding reorders this random-weight model's near-tied scores: test_winograd_models.py checks it)
    b.optimize_for_inference(winograd=False)
    with torch.no_grad():
        dc = b(_images())
    for x, y in zip(da, dc):
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- bad input

def test_bad_input():
    model = retinanet(num_classes=3, backbone="tiny", image_size=64)
    model.eval()
    with torch.no_grad():
        tiny = model([torch.rand(3, 5, 7)])  # smaller than every stride: resized, a defined result
    assert len(tiny) == 1 and tiny[0]["boxes"].shape[1] == 4
    if len(tiny[0]["boxes"]):
        assert float(tiny[0]["boxes"][:, 2].max()) <= 7 + 1e-4 and float(tiny[0]["boxes"][:, 3].max()) <= 5 + 1e-4
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model([torch.rand(3, 0, 10)])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        model([torch.rand(3, 10, 10), torch.rand(10, 10)])
    with pytest.raises(ValueError, match="images"):
        model([])
    model.train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(_images(), empty)  # no objects anywhere: every anchor negative
    assert losses["bbox_regression"].item() == 0.0 and torch.isfinite(losses["classification"])
    sum(losses.values()).backward()
    for labels, msg in ((torch.tensor([3]), r"targets\[1\]\['labels'\].*\[1, 2\]"),
                        (torch.tensor([0]), r"targets\[1\]\['labels'\]"),
                        (torch.tensor([-1]), r"targets\[1\]\['labels'\]")):
        t = _targets()
        t[1]["labels"] = labels
        with pytest.raises(ValueError, match=msg):
            model(_images(), t)
    with pytest.raises(ValueError, match="targets"):
        model(_images())
    for kwargs, msg in ((dict(num_classes=1), "num_classes"), (dict(num_classes=3, backbone="vgg99"), "backbone"),
                        (dict(num_classes=3, image_size=8), "image_size")):
        with pytest.raises(ValueError, match=msg):
            retinanet(**kwargs)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        retinanet_resnet50_fpn(trainable_backbone_layers=6)
    with pytest.raises(TypeError, match="weights"):
        retinanet_resnet50_fpn(weights=object())
    with pytest.raises(ValueError, match="bg_iou_thresh"):
        RetinaNet(model.backbone, 3, fg_iou_thresh=0.4, bg_iou_thresh=0.5)


# ---------------------------------------------------------------- command line

def test_cli_train_evaluate_predict(tmp_path):
    from pydetops import evaluate, predict, train
    from pydetops.checkpoint import load_checkpoint
    from pydetops.data import synthetic
    d = tmp_path / "d"
    synthetic.generate(str(d), images=2, seed=4, size=(64, 64))
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", "retinanet", "--backbone", "tiny", "--image-size", "64",
                       "--train-images", str(d / "images"), "--train-annotations", str(d / "annotations.json"),
                       "--val-images", str(d / "images"), "--val-annotations", str(d / "annotations.json"),
                       "--out", str(out), "--epochs", "1", "--batch-size", "2"]) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model="retinanet")
    assert ck["model_kwargs"] == {"backbone": "tiny", "image_size": 64}
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == "retinanet" and em["images"] == 2 and 0.0 <= em["AP"] <= 1.0
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4 for det in p[0]["detections"])


# ---------------------------------------------------------------- torchvision parity

def _tv_detection():
    try:
        import torchvision
        import torchvision.models.detection as det
        torchvision.ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)
        return det
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")


def _pair(**kwargs):
    det = _tv_detection()
    torch.manual_seed(0)
    theirs = det.retinanet_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in theirs.modules():  # random BatchNorm statistics: the normalisation is exercised
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        # class logits spread around the threshold (the prior alone gives none above 0.05)
        theirs.head.classification_head.cls_logits.bias.normal_(-3.0, 0.5, generator=g)
    ours = retinanet_resnet50_fpn(**kwargs)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(a) == list(b) and a == b  # same keys, order and shapes
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    return ours, theirs


@pytest.mark.parametrize("extra", [{}, {"detections_per_img": 3000, "topk_candidates": 150, "score_thresh": 0.2}])
def test_torchvision_weights_give_the_same_detections(extra):
    ours, theirs = _pair(num_classes=5, min_size=128, max_size=160, **extra)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        da, db = ours(_images()), theirs(_images())
    for x, y in zip(da, db):
        assert len(y["boxes"]) > 0
        if extra:  # the threshold and the per-level top-k decide, not the final cap
            assert len(y["boxes"]) < 3000 and float(y["scores"].min()) > 0.2
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-6)
    # channels-last with the BatchNorm folded: the same detections within tolerance
    ours.optimize_for_inference()
    with torch.no_grad():
        dc = ours(_images())
    for x, y in zip(dc, db):  # (float rounding of other convolution orders, x anchors up to 800 px)
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=5e-3)


def test_torchvision_training_losses_match():
    ours, theirs = _pair(num_classes=5, min_size=128, max_size=160)
    ours.train()
    theirs.train()
    targets = _targets()
    targets[1]["labels"] = torch.tensor([4])
    for kind in ("l1", "smooth_l1", "giou"):
        ours.box_loss = kind
        theirs.head.regression_head._loss_type = kind
        la, lb = ours(_images(), targets), theirs(_images(), targets)
        assert list(la) == list(lb)
        for k in la:
            torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-6, msg=f"{kind} {k}")


def test_torchvision_defaults_and_old_checkpoint_keys(tmp_path):
    det = _tv_detection()
    theirs = det.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    ours = retinanet_resnet50_fpn()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for name in ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.transform.min_size == theirs.transform.min_size and ours.transform.max_size == theirs.transform.max_size
    assert [a.tolist() for a in ours.anchor_generator.cell_anchors] == \
        [a.tolist() for a in theirs.anchor_generator.cell_anchors]
    # a pre-0.13 checkpoint (the subnets' convs named conv.0, conv.2, ...) loads too
    state = theirs.state_dict()
    for head in ("classification_head", "regression_head"):
        for i in range(4):
            for kind in ("weight", "bias"):
                state[f"head.{head}.conv.{2 * i}.{kind}"] = state.pop(f"head.{head}.conv.{i}.0.{kind}")
    torch.save(state, tmp_path / "old.pt")
    loaded = retinanet_resnet50_fpn(weights=str(tmp_path / "old.pt"))
    assert torch.equal(loaded.head.regression_head.conv[3][0].weight, theirs.head.regression_head.conv[3][0].weight)


# ---------------------------------------------------------------- benchmark cases

def test_bench_cases_run_on_a_tiny_image():
    from pydetops.bench import _core, models_retinanet
    tv = _core.torchvision_status(refresh=True)
    try:
        cases = models_retinanet.retinanet_cases("cpu", (64, 80), 64, 80, 2, 64, class_bias=-3.0)
        assert [c.op for c in cases] == ["retinanet_r50_fpn inference", "retinanet_r50_fpn inference optimized",
                                         "retinanet postprocess", "retinanet_tiny train step"]
        rows = _core.run_cases([cases[0], cases[2], cases[3]], 1, progress=lambda msg: None)
    finally:
        _core._TV_STATUS = None
    inference, post, train = rows
    assert inference["details"].startswith("ours per stage (medians): ")
    for stage in models_retinanet.STAGES:
        assert f"{stage} " in inference["details"]
    assert "above the score threshold" in post["details"]
    if tv.usable:
        assert inference["speedup"] is not None and post["speedup"] is not None
        hit, total = map(int, post["details"].split("; ")[1].split(" of ")[0].split("/"))
        assert hit == total > 0  # the same detections as torchvision's post-processing
    else:
        assert inference["baseline_ms"] is None and not inference["comparable"]
    assert train["baseline_ms"] is None and "images/s" in train["details"]
