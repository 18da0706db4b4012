"""R-CNN, SPPNet and Fast R-CNN (pydetops.models.rcnn / sppnet / fast_rcnn): the model contract,
minibatch sampling, training from scratch, the multi-task loss against a plain reference, the
proposal cache, selective search (skips without cv2.ximgproc), bad input, the CLIs.

No test depends on selective search's exact boxes: the models get their proposals from a
callable or per call, except the one selective-search test and (where cv2.ximgproc imports)
the CLI smoke test.
"""
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from pydetops.models import MODELS, FastRCNN, RCNN, SPPNet, fast_rcnn, rcnn, sppnet
from pydetops.models.heads.region_classifier import svm_hinge_loss
from pydetops.models.proposals import ProposalCache, SelectiveSearch, selective_search_available

NAMES = ["rcnn", "sppnet", "fast_rcnn"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grid_proposals(image):
    """Deterministic proposals: squares and 2:1 boxes of three sizes on a grid, Tensor[P, 4]."""
    h, w = image.shape[-2:]
    out = []
    for size in (12, 20, 32):
        for ar in (0.5, 1.0, 2.0):
            bw, bh = size * math.sqrt(ar), size / math.sqrt(ar)
            for cy in range(0, h, 8):
                for cx in range(0, w, 8):
                    out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return torch.tensor(out)


def scene(seed, size=64, n=2):
    """A noisy image with ``n`` coloured rectangles (class = colour); -> (image, target)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, size, size, generator=g) * 0.3
    boxes, labels = [], []
    for j in range(n):
        w, h = 14 + 6 * j, 18 - 2 * j
        x = 4 + j * (size // 2) + int(torch.randint(0, 6, (1,), generator=g))
        y = int(torch.randint(0, size - h, (1,), generator=g))
        cls = 1 + (seed + j) % 2
        img[:, y:y + h, x:x + w] = 0.1
        img[cls - 1, y:y + h, x:x + w] = 1.0
        boxes.append([x, y, x + w, y + h])
        labels.append(cls)
    return img, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def jittered(target, generator, n_random=24, size=64):
    """Training proposals: each ground truth jittered 6 times + random boxes, Tensor[P, 4]."""
    gt = target["boxes"]
    wh = (gt[:, 2:] - gt[:, :2]).repeat(6, 1)
    jit = gt.repeat(6, 1) + torch.randn(gt.shape[0] * 6, 4, generator=generator) * wh.repeat(1, 2) * 0.12
    xy = torch.rand(n_random, 2, generator=generator) * (size - 16)
    rnd = torch.cat([xy, xy + 8 + torch.rand(n_random, 2, generator=generator) * 24], 1)
    return torch.cat([jit, rnd])


def small(name, **kw):
    """The CPU-sized model with test sizes (64 px images, 32 px warps for R-CNN) and grid proposals."""
    kw.setdefault("proposal_fn", grid_proposals)
    kw.setdefault("image_size", 64)
    if name == "rcnn":
        kw.setdefault("warp_size", 32)
    return MODELS[name](num_classes=3, **kw)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NAMES)
def test_contract_train_losses_and_eval_detections(name):
    torch.manual_seed(0)
    model = small(name)
    imgs, targets = zip(*[scene(0), scene(1, size=56)])
    model.train()
    losses = model(list(imgs), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(list(imgs))
    assert isinstance(out, list) and len(out) == 2
    for det, img in zip(out, imgs):
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape[1:] == (4,) and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        assert det["boxes"].shape[0] > 0  # an untrained model's scores are ~1/3 > 0.05
        assert bool((det["labels"] >= 1).all() and (det["labels"] <= 2).all())
        # in the INPUT image's pixels (the model resized 56 -> 64 internally)
        assert float(det["boxes"][:, 2].max()) <= img.shape[2] + 1e-3
        assert float(det["boxes"][:, 3].max()) <= img.shape[1] + 1e-3
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())


def test_constructors_and_registry():
    assert MODELS["rcnn"] is rcnn and MODELS["sppnet"] is sppnet and MODELS["fast_rcnn"] is fast_rcnn
    assert isinstance(rcnn(3, proposal_fn=None), RCNN)
    assert isinstance(sppnet(3, proposal_fn=None, backbone="resnet18"), SPPNet)
    assert isinstance(fast_rcnn(3, proposal_fn=None), FastRCNN)
    with pytest.raises(ValueError, match="backbone"):
        fast_rcnn(3, backbone="vgg99", proposal_fn=None)
    with pytest.raises(ValueError, match="classifier"):
        rcnn(3, classifier="tree", proposal_fn=None)
    with pytest.raises(ValueError, match="num_classes"):
        sppnet(1, proposal_fn=None)
    with pytest.raises(ValueError, match="proposal_fn"):
        rcnn(3, proposal_fn="edge_boxes")


# ---------------------------------------------------------------- minibatch sampling


def _sampled(model, proposals, targets):
    heads = model.roi_heads
    heads.train()
    heads.sampler.batch_size_per_image = heads.rois_per_minibatch // len(proposals)
    props, labels, _ = heads.select_training_samples(proposals, targets)
    return props, labels


def test_rcnn_minibatch_is_32_positives_and_96_background_of_128():
    torch.manual_seed(0)
    model = small("rcnn")
    img, target = scene(0, size=96)
    g = torch.Generator().manual_seed(1)
    props = torch.cat([jittered(target, g, n_random=0).repeat(8, 1), grid_proposals(img)])
    sp, lab = _sampled(model, [props], [target])
    assert int((lab[0] >= 1).sum()) == 32 and int((lab[0] == 0).sum()) == 96
    # two images: 128 regions in all, R / N = 64 per image, 16 + 48 each
    sp, lab = _sampled(model, [props, props], [target, target])
    assert [int((x >= 1).sum()) for x in lab] == [16, 16] and [int((x == 0).sum()) for x in lab] == [48, 48]
    # R-CNN's background is every region below IoU 0.5 (down to 0)
    from pydetops.ops import box_iou
    iou = box_iou(sp[0], target["boxes"]).max(dim=1).values
    assert bool((iou[lab[0] == 0] < 0.5).all()) and bool((iou[lab[0] >= 1] >= 0.5).all())


def test_fast_rcnn_minibatch_is_25_percent_foreground_and_background_in_01_05():
    torch.manual_seed(0)
    model = small("fast_rcnn")
    img, target = scene(2, size=96)
    g = torch.Generator().manual_seed(3)
    props = torch.cat([jittered(target, g, n_random=0).repeat(8, 1), grid_proposals(img)])
    sp, lab = _sampled(model, [props, props], [target, target])
    from pydetops.ops import box_iou
    for p, lb in zip(sp, lab):
        assert p.shape[0] == 64 and int((lb >= 1).sum()) == 16  # R = 128 from N = 2: 64 each, 25 % fg
        iou = box_iou(p, target["boxes"]).max(dim=1).values
        bg = iou[lb == 0]
        assert bool((bg >= 0.1).all() and (bg < 0.5).all()) and bool((iou[lb >= 1] >= 0.5).all())
    # few candidates: every foreground and background one is taken, the ground truths included
    few = target["boxes"] + torch.tensor([1.0, 0.0, 1.0, 0.0])
    sp, lab = _sampled(model, [few], [target])
    assert sp[0].shape[0] == 4 and int((lab[0] >= 1).sum()) == 4


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_training_from_scratch(name):
    torch.manual_seed(0)
    model = small(name)
    data = [scene(s) for s in range(2)]
    g = torch.Generator().manual_seed(0)
    fixed = [jittered(t, g) for _, t in data]
    calls = []

    def proposal_fn(image):  # a callable that knows the scenes: jittered ground truth + random boxes
        calls.append(1)
        return next(p for (im, _), p in zip(data, fixed) if im is image)

    model.proposal_fn = proposal_fn
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    totals = []
    for _ in range(14):
        losses = model([d[0] for d in data], [d[1] for d in data])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert len(calls) == 28 and all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.75 * sum(totals[:3]) / 3, totals


def test_svm_classifier_trains_and_scores(monkeypatch):
    torch.manual_seed(0)
    model = small("rcnn", classifier="svm")
    data = [scene(s) for s in range(2)]
    g = torch.Generator().manual_seed(0)
    props = [jittered(t, g) for _, t in data]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    svm = []
    for _ in range(10):
        losses = model([d[0] for d in data], [d[1] for d in data], proposals=props)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_svm"}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        svm.append(float(losses["loss_svm"].detach()))
    assert svm[-1] < svm[0], svm
    # the SVMs' training set (R-CNN): positives = the ground-truth boxes, negatives = regions with
    # IoU < 0.3 with every ground truth, the grey zone ignored
    import pydetops.models.heads.region_classifier as rc
    seen = {}
    real = rc.svm_hinge_loss
    monkeypatch.setattr(rc, "svm_hinge_loss", lambda s, lab, k: seen.update(s=s, lab=lab) or real(s, lab, k))
    model([d[0] for d in data], [d[1] for d in data], proposals=props)
    lab, n_gt = seen["lab"], sum(int(d[1]["labels"].numel()) for d in data)
    assert torch.equal(lab[-n_gt:], torch.cat([d[1]["labels"] for d in data]))
    assert set(lab[:-n_gt].tolist()) <= {0, -1} and int((lab == 0).sum()) > 0 and int((lab == -1).sum()) > 0
    assert seen["s"].shape == (lab.shape[0], 2) and seen["s"].requires_grad  # the SVMs train
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([data[0][0]], [empty], proposals=[torch.zeros(0, 4)])
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([data[0][0]], proposals=[props[0]])
    assert out[0]["scores"].numel() > 0 and bool(((out[0]["scores"] > 0) & (out[0]["scores"] < 1)).all())


def test_svm_hinge_loss_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 3, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(-1, 4, (40,), generator=g)  # -1: ignored
    labels[:3] = 0
    ref = 0.0
    for c in range(3):
        pos = [i for i in range(40) if labels[i] == c + 1]
        neg = sorted((max(0.0, 1 + float(scores[i, c])) for i in range(40) if labels[i] not in (c + 1, -1)),
                     reverse=True)
        ref += sum(max(0.0, 1 - float(scores[i, c])) for i in pos)
        ref += sum(h for h in neg[: 2 * max(1, len(pos))] if h > 0)
    got = svm_hinge_loss(scores, labels, negatives_per_positive=2)
    assert int((labels == -1).sum()) > 0
    assert float(got) == pytest.approx(ref / int((labels >= 0).sum()), rel=1e-12)
    assert float(svm_hinge_loss(scores[:0], labels[:0])) == 0.0
    assert float(svm_hinge_loss(scores[:5], torch.full((5,), -1))) == 0.0


# ---------------------------------------------------------------- SPP, and Fast R-CNN's loss


def test_spp_vector_length_is_channels_times_sum_of_levels():
    model = small("sppnet", levels=(4, 2, 1))
    img, _ = scene(0)
    feats = model.backbone(model.transform([img])[0].tensors)
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [10.0, 12.0, 60.0, 62.0], [5.0, 5.0, 6.0, 6.0]])]
    out = model.roi_heads.box_roi_pool(feats, boxes)
    assert out.shape == (3, model.backbone.out_channels * (16 + 4 + 1))
    assert model.roi_heads.box_head.fc6.in_features == out.shape[1]


def _iou64(a, b):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_fast_rcnn_multitask_loss_equals_a_plain_reference(lam):
    """L = L_cls(p, u) + lambda [u >= 1] smooth_L1(t^u - v) on a tiny case where every RoI is sampled."""
    torch.manual_seed(0)
    model = small("fast_rcnn", image_size=64, box_loss_weight=lam)
    img, target = scene(5)
    gt = target["boxes"]
    # foreground proposals, background ones (IoU in [0.1, 0.5)) and one ignored (IoU < 0.1)
    props = torch.cat([gt + torch.tensor([1.0, -1.0, 2.0, 1.0]), gt + torch.tensor([-2.0, 1.0, 0.0, 2.0]),
                       gt[:1] + torch.tensor([8.0, 0.0, 12.0, 0.0]), gt[1:] + torch.tensor([0.0, 9.0, 0.0, 12.0]),
                       gt[:1] + torch.tensor([-6.0, -10.0, 2.0, -2.0]),
                       torch.tensor([[60.0, 0.0, 63.0, 3.0]])])
    seen = {}
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, a, o: seen.update(rois=a[1]))
    model.roi_heads.box_predictor.register_forward_hook(lambda m, a, o: seen.update(out=o))
    model.train()
    losses = {k: v.detach() for k, v in model([img], [target], proposals=[props]).items()}
    rois = seen["rois"][0].double()
    logits, deltas = (t.detach().double() for t in seen["out"])
    # the reference, from scratch in float64 (image 64 px -> image_size 64: scale 1)
    cand = torch.cat([props.double().clamp(0, 64), gt.double()])  # proposals clipped to the image
    iou = _iou64(cand, gt.double())
    best, arg = iou.max(dim=1)
    keep = best >= 0.1
    assert int(keep.sum()) == rois.shape[0] == 9 and torch.equal(rois, cand[keep])
    u = torch.where(best[keep] >= 0.5, target["labels"][arg[keep]], torch.zeros_like(arg[keep]))
    assert 0 < int((u >= 1).sum()) < 9  # foreground and background RoIs
    g = gt.double()[arg[keep]]
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    px, py = rois[:, 0] + pw / 2, rois[:, 1] + ph / 2
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    gx, gy = g[:, 0] + gw / 2, g[:, 1] + gh / 2
    v = torch.stack([10 * (gx - px) / pw, 10 * (gy - py) / ph, 5 * torch.log(gw / pw), 5 * torch.log(gh / ph)], 1)
    l_cls = -torch.log_softmax(logits, 1)[torch.arange(9), u].mean()
    t_u = deltas.reshape(9, -1, 4)[torch.arange(9), u]
    d = (t_u - v).abs()
    beta = 1.0 / 9
    sl1 = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum(1)
    l_loc = lam * (sl1 * (u >= 1)).sum() / 9
    assert float(losses["loss_classifier"]) == pytest.approx(float(l_cls), rel=1e-5, abs=1e-6)
    assert float(losses["loss_box_reg"]) == pytest.approx(float(l_loc), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- proposals: cache, selective search


def test_proposal_cache_calls_the_proposer_once_per_image(tmp_path):
    calls = []

    def counting(image):
        calls.append(1)
        return grid_proposals(image)

    model = small("fast_rcnn", proposal_fn=counting)
    assert isinstance(model.proposal_fn, ProposalCache)
    imgs = [scene(0)[0], scene(1)[0]]
    model.eval()
    with torch.no_grad():
        a = model(imgs)
        b = model([imgs[1].clone(), imgs[0]])  # same pixels, another tensor: a hit
    assert len(calls) == 2 and model.proposal_fn.hits == 2 and model.proposal_fn.misses == 2
    assert torch.equal(a[0]["boxes"], b[1]["boxes"]) and torch.equal(a[1]["boxes"], b[0]["boxes"])
    model([torch.flip(imgs[0], [2])])  # a flipped image is another image
    assert len(calls) == 3
    # on disk: a second cache (a resumed run) reads the files back
    cache = ProposalCache(counting, cache_dir=str(tmp_path / "p"))
    first = cache(imgs[0])
    again = ProposalCache(counting, cache_dir=str(tmp_path / "p"))
    assert torch.equal(again(imgs[0]), first) and len(calls) == 4 and again.misses == 0
    assert len(list((tmp_path / "p").glob("*.pt"))) == 1


def test_selective_search_on_a_64x64_image():
    if not selective_search_available():
        pytest.skip("cv2.ximgproc (opencv-contrib-python-headless) is not installed")
    img, target = scene(3)
    boxes = SelectiveSearch("fast", max_proposals=2000)(img)  # all of them: their ranking is random
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert boxes.shape[0] >= 3 and SelectiveSearch("fast", max_proposals=2)(img).shape == (2, 4)
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all())
    assert bool((boxes[:, 2:] > boxes[:, :2]).all())
    from pydetops.ops import box_iou
    assert float(box_iou(target["boxes"], boxes).max(dim=1).values.min()) >= 0.5  # uniform rectangles are found
    # the default model path: selective search once per image, cached
    model = fast_rcnn(3, image_size=64).eval()
    with torch.no_grad():
        model([img])
        model([img])
    assert model.proposal_fn.misses == 1 and model.proposal_fn.hits == 1


def test_selective_search_without_opencv_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        SelectiveSearch()
    with pytest.raises(ImportError, match=r"pydetops\[rcnn\]"):
        rcnn(3)
    assert not selective_search_available()
    rcnn(3, proposal_fn=grid_proposals)  # a callable needs no OpenCV


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_defined_results_or_named_errors(name):
    torch.manual_seed(0)
    model = small(name)
    img, target = scene(0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    model.train()
    # zero proposals, and an image without objects: losses defined, and they backpropagate
    losses = model([img, img], [target, empty], proposals=[torch.zeros(0, 4), torch.zeros(0, 4)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # no objects at all: everything background, no box loss
    g = torch.Generator().manual_seed(0)
    losses = {k: v.detach() for k, v in model([img], [empty], proposals=[jittered(target, g)]).items()}
    assert float(losses["loss_box_reg"]) == 0.0 and float(losses["loss_classifier"]) > 0
    # no proposals and no objects anywhere: zeros
    losses = model([img], [empty], proposals=[torch.zeros(0, 4)])
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([img, img], proposals=[torch.zeros(0, 4), torch.tensor([[-30.0, -20.0, 500.0, 400.0],
                                                                            [70.0, 70.0, 90.0, 90.0]])])
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].dtype == torch.int64
    b = out[1]["boxes"]  # outside the image: clipped (the box wholly outside is dropped)
    assert b.numel() and bool((b >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 3] <= 64).all())
    bad = [
        (lambda: model([img], proposals=[torch.zeros(5)]), r"proposals\[0\]"),
        (lambda: model([img], proposals=[torch.zeros(3, 5)]), r"proposals\[0\]"),
        (lambda: model([img], proposals=[torch.zeros(3, 4), torch.zeros(3, 4)]), "proposals"),
        (lambda: model([img[:2]]), r"images\[0\]"),
        (lambda: model([]), "images"),
        (lambda: model(img), "images"),
    ]
    for call, message in bad:
        with pytest.raises(ValueError, match=message):
            call()
    model.proposal_fn = lambda image: torch.zeros(4)
    with pytest.raises(ValueError, match="proposal_fn"):
        model([img])
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model([img], proposals=[torch.zeros(1, 4)])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        model([img], [{"boxes": torch.zeros(2, 3), "labels": torch.ones(2, dtype=torch.int64)}],
              proposals=[torch.zeros(1, 4)])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        model([img.to(torch.uint8)], [target], proposals=[torch.zeros(1, 4)])


# ---------------------------------------------------------------- the command lines


@pytest.mark.parametrize("name", NAMES)
def test_cli_train_evaluate_predict(name, tmp_path, monkeypatch):
    from pydetops import evaluate, predict, train
    from pydetops.checkpoint import load_checkpoint
    from pydetops.data import synthetic
    if not selective_search_available():  # the same CLI, with grid proposals instead of selective search
        import functools
        monkeypatch.setitem(MODELS, name, functools.partial(MODELS[name], proposal_fn=grid_proposals))
    d = tmp_path / "d"
    synthetic.generate(str(d), images=2, seed=4, size=(48, 48))
    out = tmp_path / "run"
    torch.manual_seed(0)
    args = ["--model", name, "--image-size", "48", "--train-images", str(d / "images"),
            "--train-annotations", str(d / "annotations.json"), "--val-images", str(d / "images"),
            "--val-annotations", str(d / "annotations.json"), "--out", str(out), "--epochs", "1",
            "--batch-size", "2"]
    assert train.main(args) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model=name)
    assert ck["model_kwargs"] == {"image_size": 48}
    if selective_search_available():
        assert len(list((out / "proposals").glob("*.pt"))) >= 2  # the disk cache under OUT
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == name and em["images"] == 2 and 0.0 <= (em["AP"] or 0.0) <= 1.0
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert p[0]["detections"] and all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4
                                      for det in p[0]["detections"])


# ---------------------------------------------------------------- the bench cases


def test_bench_cases_run_on_tiny_images():
    from pydetops.bench import _core, models_rcnn
    cases = models_rcnn.rcnn_family_cases("cpu", (48, 64), 40, (48, 48), selective_search=False)
    assert [c.op for c in cases] == ["rcnn inference", "rcnn train step", "sppnet inference", "sppnet train step",
                                     "fast_rcnn inference", "fast_rcnn train step"]
    rows = _core.run_cases(cases, 1, progress=lambda msg: None)
    for row in rows:
        assert row["ours_ms"] > 0 and row["baseline_ms"] is None and not row["comparable"]
        rate = float(row["details"].split(": ")[1].split(" images/s")[0])
        per_call = 1 if "inference" in row["op"] else 2
        assert rate == pytest.approx(per_call / (row["ours_ms"] / 1e3), rel=0.01, abs=0.01)
    assert models_rcnn.grid_proposals(48, 64, 40).shape == (40, 4)
