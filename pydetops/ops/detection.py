"""Detector kernels: anchor matching, the sigmoid focal loss, fused batched post-processing.

* ``match_boxes`` / ``BoxMatcher``: torchvision's ``Matcher`` (assignment of anchors or
  proposals to ground-truth boxes by IoU, thresholds, low-quality matches) computed
  without the M x N IoU matrix.
* ``sigmoid_focal_loss``: ``torchvision.ops.sigmoid_focal_loss`` (same signature and
  semantics) as one fused forward and one fused backward pass.
* ``detection_postprocess`` / ``detection_postprocess_padded``: score threshold -> top-k
  per level -> decode -> clip -> remove small -> per-class NMS -> top ``max_det``, for a
  batch of images in one call; the padded form has a fixed shape and needs no host
  synchronisation on CUDA.

Boxes are ``(x1, y1, x2, y2)``.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor


__all__ = [
    "match_boxes",
    "BoxMatcher",
    "sigmoid_focal_loss",
    "detection_postprocess",
    "detection_postprocess_padded",
]

_DEFAULT_CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------


def match_boxes(
    anchors: Tensor,
    gt_boxes: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Matches each anchor (or proposal) to a ground-truth box, as torchvision's ``Matcher``.

    ``match_boxes(anchors, gt, hi, lo, allow)`` gives the same indices as
    ``Matcher(hi, lo, allow)(box_iou(gt, anchors))``, without materialising the
    M x N IoU matrix (the anchors are streamed against the ground truths; memory
    is O(N + M)).

    Per anchor ``i``, with ``iou[j, i] = box_iou(gt_boxes, anchors)[j, i]``:

    * ``best = max_j iou[j, i]`` and ``j*`` its index (the lowest ``j`` among equal
      values; a NaN IoU, e.g. two zero-area boxes, counts as the maximum, as ``torch.max``);
    * ``matches[i] = -1`` (``BELOW_LOW_THRESHOLD``) if ``best < low_threshold``,
      ``-2`` (``BETWEEN_THRESHOLDS``) if ``low_threshold <= best < high_threshold``,
      else ``j*``; thresholds are compared in the IoU's dtype;
    * with ``allow_low_quality_matches``: every anchor whose IoU with some ground
      truth ``j`` equals ``j``'s best IoU over all anchors (all anchors tied at it)
      keeps ``j*``, its OWN best ground truth, whatever the thresholds
      (torchvision's exact rule; usually ``j* == j``).

    No ground truth (M = 0): every anchor is ``-1`` with IoU 0 (what torchvision's
    detectors do; torchvision's ``Matcher`` itself raises). No anchor: empty outputs.

    Args:
        anchors: Tensor[N, 4] (floating point or integer).
        gt_boxes: Tensor[M, 4].
        high_threshold: IoU at or above which an anchor is matched.
        low_threshold: IoU below which an anchor is background (<= high_threshold).
        allow_low_quality_matches: also match each ground truth's best anchors.

    Returns:
        (matches, matched_iou): Tensor[N] int64 and Tensor[N] (float32, float64 for
        float64 boxes) with each anchor's best IoU. Not differentiable.
    """
    return torch.ops.pydetops.match_boxes(
        anchors, gt_boxes, float(high_threshold), float(low_threshold), bool(allow_low_quality_matches)
    )


