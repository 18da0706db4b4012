"""Losses of the detector family (shapes in each docstring)."""
import torch.nn.functional as F
from torch import Tensor

from ..ops import generalized_box_iou_loss, sigmoid_focal_loss

__all__ = ["smooth_l1_loss", "objectness_loss", "focal_loss", "giou_loss"]


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1.0 / 9, reduction: str = "sum") -> Tensor:
    """Huber-like box regression loss: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta
    (beta = 1/9 as Faster R-CNN); Tensor[N, 4] inputs, ``reduction`` 'none' | 'sum' | 'mean'."""
    if input.shape != target.shape:
        raise ValueError(f"input and target must have one shape, got {list(input.shape)} and {list(target.shape)}")
    return F.smooth_l1_loss(input, target, beta=beta, reduction=reduction)


def objectness_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of Tensor[N] objectness logits against 0/1 labels, mean over N."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def focal_loss(logits: Tensor, targets: Tensor, num_foreground: int, alpha: float = 0.25,
               gamma: float = 2.0) -> Tensor:
    """RetinaNet's classification loss: the sigmoid focal loss (fused op) summed over all the
    elements of Tensor[N, K] ``logits`` against 0/1 ``targets`` of the same shape, divided by
    ``max(1, num_foreground)`` (the anchors assigned to an object)."""
    return sigmoid_focal_loss(logits, targets, alpha, gamma, "sum") / max(1, int(num_foreground))


def giou_loss(boxes: Tensor, target_boxes: Tensor, reduction: str = "sum", eps: float = 1e-7) -> Tensor:
    """1 - generalized IoU of Tensor[N, 4] ``boxes`` and ``target_boxes`` pairwise (x1, y1, x2, y2),
    reduced by ``reduction`` ('none' | 'sum' | 'mean'); the fused ``generalized_box_iou_loss`` op."""
    return generalized_box_iou_loss(boxes, target_boxes, reduction=reduction, eps=eps)
