"""Semantic segmentation metrics: pixel accuracy and mean IoU from a confusion matrix, and
the semantic map (one class per pixel) that instance masks describe.

Classes are labels ``0..C-1`` (0 is background); ``ignore_index`` (255) marks pixels
that count nowhere (padding, crowd regions).
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "semantic_target", "confusion_matrix", "pixel_accuracy", "iou_per_class", "mean_iou",
           "segmentation_metrics", "semantic_target_from_annotations"]

IGNORE_INDEX = 255


def semantic_target(masks: Tensor, labels: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
    """The semantic map of instance masks: Tensor[H, W] int64, each pixel the label of the
    LAST instance (highest index j) whose mask covers it, 0 (background) where none does.

    Args:
        masks: Tensor[N, H, W] (uint8 / bool / float; a pixel is in the instance where > 0).
        labels: Tensor[N] integer, the instances' labels (1..C-1).
        size: (H, W), needed only when N == 0 and masks carries no size.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks: expected Tensor[N, H, W], got shape {list(masks.shape)}")
    if labels.dim() != 1 or labels.shape[0] != masks.shape[0]:
        raise ValueError(f"labels: expected Tensor[{masks.shape[0]}] (one per mask), got shape {list(labels.shape)}")
    H, W = (int(masks.shape[1]), int(masks.shape[2])) if size is None else (int(size[0]), int(size[1]))
    if masks.shape[0] == 0:
        return torch.zeros((H, W), dtype=torch.int64, device=masks.device)
    # index (1-based) of the last instance covering each pixel; 0 where none: one max, no loop
    order = torch.arange(1, masks.shape[0] + 1, device=masks.device, dtype=torch.int64)
    last = ((masks > 0).to(torch.int64) * order[:, None, None]).amax(0)
    table = torch.cat([labels.new_zeros(1), labels]).to(torch.int64)
    return table[last]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Tensor[C, C] int64: entry [t, p] counts pixels of true class t predicted as p.

    ``pred`` and ``target``: integer tensors of one shape (any); target pixels equal to
    ``ignore_index`` are left out. A value outside [0, C) (other than ignore_index) raises."""
    if pred.shape != target.shape:
        raise ValueError(f"pred: shape {list(pred.shape)} differs from target's {list(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    t = target.reshape(-1).to(torch.int64)
    p = pred.reshape(-1).to(torch.int64)
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    for name, v in (("target", t), ("pred", p)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name}: class values must be in [0, {num_classes - 1}] (or {ignore_index} in "
                             f"target), got values in [{int(v.min())}, {int(v.max())}]")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def pixel_accuracy(cm: Tensor) -> Optional[float]:
    """Correct pixels / all counted pixels (None when no pixel was counted)."""
    total = int(cm.sum())
    return None if total == 0 else float(cm.diag().sum()) / total


def iou_per_class(cm: Tensor) -> List[Optional[float]]:
    """Per class TP / (TP + FP + FN); None for a class absent from both target and prediction."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return [None if float(u) == 0 else float(a / u) for a, u in zip(tp, union)]


def mean_iou(cm: Tensor) -> Optional[float]:
    """Mean of :func:`iou_per_class` over the classes present (in the target or the
    prediction); None when there is none."""
    ious = [v for v in iou_per_class(cm) if v is not None]
    return None if not ious else float(sum(ious) / len(ious))


def segmentation_metrics(cm: Tensor, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``pixel_accuracy``, ``mIoU`` and ``per_class_IoU`` (name -> IoU or None) of a confusion matrix."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"class_names: expected {cm.shape[0]} names, got {len(names)}")
    return {"pixel_accuracy": pixel_accuracy(cm), "mIoU": mean_iou(cm),
            "per_class_IoU": dict(zip(names, iou_per_class(cm)))}


def semantic_target_from_annotations(anns: Sequence[Dict[str, Any]], category_id_to_label: Dict[int, int],
                                     height: int, width: int) -> Tensor:
    """The ground-truth semantic map Tensor[H, W] int64 of one image's COCO annotations
    (decoded with pycocotools), by :func:`semantic_target`'s rule (later annotations win);
    crowd regions become ``IGNORE_INDEX``."""
    from ..data.coco import decode_segmentation
    masks, labels, crowd = [], [], []
    for a in anns:
        if "segmentation" not in a:
            continue
        m = decode_segmentation(a["segmentation"], height, width)
        if a.get("iscrowd", 0):
            crowd.append(m)
        else:
            masks.append(m)
            labels.append(category_id_to_label[a["category_id"]])
    if masks:
        sem = semantic_target(torch.from_numpy(np.stack(masks)), torch.tensor(labels, dtype=torch.int64))
    else:
        sem = torch.zeros((height, width), dtype=torch.int64)
    for m in crowd:
        sem[torch.from_numpy(m) > 0] = IGNORE_INDEX
    return sem