class BoxMatcher:
    """torchvision's ``Matcher`` on boxes instead of an IoU matrix: ``matcher(anchors, gt_boxes)``.

    ``BoxMatcher(0.7, 0.3, True)(anchors, gt)`` equals
    ``Matcher(0.7, 0.3, True)(box_iou(gt, anchors))`` (see :func:`match_boxes`).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if not low_threshold <= high_threshold:
            raise ValueError(
                f"low_threshold must be <= high_threshold, got {low_threshold} and {high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def match(self, anchors: Tensor, gt_boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """(matches, matched_iou) for Tensor[N, 4] anchors and Tensor[M, 4] ground truths."""
        return match_boxes(anchors, gt_boxes, self.high_threshold, self.low_threshold, self.allow_low_quality_matches)

    def __call__(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return self.match(anchors, gt_boxes)[0]


# ---------------------------------------------------------------------------
# focal loss
# ---------------------------------------------------------------------------


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """The focal loss of RetinaNet (torchvision.ops.sigmoid_focal_loss), fused.

    ``loss = alpha_t * BCE_with_logits(inputs, targets) * (1 - p_t) ** gamma`` with
    ``p = sigmoid(inputs)``, ``p_t = p * targets + (1 - p) * (1 - targets)`` and
    ``alpha_t = alpha * targets + (1 - alpha) * (1 - targets)``; ``alpha < 0`` means
    no weighting (``alpha_t = 1``).

    Args:
        inputs: Tensor of any shape, the logits (floating point).
        targets: Tensor of ``inputs``' shape, floating point, usually 0 or 1 (soft
            labels allowed).
        alpha: the class balance weight in [0, 1], or < 0 for none.
        gamma: the focusing exponent (>= 0; 0 gives the weighted BCE).
        reduction: 'none' (per element), 'mean' or 'sum'.

    Returns:
        The loss in ``inputs``' dtype (computed in float32 for float16/bfloat16):
        ``inputs``' shape for 'none', a scalar otherwise. Differentiable w.r.t.
        ``inputs`` and ``targets`` (one fused backward pass).
    """
    return torch.ops.pydetops.sigmoid_focal_loss(inputs, targets, float(alpha), float(gamma), reduction)


# ---------------------------------------------------------------------------
# post-processing
# ---------------------------------------------------------------------------


def _flat_image_sizes(image_sizes: List[Tuple[int, int]]) -> List[int]:
    out: List[int] = []
    for s in image_sizes:
        out.append(int(s[0]))
        out.append(int(s[1]))
    return out


def detection_postprocess_padded(
    scores: Tensor,
    codes: Tensor,
    anchors: Tensor,
    image_sizes: List[Tuple[int, int]],
    level_sizes: Optional[List[int]] = None,
    score_thresh: float = 0.05,
    topk_per_level: int = 1000,
    nms_thresh: float = 0.5,
    max_det: int = 100,
    weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = _DEFAULT_CLAMP,
    min_size: float = 0.0,
    nms_by_level: bool = False,
    topk_per_class: int = -1,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A detector's post-processing for a batch of images in one call, fixed-shape output.

    Per image, with the A anchors split into levels of ``level_sizes`` anchors:

    1. per level, the (anchor, class) pairs with ``score > score_thresh`` (in the
       scores' dtype; NaN never passes) are ordered by decreasing score, ties by
       the lower ``anchor * C + class``; with ``topk_per_class >= 0`` only the first
       ``topk_per_class`` of each class stay (SSD's per-class top-k); then the first
       ``topk_per_level`` are kept (a negative value keeps all; no cap);
    2. each is decoded (``decode_boxes``: BoxCoder ``weights``, ``bbox_xform_clip``)
       from its anchor and its code (``codes[b, a, 4c:4c+4]`` for per-class codes,
       ``codes[b, a, :4]`` for class-agnostic ones), clipped to the image, and
       dropped when its width or height is below ``min_size``;
    3. NMS (IoU > ``nms_thresh`` suppresses) within each class (``batched_nms``
       semantics; with ``nms_by_level`` within each (level, class), as the RPN);
    4. the ``max_det`` best kept boxes, by decreasing score (ties: level order,
       then the order of step 1).

    This equals decode_boxes -> remove_small_boxes -> batched_nms -> [:max_det] on
    the step-1 candidates (tests/test_detection_ops.py checks it). Padded anchors
    (images with fewer anchors) are ignored when their scores are ``-inf``.

    Args:
        scores: Tensor[B, A, C], probabilities (or any score; ``score_thresh``
            applies to them as given).
        codes: Tensor[B, A, 4] (class-agnostic) or Tensor[B, A, 4 * C] (per class).
        anchors: Tensor[A, 4] shared by the images, or Tensor[B, A, 4].
        image_sizes: (height, width) of each image, for the clip.
        level_sizes: anchors per level (in order, summing to A); None: one level.
        score_thresh, topk_per_level, nms_thresh, max_det, weights,
        bbox_xform_clip, min_size, nms_by_level, topk_per_class: as above.

    Returns:
        (boxes Tensor[B, max_det, 4] in ``codes``' dtype, scores Tensor[B, max_det],
        labels Tensor[B, max_det] int64 (the class column), counts Tensor[B] int64):
        image ``b``'s detections are the first ``counts[b]`` rows; the rest are zero
        boxes and scores with label -1. Not differentiable.
    """
    levels: List[int] = [] if level_sizes is None else [int(s) for s in level_sizes]
    if not isinstance(topk_per_class, int) or isinstance(topk_per_class, bool):
        raise TypeError(f"topk_per_class must be an int (negative: no per-class cap), got {topk_per_class}")
    if len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {len(weights)}")
    return torch.ops.pydetops.detection_postprocess(
        scores,
        codes,
        anchors,
        levels,
        _flat_image_sizes(image_sizes),
        float(score_thresh),
        int(topk_per_level),
        float(nms_thresh),
        int(max_det),
        [float(w) for w in weights],
        float(bbox_xform_clip),
        float(min_size),
        bool(nms_by_level),
        int(topk_per_class),
    )


