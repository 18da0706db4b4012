"""Non-maximum suppression: ``nms``, ``batched_nms`` (torchvision's signatures) and ``soft_nms``.

Boxes are ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format. Common conventions:

* IoU = inter / (area1 + area2 - inter), computed in float32 for float16/bfloat16
  (and float32) boxes and in float64 for float64 boxes, so float16 coordinates
  at the 1e4 scale do not overflow the areas. A box is suppressed when its IoU
  with a kept box is strictly greater than ``iou_threshold`` (as torchvision).
* Score order: decreasing score; exactly equal scores are broken by the LOWER
  index (a stable sort), and NaN scores come last (torchvision's sort would put
  them first). -0.0 and +0.0 are equal.
* A pair with no intersection has IoU 0, and IoU involving a NaN or infinite
  coordinate is 0 or NaN: such a box never suppresses and is never suppressed
  (NaN never compares greater than the threshold). Zero-area and inverted boxes
  (x2 < x1 or y2 < y1) intersect nothing, so they are always kept by ``nms``.
* ``iou_threshold`` must be >= 0 (ValueError for a negative or NaN value;
  torchvision accepts them). Values >= 1 suppress nothing.
* ``scores`` may have a floating dtype other than ``boxes``' (torchvision
  requires the same dtype); integer boxes or scores raise TypeError.
* The outputs are not differentiable.
* Under ``torch.compile`` the output length is an unbacked symbolic size; the
  ops need no dynamo configuration (see tests/test_nms.py).
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["nms", "batched_nms", "soft_nms"]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (torchvision.ops.nms).

    Boxes are visited in decreasing score; a box is kept unless a box kept
    before it has IoU > ``iou_threshold`` with it.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2), floating point.
        scores: Tensor[N], floating point.
        iou_threshold: discard boxes whose IoU with a kept box is > this (>= 0).

    Returns:
        Tensor[K] int64: the indices of the kept boxes, in decreasing score;
        equal scores in increasing index, NaN scores last.
    """
    return torch.ops.pydetops.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each category (torchvision.ops.batched_nms).

    Boxes of different categories never suppress each other. Unlike
    torchvision's, this does not shift the boxes of each category by an offset,
    so it is exact for any coordinate range (negative, 1e6-scale, float16);
    the result equals ``nms`` run on each category separately, merged.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2), floating point.
        scores: Tensor[N], floating point.
        idxs: Tensor[N] of integers: the category of each box.
        iou_threshold: discard boxes whose IoU with a kept box of the same
            category is > this (>= 0).

    Returns:
        Tensor[K] int64: the indices of the kept boxes, in decreasing score;
        equal scores in increasing index, NaN scores last.
    """
    return torch.ops.pydetops.batched_nms(boxes, scores, idxs, float(iou_threshold))


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> Tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): overlapping boxes have their scores decayed instead of removed.

    Boxes whose score is below ``score_threshold`` (or NaN) are dropped at the
    start. Then, repeatedly: the remaining box with the highest current score
    (ties: lower index) is selected and emitted with its current score; every
    other remaining box's score is multiplied by a weight of its IoU with the
    selected box; boxes whose score falls below ``score_threshold`` are dropped.

    Weights (``iou`` against the selected box):
        'gaussian': exp(-iou^2 / sigma) for every overlapping box (no threshold);
        'linear':   1 - iou when iou > iou_threshold, else 1;
        'hard':     the box is removed when iou > iou_threshold (plain NMS with
                    score_threshold: with a score_threshold below every score it
                    returns exactly ``nms``' indices).

    Differences from mmcv's ``soft_nms``: the default method is 'gaussian'
    (mmcv: 'linear'); the linear/hard tests are ``iou > iou_threshold`` (mmcv:
    ``>=``, here strict as in ``nms``); boxes already below ``score_threshold``
    are never emitted (mmcv may emit the first one); ties go to the lower
    index; the result is the indices and scores, not mmcv's (dets, inds); no
    ``offset``.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2), floating point.
        scores: Tensor[N], floating point.
        iou_threshold: the IoU above which 'linear' and 'hard' act (>= 0).
        sigma: the Gaussian's parameter (> 0).
        score_threshold: boxes whose score is below this are dropped.
        method: 'gaussian', 'linear' or 'hard'.

    Returns:
        (keep, decayed_scores): Tensor[K] int64 indices in the order selected,
        and Tensor[K] their scores when selected, in ``scores``' dtype (decayed in
        float32, or float64 for float64 inputs).
    """
    return torch.ops.pydetops.soft_nms(
        boxes, scores, float(iou_threshold), float(sigma), float(score_threshold), method
    )


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

def _check_boxes_scores_fake(boxes: Tensor, scores: Tensor) -> None:
    torch._check_value(
        boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"boxes must be a Tensor[N, 4], got shape {list(boxes.shape)}"
    )
    torch._check_type(boxes.is_floating_point(), lambda: f"boxes must be a floating-point tensor, got {boxes.dtype}")
    torch._check_value(scores.dim() == 1, lambda: f"scores must be a Tensor[N], got shape {list(scores.shape)}")
    torch._check_type(scores.is_floating_point(), lambda: f"scores must be a floating-point tensor, got {scores.dtype}")
    torch._check_value(boxes.shape[0] == scores.shape[0], lambda: "boxes and scores must have the same length N")
    torch._check_value(boxes.device == scores.device, lambda: "boxes and scores must be on the same device")


def _check_iou_threshold_fake(iou_threshold: float) -> None:
    torch._check_value(iou_threshold >= 0, lambda: f"iou_threshold must be a number >= 0, got {iou_threshold}")


def _kept_count():
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("pydetops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    _check_boxes_scores_fake(boxes, scores)
    _check_iou_threshold_fake(iou_threshold)
    return boxes.new_empty((_kept_count(),), dtype=torch.int64)


@torch.library.register_fake("pydetops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_boxes_scores_fake(boxes, scores)
    torch._check_value(idxs.dim() == 1, lambda: f"idxs must be a Tensor[N], got shape {list(idxs.shape)}")
    torch._check_type(
        not idxs.is_floating_point() and not idxs.is_complex() and idxs.dtype != torch.bool,
        lambda: f"idxs must be an integer tensor, got {idxs.dtype}",
    )
    torch._check_value(idxs.shape[0] == boxes.shape[0], lambda: "idxs must have one entry per box")
    torch._check_value(boxes.device == idxs.device, lambda: "boxes and idxs must be on the same device")
    _check_iou_threshold_fake(iou_threshold)
    return boxes.new_empty((_kept_count(),), dtype=torch.int64)


@torch.library.register_fake("pydetops::soft_nms")
def _soft_nms_fake(boxes, scores, iou_threshold=0.3, sigma=0.5, score_threshold=0.001, method="gaussian"):
    _check_boxes_scores_fake(boxes, scores)
    _check_iou_threshold_fake(iou_threshold)
    torch._check_value(sigma > 0, lambda: f"sigma must be a finite number > 0, got {sigma}")
    torch._check_value(
        method in ("gaussian", "linear", "hard"),
        lambda: f"method must be one of 'gaussian', 'linear', 'hard', got '{method}'",
    )
    k = _kept_count()
    return boxes.new_empty((k,), dtype=torch.int64), scores.new_empty((k,))
