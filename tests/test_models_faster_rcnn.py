"""Faster R-CNN (pydetops.models.faster_rcnn): torchvision parity, training from scratch, bad targets.

The parity parts load a randomly initialised torchvision model's ``state_dict`` (no downloads)
and compare detections and training losses; they skip where torchvision does not import.
"""
import pytest
import torch

from pydetops.models import MODELS, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are small: one thread is as fast, and on a shared, loaded CPU two
    # spinning OpenMP threads were measured 10x slower per training step.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 140, 110, generator=g)]
    # a few bright rectangles so that features are not pure noise
    imgs[0][:, 20:70, 30:90] = 0.9
    imgs[1][:, 50:120, 10:60] = 0.1
    return imgs


def _targets():
    return [
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0], [100.0, 80.0, 150.0, 115.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 50.0, 60.0, 120.0]]), "labels": torch.tensor([2])},
    ]


# ---------------------------------------------------------------- the small model trains

def _synthetic_batch():
    g = torch.Generator().manual_seed(0)
    imgs, targets = [], []
    for i in range(2):
        img = torch.rand(3, 128, 128, generator=g) * 0.2
        boxes, labels = [], []
        for j in range(2):
            x, y = int(torch.randint(0, 70, (1,), generator=g)), int(torch.randint(0, 70, (1,), generator=g))
            w, h = 30 + 10 * j, 40 - 10 * j
            cls = 1 + (i + j) % 2
            img[cls - 1, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(cls)
        imgs.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return imgs, targets


def test_small_model_trains_on_cpu():
    torch.manual_seed(0)
    model = MODELS["faster_rcnn"](num_classes=3, backbone="tiny", min_size=96, max_size=96,
                                  box_batch_size_per_image=128)
    imgs, targets = _synthetic_batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    model.train()
    totals = []
    for _ in range(20):
        losses = model(imgs, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < 0.6 * sum(totals[:3]) / 3, totals
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2
    for det, img in zip(out, imgs):
        assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.int64
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        if det["boxes"].numel():
            assert float(det["boxes"][:, 2].max()) <= img.shape[2] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= img.shape[1] + 1e-3


@pytest.mark.parametrize("backbone,fpn", [("resnet18", True), ("tiny", False)])
def test_small_variants_run_and_empty_targets(backbone, fpn):
    model = faster_rcnn(num_classes=4, backbone=backbone, fpn=fpn, min_size=64, max_size=64)
    model.train()
    targets = _targets()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no objects
    losses = model(_images(), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    out = model(_images())
    assert len(out) == 2


def test_weights_file_round_trip(tmp_path):
    a = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128, box_score_thresh=0.0).eval()
    path = tmp_path / "w.pt"
    torch.save(a.state_dict(), path)
    b = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128, box_score_thresh=0.0,
                    weights=str(path)).eval()
    with torch.no_grad():
        da, db = a(_images()), b(_images())
    for x, y in zip(da, db):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
    with pytest.raises(ValueError, match="weights"):
        faster_rcnn(num_classes=3, backbone="tiny", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(TypeError, match="weights"):
        fasterrcnn_mobilenet_v3_large_fpn(weights=object())


# ---------------------------------------------------------------- bad targets and arguments

@pytest.mark.parametrize("change,message", [
    (lambda t: t[0].update(boxes=torch.zeros(2, 5)), r"targets\[0\]\['boxes'\]"),
    (lambda t: t[0].update(boxes=torch.zeros(2, 4, dtype=torch.int64)), r"targets\[0\]\['boxes'\]"),
    (lambda t: t[1].update(labels=torch.tensor([3])), r"targets\[1\]\['labels'\].*\[1, 2\]"),
    (lambda t: t[1].update(labels=torch.tensor([0])), r"targets\[1\]\['labels'\]"),
    (lambda t: t[1].update(labels=torch.tensor([1.0])), r"targets\[1\]\['labels'\].*integer"),
    (lambda t: t[0].update(labels=torch.tensor([1])), r"targets\[0\]\['labels'\].*one per box"),
    (lambda t: t[0].update(boxes=torch.tensor([[30.0, 20.0, 30.0, 70.0], [1, 1, 5, 5]])), r"targets\[0\]\['boxes'\]\[0\].*degenerate"),
    (lambda t: t[1].update(boxes=torch.tensor([[float("nan"), 0, 5, 5]])), r"targets\[1\]\['boxes'\].*non-finite"),
    (lambda t: t[1].pop("labels"), r"targets\[1\]"),
    (lambda t: t.pop(), r"targets: expected a list of 2"),
])
def test_bad_targets_raise(change, message):
    model = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128).train()
    targets = _targets()
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(_images(), targets)


def test_bad_calls_raise():
    model = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128).train()
    with pytest.raises(ValueError, match="targets"):
        model(_images())
    with pytest.raises(ValueError, match="images"):
        model([], [])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model.eval()([torch.rand(3, 32)])
    with pytest.raises(ValueError, match="num_classes"):
        faster_rcnn(num_classes=1)
    with pytest.raises(ValueError, match="backbone"):
        faster_rcnn(num_classes=3, backbone="vgg99")
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        fasterrcnn_resnet50_fpn(trainable_backbone_layers=6)



