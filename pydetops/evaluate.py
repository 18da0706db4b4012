"""Evaluate a checkpoint on a COCO-layout dataset.

    python -m pydetops.evaluate --checkpoint FILE --images DIR --annotations FILE.json --out DIR

writes ``OUT/detections.json`` (COCO results: the dataset's category ids, ``bbox``
[x, y, w, h], ``score``, + ``segmentation`` as RLE, + ``keypoints``),
``OUT/metrics.json`` (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR100``, ...,
``per_class_AP``; the same under ``segm`` / ``keypoints`` when the model predicts
masks / keypoints; ``localization``: ``accuracy``, ``mean_IoU`` (+ ``PCK@0.2``) of the top
detection per image when every image has exactly one object; ``fps``) and ``OUT/pr_curve.png``
(precision-recall per class at IoU 0.5), and prints a short table. A semantic segmentation model
(outputs ``sem_seg`` Tensor[C, H, W] per image) also gets ``sem_seg``: ``pixel_accuracy``, ``mIoU``
and ``per_class_IoU`` against the semantic map of the dataset's instance masks; if its outputs
have no boxes, no box metrics (nor ``pr_curve.png``).
"""
import argparse
import contextlib
import json
import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoint import CheckpointError, build_model, load_checkpoint
from .data import CocoDetection, DatasetError, ToTensor, make_loader
from .evaluation import FPSMeter, coco_evaluate, detections_to_coco, localization_metrics, plot_pr_curves
from .evaluation.segmentation import confusion_matrix, segmentation_metrics, semantic_target_from_annotations

__all__ = ["main", "evaluate_model", "check_categories", "resolve_device", "UsageError", "write_json",
           "one_line_warnings", "selection_metric"]


class UsageError(ValueError):
    """A command-line argument that cannot work (printed as one line)."""


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: this torch has no usable CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: only cpu and cuda are supported, got {name!r}")
    return dev


