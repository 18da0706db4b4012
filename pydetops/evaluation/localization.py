"""Metrics of classification + localization (one object per image): classification accuracy, mean
IoU of the predicted box with the ground truth, and PCK (percentage of correct keypoints).

``localization_metrics(gt, detections)`` applies them to a COCO instances dict and COCO result
dicts (the files ``python -m pydetops.evaluate`` reads and writes): on a dataset with exactly one
object per image, each image's highest-scoring detection is its prediction (no detection: wrong
class, IoU 0, no correct keypoint).
"""
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ..ops import box_overlaps

__all__ = ["classification_accuracy", "box_mean_iou", "pck", "localization_metrics"]


def classification_accuracy(pred_labels: Tensor, gt_labels: Tensor) -> float:
    """Fraction of Tensor[N] predicted labels equal to the Tensor[N] true ones (N >= 1)."""
    if pred_labels.shape != gt_labels.shape or pred_labels.dim() != 1 or pred_labels.numel() == 0:
        raise ValueError(f"pred_labels, gt_labels: expected two non-empty Tensor[N], got {list(pred_labels.shape)} "
                         f"and {list(gt_labels.shape)}")
    return float((pred_labels == gt_labels).double().mean())


def box_mean_iou(pred_boxes: Tensor, gt_boxes: Tensor) -> float:
    """Mean over N of IoU(pred_boxes[i], gt_boxes[i]); Tensor[N, 4] (x1, y1, x2, y2) each."""
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.dim() != 2 or pred_boxes.shape[1] != 4 \
            or pred_boxes.shape[0] == 0:
        raise ValueError(f"pred_boxes, gt_boxes: expected two non-empty Tensor[N, 4], got {list(pred_boxes.shape)} "
                         f"and {list(gt_boxes.shape)}")
    return float(box_overlaps(pred_boxes.double(), gt_boxes.double(), "iou", True).mean())


def pck(pred: Tensor, gt: Tensor, ref_size: Tensor, alpha: float = 0.2) -> Optional[float]:
    """Percentage of correct keypoints: the fraction of visible ground-truth points (visibility > 0)
    whose prediction lies within ``alpha * ref_size`` (Euclidean) of them.

    Args:
        pred: Tensor[N, K, 2 or 3] (x, y[, v]); gt: Tensor[N, K, 3] (x, y, visibility).
        ref_size: Tensor[N], per object (here the longer side of its box: PCK@alpha of the box size).
    Returns None when no point is visible.
    """
    if pred.dim() != 3 or gt.dim() != 3 or pred.shape[:2] != gt.shape[:2] or gt.shape[2] != 3 or pred.shape[2] < 2:
        raise ValueError(f"pred, gt: expected Tensor[N, K, 2 or 3] and Tensor[N, K, 3], got {list(pred.shape)} "
                         f"and {list(gt.shape)}")
    if ref_size.shape != gt.shape[:1]:
        raise ValueError(f"ref_size: expected Tensor[{gt.shape[0]}], got {list(ref_size.shape)}")
    vis = gt[..., 2] > 0
    if not bool(vis.any()):
        return None
    dist = (pred[..., :2].double() - gt[..., :2].double()).norm(dim=-1)
    ok = dist <= alpha * ref_size.double()[:, None]
    return float(ok[vis].double().mean())


def localization_metrics(gt: Dict[str, Any], detections: List[Dict[str, Any]], alpha: float = 0.2
                         ) -> Optional[Dict[str, Any]]:
    """``{"accuracy", "mean_IoU", "images"[, "PCK@alpha"]}`` (PCK when the ground truth and the
    detections have keypoints) of the top detection per image, or None when some image has
    not exactly one (non-crowd) object."""
    per_image: Dict[int, List[Dict[str, Any]]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and a["image_id"] in per_image:
            per_image[a["image_id"]].append(a)
    if not per_image or any(len(v) != 1 for v in per_image.values()):
        return None
    best: Dict[int, Dict[str, Any]] = {}
    for d in detections:
        b = best.get(d["image_id"])
        if b is None or d["score"] > b["score"]:
            best[d["image_id"]] = d
    ids = sorted(per_image)
    gts = [per_image[i][0] for i in ids]

    def xyxy(b):
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    gt_boxes = torch.tensor([xyxy(a["bbox"]) for a in gts], dtype=torch.float64)
    pred_boxes = torch.tensor([xyxy(best[i]["bbox"]) if i in best else [0.0, 0.0, 0.0, 0.0] for i in ids],
                              dtype=torch.float64)
    gt_labels = torch.tensor([a["category_id"] for a in gts])
    pred_labels = torch.tensor([best[i]["category_id"] if i in best else -1 for i in ids])
    out: Dict[str, Any] = {"accuracy": classification_accuracy(pred_labels, gt_labels),
                           "mean_IoU": box_mean_iou(pred_boxes, gt_boxes), "images": len(ids)}
    if all(a.get("keypoints") for a in gts) and any("keypoints" in d for d in best.values()):
        # an image without a detection (or without points) counts all its points as wrong
        k = len(gts[0]["keypoints"]) // 3
        g = torch.tensor([a["keypoints"] for a in gts], dtype=torch.float64).reshape(len(ids), k, 3)
        p = torch.tensor([best[i]["keypoints"] if "keypoints" in best.get(i, {}) else [float("inf")] * (3 * k)
                          for i in ids], dtype=torch.float64).reshape(len(ids), k, 3)
        out[f"PCK@{alpha:g}"] = pck(p, g, (gt_boxes[:, 2:] - gt_boxes[:, :2]).amax(1), alpha)
    return out
