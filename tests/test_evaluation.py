"""pydetops.evaluation: named COCO stats against pycocotools run directly, per-class AP,
keypoints with per-category sigmas, PR-curve PNG, FPS."""
import contextlib
import copy
import io
import time

import numpy as np
import pytest
import torch

from pydetops.evaluation import (FPSMeter, coco_evaluate, detections_to_coco, measure_fps, plot_losses,
                                 plot_pr_curves)
from pydetops.evaluation.coco_eval import STAT_NAMES


def _gt(n_images=4, seed=0, H=60, W=80):
    """A COCO dict with two categories (ids 5 and 9), boxes, polygon masks, 3 keypoints."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": W, "height": H})
        for _ in range(rng.integers(1, 4)):
            w, h = rng.uniform(8, 30), rng.uniform(8, 25)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            kps = [x + 1, y + 1, 2, x + w - 1, y + 1, 2, x + w / 2, y + h / 2, 2]
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": int(rng.choice([5, 9])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                         "keypoints": kps, "num_keypoints": 3})
    cats = [{"id": 5, "name": "five", "keypoints": ["left", "right", "c"]},
            {"id": 9, "name": "nine", "keypoints": ["left", "right", "c"]}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt, score=1.0):
    from pycocotools import mask as mask_utils
    dets = []
    for a in gt["annotations"]:
        im = next(i for i in gt["images"] if i["id"] == a["image_id"])
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"]))
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
                     "score": score, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                     "keypoints": list(a["keypoints"])})
    return dets


def _reference(gt, dets, iou_type, sigmas=None):
    """pycocotools run directly: its 12 (or 10) stats."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = copy.deepcopy(gt)
        c.createIndex()
        d = c.loadRes(copy.deepcopy(dets))
        E = COCOeval(c, d, iou_type)
        if sigmas is not None:
            E.params.kpt_oks_sigmas = np.asarray(sigmas)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


def test_perfect_detections_give_one():
    gt = _gt()
    res = coco_evaluate(gt, _perfect(gt), ("bbox", "segm", "keypoints"))
    for t in ("bbox", "segm", "keypoints"):
        assert res[t]["AP"] == pytest.approx(1.0) and res[t]["AP50"] == pytest.approx(1.0)
        assert all(v == pytest.approx(1.0) for v in res[t]["per_class_AP"].values())
        assert set(res[t]["per_class_AP"]) == {"five", "nine"}
    assert res["bbox"]["AR100"] == pytest.approx(1.0)
    assert all(p == pytest.approx(1.0) for c in res["bbox"]["pr_curves"].values() for p in c)


def test_shifted_boxes_score_lower_and_match_pycocotools():
    gt = _gt(6, seed=1)
    dets = []
    rng = np.random.default_rng(2)
    for d in _perfect(gt):
        x, y, w, h = d["bbox"]
        s = rng.uniform(0.05, 0.4)
        dets.append({"image_id": d["image_id"], "category_id": d["category_id"], "score": float(rng.random()),
                     "bbox": [x + s * w, y + s * h / 2, w, h]})
    res = coco_evaluate(gt, dets)["bbox"]
    ref = _reference(gt, dets, "bbox")
    assert res["AP"] < 0.9
    for name, v in zip(STAT_NAMES, ref):
        assert res[name] == (None if v < 0 else pytest.approx(float(v), abs=1e-12)), name
    # per-class AP is the mean of pycocotools' precision table for that class
    res2 = coco_evaluate(gt, dets + [{**d, "score": 0.999} for d in _perfect(gt) if d["category_id"] == 5])
    assert res2["bbox"]["per_class_AP"]["five"] == pytest.approx(1.0)
    assert res2["bbox"]["per_class_AP"]["nine"] == pytest.approx(res["per_class_AP"]["nine"])


def test_missing_class_and_no_detections():
    gt = _gt()
    only5 = [d for d in _perfect(gt) if d["category_id"] == 5]
    res = coco_evaluate(gt, only5)["bbox"]
    assert res["per_class_AP"]["five"] == pytest.approx(1.0) and res["per_class_AP"]["nine"] == 0.0
    assert res["AP"] == pytest.approx(0.5)
    empty = coco_evaluate(gt, [], ("bbox", "keypoints"))
    assert empty["bbox"]["AP"] == 0.0 and empty["keypoints"]["AP"] == 0.0
    assert empty["bbox"]["per_class_AP"] == {"five": 0.0, "nine": 0.0}
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(gt, [], ("boxes",))