def _roi_postprocess_reference(heads, class_logits, box_regression, proposals, image_shapes):
    # The per-image loop the fused detection_postprocess call replaced, in float64.
    from pydetops.ops import batched_nms, decode_boxes, remove_small_boxes
    num_classes = class_logits.shape[-1]
    sizes = [len(p) for p in proposals]
    out = []
    for codes, props, scores, shape in zip(box_regression.double().split(sizes), proposals,
                                           torch.softmax(class_logits.double(), -1).split(sizes), image_shapes):
        boxes = decode_boxes(codes, props.double(), heads.box_coder.weights, heads.box_coder.bbox_xform_clip, shape)
        boxes = boxes.reshape(-1, num_classes, 4)[:, 1:].reshape(-1, 4)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)[:, 1:].reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


def test_roi_postprocess_batched_with_uneven_proposals_matches_per_image_loop():
    heads = faster_rcnn(num_classes=5, backbone="tiny").eval().roi_heads
    gen = torch.Generator().manual_seed(3)
    shapes = [(100, 90), (70, 120), (100, 100), (64, 64)]
    for counts in ([0, 37, 12, 50], [25, 25, 25, 25], [40]):
        proposals = []
        for n in counts:
            xy = torch.rand(n, 2, generator=gen) * 80
            proposals.append(torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 40 + 0.005], 1))
        logits = torch.randn(sum(counts), 5, generator=gen) * 2
        logits[: min(6, sum(counts))] = 3.0  # equal scores across proposals and classes
        regression = torch.randn(sum(counts), 20, generator=gen)
        got = heads.postprocess_detections(logits, regression, proposals, shapes[: len(counts)])
        want = _roi_postprocess_reference(heads, logits, regression, proposals, shapes[: len(counts)])
        assert len(got) == len(counts)
        for g, w in zip(got, want):
            assert g["labels"].dtype == torch.int64 and g["labels"].tolist() == w["labels"].tolist()
            assert g["boxes"].dtype == torch.float32
            torch.testing.assert_close(g["boxes"].double(), w["boxes"], atol=1e-3, rtol=0)
            torch.testing.assert_close(g["scores"].double(), w["scores"], atol=1e-6, rtol=0)



