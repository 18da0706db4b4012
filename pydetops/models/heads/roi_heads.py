"""The Fast R-CNN head on proposals (Girshick 2015), torchvision's semantics and names.

Each proposal is pooled to a fixed grid (RoIAlign, per FPN level), two fully connected
layers (``TwoMLPHead``) give a feature, and ``FastRCNNPredictor`` turns it into K+1 class
scores and per-class box offsets. Training samples a minibatch of proposals per image
(a fraction foreground); inference decodes, thresholds and runs NMS per class.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import BoxCoder, detection_postprocess
from ..assign import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, match
from ..losses import smooth_l1_loss
from .keypoint_head import keypointrcnn_inference, keypointrcnn_loss
from .mask_head import maskrcnn_inference, maskrcnn_loss

__all__ = ["TwoMLPHead", "FastRCNNPredictor", "RoIHeads", "fastrcnn_loss"]


class TwoMLPHead(nn.Module):
    """flatten -> fc6 -> ReLU -> fc7 -> ReLU: Tensor[R, C, h, w] -> Tensor[R, representation_size]."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc6(x.flatten(start_dim=1)))
        return F.relu(self.fc7(x))


class FastRCNNPredictor(nn.Module):
    """``cls_score`` (num_classes logits, 0 = background) and ``bbox_pred`` (4 offsets per class)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: List[Tensor],
                  regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Cross-entropy over K+1 classes (mean) and smooth-L1 (beta 1/9) of the true class's offsets of
    the foreground RoIs, summed and divided by the number of sampled RoIs."""
    labels_all = torch.cat(labels, dim=0)
    targets_all = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels_all)
    pos = torch.where(labels_all > 0)[0]
    n = class_logits.shape[0]
    box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
    box_loss = smooth_l1_loss(box_regression[pos, labels_all[pos]], targets_all[pos], beta=1 / 9, reduction="sum")
    return classification_loss, box_loss / labels_all.numel()


