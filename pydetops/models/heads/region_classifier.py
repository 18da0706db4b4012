"""The region classifier and box regressor shared by R-CNN, SPPNet and Fast R-CNN.

The three detectors differ only in how a proposal becomes a feature vector (R-CNN: warp the
image region and run the CNN on it; SPPNet: spatial pyramid pooling of the region on the
image's one feature map; Fast R-CNN: RoI pooling on that map, then two FC layers). From the
vector on they are the same and written once here, on top of :class:`RoIHeads`:

* training: the ground-truth boxes join the proposals; each proposal is labelled by the shared
  matcher (``assign.match``: IoU >= ``fg_iou_thresh`` -> its ground truth's class, IoU in
  [``bg_iou_low``, ``bg_iou_thresh``) -> background, otherwise ignored); a minibatch of
  ``rois_per_minibatch`` regions is drawn from the N images (R / N each) with the shared
  ``BalancedSampler`` at ``positive_fraction`` (R-CNN: 32 positives + 96 background of 128;
  Fast R-CNN: 25 % foreground);
* scores: a softmax over K+1 classes (``FastRCNNPredictor.cls_score``) or, with
  ``classifier="svm"``, one linear SVM per class (:func:`svm_hinge_loss`, hard negatives);
* per-class box offsets (``FastRCNNPredictor.bbox_pred``, the shared ``BoxCoder`` coding with
  weights (10, 10, 5, 5)), trained with smooth-L1 on the foreground regions;
* losses: ``fastrcnn_loss`` (L = L_cls + lambda [u >= 1] smooth_L1(t^u - v), smooth-L1 with
  torchvision's beta 1/9, summed over the foreground and divided by the sampled regions), plus ``loss_svm``;
* inference: decode per class, clip, score threshold, per-class NMS, best
  ``detections_per_img`` (``RoIHeads.postprocess_detections``: one fused kernel call).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...ops import box_iou
from .roi_heads import RoIHeads, fastrcnn_loss

__all__ = ["RegionClassifierHeads", "svm_hinge_loss"]


def svm_hinge_loss(scores: Tensor, labels: Tensor, negatives_per_positive: int = 3) -> Tensor:
    """One-vs-rest linear SVMs' hinge loss with hard-negative mining (R-CNN's per-class SVMs).

    Args:
        scores: Tensor[R, K] the K foreground classes' SVM margins w_c . x + b_c.
        labels: Tensor[R] int64, 0 = background, c in 1..K = class c, -1 = ignored (no SVM sees it).
        negatives_per_positive: per class c, of its negatives (every region not labelled c or -1)
            only the hardest are kept: those inside the margin (hinge > 0) with the highest
            scores, at most ``negatives_per_positive * max(1, positives of c)``.

    Returns:
        scalar: (sum of the positives' hinges + sum of the kept negatives' hinges) / (regions not
        ignored), with hinge = max(0, 1 - y s), y = +1 for class c's regions and -1 otherwise;
        0 when every region is ignored or R = 0.
    """
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores, labels: expected Tensor[R, K] and Tensor[R], got {list(scores.shape)} and "
                         f"{list(labels.shape)}")
    r, k = scores.shape
    valid = labels >= 0
    n = int(valid.sum())
    if n == 0:
        return scores.sum() * 0.0
    classes = torch.arange(1, k + 1, device=labels.device)
    pos = labels[:, None] == classes[None, :]
    neg = valid[:, None] & ~pos
    y = pos.to(scores.dtype) * 2 - 1
    hinge = torch.relu(1 - y * scores)
    # hard negatives: rank each class's negatives by their hinge (positives and ignored rows last)
    neg_hinge = hinge.detach().masked_fill(~neg, -1.0)
    order = neg_hinge.argsort(dim=0, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(r, device=order.device)[:, None].expand(r, k).contiguous())
    quota = negatives_per_positive * pos.sum(dim=0).clamp(min=1)
    hard = neg & (rank < quota[None, :]) & (neg_hinge > 0)
    return (hinge * (pos | hard).to(hinge.dtype)).sum() / n


class RegionClassifierHeads(RoIHeads):
    """Per-region features -> classifier and per-class box regressor; sampling, losses, post-processing.

    Args:
        region_pool: ``region_pool(features: Tensor[N, C, H, W], proposals: List[Tensor[P_i, 4]])``
            -> the regions' inputs to ``box_head`` (e.g. ``RoIPool``, ``SpatialPyramidPooling``, or
            R-CNN's warp of the image itself); boxes in the coordinates of the batched images.
        box_head: Tensor[R, ...] -> Tensor[R, D] (e.g. ``TwoMLPHead``).
        box_predictor: ``FastRCNNPredictor(D, K + 1)``.
        classifier: "softmax" (scores: softmax over the K+1 logits) or "svm" (scores: sigmoid of
            per-class linear SVMs ``svm`` on the head's features, trained on the detached features
            with :func:`svm_hinge_loss` while the softmax loss fine-tunes the network, as R-CNN:
            positives the ground-truth boxes, negatives the regions with IoU < ``svm_negative_iou``
            with every ground truth; :meth:`svm_loss`).
        rois_per_minibatch: R, regions per training minibatch, drawn R / N from each of N images.
        positive_fraction: at most this fraction of each image's R / N regions is foreground.
        fg_iou_thresh, bg_iou_thresh, bg_iou_low: labelling thresholds (above).
        score_thresh, nms_thresh, detections_per_img: inference (per-class NMS threshold).
        svm_negatives_per_positive: hard negatives kept per positive in ``loss_svm``.
        box_loss_weight: lambda, the weight of ``loss_box_reg`` (Fast R-CNN: 1).

    ``forward(features, proposals, image_shapes, targets)`` -> (detections, losses) as
    :class:`RoIHeads`; the losses are ``loss_classifier``, ``loss_box_reg`` (+ ``loss_svm``). With no
    sampled region at all (no proposals and no objects) the losses are zeros that still
    backpropagate (to nothing).
    """

    def __init__(self, region_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module, *,
                 classifier: str = "softmax", rois_per_minibatch: int = 128, positive_fraction: float = 0.25,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, bg_iou_low: float = 0.0,
                 bbox_reg_weights: Optional[Tuple[float, float, float, float]] = None, score_thresh: float = 0.05,
                 nms_thresh: float = 0.3, detections_per_img: int = 100, svm_negatives_per_positive: int = 3,
                 box_loss_weight: float = 1.0, svm_negative_iou: float = 0.3):
        if classifier not in ("softmax", "svm"):
            raise ValueError(f"classifier: must be 'softmax' or 'svm', got {classifier!r}")
        if not isinstance(rois_per_minibatch, int) or rois_per_minibatch < 1:
            raise ValueError(f"rois_per_minibatch: must be an int >= 1, got {rois_per_minibatch!r}")
        if not 0.0 <= bg_iou_low <= bg_iou_thresh <= fg_iou_thresh:
            raise ValueError(f"IoU thresholds: need 0 <= bg_iou_low ({bg_iou_low}) <= bg_iou_thresh "
                             f"({bg_iou_thresh}) <= fg_iou_thresh ({fg_iou_thresh})")
        super().__init__(region_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, rois_per_minibatch,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                         bg_iou_low=bg_iou_low)
        self.classifier = classifier
        self.rois_per_minibatch = rois_per_minibatch
        self.svm_negatives_per_positive = svm_negatives_per_positive
        self.box_loss_weight = float(box_loss_weight)
        self.svm_negative_iou = float(svm_negative_iou)
        cls = box_predictor.cls_score
        self.svm = nn.Linear(cls.in_features, cls.out_features - 1) if classifier == "svm" else None

    def forward(self, features: Tensor, proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            # R regions from N images: R / N each, as Fast R-CNN's minibatches
            self.sampler.batch_size_per_image = max(1, self.rois_per_minibatch // max(1, len(proposals)))
            proposals, labels, regression_targets = self.select_training_samples(proposals, targets)
        # per-region features -> K+1 scores and per-class offsets
        x = self.box_head(self.box_roi_pool(features, proposals))
        class_logits, box_regression = self.box_predictor(x)
        if self.training:
            if sum(int(lab.numel()) for lab in labels) == 0:  # nothing sampled: defined zero losses
                zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
                losses = {"loss_classifier": zero, "loss_box_reg": zero.clone()}
            else:
                loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
                losses = {"loss_classifier": loss_cls, "loss_box_reg": self.box_loss_weight * loss_box}
            if self.svm is not None:
                losses["loss_svm"] = self.svm_loss(features, x, proposals, targets)
            return [], losses
        if self.svm is not None:
            margins = self.svm(x.flatten(1))
            class_logits = torch.cat([margins.new_zeros((margins.shape[0], 1)), margins], dim=1)
        return self.postprocess_detections(class_logits, box_regression, proposals, image_shapes), {}

    def svm_loss(self, features: Tensor, x: Tensor, proposals: List[Tensor],
                 targets: List[Dict[str, Tensor]]) -> Tensor:
        """R-CNN's SVM training set on the (detached) features: the positives of class c are class c's
        ground-truth boxes (their features computed here), the negatives the sampled regions whose
        IoU with every ground truth is below ``svm_negative_iou`` (0.3); the regions in between are
        ignored (the paper: "the grey zone"). Then :func:`svm_hinge_loss` with hard negatives."""
        feats = x.detach().flatten(1)
        labels = []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            lab = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
            if gt.numel() and props.numel():
                best = box_iou(props, gt).max(dim=1).values
                lab[best >= self.svm_negative_iou] = -1
            labels.append(lab)
        gts = [t["boxes"].to(feats.dtype) for t in targets]
        if sum(int(g.shape[0]) for g in gts):
            with torch.no_grad():
                feats = torch.cat([feats, self.box_head(self.box_roi_pool(features, gts)).flatten(1)])
            labels += [t["labels"].to(torch.int64) for t in targets]
        return svm_hinge_loss(self.svm(feats), torch.cat(labels), self.svm_negatives_per_positive)

    def foreground_scores(self, class_logits: Tensor) -> Tensor:
        """softmax (``classifier="softmax"``) or the SVM margins' sigmoid (``"svm"``, column 0 unused)."""
        if self.svm is not None:
            return torch.sigmoid(class_logits[:, 1:])
        return super().foreground_scores(class_logits)
