"""Validation mAP of our Faster R-CNN against torchvision's, same backbone, data, loop and budget.

    python benchmarks/map_vs_torchvision.py --data DIR --out DIR --minutes M [--which ours|torchvision|both]

Run in the torchvision venv (torch 2.14.1 + torchvision 0.29.1), with a pydetops built for it:
  cd /tmp/tvpkg-main && PYTHONPATH=/tmp/tvpkg-main /work/venvtv/bin/python \
      /work/main/benchmarks/map_vs_torchvision.py --data /tmp/mapdata --out /tmp/mapruns --minutes 10
  (data: python -m pydetops.data.synthetic /tmp/mapdata/train --images 300 --seed 0, and
  /tmp/mapdata/val --images 60 --seed 1).

``DIR`` is a dataset as ``python -m pydetops.data.synthetic`` writes it, twice:
``DIR/train/{images,annotations.json}`` and ``DIR/val/{images,annotations.json}``.

Both detectors go through the SAME ``pydetops.train`` loop (SGD, warm-up, seed, batch,
augmentation, ``--max-minutes`` budget counted from the first step) and the SAME
``pydetops.evaluate`` (pycocotools, ``fps`` of the model call at batch 1) on ``last.pt``.
Only the detection engine differs:

- ``faster_rcnn``     ours: ``pydetops.models.faster_rcnn(backbone=..., min_size=S, max_size=S*1333//800)``;
- ``tv_faster_rcnn``  registered here into ``pydetops.models.MODELS``: torchvision's
  ``FasterRCNN`` (its transform, anchor generator, RPN, MultiScaleRoIAlign, RoI heads, losses,
  post-processing) around the very backbone module ``faster_rcnn(...)`` builds with the same
  arguments, starting from the same initial weights as ours for the same seed (backbone, RPN head
  and box head: ours' freshly drawn ``state_dict`` is loaded, the names are torchvision's), and
  with every hyper-parameter read back from that model of
  ours: image size and normalisation, anchor sizes and ratios, RPN IoU thresholds / batch /
  fraction / pre- and post-NMS top-n / NMS / score threshold, RoIAlign names / size / sampling,
  representation size, RoI IoU thresholds / batch / fraction / box-coder weights / inference
  thresholds, and Fast R-CNN's background IoU floor (ours ``box_bg_iou_low`` = 0.1: proposals
  whose best IoU is below it are ignored, not background), which torchvision lacks and gets here
  from a ``Matcher`` subclass. With the same weights and seed the two give the same four losses
  and the same detections (checked by hand when this was written), so what the table shows is
  how many steps each engine gets through in the budget (plus floating-point drift: the two
  training trajectories agree step for step at first and drift apart after a few dozen steps).

By default the training run has no validation set (no per-epoch evaluation inside the time
budget: all of it goes to training steps); ``--val-each-epoch`` puts it back. Writes
``OUT/<model>/train/`` (checkpoints, metrics.json), ``OUT/<model>/eval/`` (COCO metrics) and
``OUT/summary.md`` / ``OUT/summary.json``, and prints the table.
"""
import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from pydetops import evaluate as pd_evaluate
from pydetops import train as pd_train
from pydetops.models import MODELS, faster_rcnn

__all__ = ["tv_faster_rcnn", "hyper_parameters", "main"]


# ---------------------------------------------------------------------------
# torchvision's Faster R-CNN around our backbone
# ---------------------------------------------------------------------------


def _bg_low_matcher(high: float, low: float, bg_low: float):
    """torchvision's ``Matcher`` that also marks proposals whose best IoU is below ``bg_low`` as
    BETWEEN_THRESHOLDS (label -1: never sampled), ours' ``RoIHeads(bg_iou_low=...)``."""
    from torchvision.models.detection._utils import Matcher

    class BgLowMatcher(Matcher):
        def __init__(self):
            super().__init__(high, low, allow_low_quality_matches=False)
            self.bg_low = bg_low

        def __call__(self, match_quality_matrix):
            matches = super().__call__(match_quality_matrix)
            best = match_quality_matrix.max(dim=0).values
            matches[best < self.bg_low] = self.BETWEEN_THRESHOLDS
            return matches

    return BgLowMatcher()


