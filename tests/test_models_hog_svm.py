"""HOG + linear SVM sliding window (pydetops/models/hog_svm.py): HOG against scikit-image's
``hog`` and a plain float64 reference, the window scan equal to per-window dot products, the
SVM separating a constructed case, hard-negative mining, a scan that finds a planted object,
bad input, and train / evaluate / predict through the CLIs."""
import json
import math

import numpy as np
import pytest
import torch

from pydetops import evaluate, predict, train
from pydetops.data import synthetic
from pydetops.models import MODELS
from pydetops.models.hog_svm import HOGSVM, hog, hog_blocks, hog_cells, hog_svm
from pydetops.ops import box_iou


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# HOG
# ---------------------------------------------------------------------------------------------


def _shapes_image(h=70, w=61, seed=0):
    """Structured float64 RGB image [H, W, 3]: a gradient, a disc, a bar, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    img = np.stack([x / w, y / h, 0.5 * np.ones((h, w))], -1)
    img[(y - 30) ** 2 + (x - 25) ** 2 < 150] = [0.9, 0.2, 0.1]
    img[50:60, 10:55] = [0.1, 0.3, 0.9]
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


@pytest.mark.parametrize("shape", [(37, 45), (64, 64), (16, 17), (70, 61)])
def test_hog_equals_skimage_with_hard_binning(shape):
    skf = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(sum(shape))
    for img in (rng.random(shape), rng.random(shape + (3,)), _shapes_image(*shape)):
        kw = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
        if img.ndim == 3:
            kw["channel_axis"] = -1
            t = torch.from_numpy(img).permute(2, 0, 1)
        else:
            t = torch.from_numpy(img)
        ref = skf.hog(img, **kw)
        ours = hog(t, 9, 8, 2, binning="hard")
        assert ours.dtype == torch.float64 and ours.shape == ref.shape
        # scikit-image's Cython cell histogram rounds to single precision somewhere: equal to ~3e-8
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6, rtol=0)


def _plain_cells(img: np.ndarray, cs: int, nb: int, linear: bool) -> np.ndarray:
    """Float64 reference of hog_cells for one grey image, one pixel at a time."""
    H, W = img.shape
    out = np.zeros((nb, H // cs, W // cs))
    width = 180.0 / nb
    for r in range(H // cs * cs):
        for c in range(W // cs * cs):
            gr = img[r + 1, c] - img[r - 1, c] if 0 < r < H - 1 else 0.0
            gc = img[r, c + 1] - img[r, c - 1] if 0 < c < W - 1 else 0.0
            mag = math.hypot(gr, gc)
            ang = math.degrees(math.atan2(gr, gc)) % 180.0
            if linear:
                pos = ang / width - 0.5
                b0 = math.floor(pos)
                f = pos - b0
                out[b0 % nb, r // cs, c // cs] += mag * (1 - f)
                out[(b0 + 1) % nb, r // cs, c // cs] += mag * f
            else:
                out[min(int(ang // width), nb - 1), r // cs, c // cs] += mag
    return out / (cs * cs)


def _plain_blocks(cells: np.ndarray, b: int) -> np.ndarray:
    nb, hc, wc = cells.shape
    out = []
    for r in range(hc - b + 1):
        for c in range(wc - b + 1):
            v = cells[:, r:r + b, c:c + b].transpose(1, 2, 0).reshape(-1)
            v = v / math.sqrt((v * v).sum() + 1e-10)
            v = np.minimum(v, 0.2)
            out.append(v / math.sqrt((v * v).sum() + 1e-10))
    return np.concatenate(out)


@pytest.mark.parametrize("linear", [True, False])
def test_hog_matches_a_plain_reference(linear):
    img = np.random.default_rng(3).random((19, 23))
    img[5:12, 4:15] += 0.8  # strong edges
    cells = hog_cells(torch.from_numpy(img), cell_size=4, orientations=6, binning="linear" if linear else "hard")
    ref = _plain_cells(img, 4, 6, linear)
    np.testing.assert_allclose(cells[0].numpy(), ref, atol=1e-12, rtol=0)
    np.testing.assert_allclose(hog(torch.from_numpy(img), 6, 4, 2, "linear" if linear else "hard").numpy(),
                               _plain_blocks(ref, 2), atol=1e-10, rtol=0)


def test_linear_and_hard_binning_share_the_cells_total_vote():
    img = torch.from_numpy(_shapes_image()).permute(2, 0, 1)
    lin, hard = hog_cells(img, binning="linear"), hog_cells(img, binning="hard")
    torch.testing.assert_close(lin.sum(1), hard.sum(1))
    assert not torch.allclose(lin, hard)
    # an edge at exactly a bin centre (10 degrees) votes into that one bin only
    th = math.radians(10.0)
    y, x = torch.meshgrid(torch.arange(24.0, dtype=torch.float64), torch.arange(24.0, dtype=torch.float64),
                          indexing="ij")
    ramp = x * math.cos(th) + y * math.sin(th)
    c = hog_cells(ramp, cell_size=8, binning="linear")[0, :, 1, 1]  # the middle cell: no border pixel
    assert c[0] > 0 and torch.allclose(c[1:], torch.zeros(8, dtype=torch.float64), atol=1e-9)


def test_hog_of_tiny_images_is_empty_not_an_error():
    assert hog_cells(torch.rand(3, 5, 40)).shape == (1, 9, 0, 5)
    assert hog_blocks(hog_cells(torch.rand(3, 12, 40))).shape == (1, 36, 0, 4)
    with pytest.raises(ValueError, match="binning"):
        hog_cells(torch.rand(3, 8, 8), binning="soft")
    with pytest.raises(ValueError, match="image"):
        hog_cells(torch.zeros(3, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# windows, SVM, mining, scan
# ---------------------------------------------------------------------------------------------


def _planted(h, w, box, seed, colour=(0.9, 0.15, 0.1)):
    """A noisy grey image with a filled rectangle ``box`` (x1, y1, x2, y2)."""
    g = torch.Generator().manual_seed(seed)
    img = 0.45 + 0.04 * torch.randn(3, h, w, generator=g)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = torch.tensor(colour)[:, None, None]
    return img.clamp(0, 1)


def test_the_scan_is_the_windows_dot_products():
    torch.manual_seed(0)
    m = HOGSVM(3, scales=(1.0, 0.8)).eval()
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    img = _planted(72, 90, (20, 20, 50, 52), 1)
    scores, boxes, features = m._windows(img)
    # 72x90 at 1.0: 9x11 cells -> 8x10 blocks -> 4x6 windows; at 0.8 (58x72): 7x9 cells -> 2x4 windows
    assert scores.shape == (24 + 8, 2) and boxes.shape == (32, 4)
    f = features(torch.arange(32))
    ref = f @ m.weight.reshape(2, -1).t() + m.bias
    torch.testing.assert_close(scores, ref, atol=1e-4, rtol=1e-5)
    # the first window's features are the first 5x5 blocks of the image's block grid, in skimage's order
    # (the crop keeps one pixel past the window, which the gradients of its last row / column read)
    torch.testing.assert_close(f[0], hog(img[:, :49, :49]), atol=1e-5, rtol=0)
    # its object box: the window less one cell, in the image's pixels
    assert boxes[0].tolist() == [8.0, 8.0, 40.0, 40.0]
    torch.testing.assert_close(boxes[24], torch.tensor([8.0, 8.0, 40.0, 40.0]) / torch.tensor(
        [72 / 90, 58 / 72, 72 / 90, 58 / 72]))


def test_svm_separates_a_constructed_case():
    torch.manual_seed(0)
    m = HOGSVM(3, window_cells=(3, 3), reg=1e-4)
    D = m.weight[0].numel()
    w_true = torch.randn(2, D)
    x = torch.randn(400, D)
    margin = x @ w_true.t()
    keep = (margin.abs() > 2.0).all(1)  # separable with a margin
    x, margin = x[keep], margin[keep]
    y = torch.where(margin > 0, 1, -1).to(torch.int8)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(300):
        losses = m.svm_loss(x, y)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    pred = x @ m.weight.reshape(2, -1).t() + m.bias
    assert bool(((pred > 0) == (y > 0)).all())
    assert losses["loss_hinge"].item() < 0.05
    # the loss written plainly: per class, mean hinge of its positives + of its negatives; ignored
    # entries (0) count for nothing (here all of class 2's: its term is 0)
    with torch.no_grad():
        m.weight.normal_()
        y0 = y.clone()
        y0[:, 1] = 0
        y0[:5, 0] = 0
        m0 = x[5:] @ m.weight[0].reshape(-1) + m.bias[0]
        h = torch.relu(1 - y[5:, 0].double() * m0.double())
        pos = y[5:, 0] == 1
        expected = (h[pos].mean() + h[~pos].mean()) / 2
        torch.testing.assert_close(m.svm_loss(x, y0)["loss_hinge"].double(), expected, rtol=1e-5, atol=1e-6)


def test_hard_negatives_are_mined_into_the_bank():
    torch.manual_seed(0)
    img = _planted(64, 64, (16, 16, 48, 48), 2)
    tgt = {"boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]]), "labels": torch.tensor([1])}
    m = HOGSVM(3, scales=(1.0, 0.75), mining_start=1, hard_per_image=4)
    m.train()
    m([img], [tgt])
    assert int(m.bank_count) == 0  # step 0: before the first mining round
    m([img], [tgt])
    n = int(m.bank_count)
    assert n > 0
    t = m.bank_targets[:n]
    assert bool((t != 1).all()) and bool((t == -1).any(1).all())  # negatives (for some SVM) only
    # every banked window is a real window of the image, a negative (IoU < neg_iou) of class 1 at least
    scores, boxes, features = m._windows(img)
    feats = features(torch.arange(boxes.shape[0]))
    d = torch.cdist(m.bank_features[:n], feats)
    j = d.argmin(1)
    assert bool((d.min(1).values < 1e-4).all())
    iou = box_iou(boxes[j], tgt["boxes"])[:, 0]
    assert bool((iou[t[:, 0] == -1] < m.neg_iou).all())
    # they join the next loss: with the bank the hinge loss differs from without it
    with torch.no_grad():
        m.weight.normal_()
        with_bank = m.svm_loss(torch.cat([feats[:4], m.bank_features[:n]]),
                               torch.cat([torch.full((4, 2), -1, dtype=torch.int8), t]))["loss_hinge"]
        without = m.svm_loss(feats[:4], torch.full((4, 2), -1, dtype=torch.int8))["loss_hinge"]
    assert with_bank.item() != without.item()
    # a ring buffer: never more than bank_size
    small = HOGSVM(3, scales=(1.0,), mining_start=0, bank_size=3, hard_per_image=8).train()
    small([img], [tgt])
    small([img], [tgt])
    assert int(small.bank_count) == 3


def test_scan_finds_a_planted_object_after_training():
    torch.manual_seed(0)
    m = HOGSVM(2, scales=(1.0, 0.7), mining_start=5, positives_per_image=16, negatives_per_image=32)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    m.train()
    first = None
    for step in range(30):
        s = int(torch.randint(26, 40, (1,), generator=g))
        x, y = (int(v) for v in torch.randint(0, 80 - s, (2,), generator=g))
        box = (x, y, x + s, y + s)
        losses = m([_planted(80, 80, box, step)], [{"boxes": torch.tensor([box], dtype=torch.float32),
                                                   "labels": torch.tensor([1])}])
        loss = sum(losses.values())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    m.eval()
    box = torch.tensor([[41.0, 9.0, 73.0, 41.0]])
    det = m([_planted(80, 96, (41, 9, 73, 41), 99)])[0]
    assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.int64
    assert float(box_iou(det["boxes"][:1], box)[0, 0]) >= 0.5
    assert det["labels"][0] == 1 and 0.5 < det["scores"][0] <= 1.0
    assert bool((det["scores"][:-1] >= det["scores"][1:]).all())


def test_bad_input_and_degenerate_cases():
    m = hog_svm(num_classes=3)
    assert MODELS["hog_svm"] is hog_svm
    # a window larger than the image at every scale: no detections, a zero loss with a gradient
    m.eval()
    det = m([torch.rand(3, 10, 12)])[0]
    assert det["boxes"].shape == (0, 4) and det["labels"].shape == (0,) and det["scores"].shape == (0,)
    m.train()
    tiny_t = {"boxes": torch.tensor([[1.0, 1.0, 8.0, 8.0]]), "labels": torch.tensor([2])}
    losses = m([torch.rand(3, 10, 12)], [tiny_t])
    assert losses["loss_hinge"].item() == 0.0
    sum(losses.values()).backward()
    # no objects: every window a negative, a finite loss
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = m([torch.rand(3, 40, 40)], [empty])
    assert torch.isfinite(losses["loss_hinge"]) and losses["loss_hinge"].item() > 0
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        m([torch.rand(3, 40, 40)], [{"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="targets"):
        m([torch.rand(3, 40, 40)])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        m([torch.zeros(3, 40, 40, dtype=torch.uint8)], [empty])
    for kwargs, name in [({"window_cells": (1, 6)}, "window_cells"), ({"scales": (1.0, -2.0)}, "scales"),
                         ({"binning": "soft"}, "binning"), ({"pos_iou": 0.2}, "pos_iou"),
                         ({"margin_cells": 3}, "margin_cells"), ({"reg": -1.0}, "reg"),
                         ({"backbone": "resnet18"}, "backbone"), ({"image_size": 64}, "image_size")]:
        with pytest.raises(ValueError, match=name):
            hog_svm(3, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        hog_svm(1)


def test_cli_train_evaluate_predict(tmp_path):
    d = tmp_path / "d"
    synthetic.generate(str(d), images=4, seed=6, size=(64, 64))
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert train.main(["--model", "hog_svm", "--train-images", str(d / "images"), "--train-annotations",
                       str(d / "annotations.json"), "--val-images", str(d / "images"), "--val-annotations",
                       str(d / "annotations.json"), "--out", str(out), "--epochs", "2", "--batch-size", "2",
                       "--warmup-steps", "1", "--lr", "0.05"]) == 0
    tm = json.loads((out / "metrics.json").read_text())
    assert "AP" in tm["best"] and len(tm["epochs"]) == 2
    losses = [e["losses"]["loss_hinge"] for e in tm["epochs"]]
    assert losses[1] < losses[0]
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == "hog_svm" and em["images"] == 4 and 0.0 <= em["AP50"] <= 1.0
    assert (tmp_path / "ev" / "pr_curve.png").exists()
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4 for det in p[0]["detections"])