def detection_postprocess(
    scores: Tensor,
    codes: Tensor,
    anchors: Tensor,
    image_sizes: List[Tuple[int, int]],
    level_sizes: Optional[List[int]] = None,
    score_thresh: float = 0.05,
    topk_per_level: int = 1000,
    nms_thresh: float = 0.5,
    max_det: int = 100,
    weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = _DEFAULT_CLAMP,
    min_size: float = 0.0,
    nms_by_level: bool = False,
    topk_per_class: int = -1,
) -> List[Dict[str, Tensor]]:
    """:func:`detection_postprocess_padded`, as one ``{"boxes", "scores", "labels"}`` dict per image.

    The variable-length form torchvision's detectors return (reading the counts
    synchronises with a CUDA device once).
    """
    boxes, sc, labels, counts = detection_postprocess_padded(
        scores, codes, anchors, image_sizes, level_sizes, score_thresh, topk_per_level, nms_thresh, max_det,
        weights, bbox_xform_clip, min_size, nms_by_level, topk_per_class,
    )
    n: List[int] = counts.tolist()
    out: List[Dict[str, Tensor]] = []
    for b in range(len(n)):
        k = int(n[b])
        out.append({"boxes": boxes[b, :k], "scores": sc[b, :k], "labels": labels[b, :k]})
    return out


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----


@torch.library.register_fake("pydetops::match_boxes")
def _match_boxes_fake(anchors, gt_boxes, high_threshold, low_threshold, allow_low_quality_matches=False):
    torch._check_value(anchors.dim() == 2 and anchors.shape[1] == 4, lambda: "anchors must be a Tensor[N, 4]")
    torch._check_value(gt_boxes.dim() == 2 and gt_boxes.shape[1] == 4, lambda: "gt_boxes must be a Tensor[M, 4]")
    torch._check_value(low_threshold <= high_threshold, lambda: "low_threshold must be <= high_threshold")
    acc = torch.float64 if torch.float64 in (anchors.dtype, gt_boxes.dtype) else torch.float32
    n = anchors.shape[0]
    return anchors.new_empty((n,), dtype=torch.int64), anchors.new_empty((n,), dtype=acc)


def _check_focal_fake(inputs, targets, gamma, reduction):
    torch._check_type(inputs.is_floating_point(), lambda: "inputs must be a floating-point tensor")
    torch._check_type(targets.is_floating_point(), lambda: "targets must be a floating-point tensor")
    torch._check_value(inputs.shape == targets.shape, lambda: "targets must have the shape of inputs")
    torch._check_value(gamma >= 0, lambda: "gamma must be a finite number >= 0")
    torch._check_value(reduction in ("none", "mean", "sum"), lambda: "reduction must be one of 'none', 'mean', 'sum'")


@torch.library.register_fake("pydetops::sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    _check_focal_fake(inputs, targets, gamma, reduction)
    if reduction == "none":
        return inputs.new_empty(inputs.shape)
    return inputs.new_empty(())


@torch.library.register_fake("pydetops::_sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, reduction):
    _check_focal_fake(inputs, targets, gamma, reduction)
    return inputs.new_empty(inputs.shape), targets.new_empty(targets.shape)


@torch.library.register_fake("pydetops::detection_postprocess")
def _detection_postprocess_fake(
    scores, codes, anchors, level_sizes, image_sizes, score_thresh=0.05, topk_per_level=1000, nms_thresh=0.5,
    max_det=100, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=_DEFAULT_CLAMP, min_size=0.0, nms_by_level=False,
    topk_per_class=-1,
):
    torch._check_value(scores.dim() == 3, lambda: "scores must be a Tensor[B, A, C]")
    torch._check_value(codes.dim() == 3, lambda: "codes must be a Tensor[B, A, 4] or Tensor[B, A, 4 * C]")
    torch._check_value(max_det >= 0, lambda: "max_det must be >= 0")
    torch._check_value(len(image_sizes) == 2 * scores.shape[0], lambda: "image_sizes must hold (height, width) per image")
    b = scores.shape[0]
    return (
        codes.new_empty((b, max_det, 4)),
        scores.new_empty((b, max_det)),
        scores.new_empty((b, max_det), dtype=torch.int64),
        scores.new_empty((b,), dtype=torch.int64),
    )

