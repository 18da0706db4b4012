"""Assigning ground truth to anchors / proposals, and sampling them into a balanced minibatch.

``match`` is the one place where boxes meet ground truth (RPN anchors and RoI proposals
alike); ``BalancedSampler`` draws the positive / negative minibatch from its labels.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from ..ops import match_boxes

__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "match", "match_with_best_per_gt", "BalancedSampler"]

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(gt_boxes: Tensor, boxes: Tensor, high_threshold: float, low_threshold: float,
          allow_low_quality_matches: bool = False) -> Tuple[Tensor, Tensor]:
    """The ground truth each box is assigned to (torchvision's ``Matcher`` semantics).

    Args:
        gt_boxes: Tensor[G, 4] (x1, y1, x2, y2), G >= 1.
        boxes: Tensor[N, 4] (x1, y1, x2, y2): anchors or proposals, N >= 1.
        high_threshold: a box whose best IoU is >= this is matched to that ground truth.
        low_threshold: a box whose best IoU is < this gets ``BELOW_LOW_THRESHOLD`` (-1);
            in [low, high) it gets ``BETWEEN_THRESHOLDS`` (-2).
        allow_low_quality_matches: every ground truth also keeps the box(es) with which it has
            its highest IoU (all of them on ties), even below ``low_threshold``.

    Returns:
        (matches Tensor[N] int64: ground-truth index or -1 / -2, best_iou Tensor[N]: the
        highest IoU of each box with any ground truth). On equal IoUs the lowest
        ground-truth index wins.

    Computed by the fused ``pydetops.ops.match_boxes`` kernel, which streams the boxes
    against the ground truths and never materialises the G x N IoU matrix; everything
    else calls only this function.
    """
    if gt_boxes.numel() == 0:
        raise ValueError("gt_boxes: no ground-truth boxes available for one of the images during training")
    if boxes.numel() == 0:
        raise ValueError("boxes: no anchors or proposals available for one of the images during training")
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})")
    return match_boxes(boxes, gt_boxes, high_threshold, low_threshold, allow_low_quality_matches)


def match_with_best_per_gt(gt_boxes: Tensor, boxes: Tensor, threshold: float) -> Tensor:
    """SSD's matching (torchvision's ``SSDMatcher`` semantics).

    Each box is matched to the ground truth with which it has its highest IoU when that IoU is
    >= ``threshold`` (else ``BELOW_LOW_THRESHOLD``, -1); then every ground truth ``j`` also
    claims its own best box (highest IoU, the lowest box index on ties), whatever that IoU, so
    that no ground truth is left without a box (a box claimed by several takes the last one).

    Args:
        gt_boxes: Tensor[G, 4] (x1, y1, x2, y2); G = 0 gives all -1.
        boxes: Tensor[N, 4] (x1, y1, x2, y2), the default boxes.
        threshold: IoU at or above which a box is matched (0.5 in SSD).

    Returns:
        Tensor[N] int64: ground-truth index or -1.

    Two calls of the streamed ``match_boxes`` kernel (no G x N IoU matrix): boxes against the
    ground truths, then the ground truths against the boxes (each ground truth's best box).
    """
    if boxes.numel() == 0:
        raise ValueError("boxes: no default boxes available for one of the images during training")
    if gt_boxes.numel() == 0:
        return torch.full((boxes.shape[0],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=boxes.device)
    matches, _ = match_boxes(boxes, gt_boxes, threshold, threshold, False)
    best_box_per_gt, _ = match_boxes(gt_boxes, boxes, 0.0, 0.0, False)
    matches[best_box_per_gt] = torch.arange(gt_boxes.shape[0], dtype=torch.int64, device=matches.device)
    return matches


class BalancedSampler:
    """Draws up to ``batch_size_per_image`` samples per image, ``positive_fraction`` of them
    positive (label >= 1) where there are enough, the rest negative (label 0); label -1 is
    never drawn. torchvision's ``BalancedPositiveNegativeSampler`` (same random draws).

    ``__call__(labels: List[Tensor[N_i]])`` -> (positive masks, negative masks), one
    Tensor[N_i] uint8 per image.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        pos_masks: List[Tensor] = []
        neg_masks: List[Tensor] = []
        for lab in labels:
            positive = torch.where(lab >= 1)[0]
            negative = torch.where(lab == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.uint8)
            neg_mask = torch.zeros_like(lab, dtype=torch.uint8)
            pos_mask[pos_idx] = 1
            neg_mask[neg_idx] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
