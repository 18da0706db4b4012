"""Mask R-CNN and Keypoint R-CNN (pydetops.models.mask_rcnn / keypoint_rcnn): the model contract,
training from scratch on synthetic scenes, bad targets, and torchvision parity (same weights ->
same boxes, masks and keypoints; same training losses), the latter skipped without torchvision.
"""
import pytest
import torch

from pydetops.models import (MODELS, KeypointRCNN, MaskRCNN, faster_rcnn, keypoint_rcnn, keypointrcnn_resnet50_fpn,
                             mask_rcnn, maskrcnn_resnet50_fpn)
from pydetops.models.heads.keypoint_head import keypoints_to_heatmap


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is as fast and steadier on a shared CPU
    yield
    torch.set_num_threads(before)


def _scene(seed=0, sizes=((96, 112), (104, 96))):
    """Images with bright shapes, their boxes, labels, masks Tensor[N, H, W] uint8 and 5 keypoints
    (left, right, top, bottom, center) per object: rectangles (label 1) and discs (label 2)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        img = torch.rand(3, h, w, generator=g) * 0.2
        boxes, labels, masks, kps = [], [], [], []
        for j in range(2):
            bw, bh = 28 + 8 * j, 34 - 6 * j
            x = 4 + j * (w // 2) + int(torch.randint(0, max(1, w // 2 - bw - 4), (1,), generator=g))
            y = 4 + int(torch.randint(0, h - bh - 8, (1,), generator=g))
            cls = 1 + (i + j) % 2
            m = torch.zeros(h, w, dtype=torch.uint8)
            if cls == 1:
                m[y:y + bh, x:x + bw] = 1
            else:
                yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                cy, cx = y + (bh - 1) / 2, x + (bw - 1) / 2
                m[((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1] = 1
            img[cls - 1][m.bool()] = 1.0
            x1, y1, x2, y2 = float(x), float(y), float(x + bw), float(y + bh)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            kps.append([[x1, cy, 2], [x2, cy, 2], [cx, y1, 2], [cx, y2, 2], [cx, cy, 2]])
            boxes.append([x1, y1, x2, y2])
            labels.append(cls)
            masks.append(m)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "masks": torch.stack(masks),
                        "keypoints": torch.tensor(kps, dtype=torch.float32)})
    return images, targets


def _small(kind, **kwargs):
    torch.manual_seed(0)
    if kind == "mask":
        return mask_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=112, box_batch_size_per_image=32,
                         mask_channels=32, **kwargs)
    return keypoint_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=112, box_batch_size_per_image=32,
                         keypoint_channels=32, keypoint_layers=4, **kwargs)


# ---------------------------------------------------------------- contract

def test_registered_and_state_dict_names():
    assert MODELS["mask_rcnn"] is mask_rcnn and MODELS["keypoint_rcnn"] is keypoint_rcnn
    m, k = _small("mask"), _small("keypoint")
    assert isinstance(m, MaskRCNN) and isinstance(k, KeypointRCNN) and k.num_keypoints == 5
    assert "roi_heads.mask_predictor.conv5_mask.weight" in m.state_dict()
    assert "roi_heads.mask_head.3.0.weight" in m.state_dict()
    assert "roi_heads.keypoint_predictor.kps_score_lowres.weight" in k.state_dict()
    assert "roi_heads.keypoint_head.6.weight" in k.state_dict()
    # the Faster R-CNN it extends has no extra branch and keeps its keys
    plain = faster_rcnn(num_classes=3, backbone="tiny")
    assert not plain.roi_heads.has_mask() and not plain.roi_heads.has_keypoint()
    assert not any("mask" in n or "keypoint" in n for n in plain.state_dict())


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_train_losses_and_eval_outputs(kind):
    model = _small(kind).train()
    images, targets = _scene()
    losses = model(images, targets)
    extra = "loss_mask" if kind == "mask" else "loss_keypoint"
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", extra}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert float(losses[extra].detach()) > 0
    sum(losses.values()).backward()
    head = model.roi_heads.mask_predictor if kind == "mask" else model.roi_heads.keypoint_predictor
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.parameters())

    model.eval()
    model.roi_heads.score_thresh = 0.0  # a random model: keep every detection
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        d = det["boxes"].shape[0]
        assert d > 0
        if kind == "mask":
            assert det["masks"].shape == (d, 1, img.shape[1], img.shape[2]) and det["masks"].dtype == torch.float32
            assert float(det["masks"].min()) >= 0 and float(det["masks"].max()) <= 1
            # nothing is pasted outside a detection's box (+ the 1-cell padding, a few pixels)
            outside = torch.ones_like(det["masks"][:, 0], dtype=torch.bool)
            for j, (x1, y1, x2, y2) in enumerate(det["boxes"].tolist()):
                outside[j, max(0, int(y1) - 3):int(y2) + 4, max(0, int(x1) - 3):int(x2) + 4] = False
            assert float(det["masks"][:, 0][outside].abs().max()) == 0
        else:
            assert det["keypoints"].shape == (d, 5, 3) and det["keypoints_scores"].shape == (d, 5)
            assert bool((det["keypoints"][..., 2] == 1).all())
            # every keypoint lies in its box (heatmap cells are inside the RoI)
            b = det["boxes"]
            assert bool((det["keypoints"][..., 0] >= b[:, None, 0] - 1e-3).all())
            assert bool((det["keypoints"][..., 0] <= b[:, None, 2] + 1e-3).all())
            assert bool((det["keypoints"][..., 1] >= b[:, None, 1] - 1e-3).all())
            assert bool((det["keypoints"][..., 1] <= b[:, None, 3] + 1e-3).all())


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_no_detections_and_no_objects(kind):
    model = _small(kind)
    images, targets = _scene()
    # an image without objects trains (its masks / keypoints are empty) ...
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": torch.zeros(0, 104, 96, dtype=torch.uint8), "keypoints": torch.zeros(0, 5, 3)}
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # ... and so does a batch without any object: the branch loss is an exact zero with a graph
    empty = [{k: v[:0] for k, v in t.items()} for t in targets]
    losses = model(images, empty)
    extra = "loss_mask" if kind == "mask" else "loss_keypoint"
    assert float(losses[extra].detach()) == 0.0 and losses[extra].requires_grad
    # eval with nothing above the score threshold: empty, well-shaped outputs
    model.eval()
    model.roi_heads.score_thresh = 1.1
    with torch.no_grad():
        out = model(images)
    for det, img in zip(out, images):
        assert det["boxes"].shape == (0, 4)
        if kind == "mask":
            assert det["masks"].shape == (0, 1, img.shape[1], img.shape[2])
        else:
            assert det["keypoints"].shape == (0, 5, 3) and det["keypoints_scores"].shape == (0, 5)


def test_keypoints_to_heatmap_cells():
    rois = torch.tensor([[10.0, 20.0, 66.0, 48.0]])
    kps = torch.tensor([[[10.0, 20.0, 2], [65.99, 47.99, 1], [66.0, 48.0, 2], [38.0, 34.0, 2],
                         [9.9, 30.0, 2], [30.0, 30.0, 0]]])
    index, valid = keypoints_to_heatmap(kps, rois, 56)
    # x cell = floor((x - 10) * 56 / 56), y cell = floor((y - 20) * 56 / 28); the right / bottom
    # edge goes to the last cell; left of the RoI and invisible keypoints are invalid
    assert valid.tolist() == [[True, True, True, True, False, False]]
    assert index[0, :4].tolist() == [0, 55 * 56 + 55, 55 * 56 + 55, 28 * 56 + 28]
    assert index[0, 4:].tolist() == [0, 0]


# ---------------------------------------------------------------- training from scratch

@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_small_model_learns_on_synthetic_scenes(kind):
    model = _small(kind).train()
    images, targets = _scene(seed=3)
    # the keypoint loss (a softmax over 56 * 56 cells) starts near log(3136) ~ 8: a smaller step
    lr, steps = (0.02, 12) if kind == "mask" else (0.005, 16)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    extra = "loss_mask" if kind == "mask" else "loss_keypoint"
    totals, branch = [], []
    for _ in range(steps):
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
        branch.append(float(losses[extra].detach()))
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3, totals
    assert sum(branch[-3:]) / 3 < 0.7 * sum(branch[:3]) / 3, branch


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("change,message", [
    (lambda t: t[0].pop("masks"), r"targets\[0\]\['masks'\].*required"),
    (lambda t: t[1].update(masks=torch.zeros(2, 50, 50, dtype=torch.uint8)), r"targets\[1\]\['masks'\].*\[2, 104, 96\]"),
    (lambda t: t[0].update(masks=torch.zeros(1, 96, 112, dtype=torch.uint8)), r"targets\[0\]\['masks'\].*one mask per box"),
    (lambda t: t[0].update(masks=torch.zeros(2, 96, 112, dtype=torch.complex64)), r"targets\[0\]\['masks'\]"),
    (lambda t: t[0].update(labels=torch.tensor([1, 5])), r"targets\[0\]\['labels'\]"),
])
def test_bad_mask_targets_raise(change, message):
    model = _small("mask").train()
    images, targets = _scene()
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(images, targets)


@pytest.mark.parametrize("change,message", [
    (lambda t: t[1].pop("keypoints"), r"targets\[1\]\['keypoints'\].*required"),
    (lambda t: t[0].update(keypoints=torch.zeros(2, 17, 3)), r"targets\[0\]\['keypoints'\].*\[2, 5, 3\]"),
    (lambda t: t[0].update(keypoints=torch.zeros(2, 5)), r"targets\[0\]\['keypoints'\]"),
    (lambda t: t[0].update(keypoints=torch.zeros(2, 5, 3, dtype=torch.int64)), r"targets\[0\]\['keypoints'\].*floating"),
    (lambda t: t[0].update(keypoints=torch.full((2, 5, 3), float("nan"))), r"targets\[0\]\['keypoints'\].*non-finite"),
])
def test_bad_keypoint_targets_raise(change, message):
    model = _small("keypoint").train()
    images, targets = _scene()
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(images, targets)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="num_keypoints"):
        keypoint_rcnn(num_classes=3, backbone="tiny", num_keypoints=0)
    with pytest.raises(ValueError, match="mask_channels"):
        mask_rcnn(num_classes=3, backbone="tiny", mask_channels=0)
    with pytest.raises(ValueError, match="num_classes"):
        mask_rcnn(num_classes=1)
    with pytest.raises(TypeError, match="mask_roi_pool"):
        maskrcnn_resnet50_fpn(mask_roi_pool=torch.nn.Identity())
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        keypointrcnn_resnet50_fpn(trainable_backbone_layers=7)


def test_weights_file_round_trip(tmp_path):
    a = _small("mask").eval()
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = mask_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=112, mask_channels=32,
                  weights=str(tmp_path / "w.pt"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ---------------------------------------------------------------- torchvision parity

def _tv_detection():
    try:
        import torchvision
        import torchvision.models.detection as det
        torchvision.ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)
        return det
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")


_PARITY = dict(min_size=128, max_size=160, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=60,
               box_score_thresh=0.0, box_detections_per_img=12, box_batch_size_per_image=32)


def _pair(kind):
    det = _tv_detection()
    torch.manual_seed(0)
    if kind == "mask":
        theirs = det.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **_PARITY)
        ours = maskrcnn_resnet50_fpn(num_classes=3, **_PARITY)
    else:
        theirs = det.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, num_keypoints=5,
                                               **_PARITY)
        ours = keypointrcnn_resnet50_fpn(num_classes=3, num_keypoints=5, **_PARITY)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in theirs.modules():  # random BatchNorm statistics, peaky class scores: detections exist
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        theirs.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(a) == list(b) and a == b  # same keys, order and shapes
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_torchvision_weights_give_the_same_outputs(kind):
    ours, theirs = _pair(kind)
    ours.eval()
    theirs.eval()
    images, _ = _scene(sizes=((120, 150),))
    with torch.no_grad():
        x, y = ours(images)[0], theirs(images)[0]
    assert x["boxes"].shape[0] > 0, "no detections: the comparison would be empty"
    assert torch.equal(x["labels"], y["labels"])
    torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-5)
    if kind == "mask":
        assert x["masks"].shape == y["masks"].shape
        torch.testing.assert_close(x["masks"], y["masks"], rtol=0, atol=1e-3)
    else:
        torch.testing.assert_close(x["keypoints"], y["keypoints"], rtol=0, atol=1e-2)
        torch.testing.assert_close(x["keypoints_scores"], y["keypoints_scores"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_torchvision_training_losses_match(kind):
    ours, theirs = _pair(kind)
    ours.train()
    theirs.train()
    images, targets = _scene(sizes=((120, 150),))
    torch.manual_seed(7)  # same seed: the same image-size draw and the same sampled RoIs
    la = ours(images, targets)
    torch.manual_seed(7)
    lb = theirs(images, targets)
    assert set(la) == set(lb)
    for k in lb:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5, msg=k)


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("name", ["mask_rcnn", "keypoint_rcnn"])
def test_cli_train_evaluate_predict(name, tmp_path):
    import json

    from pydetops import evaluate, predict, train
    from pydetops.checkpoint import load_checkpoint
    from pydetops.data import synthetic
    d = tmp_path / "d"
    synthetic.generate(str(d), images=2, seed=4, size=(64, 64))
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", name, "--backbone", "tiny", "--image-size", "64",
                       "--train-images", str(d / "images"), "--train-annotations", str(d / "annotations.json"),
                       "--out", str(out), "--epochs", "1", "--batch-size", "2"]) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model=name)
    want = {"backbone": "tiny", "min_size": 64, "max_size": 106}
    if name == "keypoint_rcnn":
        want["num_keypoints"] = 5  # from the dataset's category keypoint names
    assert ck["model_kwargs"] == want
    history = json.loads((out / "metrics.json").read_text())["epochs"][0]
    extra = "loss_mask" if name == "mask_rcnn" else "loss_keypoint"
    assert extra in history["losses"]
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    kind = "segm" if name == "mask_rcnn" else "keypoints"
    assert em["model"] == name and em["images"] == 2 and kind in em
    dets = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert dets and all(("segmentation" in x) == (name == "mask_rcnn") for x in dets)
    assert all(len(x["keypoints"]) == 15 for x in dets) if name == "keypoint_rcnn" else True
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    assert (tmp_path / "pr" / "000001.png").exists()


# ---------------------------------------------------------------- bench cases

def test_bench_cases_and_training_steps_run():
    from pydetops.bench import models_mask_keypoint as bench
    cases = bench.model_cases("cpu", (64, 80), 64, 80, 5, 1, (64, 64))
    assert [c.op for c in cases] == ["mask_rcnn_r50_fpn inference", "keypoint_rcnn_r50_fpn inference",
                                     "mask_rcnn_tiny train step", "keypoint_rcnn_tiny train step"]
    assert [c.op for c in bench.cases("cpu", True)] == [c.op for c in cases]
    for case in cases[2:]:  # the training steps (ours only): one step each, and their line
        assert case.baseline is None and not case.comparable
        case.ours()
        assert case.details({"ours_ms": 250.0}) == "4.0 images/s (batch 1 / median step)"