def one_line_warnings() -> None:
    """Show warnings (e.g. the count of skipped degenerate boxes) as one line each."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def check_categories(dataset: CocoDetection, categories: Sequence[Dict], what: str) -> None:
    """The dataset must have the categories (ids and names) the model was trained on."""
    mine = {c["id"]: c.get("name") for c in dataset.categories}
    theirs = {c["id"]: c.get("name") for c in categories}
    if mine != theirs:
        only_ds = sorted(set(mine) - set(theirs))
        only_ck = sorted(set(theirs) - set(mine))
        renamed = sorted(i for i in set(mine) & set(theirs) if mine[i] != theirs[i])
        raise DatasetError(f"{dataset.ann_file}: categories differ from {what}'s"
                           + (f"; only in the dataset: ids {only_ds}" if only_ds else "")
                           + (f"; only in {what}: ids {only_ck}" if only_ck else "")
                           + (f"; renamed: ids {renamed}" if renamed else ""))


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, dataset: CocoDetection, label_to_category_id: Sequence,
                   device: torch.device, batch_size: int = 1, workers: int = 0, amp: bool = False,
                   warmup: int = 2, progress: bool = False) -> Tuple[Dict[str, Any], List[Dict], Dict]:
    """Run ``model`` (eval mode) on every image of ``dataset`` (whose transforms must
    give tensors) and score the detections with pycocotools.

    Returns ``(metrics, detections, pr_curves)``: ``metrics`` holds the bbox stats at
    the top level, ``segm`` / ``keypoints`` sub-dicts when the model predicts masks /
    keypoints, ``fps`` (images per second of the model call, after ``warmup`` calls,
    device synchronised) and ``images``. A model whose outputs hold ``sem_seg`` (Tensor[C, H, W]
    class scores) gets ``sem_seg`` (pixel accuracy, mean IoU, per-class IoU) instead of the bbox
    stats when its outputs hold no ``boxes``."""
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size=batch_size, workers=workers)
    meter = FPSMeter(warmup=warmup, device=device)
    dets: List[Dict] = []
    has_masks = has_kps = has_boxes = False
    seg_cm = None
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True)
    n = 0
    for images, targets in it:
        images = [im.to(device) for im in images]
        with meter.measure(len(images)), _autocast(device, amp):
            outputs = model(images)
        for out, tgt in zip(outputs, targets):
            if "sem_seg" in out:
                cm = _sem_seg_confusion(out["sem_seg"], dataset, int(tgt["image_id"]))
                seg_cm = cm if seg_cm is None else seg_cm + cm
            if "boxes" not in out:
                continue
            has_boxes = True
            has_masks |= "masks" in out
            has_kps |= "keypoints" in out
            dets.extend(detections_to_coco(int(tgt["image_id"]), out, label_to_category_id))
        n += len(images)
    model.train(was_training)
    if seg_cm is not None and not has_boxes:
        names = ["background"] + [str(c.get("name", c["id"])) for c in dataset.categories]
        return {"sem_seg": segmentation_metrics(seg_cm, names), "fps": meter.fps, "images": n}, dets, {}
    iou_types = ["bbox"] + (["segm"] if has_masks else []) + (["keypoints"] if has_kps else [])
    if "keypoints" in iou_types and not dataset.keypoint_names:
        iou_types.remove("keypoints")
    res = coco_evaluate(dataset.dataset, dets, iou_types)
    curves = res["bbox"].pop("pr_curves")
    metrics: Dict[str, Any] = dict(res["bbox"])
    for t in iou_types[1:]:
        res[t].pop("pr_curves")
        metrics[t] = res[t]
    if seg_cm is not None:
        names = ["background"] + [str(c.get("name", c["id"])) for c in dataset.categories]
        metrics["sem_seg"] = segmentation_metrics(seg_cm, names)
    loc = localization_metrics(dataset.dataset, dets)
    if loc is not None:  # one object per image: classification + localization metrics too
        metrics["localization"] = loc
    metrics["fps"] = meter.fps
    metrics["images"] = n
    return metrics, dets, curves


def _sem_seg_confusion(scores: torch.Tensor, dataset: CocoDetection, image_id: int) -> torch.Tensor:
    """Confusion matrix [C, C] of one image's ``sem_seg`` scores (argmax per pixel) against the
    semantic map of its annotations (later instances win where they overlap; crowd ignored)."""
    C = len(dataset.categories) + 1
    if scores.dim() != 3 or scores.shape[0] != C:
        raise UsageError(f"the model's sem_seg for image id {image_id} has shape {list(scores.shape)}, "
                         f"expected [{C}, H, W] (background + the dataset's {C - 1} categories)")
    H, W = int(scores.shape[1]), int(scores.shape[2])
    try:
        gt = semantic_target_from_annotations(dataset.anns[image_id], dataset.category_id_to_label, H, W)
    except ValueError as e:
        raise DatasetError(f"{dataset.ann_file}: image id {image_id}: cannot build its semantic map: {e}") from None
    return confusion_matrix(scores.argmax(0).cpu(), gt, C)


def selection_metric(metrics: Dict[str, Any]) -> Tuple[str, float]:
    """The validation number that picks the best checkpoint: the semantic segmentation ``mIoU``
    for a model that predicts ``sem_seg``, else box ``AP`` (0.0 where undefined)."""
    if "sem_seg" in metrics:
        return "mIoU", float(metrics["sem_seg"].get("mIoU") or 0.0)
    return "AP", float(metrics.get("AP") or 0.0)


def _table(metrics: Dict[str, Any]) -> str:
    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"
    fps = metrics.get("fps")
    tail = f"images: {metrics['images']}, fps: {'n/a' if fps is None else f'{fps:.1f}'}"
    seg = []
    if "sem_seg" in metrics:
        m = metrics["sem_seg"]
        seg = [f"sem_seg   pixel accuracy {f(m['pixel_accuracy'])}  mIoU {f(m['mIoU'])}",
               "per-class IoU: " + ", ".join(f"{k} {f(v)}" for k, v in m["per_class_IoU"].items())]
        if "AP" not in metrics:
            return "\n".join(seg + [tail])
    rows = [("bbox", metrics)] + [(t, metrics[t]) for t in ("segm", "keypoints") if t in metrics]
    lines = ["type       AP    AP50  AP75  APs   APm   APl   AR100"]
    for name, m in rows:
        lines.append(f"{name:<9} " + " ".join(f(m.get(k)) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
                     + " " + f(m.get("AR100", m.get("AR"))))
    lines.append("per-class AP: " + ", ".join(f"{k} {f(v)}" for k, v in metrics["per_class_AP"].items()))
    if "localization" in metrics:
        lines.append("localization (top detection per image): " + ", ".join(
            f"{k} {f(v)}" for k, v in metrics["localization"].items() if k != "images"))
    return "\n".join(lines + seg + [tail])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pydetops.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--annotations", required=True, help="COCO instances JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, float16 on CUDA)")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    return a


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    one_line_warnings()
    try:
        device = resolve_device(a.device)
        ckpt = load_checkpoint(a.checkpoint)
        model = build_model(ckpt, a.checkpoint).to(device)
        ds = CocoDetection(a.images, a.annotations, transforms=ToTensor())
        check_categories(ds, ckpt["categories"], f"checkpoint {a.checkpoint}")
        metrics, dets, curves = evaluate_model(model, ds, ckpt["label_to_category_id"], device,
                                               a.batch_size, a.workers, a.amp, progress=True)
    except (DatasetError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "detections.json"), dets)
    metrics = {"checkpoint": os.path.abspath(a.checkpoint), "model": ckpt["model"], **metrics}
    write_json(os.path.join(a.out, "metrics.json"), metrics)
    if "AP" in metrics:
        plot_pr_curves(curves, os.path.join(a.out, "pr_curve.png"))
    print(_table(metrics))
    print(f"wrote {a.out}/detections.json, metrics.json" + (", pr_curve.png" if "AP" in metrics else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