def test_keypoints_with_per_category_sigmas():
    gt = _gt(5, seed=3)
    dets = []
    for d in _perfect(gt):
        k = list(d["keypoints"])
        for j in range(0, len(k), 3):
            k[j] += 1.5
        dets.append({**d, "keypoints": k})
    tight = {5: [0.01] * 3, 9: [0.01] * 3}
    loose9 = {5: [0.01] * 3, 9: [0.5] * 3}
    a = coco_evaluate(gt, dets, ("keypoints",), tight)["keypoints"]
    b = coco_evaluate(gt, dets, ("keypoints",), loose9)["keypoints"]
    assert b["per_class_AP"]["nine"] > a["per_class_AP"]["nine"]
    assert b["per_class_AP"]["five"] == pytest.approx(a["per_class_AP"]["five"])
    # one sigma set for all categories: identical to pycocotools with that set
    ref = _reference(gt, dets, "keypoints", sigmas=[0.01] * 3)
    assert a["AP"] == pytest.approx(float(ref[0]), abs=1e-12) and a["AP50"] == pytest.approx(float(ref[1]), abs=1e-12)
    # sigmas from the category's own "keypoint_sigmas" field
    gt2 = copy.deepcopy(gt)
    for c in gt2["categories"]:
        c["keypoint_sigmas"] = loose9[c["id"]]
    c2 = coco_evaluate(gt2, dets, ("keypoints",))["keypoints"]
    assert c2["per_class_AP"] == pytest.approx(b["per_class_AP"])
    with pytest.raises(ValueError, match="category id 5 has 3 keypoints but 2 sigmas"):
        coco_evaluate(gt, dets, ("keypoints",), {5: [0.1, 0.1], 9: [0.1] * 3})


def test_detections_to_coco():
    out = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 4.0, 4.0]]),
           "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.3]),
           "masks": torch.zeros(2, 1, 8, 12), "keypoints": torch.tensor([[[1.0, 2.0, 1.0]], [[3.0, 4.0, 0.0]]])}
    out["masks"][0, 0, 2:7, 1:11] = 0.8
    out["masks"][1, 0, 0:4, 0:4] = 0.4  # below the 0.5 threshold
    d = detections_to_coco(7, out, [None, 3, 8])
    assert [x["category_id"] for x in d] == [8, 3] and d[0]["image_id"] == 7
    assert d[0]["bbox"] == [1.0, 2.0, 10.0, 5.0] and d[0]["score"] == pytest.approx(0.9)
    from pycocotools import mask as mask_utils
    m = mask_utils.decode({"size": d[0]["segmentation"]["size"], "counts": d[0]["segmentation"]["counts"].encode()})
    assert m.sum() == 50 and mask_utils.decode({"size": [8, 12], "counts": d[1]["segmentation"]["counts"].encode()}).sum() == 0
    assert d[0]["keypoints"] == [1.0, 2.0, 1.0] and d[1]["keypoints"] == [3.0, 4.0, 0.0]
    bad = dict(out, labels=torch.tensor([0, 5]))  # background / out-of-range labels are dropped
    assert detections_to_coco(1, bad, [None, 3, 8]) == []


def test_plots_write_png(tmp_path):
    p = tmp_path / "pr.png"
    plot_pr_curves({"a": list(np.linspace(1, 0, 101)), "b": [0.5] * 101}, str(p))
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    q = tmp_path / "loss.png"
    plot_losses([{"loss": 3.0 - 0.01 * i} for i in range(120)],
                [{"epoch": 1, "losses": {"a": 1.0, "b": 2.0}}, {"epoch": 2, "losses": {"a": 0.5, "b": 1.0}}], str(q))
    assert q.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fps_counts_after_warmup():
    meter = FPSMeter(warmup=2)
    for dt in (0.2, 0.2, 0.01, 0.01):
        with meter.measure(images=2):
            time.sleep(dt)
    assert meter.calls == 4 and meter.images == 4
    assert 4 / 0.05 < meter.fps < 4 / 0.02  # the two slow warm-up calls are excluded
    calls = []
    fps = measure_fps(lambda: calls.append(time.sleep(0.005)), images_per_call=3, warmup=1, iters=4)
    assert len(calls) == 5 and 0 < fps < 3 / 0.005
    assert FPSMeter().fps is None
    with pytest.raises(ValueError, match="iters"):
        measure_fps(lambda: None, iters=0)