def test_rpn_fused_proposals_only_where_no_torchvision_model_is_matched():
    assert faster_rcnn(num_classes=3, backbone="tiny").rpn.fused_proposals_enabled
    assert not faster_rcnn(num_classes=3, backbone="tiny", rpn_fused_proposals=False).rpn.fused_proposals_enabled
    assert not fasterrcnn_mobilenet_v3_large_fpn(num_classes=3).rpn.fused_proposals_enabled
    # both paths give the same detections on an image without flat regions (no tied logits)
    torch.manual_seed(0)
    fused = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128, box_score_thresh=0.0).eval()
    per_image = faster_rcnn(num_classes=3, backbone="tiny", min_size=96, max_size=128, box_score_thresh=0.0,
                            rpn_fused_proposals=False).eval()
    per_image.load_state_dict(fused.state_dict())
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    with torch.no_grad():
        a, b = fused(images), per_image(images)
    for x, y in zip(a, b):
        assert x["boxes"].shape[0] > 0 and torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-4, rtol=0)


def test_rpn_fused_proposals_match_the_per_image_filter():
    from pydetops.ops import decode_boxes
    rpn = faster_rcnn(num_classes=3, backbone="tiny").eval().rpn
    rpn._pre_nms_top_n = {"training": 12, "testing": 12}
    rpn._post_nms_top_n = {"training": 9, "testing": 9}
    gen = torch.Generator().manual_seed(5)
    levels, num_images = [40, 25, 6], 3
    xy = torch.rand(sum(levels), 2, generator=gen) * 60 - 5
    anchors = [torch.cat([xy, xy + torch.rand(sum(levels), 2, generator=gen) * 30], 1)] * num_images
    shapes = [(64, 64), (50, 64), (64, 40)]
    for scale, thresh in ((1.0, 0.0), (30.0, 0.0), (1.0, 0.8)):
        # scale 30: the float32 sigmoids of many logits round to 1.0; thresh 0.8: drops ~90 % of the
        # anchors, many of them among the per-level top 12 (the reference thresholds sigmoid(logit / scale)
        # then, so it is only run with scale 1)
        rpn.score_thresh = thresh
        objectness = torch.randn(num_images * sum(levels), 1, generator=gen) * scale
        deltas = torch.randn(num_images * sum(levels), 4, generator=gen) * 0.5
        got = rpn.fused_proposals(objectness, deltas, anchors, shapes, levels)
        assert all(0 < len(g) <= 9 for g in got)
        # the reference path on logits / scale: the same order (the fused path ranks by logit),
        # but no two sigmoids rounded to one float
        proposals = decode_boxes(deltas, torch.cat(anchors)).view(num_images, -1, 4)
        want = rpn.filter_proposals(proposals, objectness / scale, shapes, levels)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)
        if thresh > 0:
            rpn.score_thresh = 0.0
            unfiltered = rpn.fused_proposals(objectness, deltas, anchors, shapes, levels)
            assert sum(map(len, got)) < sum(map(len, unfiltered))  # the threshold did drop proposals


# ---------------------------------------------------------------- torchvision parity

def _tv_detection():
    try:
        import torchvision.models.detection as det
        import torchvision
        torchvision.ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)
        return det
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")


_SMALL = dict(min_size=128, max_size=160, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=60,
              box_score_thresh=0.0, box_detections_per_img=20)


