"""Region Proposal Network (Faster R-CNN, Ren et al. 2015), torchvision's semantics and names.

A 3x3 conv slides over every feature map; two sibling 1x1 convs give, for each of the A
anchors of a cell, an objectness logit and 4 box offsets. Proposals are the decoded anchors
with the highest objectness, per level, after clipping, dropping tiny boxes and NMS.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import AnchorGenerator, BoxCoder, ImageList, batched_nms, clip_boxes_to_image, decode_boxes, \
    detection_postprocess, remove_small_boxes
from ..assign import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, match
from ..backbones import ConvNormAct
from ..losses import objectness_loss, smooth_l1_loss

__all__ = ["RPNHead", "RegionProposalNetwork"]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then ``cls_logits`` (A per cell) and ``bbox_pred`` (4A per cell).

    ``forward(features: List[Tensor[N, C, H_l, W_l]])`` -> (objectness: List[Tensor[N, A, H_l, W_l]],
    deltas: List[Tensor[N, 4A, H_l, W_l]]).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(ConvNormAct(in_channels, in_channels, 3, norm_layer=None))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # True: ``cls_logits`` and ``bbox_pred`` run as ONE 1x1 convolution (their weights concatenated on
    # the fly; same parameters): one pass over the shared map forward, one input gradient and no
    # gradient sum backward. Set by the detectors' ``use_channels_last()`` fast path (training only).
    # False, or eval mode: torchvision's two convolutions.
    fuse_sibling_convs = False

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        fused = self.fuse_sibling_convs and self.training and all(
            type(c) is nn.Conv2d and c.bias is not None and c.kernel_size == (1, 1) and c.stride == (1, 1)
            and c.groups == 1 for c in (self.cls_logits, self.bbox_pred))
        if fused:
            a = self.cls_logits.out_channels
            weight = torch.cat([self.cls_logits.weight, self.bbox_pred.weight])
            bias = torch.cat([self.cls_logits.bias, self.bbox_pred.bias])
        for f in features:
            t = self.conv(f)
            if fused:
                out = F.conv2d(t, weight, bias)
                logits.append(out[:, :a])
                deltas.append(out[:, a:])
            else:
                logits.append(self.cls_logits(t))
                deltas.append(self.bbox_pred(t))
        return logits, deltas


def _flatten_levels(maps: List[Tensor], values_per_anchor: int) -> Tensor:
    """[N, A*V, H, W] per level -> Tensor[N, sum_l H_l W_l A, V], ordered level, cell (row-major), anchor
    (the anchors' order)."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.view(n, -1, values_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor))
    return torch.cat(out, dim=1)


class RegionProposalNetwork(nn.Module):
    """Proposals (and, in training, the RPN's two losses) from the feature maps.

    Training: anchors with IoU >= ``fg_iou_thresh`` with a ground truth (or its best anchor)
    are positive, < ``bg_iou_thresh`` negative, the rest ignored; ``batch_size_per_image``
    anchors per image are sampled at ``positive_fraction``; losses: binary cross-entropy of
    the objectness, smooth-L1 (beta 1/9) of the positives' offsets (sum / sampled count).

    ``pre_nms_top_n`` / ``post_nms_top_n``: dicts {"training": n, "testing": n}: best anchors
    kept per level before NMS, proposals kept per image after it.

    ``forward(images: ImageList, features: Dict[str, Tensor[N, C, H, W]], targets)`` ->
    (proposals: List[Tensor[P_i, 4]] in the padded batch's pixels, losses dict).
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, fg_iou_thresh: float,
                 bg_iou_thresh: float, batch_size_per_image: int, positive_fraction: float,
                 pre_nms_top_n: Dict[str, int], post_nms_top_n: Dict[str, int], nms_thresh: float,
                 score_thresh: float = 0.0, fused_proposals: bool = False):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = pre_nms_top_n
        self._post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3
        # True: fused_proposals (one kernel call); False: filter_proposals (torchvision's steps, exact
        # also among equal logits). See FasterRCNN's rpn_fused_proposals.
        self.fused_proposals_enabled = fused_proposals

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # -- 1. anchors and predictions ------------------------------------------------------------

    def forward(self, images: ImageList, features: Dict[str, Tensor],
                targets: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        feats = list(features.values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_anchors_per_level = [int(o[0].numel()) for o in logits]
        objectness = _flatten_levels(logits, 1).reshape(-1, 1)
        pred_deltas = _flatten_levels(deltas, 4).reshape(-1, 4)

        # -- 2. proposals: best per level, decode, clip, drop tiny, NMS per level ---------------
        if self.fused_proposals_enabled:
            boxes = self.fused_proposals(objectness, pred_deltas, anchors, images.image_sizes,
                                         num_anchors_per_level)
        else:
            proposals = decode_boxes(pred_deltas.detach(), torch.cat(anchors)).view(len(anchors), -1, 4)
            boxes = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            # -- 3. training: label anchors, sample, two losses --------------------------------
            labels, matched_gt = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt, anchors)
            loss_obj, loss_box = self.compute_loss(objectness, pred_deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
        return boxes, losses

    def fused_proposals(self, objectness: Tensor, pred_deltas: Tensor, anchors: List[Tensor],
                        image_shapes: List[Tuple[int, int]], num_anchors_per_level: List[int]) -> List[Tensor]:
        """``filter_proposals`` in one fused ``detection_postprocess`` call for the whole batch.

        The scores given to the kernel are the objectness LOGITS, not their sigmoid: the sigmoid is
        monotone, so the per-level top-k, the NMS order and the final order are torchvision's (which
        takes the top-k on the logits), and logits the float32 sigmoid would round to the same
        probability (large ones, near 1.0) keep their order. ``score_thresh`` (torchvision's
        ``sigmoid(logit) >= score_thresh``, applied after its top-k) becomes a ``-inf`` score for the
        anchors that fail it: the best k of those that pass are exactly those of the best k overall
        that pass, since the threshold is monotone in the score.

        Among EQUAL logits (flat image regions give many) the kernel keeps the lower anchor index,
        where torchvision keeps whatever ``torch.topk`` and its NMS sort return: the proposals can
        then differ from torchvision's (not more or less correct: the order of ties is unspecified).
        """
        num_images = len(anchors)
        scores = objectness.detach().reshape(num_images, -1, 1)
        if self.score_thresh > 0.0:
            scores = scores.masked_fill(torch.sigmoid(scores) < self.score_thresh, float("-inf"))
        out = detection_postprocess(
            scores, pred_deltas.detach().reshape(num_images, -1, 4),
            torch.stack(anchors), image_shapes, num_anchors_per_level, float("-inf"), self.pre_nms_top_n(),
            self.nms_thresh, self.post_nms_top_n(), (1.0, 1.0, 1.0, 1.0), self.box_coder.bbox_xform_clip,
            self.min_size, True)
        return [d["boxes"] for d in out]

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: List[Tuple[int, int]],
                         num_anchors_per_level: List[int]) -> List[Tensor]:
        """Tensor[N, A_total, 4] decoded anchors, Tensor[N * A_total, 1] logits -> one Tensor[P_i, 4] per image.

        torchvision's steps, per image (``forward`` uses them unless ``fused_proposals_enabled``)."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=proposals.device)
                            for idx, n in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(objectness)
        top_idx = []
        offset = 0
        for ob in objectness.split(num_anchors_per_level, 1):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            top_idx.append(ob.topk(k, dim=1)[1] + offset)
            offset += ob.shape[1]
        top = torch.cat(top_idx, dim=1)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels, proposals = objectness[rows, top], levels[rows, top], proposals[rows, top]
        probs = torch.sigmoid(objectness)
        result: List[Tensor] = []
        for boxes, scores, lvl, shape in zip(proposals, probs, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            if self.score_thresh > 0:
                keep = torch.where(scores >= self.score_thresh)[0]
                boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            result.append(boxes[keep])
        return result

    def assign_targets_to_anchors(self, anchors: List[Tensor], targets: List[Dict[str, Tensor]]
                                  ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: labels Tensor[A] (1 positive, 0 negative, -1 ignored) and the matched gt boxes Tensor[A, 4]."""
        labels, matched = [], []
        for anchors_i, target in zip(anchors, targets):
            gt = target["boxes"]
            if gt.numel() == 0:
                matched.append(torch.zeros_like(anchors_i))
                labels.append(torch.zeros(anchors_i.shape[0], dtype=torch.float32, device=anchors_i.device))
                continue
            idx, _ = match(gt, anchors_i, self.fg_iou_thresh, self.bg_iou_thresh, allow_low_quality_matches=True)
            matched.append(gt[idx.clamp(min=0)])
            lab = (idx >= 0).to(torch.float32)
            lab[idx == BELOW_LOW_THRESHOLD] = 0.0
            lab[idx == BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
        return labels, matched

    def compute_loss(self, objectness: Tensor, pred_deltas: Tensor, labels: List[Tensor],
                     regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        pos_masks, neg_masks = self.sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        neg = torch.where(torch.cat(neg_masks))[0]
        sampled = torch.cat([pos, neg])
        objectness = objectness.flatten()
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        box_loss = smooth_l1_loss(pred_deltas[pos], targets_all[pos], beta=1 / 9, reduction="sum") / sampled.numel()
        obj_loss = objectness_loss(objectness[sampled], labels_all[sampled])
        return obj_loss, box_loss