class RoIHeads(nn.Module):
    """Box branch of Faster R-CNN, with Mask R-CNN's optional mask and keypoint branches.

    Training: ground-truth boxes are added to the proposals; a proposal with IoU >=
    ``fg_iou_thresh`` is foreground (its gt's label), with IoU in [``bg_iou_low``,
    ``bg_iou_thresh``) background, otherwise ignored (torchvision: ``bg_iou_low`` = 0, so
    every proposal below the threshold is background; Fast R-CNN's paper: 0.1);
    ``batch_size_per_image`` RoIs are sampled at ``positive_fraction``.

    ``forward(features, proposals: List[Tensor[P_i, 4]], image_shapes, targets)`` ->
    (detections: one dict boxes Tensor[D, 4] / labels Tensor[D] int64 / scores Tensor[D] per image
    (eval), losses dict (train): ``loss_classifier``, ``loss_box_reg``).

    Mask branch (all three of ``mask_roi_pool``, ``mask_head``, ``mask_predictor`` given, as
    torchvision's attributes): in training the positive sampled RoIs get ``loss_mask`` against
    ``targets[i]["masks"]`` (Tensor[G, H, W] in the resized image); in eval each detection gets
    ``masks`` Tensor[D, 1, M, M] (its class's sigmoid map, pasted into the image later by the
    transform). Keypoint branch (``keypoint_roi_pool``, ``keypoint_head``, ``keypoint_predictor``):
    ``loss_keypoint`` against ``targets[i]["keypoints"]`` (Tensor[G, K, 3]); in eval ``keypoints``
    Tensor[D, K, 3] and ``keypoints_scores`` Tensor[D, K]. See heads/mask_head.py, heads/keypoint_head.py.
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
                 bbox_reg_weights: Optional[Tuple[float, float, float, float]], score_thresh: float,
                 nms_thresh: float, detections_per_img: int, bg_iou_low: float = 0.0,
                 mask_roi_pool: Optional[nn.Module] = None, mask_head: Optional[nn.Module] = None,
                 mask_predictor: Optional[nn.Module] = None, keypoint_roi_pool: Optional[nn.Module] = None,
                 keypoint_head: Optional[nn.Module] = None, keypoint_predictor: Optional[nn.Module] = None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.bg_iou_low = bg_iou_low
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0) if bbox_reg_weights is None else bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.keypoint_roi_pool = keypoint_roi_pool
        self.keypoint_head = keypoint_head
        self.keypoint_predictor = keypoint_predictor

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def has_keypoint(self) -> bool:
        return (self.keypoint_roi_pool is not None and self.keypoint_head is not None
                and self.keypoint_predictor is not None)

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            proposals, labels, regression_targets, matched_idxs = self.select_training_samples_and_matches(
                proposals, targets)
        # -- RoI pooling, two FC layers, class scores and per-class offsets ------------------------
        x = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(x))
        if self.training:
            loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            if self.has_mask() or self.has_keypoint():
                # the mask / keypoint branches learn on the foreground RoIs only
                pos = [torch.where(lab > 0)[0] for lab in labels]
                pos_props = [p[i] for p, i in zip(proposals, pos)]
                pos_idx = [m[i] for m, i in zip(matched_idxs, pos)]
                assert targets is not None
                if self.has_mask():
                    logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_props, image_shapes)))
                    losses["loss_mask"] = maskrcnn_loss(logits, pos_props, [t["masks"] for t in targets],
                                                        [t["labels"] for t in targets], pos_idx)
                if self.has_keypoint():
                    logits = self.keypoint_predictor(
                        self.keypoint_head(self.keypoint_roi_pool(features, pos_props, image_shapes)))
                    losses["loss_keypoint"] = keypointrcnn_loss(logits, pos_props,
                                                                [t["keypoints"] for t in targets], pos_idx)
            return [], losses
        result = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if self.has_mask() or self.has_keypoint():
            boxes = [r["boxes"] for r in result]
            if self.has_mask():
                logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
                for r, m in zip(result, maskrcnn_inference(logits, [r["labels"] for r in result])):
                    r["masks"] = m
            if self.has_keypoint():
                logits = self.keypoint_predictor(
                    self.keypoint_head(self.keypoint_roi_pool(features, boxes, image_shapes)))
                kps, kp_scores = keypointrcnn_inference(logits, boxes)
                for r, k, s in zip(result, kps, kp_scores):
                    r["keypoints"] = k
                    r["keypoints_scores"] = s
        return result, {}

    def select_training_samples(self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]
                                ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Proposals (+ gt boxes) -> sampled RoIs, their labels and regression targets, per image."""
        props, labels, regression_targets, _ = self.select_training_samples_and_matches(proposals, targets)
        return props, labels, regression_targets

    def select_training_samples_and_matches(self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]
                                            ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """As :meth:`select_training_samples`, plus each sampled RoI's matched gt index per image
        (Tensor[R_i] int64; 0 for background RoIs and images without objects)."""
        dtype = proposals[0].dtype
        sampled_props, sampled_labels, matched_gt, sampled_idx = [], [], [], []
        labels_all, props_all, idx_all = [], [], []
        for props, target in zip(proposals, targets):
            gt = target["boxes"].to(dtype)
            gt_labels = target["labels"]
            props = torch.cat([props, gt])
            if gt.numel() == 0:
                idx = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                labels = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
            else:
                idx, best_iou = match(gt, props, self.fg_iou_thresh, self.bg_iou_thresh)
                labels = gt_labels[idx.clamp(min=0)].to(torch.int64)
                labels[idx == BELOW_LOW_THRESHOLD] = 0
                labels[idx == BETWEEN_THRESHOLDS] = -1
                if self.bg_iou_low > 0:
                    labels[best_iou < self.bg_iou_low] = -1
                idx = idx.clamp(min=0)
            labels_all.append(labels)
            props_all.append(props)
            idx_all.append(idx)
        pos_masks, neg_masks = self.sampler(labels_all)
        for props, labels, idx, pos, neg, target in zip(props_all, labels_all, idx_all, pos_masks, neg_masks, targets):
            keep = torch.where(pos | neg)[0]
            gt = target["boxes"].to(dtype)
            if gt.numel() == 0:
                gt = torch.zeros((1, 4), dtype=dtype, device=props.device)
            sampled_props.append(props[keep])
            sampled_labels.append(labels[keep])
            matched_gt.append(gt[idx[keep]])
            sampled_idx.append(idx[keep])
        regression_targets = self.box_coder.encode(matched_gt, sampled_props)
        return sampled_props, sampled_labels, list(regression_targets), sampled_idx

    def foreground_scores(self, class_logits: Tensor) -> Tensor:
        """Tensor[R, K+1] logits -> Tensor[R, K] the foreground classes' scores (softmax)."""
        return F.softmax(class_logits, -1)[:, 1:]

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
                               image_shapes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Decode per class, clip, drop background / low scores / tiny boxes, NMS per class, keep the
        best ``detections_per_img``: all images in one fused ``detection_postprocess`` call.

        Images with fewer proposals than the largest are padded with ``-inf`` scores (never kept).
        """
        num_classes = class_logits.shape[-1]
        counts = [int(p.shape[0]) for p in proposals]
        num_images = len(proposals)
        most = max(counts) if num_images > 0 else 0
        scores = self.foreground_scores(class_logits)
        codes = box_regression[:, 4:]
        if num_images == 1 or all(c == most for c in counts):
            scores_b = scores.reshape(num_images, most, num_classes - 1)
            codes_b = codes.reshape(num_images, most, 4 * (num_classes - 1))
            props_b = torch.stack(proposals) if num_images > 0 else codes.new_zeros((0, 0, 4))
        else:
            scores_b = scores.new_full((num_images, most, num_classes - 1), float("-inf"))
            codes_b = codes.new_zeros((num_images, most, 4 * (num_classes - 1)))
            props_b = codes.new_zeros((num_images, most, 4))
            offset = 0
            for i, n in enumerate(counts):
                scores_b[i, :n] = scores[offset:offset + n]
                codes_b[i, :n] = codes[offset:offset + n]
                props_b[i, :n] = proposals[i]
                offset += n
        w = self.box_coder.weights
        out = detection_postprocess(
            scores_b, codes_b, props_b, image_shapes, None, self.score_thresh, -1, self.nms_thresh,
            self.detections_per_img, (float(w[0]), float(w[1]), float(w[2]), float(w[3])),
            self.box_coder.bbox_xform_clip, 1e-2, False)
        for det in out:
            det["labels"] = det["labels"] + 1
        return out