def _pair(name, **kwargs):
    det = _tv_detection()
    torch.manual_seed(0)
    theirs = getattr(det, name)(weights=None, weights_backbone=None, **kwargs)
    # random BatchNorm statistics so that the normalisation is exercised
    g = torch.Generator().manual_seed(1)
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    ours = {"fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn,
            "fasterrcnn_mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn}[name](**kwargs)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(a) == list(b) and a == b  # same keys, order and shapes
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    return ours, theirs


def _compare_detections(ours, theirs, imgs):
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        da, db = ours(imgs), theirs(imgs)
    total = 0
    for x, y in zip(da, db):
        assert x["boxes"].shape[0] > 0, "no detections: the comparison would be empty"
        total += x["boxes"].shape[0]
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-5)
    return total


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_torchvision_weights_give_the_same_detections(name):
    ours, theirs = _pair(name, num_classes=5, **_SMALL)
    assert _compare_detections(ours, theirs, _images()) > 0


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_torchvision_training_losses_match(name):
    # same seed: the same random image-size draw and the same sampled anchors / RoIs
    ours, theirs = _pair(name, num_classes=3, **_SMALL)
    ours.train()
    theirs.train()
    torch.manual_seed(7)
    la = ours(_images(), _targets())
    torch.manual_seed(7)
    lb = theirs(_images(), _targets())
    assert list(la) == list(lb)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_torchvision_default_state_dict_keys():
    det = _tv_detection()
    for name, ctor in [("fasterrcnn_resnet50_fpn", fasterrcnn_resnet50_fpn),
                       ("fasterrcnn_mobilenet_v3_large_fpn", fasterrcnn_mobilenet_v3_large_fpn)]:
        theirs = getattr(det, name)(weights=None, weights_backbone=None)
        ours = ctor()
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
        assert ours.rpn.anchor_generator.num_anchors_per_location() == theirs.rpn.anchor_generator.num_anchors_per_location()
        assert ours.rpn.score_thresh == theirs.rpn.score_thresh


def test_weights_backbone_from_a_classification_checkpoint(tmp_path):
    from pydetops.models.backbones import MobileNetV3Large
    trunk = MobileNetV3Large()
    state = {f"features.{k}": v + 0.5 for k, v in trunk.state_dict().items()}  # torchvision's classifier keys
    state["classifier.0.weight"] = torch.zeros(1280, 960)
    torch.save(state, tmp_path / "mnv3.pt")
    model = fasterrcnn_mobilenet_v3_large_fpn(weights_backbone=str(tmp_path / "mnv3.pt"), num_classes=3)
    body = model.backbone.body.state_dict()
    for k in body:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(body[k], state["features." + k]), k
    # a trained backbone: frozen BatchNorm and the top 3 stages train (as torchvision)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not model.backbone.body[6].block[0][0].weight.requires_grad
    assert model.backbone.body[7].block[0][0].weight.requires_grad
    del state["features.0.0.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="weights_backbone"):
        fasterrcnn_mobilenet_v3_large_fpn(weights_backbone=str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("score_thresh", [0.0, 0.75])
def test_rpn_fused_proposals_match_torchvisions_filter(score_thresh):
    # torchvision's own RPN filter (top-k on the logits, then sigmoid, clip, small boxes, score
    # threshold, NMS per level) on the same logits and deltas, many dropped by the threshold.
    _tv_detection()
    from torchvision.models.detection.rpn import RegionProposalNetwork as TvRPN
    from pydetops.ops import decode_boxes
    levels, num_images = [300, 120, 40], 2
    top, post = {"training": 50, "testing": 50}, {"training": 40, "testing": 40}
    theirs = TvRPN(None, None, 0.7, 0.3, 256, 0.5, top, post, 0.7, score_thresh).eval()
    ours = faster_rcnn(num_classes=3, backbone="tiny").eval().rpn
    ours._pre_nms_top_n, ours._post_nms_top_n, ours.nms_thresh, ours.score_thresh = top, post, 0.7, score_thresh
    gen = torch.Generator().manual_seed(7)
    xy = torch.rand(sum(levels), 2, generator=gen) * 200 - 10
    anchors = [torch.cat([xy, xy + torch.rand(sum(levels), 2, generator=gen) * 60 + 1], 1)] * num_images
    objectness = torch.randn(num_images * sum(levels), 1, generator=gen) * 2
    deltas = torch.randn(num_images * sum(levels), 4, generator=gen) * 0.3
    shapes = [(180, 200), (150, 190)]
    proposals = decode_boxes(deltas, torch.cat(anchors)).view(num_images, -1, 4)
    want, _ = theirs.filter_proposals(proposals, objectness, shapes, levels)
    got = ours.fused_proposals(objectness, deltas, anchors, shapes, levels)
    for g, w in zip(got, want):
        assert 0 < len(w)
        torch.testing.assert_close(g, w, atol=1e-3, rtol=0)
