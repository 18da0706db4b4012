"""The mask branch of Mask R-CNN (He, Gkioxari, Dollar, Girshick 2017), torchvision's names.

Per RoI: RoIAlign to 14x14 (``MultiScaleRoIAlign``), a small FCN (``MaskRCNNHeads``: four
3x3 convolutions + ReLU, 256 channels), then ``MaskRCNNPredictor``: a 2x2 stride-2 transposed
convolution to 28x28 (pydetops' own ``conv_transpose2d`` kernel), ReLU, and a 1x1 convolution
giving one mask logit map per class. Classes do not compete: each class has its own sigmoid
mask and only the RoI's class (gt class in training, predicted class in inference) is used.

Training target: the matched ground-truth mask cropped to the RoI and resized to M x M with
RoIAlign (binary cross-entropy with logits, mean over the positives' pixels).
Inference: the sigmoid of the predicted class's map, Tensor[D, 1, 28, 28] per image; the pasting
into the image (``pydetops.ops.paste_masks``) happens in the transform's postprocess.
"""
from collections import OrderedDict
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import ConvTranspose2d, roi_align

__all__ = ["MaskRCNNHeads", "MaskRCNNPredictor", "project_masks_on_boxes", "maskrcnn_loss", "maskrcnn_inference"]


class MaskRCNNHeads(nn.Sequential):
    """The mask FCN: ``len(layers)`` blocks of (Conv2d 3x3, ``dilation``; ReLU), keys ``{i}.0.weight``
    / ``{i}.0.bias`` as torchvision's (``Conv2dNormActivation`` without norm).
    Tensor[R, in_channels, S, S] -> Tensor[R, layers[-1], S, S]."""

    def __init__(self, in_channels: int, layers=(256, 256, 256, 256), dilation: int = 1):
        blocks = []
        c = in_channels
        for width in layers:
            conv = nn.Conv2d(c, width, 3, stride=1, padding=dilation, dilation=dilation)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            c = width
        super().__init__(*blocks)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Old torchvision checkpoints (format version < 2) name the convs mask_fcn1..mask_fcn4.
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            for i in range(len(self)):
                for kind in ("weight", "bias"):
                    old = f"{prefix}mask_fcn{i + 1}.{kind}"
                    if old in state_dict:
                        state_dict[f"{prefix}{i}.0.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    _version = 2


class MaskRCNNPredictor(nn.Sequential):
    """``conv5_mask`` (ConvTranspose2d 2x2 stride 2: S -> 2S), ReLU, ``mask_fcn_logits`` (1x1 conv to
    ``num_classes`` maps). Tensor[R, in_channels, S, S] -> Tensor[R, num_classes, 2S, 2S] logits."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([
            ("conv5_mask", ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
        ]))
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Crop each RoI's matched gt mask to the RoI and resize it to ``size`` x ``size`` (RoIAlign,
    scale 1, adaptive sampling, not aligned: torchvision's targets).

    gt_masks Tensor[G, H, W] (any dtype, 0/1), boxes Tensor[R, 4] (x1, y1, x2, y2, pixels of the
    same image), matched_idxs Tensor[R] int64 in [0, G) -> Tensor[R, size, size] float in [0, 1].
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def maskrcnn_loss(mask_logits: Tensor, proposals: List[Tensor], gt_masks: List[Tensor], gt_labels: List[Tensor],
                  matched_idxs: List[Tensor]) -> Tensor:
    """Binary cross-entropy (with logits, mean) between each positive RoI's map of its gt class and
    its projected gt mask.

    mask_logits Tensor[R, num_classes, M, M] for the positives of all images in order; per image
    proposals Tensor[R_i, 4], gt_masks Tensor[G_i, H, W], gt_labels Tensor[G_i], matched_idxs
    Tensor[R_i]. No positive RoI: a zero that keeps the graph (``mask_logits.sum() * 0``).
    """
    size = mask_logits.shape[-1]
    labels, targets = [], []
    for masks, props, lab, idx in zip(gt_masks, proposals, gt_labels, matched_idxs):
        if idx.numel() == 0:
            continue
        labels.append(lab[idx])
        targets.append(project_masks_on_boxes(masks, props, idx, size))
    if not targets:
        return mask_logits.sum() * 0
    labels_all = torch.cat(labels)
    targets_all = torch.cat(targets)
    rows = torch.arange(labels_all.shape[0], device=labels_all.device)
    return F.binary_cross_entropy_with_logits(mask_logits[rows, labels_all], targets_all.to(mask_logits.dtype))


def maskrcnn_inference(mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
    """The sigmoid of each detection's predicted-class map: Tensor[R, C, M, M] logits and the labels
    per image (Tensor[D_i], sum D_i = R) -> per image Tensor[D_i, 1, M, M] in [0, 1]."""
    counts = [int(lab.shape[0]) for lab in labels]
    labels_all = torch.cat(labels) if labels else mask_logits.new_zeros((0,), dtype=torch.int64)
    rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    probs = mask_logits[rows, labels_all].sigmoid()[:, None]
    return list(probs.split(counts, dim=0))