def tv_faster_rcnn(num_classes: int, backbone: str = "resnet18", fpn: bool = True, norm: str = "group",
                   min_size: int = 320, max_size: int = 512, fpn_channels: int = 64,
                   representation_size: int = 256, weights=None, **kwargs):
    """torchvision.models.detection.FasterRCNN with the backbone, initial weights and every hyper-parameter of
    ``pydetops.models.faster_rcnn(num_classes, backbone, fpn, norm, min_size, max_size, fpn_channels,
    representation_size, **kwargs)`` (same signature; ``rpn_fused_proposals`` has no torchvision
    counterpart and is ignored). ``weights``: None or a local ``state_dict`` of this model."""
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
    from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

    ours = faster_rcnn(num_classes, backbone=backbone, fpn=fpn, norm=norm, min_size=min_size, max_size=max_size,
                       fpn_channels=fpn_channels, representation_size=representation_size, **kwargs)
    hp = hyper_parameters(ours)
    body = ours.backbone  # the same module (and, for the same seed, the same initial weights)
    anchors = TVAnchorGenerator(tuple(tuple(s) for s in hp["anchor_sizes"]),
                                tuple(tuple(r) for r in hp["aspect_ratios"]))
    pool = TVMultiScaleRoIAlign(hp["roi_featmap_names"], hp["roi_output_size"], hp["roi_sampling_ratio"])
    head = TVTwoMLPHead(hp["box_head_in"], hp["representation_size"])
    predictor = TVPredictor(hp["representation_size"], num_classes)
    model = TVFasterRCNN(
        body, num_classes=None,
        min_size=hp["min_size"], max_size=hp["max_size"], image_mean=hp["image_mean"], image_std=hp["image_std"],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=hp["rpn_pre_nms_top_n_train"], rpn_pre_nms_top_n_test=hp["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=hp["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=hp["rpn_post_nms_top_n_test"],
        rpn_nms_thresh=hp["rpn_nms_thresh"], rpn_fg_iou_thresh=hp["rpn_fg_iou_thresh"],
        rpn_bg_iou_thresh=hp["rpn_bg_iou_thresh"], rpn_batch_size_per_image=hp["rpn_batch_size_per_image"],
        rpn_positive_fraction=hp["rpn_positive_fraction"], rpn_score_thresh=hp["rpn_score_thresh"],
        box_roi_pool=pool, box_head=head, box_predictor=predictor,
        box_score_thresh=hp["box_score_thresh"], box_nms_thresh=hp["box_nms_thresh"],
        box_detections_per_img=hp["box_detections_per_img"], box_fg_iou_thresh=hp["box_fg_iou_thresh"],
        box_bg_iou_thresh=hp["box_bg_iou_thresh"], box_batch_size_per_image=hp["box_batch_size_per_image"],
        box_positive_fraction=hp["box_positive_fraction"], bbox_reg_weights=hp["bbox_reg_weights"])
    if hp["size_divisible"] != model.transform.size_divisible:
        raise ValueError(f"size_divisible {hp['size_divisible']} != torchvision's {model.transform.size_divisible}")
    if hp["box_bg_iou_low"] > 0:
        model.roi_heads.proposal_matcher = _bg_low_matcher(hp["box_fg_iou_thresh"], hp["box_bg_iou_thresh"],
                                                           hp["box_bg_iou_low"])
    # the same initial weights everywhere: the heads' parameters have the same names and shapes in
    # both (torchvision's), so ours' freshly drawn heads start torchvision's too
    model.load_state_dict(ours.state_dict(), strict=True)
    del ours
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model


def hyper_parameters(model) -> Dict[str, Any]:
    """The detector's hyper-parameters read back from a built model (ours or torchvision's), so
    that the two can be compared field by field."""
    t, rpn, roi = model.transform, model.rpn, model.roi_heads
    tv = not hasattr(roi, "bg_iou_thresh")  # ours keeps thresholds as attributes, torchvision in Matchers
    if tv:
        rpn_fg, rpn_bg = rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold
        box_fg, box_bg = roi.proposal_matcher.high_threshold, roi.proposal_matcher.low_threshold
        bg_low = getattr(roi.proposal_matcher, "bg_low", 0.0)
        rpn_sampler, box_sampler = rpn.fg_bg_sampler, roi.fg_bg_sampler
    else:
        rpn_fg, rpn_bg, box_fg, box_bg = rpn.fg_iou_thresh, rpn.bg_iou_thresh, roi.fg_iou_thresh, roi.bg_iou_thresh
        bg_low = roi.bg_iou_low
        rpn_sampler, box_sampler = rpn.sampler, roi.sampler
    pool, head = roi.box_roi_pool, roi.box_head
    return {
        "min_size": tuple(t.min_size), "max_size": t.max_size, "image_mean": list(t.image_mean),
        "image_std": list(t.image_std), "size_divisible": t.size_divisible,
        "anchor_sizes": [list(s) for s in rpn.anchor_generator.sizes],
        "aspect_ratios": [list(r) for r in rpn.anchor_generator.aspect_ratios],
        "rpn_pre_nms_top_n_train": rpn._pre_nms_top_n["training"],
        "rpn_pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
        "rpn_post_nms_top_n_train": rpn._post_nms_top_n["training"],
        "rpn_post_nms_top_n_test": rpn._post_nms_top_n["testing"],
        "rpn_nms_thresh": rpn.nms_thresh, "rpn_score_thresh": rpn.score_thresh,
        "rpn_fg_iou_thresh": rpn_fg, "rpn_bg_iou_thresh": rpn_bg,
        "rpn_batch_size_per_image": rpn_sampler.batch_size_per_image,
        "rpn_positive_fraction": rpn_sampler.positive_fraction,
        "rpn_box_coder_weights": list(rpn.box_coder.weights),
        "roi_featmap_names": list(pool.featmap_names), "roi_output_size": list(pool.output_size),
        "roi_sampling_ratio": pool.sampling_ratio,
        "box_head_in": head.fc6.in_features, "representation_size": head.fc7.out_features,
        "box_fg_iou_thresh": box_fg, "box_bg_iou_thresh": box_bg, "box_bg_iou_low": bg_low,
        "box_batch_size_per_image": box_sampler.batch_size_per_image,
        "box_positive_fraction": box_sampler.positive_fraction,
        "bbox_reg_weights": tuple(float(w) for w in roi.box_coder.weights),
        "box_score_thresh": roi.score_thresh, "box_nms_thresh": roi.nms_thresh,
        "box_detections_per_img": roi.detections_per_img,
        "num_classes": roi.box_predictor.cls_score.out_features,
        "backbone": type(model.backbone).__name__,
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
        "params": sum(p.numel() for p in model.parameters()),
    }


MODELS.setdefault("tv_faster_rcnn", tv_faster_rcnn)

# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------

RUNS = {"ours": "faster_rcnn", "torchvision": "tv_faster_rcnn"}


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


def run_one(label: str, a: argparse.Namespace) -> Dict[str, Any]:
    name = RUNS[label]
    out = os.path.join(a.out, label)
    train_dir, eval_dir = os.path.join(out, "train"), os.path.join(out, "eval")
    tr, va = os.path.join(a.data, "train"), os.path.join(a.data, "val")
    argv = ["--model", name, "--backbone", a.backbone, "--image-size", str(a.image_size),
            "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--seed", str(a.seed),
            "--train-images", os.path.join(tr, "images"), "--train-annotations", os.path.join(tr, "annotations.json"),
            "--out", train_dir, "--max-minutes", str(a.minutes)]
    if a.val_each_epoch:
        argv += ["--val-images", os.path.join(va, "images"), "--val-annotations", os.path.join(va, "annotations.json")]
    row: Dict[str, Any] = {"label": label, "model": name, "train_argv": argv, "loadavg_before": _loadavg()}
    print(f"== {label}: python -m pydetops.train {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    rc = pd_train.main(argv)
    row["train_wall_s"] = round(time.monotonic() - t0, 1)
    if rc != 0:
        raise SystemExit(f"{label}: pydetops.train failed (rc {rc})")
    with open(os.path.join(train_dir, "metrics.json")) as f:
        tm = json.load(f)
    row["model_kwargs"] = tm["model_kwargs"]
    row["epochs"] = len(tm["epochs"])
    row["steps"] = sum(e["steps"] for e in tm["epochs"])
    row["train_s"] = round(sum(e["seconds"] for e in tm["epochs"]), 1)
    row["final_loss"] = tm["epochs"][-1]["losses"]["loss"] if tm["epochs"] else None
    ckpt = os.path.join(train_dir, "last.pt")
    eargv = ["--checkpoint", ckpt, "--images", os.path.join(va, "images"),
             "--annotations", os.path.join(va, "annotations.json"), "--out", eval_dir]
    print(f"== {label}: python -m pydetops.evaluate {' '.join(eargv)}", flush=True)
    rc = pd_evaluate.main(eargv)
    if rc != 0:
        raise SystemExit(f"{label}: pydetops.evaluate failed (rc {rc})")
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        em = json.load(f)
    row.update(AP=em["AP"], AP50=em["AP50"], AP75=em.get("AP75"), AR100=em.get("AR100"), fps=em["fps"],
               per_class_AP=em.get("per_class_AP"))
    # the hyper-parameters of the model as the checkpoint rebuilds it
    from pydetops.checkpoint import build_model, load_checkpoint
    row["hyper_parameters"] = hyper_parameters(build_model(load_checkpoint(ckpt), ckpt))
    row["loadavg_after"] = _loadavg()
    return row


def _f(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def summary_markdown(rows: List[Dict[str, Any]], a: argparse.Namespace) -> str:
    lines = [f"Faster R-CNN, backbone {a.backbone}, image size {a.image_size}, batch {a.batch_size}, "
             f"lr {a.lr}, seed {a.seed}, budget {a.minutes} min per model, data {a.data}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
             f"{os.cpu_count()} CPUs. Validation on {os.path.join(a.data, 'val')} with last.pt.",
             "",
             "| model | steps done | train minutes | s/step | last-epoch loss | val AP | val AP50 | eval fps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} (`{r['model']}`) | {r['steps']} | {r['train_s'] / 60:.2f} | "
                     f"{r['train_s'] / max(r['steps'], 1):.3f} | {_f(r['final_loss'])} | "
                     f"{_f(r['AP'])} | {_f(r['AP50'])} | {_f(r['fps'], '{:.1f}')} |")
    lines += ["", "Load average (/proc/loadavg) before / after each model: "
              + "; ".join(f"{r['label']}: {r['loadavg_before']} / {r['loadavg_after']}" for r in rows)]
    if len(rows) == 2:
        h0, h1 = rows[0]["hyper_parameters"], rows[1]["hyper_parameters"]
        diff = sorted(k for k in h0 if h0[k] != h1.get(k))
        lines += ["", "Hyper-parameters that differ between the two built models: "
                  + (", ".join(f"{k} ({h0[k]} vs {h1.get(k)})" for k in diff) if diff else "none")]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ and val/ (pydetops.data.synthetic layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, required=True, help="training budget per model (--max-minutes)")
    p.add_argument("--which", choices=["ours", "torchvision", "both"], default="both")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-each-epoch", action="store_true",
                   help="also evaluate on the validation set after every epoch (inside the time budget)")
    a = p.parse_args(argv)
    if not a.minutes > 0:
        p.error("--minutes must be > 0")
    for split in ("train", "val"):
        for f in ("images", "annotations.json"):
            if not os.path.exists(os.path.join(a.data, split, f)):
                p.error(f"--data: {os.path.join(a.data, split, f)} does not exist")
    return a


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    labels = ["ours", "torchvision"] if a.which == "both" else [a.which]
    rows = [run_one(label, a) for label in labels]
    md = summary_markdown(rows, a)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"args": vars(a), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
                  f, indent=1, default=str)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
