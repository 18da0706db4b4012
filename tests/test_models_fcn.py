"""FCN semantic segmentation (pydetops/models/fcn.py) and the segmentation metrics
(pydetops/evaluation/segmentation.py): the model contract, the four decoders (shape, training),
max unpooling with the encoder's own indices, the semantic target, pixel accuracy / mean IoU
against hand-computed values, bad input, and train / evaluate / predict through the CLIs."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pydetops import evaluate, predict, train
from pydetops.data import CocoDetection, ToTensor, synthetic
from pydetops.evaluation.segmentation import (IGNORE_INDEX, confusion_matrix, iou_per_class, mean_iou,
                                              pixel_accuracy, segmentation_metrics, semantic_target,
                                              semantic_target_from_annotations)
from pydetops.models import MODELS
from pydetops.models.fcn import DECODERS, FCN, fcn, regions_to_detections
from pydetops.ops import MaxUnpool2d


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scene(h=32, w=32, seed=0):
    """One image with a bright square (label 1) and a dark bar (label 2), and their masks."""
    g = torch.Generator().manual_seed(seed)
    img = 0.5 + 0.05 * torch.randn(3, h, w, generator=g)
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 4:16, 4:16] = 1
    masks[1, 18:28, 8:28] = 1
    img[:, masks[0].bool()] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    img[:, masks[1].bool()] = torch.tensor([0.1, 0.1, 0.8])[:, None]
    return img.clamp(0, 1), {"masks": masks, "labels": torch.tensor([1, 2])}


def test_registered_and_contract():
    assert MODELS["fcn"] is fcn
    torch.manual_seed(0)
    m = fcn(num_classes=3)
    img, tgt = _scene()
    losses = m([img, img.flip(-1)], [tgt, {"masks": tgt["masks"].flip(-1), "labels": tgt["labels"]}])
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"].dim() == 0
    assert torch.isfinite(losses["loss_sem_seg"]) and losses["loss_sem_seg"].requires_grad
    m.eval()
    # sizes not multiples of the stride, one smaller than the stride (16)
    outs = m([img[:, :30, :21], torch.rand(3, 5, 7)])
    assert [tuple(o["sem_seg"].shape) for o in outs] == [(3, 30, 21), (3, 5, 7)]
    for o in outs:
        assert set(o) == {"sem_seg", "boxes", "labels", "scores"}
        assert o["boxes"].shape[1] == 4 and o["labels"].shape == o["scores"].shape == o["boxes"].shape[:1]
        torch.testing.assert_close(o["sem_seg"].sum(0), torch.ones(o["sem_seg"].shape[1:]))
    m.region_detections = False
    assert set(m([img])[0]) == {"sem_seg"}
    # no fully connected layer anywhere
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.modules())


@pytest.mark.parametrize("decoder", ["transpose", "max_unpool"])
def test_trains_and_predicts_under_cpu_autocast(decoder):
    torch.manual_seed(0)
    m = fcn(num_classes=3, decoder=decoder, widths=(8, 8))
    img, tgt = _scene()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m([img], [tgt])["loss_sem_seg"]
        m.eval()
        out = m([img])[0]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert out["sem_seg"].shape == (3, 32, 32) and out["sem_seg"].dtype == torch.float32


def test_image_size_resizes_and_scores_come_back_in_input_size():
    torch.manual_seed(0)
    m = fcn(num_classes=3, image_size=24).eval()
    out = m([torch.rand(3, 40, 50)])[0]["sem_seg"]
    assert out.shape == (3, 40, 50)


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_decoder_gives_the_right_shape_and_trains(decoder):
    torch.manual_seed(0)
    m = fcn(num_classes=3, decoder=decoder, widths=(8, 16, 16))
    img, tgt = _scene()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    first = None
    for _ in range(25):
        loss = m([img], [tgt])["loss_sem_seg"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (decoder, first, loss.item())
    m.eval()
    scores = m([img])[0]["sem_seg"]
    assert scores.shape == (3, 32, 32)
    # it learned the scene: most pixels right
    acc = (scores.argmax(0) == semantic_target(tgt["masks"], tgt["labels"])).float().mean()
    assert acc > 0.8, (decoder, float(acc))


def test_backbone_names_the_size_and_the_decoder():
    m = fcn(3, backbone="small-max_unpool")
    assert m.decoder_kind == "max_unpool" and m.encoder[0][0][0].out_channels == 32
    assert fcn(3, backbone="tiny").decoder_kind == "transpose"
    assert fcn(3, backbone="tiny-nearest").encoder[0][0][0].out_channels == 16


def test_decoders_use_pydetops_ops():
    kinds = {d: type(fcn(3, decoder=d).decoder[0].up).__module__ for d in DECODERS}
    assert all(k.startswith("pydetops.ops") for k in kinds.values()), kinds
    tr = fcn(3, decoder="transpose").decoder[0].up
    # bilinear start: a constant map up-samples to the same constant away from the border
    x = torch.ones(1, tr.in_channels, 6, 6)
    y = tr(x)
    assert y.shape[-2:] == (12, 12)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones_like(y[..., 2:-2, 2:-2]))


def test_max_unpooling_uses_the_encoders_indices():
    torch.manual_seed(0)
    m = FCN(num_classes=3, decoder="max_unpool", widths=(4, 4)).eval()
    x = torch.rand(1, 3, 16, 16)
    # the encoder's pooling indices, computed independently
    h, expected = x, []
    for stage in m.encoder:
        h = stage(h)
        h, idx = F.max_pool2d(h, 2, 2, return_indices=True)
        expected.append(idx)
    seen = []
    for up in m.decoder:
        assert isinstance(up.up, MaxUnpool2d)
        up.up.register_forward_hook(lambda mod, args, out: seen.append((args[1], out)))
    m.scores(x)
    assert len(seen) == 2
    for (idx, out), exp in zip(seen, reversed(expected)):
        assert torch.equal(idx, exp)
        # the unpooled map is non-zero only where the encoder found its maxima
        flat = out.flatten(2)
        hits = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, exp.flatten(2), True)
        assert bool((flat[~hits] == 0).all())
    # other indices -> another output: the decoder really depends on them
    up = m.decoder[0]
    a = up(torch.ones(1, 4, 4, 4), expected[1], [8, 8])
    b = up(torch.ones(1, 4, 4, 4), torch.zeros_like(expected[1]), [8, 8])
    assert not torch.equal(a, b)


def test_regions_to_detections_constructed():
    # class map: two class-1 squares, a class-2 L shape, two class-1 pixels touching diagonally
    # (8-connected: one region), a 2-pixel class-2 speck (below min_area), class 1 touching class 2
    cmap = torch.zeros(12, 14, dtype=torch.int64)
    cmap[0:3, 0:3] = 1                       # A: 9 px
    cmap[0:4, 8:12] = 1                      # B: 16 px
    cmap[6:12, 0:2] = 2
    cmap[10:12, 2:7] = 2                     # C: L shape, 12 + 10 = 22 px
    cmap[5, 5] = 1
    cmap[4, 6] = 1                           # D: diagonal pair, 2 px
    cmap[6:9, 9:12] = 1                      # E: 9 px, touching F (class 2)
    cmap[9:11, 9:12] = 2                     # F: 6 px
    probs = torch.full((3, 12, 14), 0.1)
    probs.scatter_(0, cmap[None], 0.8)
    probs[1, 0:3, 0:3] = 0.7                 # A scores 0.7
    d = regions_to_detections(probs, min_area=3)
    got = sorted((int(lab), [float(v) for v in box], round(float(sc), 4))
                 for box, lab, sc in zip(d["boxes"], d["labels"], d["scores"]))
    assert got == [(1, [0.0, 0.0, 3.0, 3.0], 0.7), (1, [8.0, 0.0, 12.0, 4.0], 0.8), (1, [9.0, 6.0, 12.0, 9.0], 0.8),
                   (2, [0.0, 6.0, 7.0, 12.0], 0.8), (2, [9.0, 9.0, 12.0, 11.0], 0.8)]
    assert bool((d["scores"][:-1] >= d["scores"][1:]).all())
    d2 = regions_to_detections(probs, min_area=1)
    assert (1, [5.0, 4.0, 7.0, 6.0]) in [(int(lab), [float(v) for v in b]) for b, lab in zip(d2["boxes"], d2["labels"])]
    assert len(regions_to_detections(probs, min_area=1, max_detections=2)["boxes"]) == 2
    # all background: no detection
    e = regions_to_detections(torch.tensor([[[0.9]], [[0.1]]]).expand(2, 4, 4).contiguous())
    assert e["boxes"].shape == (0, 4) and e["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="probs"):
        regions_to_detections(torch.rand(4, 4))


def test_semantic_target_last_instance_wins_and_background():
    masks = torch.zeros(3, 4, 5, dtype=torch.uint8)
    masks[0, 0:3, 0:3] = 1
    masks[1, 1:4, 1:4] = 1   # overlaps instance 0: instance 1 (later) wins
    masks[2, 0, 4] = 1
    sem = semantic_target(masks, torch.tensor([2, 1, 3]))
    expected = torch.tensor([[2, 2, 2, 0, 3],
                             [2, 1, 1, 1, 0],
                             [2, 1, 1, 1, 0],
                             [0, 1, 1, 1, 0]])
    assert torch.equal(sem, expected)
    assert torch.equal(semantic_target(torch.zeros(0, 2, 3), torch.zeros(0, dtype=torch.int64)),
                       torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        semantic_target(masks, torch.tensor([1, 2]))


def test_metrics_hand_computed():
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [0, 1]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert pixel_accuracy(cm) == pytest.approx(3 / 4)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2 absent -> None
    assert iou_per_class(cm) == [pytest.approx(0.5), pytest.approx(2 / 3), None]
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3) / 2)
    m = segmentation_metrics(cm, ["bg", "a", "b"])
    assert m["per_class_IoU"]["b"] is None and m["mIoU"] == pytest.approx(7 / 12)
    # ignored pixels count nowhere
    t2 = torch.tensor([[0, 1], [IGNORE_INDEX, 1]])
    cm2 = confusion_matrix(pred, t2, 3)
    assert int(cm2.sum()) == 3 and pixel_accuracy(cm2) == 1.0  # the one wrong pixel was ignored
    assert pixel_accuracy(torch.zeros(2, 2, dtype=torch.int64)) is None
    assert mean_iou(torch.zeros(2, 2, dtype=torch.int64)) is None
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


def test_bad_input():
    m = fcn(num_classes=3)
    img, tgt = _scene()
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        m([img], [{"masks": tgt["masks"], "labels": torch.tensor([1, 3])}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        m([img], [{"masks": tgt["masks"], "labels": torch.tensor([0, 1])}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        m([img], [{"masks": tgt["masks"][:, :10], "labels": tgt["labels"]}])
    with pytest.raises(ValueError, match="targets"):
        m([img])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        m([(img * 255).to(torch.uint8)], [tgt])
    with pytest.raises(ValueError, match="images"):
        m([])
    with pytest.raises(ValueError, match="decoder"):
        fcn(3, decoder="bilinear")
    with pytest.raises(ValueError, match="num_classes"):
        fcn(1)
    with pytest.raises(ValueError, match="backbone"):
        fcn(3, backbone="resnet50")
    with pytest.raises(ValueError, match="backbone"):
        fcn(3, backbone="tiny-bilinear")
    # no objects: every pixel background, a finite loss; an image smaller than the stride trains too
    empty = {"masks": torch.zeros(0, 5, 7, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.int64)}
    loss = m([torch.rand(3, 5, 7)], [empty])["loss_sem_seg"]
    assert torch.isfinite(loss)
    loss.backward()


def test_evaluate_model_scores_a_perfect_model_as_perfect(tmp_path):
    synthetic.generate(str(tmp_path / "d"), images=3, seed=3, size=(40, 48))
    ds = CocoDetection(str(tmp_path / "d" / "images"), str(tmp_path / "d" / "annotations.json"),
                       transforms=ToTensor())
    truth = [semantic_target_from_annotations(ds.anns[i], ds.category_id_to_label, 40, 48) for i in ds.ids]

    class Oracle(torch.nn.Module):
        def __init__(self, maps, flip=False):
            super().__init__()
            self.maps, self.flip, self.k = maps, flip, 0

        def forward(self, images):
            out = []
            for _ in images:
                t = self.maps[self.k]
                self.k += 1
                if self.flip:  # every object pixel called background
                    t = torch.zeros_like(t)
                out.append({"sem_seg": F.one_hot(t, 4).permute(2, 0, 1).float()})
            return out

    metrics, dets, curves = evaluate.evaluate_model(Oracle(truth), ds, ds.label_to_category_id, torch.device("cpu"))
    assert "AP" not in metrics and dets == [] and curves == {}
    assert metrics["sem_seg"]["pixel_accuracy"] == 1.0 and metrics["sem_seg"]["mIoU"] == 1.0
    assert evaluate.selection_metric(metrics) == ("mIoU", 1.0)
    metrics, _, _ = evaluate.evaluate_model(Oracle(truth, flip=True), ds, ds.label_to_category_id,
                                            torch.device("cpu"))
    fg = sum(int((t > 0).sum()) for t in truth)
    total = sum(t.numel() for t in truth)
    assert metrics["sem_seg"]["pixel_accuracy"] == pytest.approx(1 - fg / total)
    bg_iou = (total - fg) / total  # background: every pixel predicted, the true ones right
    present = len(set(torch.cat([t.reshape(-1) for t in truth]).tolist()))  # classes in the ground truth
    assert present >= 2
    # the object classes present score IoU 0, the absent ones do not count
    assert metrics["sem_seg"]["mIoU"] == pytest.approx(bg_iou / present)


def test_draw_class_map():
    from PIL import Image
    img = Image.fromarray(np.full((4, 5, 3), 100, dtype=np.uint8))
    cmap = np.zeros((4, 5), dtype=np.int64)
    cmap[1:3, 2:4] = 2
    out = np.asarray(predict.draw_class_map(img, cmap, alpha=0.5)).astype(int)
    assert (out[cmap == 0] == 100).all()
    colour = np.array(predict._colour(2))
    assert (np.abs(out[cmap == 2] - (50 + 0.5 * colour)) <= 1).all()


def test_cli_train_evaluate_predict(tmp_path):
    d = tmp_path / "d"
    synthetic.generate(str(d), images=4, seed=5, size=(48, 48))
    args = ["--train-images", str(d / "images"), "--train-annotations", str(d / "annotations.json")]
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", "fcn", *args, "--val-images", str(d / "images"), "--val-annotations",
                       str(d / "annotations.json"), "--out", str(out), "--epochs", "2", "--batch-size", "2",
                       "--warmup-steps", "1", "--lr", "0.02"]) == 0
    tm = json.loads((out / "metrics.json").read_text())
    assert "mIoU" in tm["best"] and 0.0 < tm["best"]["mIoU"] <= 1.0
    assert (out / "best.pt").exists()
    assert evaluate.main(["--checkpoint", str(out / "best.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == "fcn" and em["images"] == 4 and 0.0 <= em["AP50"] <= 1.0  # the regions' box AP
    seg = em["sem_seg"]
    assert 0.0 < seg["pixel_accuracy"] <= 1.0 and 0.0 < seg["mIoU"] <= 1.0
    assert set(seg["per_class_IoU"]) == {"background", "rectangle", "ellipse", "triangle"}
    assert predict.main(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "pr"),
                         str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert sum(p[0]["sem_seg_pixels"].values()) == 48 * 48
    assert all(det["category_id"] in (1, 3, 7) for det in p[0]["detections"])
    assert (tmp_path / "pr" / "000001.png").exists()


def test_bench_cases_run_and_report_images_per_second():
    from pydetops.bench import models_seg
    cases = models_seg.seg_cases("cpu", (32, 32), 2)
    assert [c.op for c in cases] == ["fcn (transpose decoder) inference", "fcn (transpose decoder) train step",
                                     "hog_svm inference", "hog_svm train step"]
    for c in cases:
        c.ours()
        assert c.baseline is None and not c.comparable
        assert c.details({"ours_ms": 20.0}).startswith(("50.0 images/s", "100.0 images/s"))
