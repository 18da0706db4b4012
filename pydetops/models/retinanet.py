"""RetinaNet (Lin, Goyal, Girshick, He, Dollár 2017, "Focal Loss for Dense Object Detection"): a
one-stage detector, a feature pyramid with two small fully convolutional subnets, trained with the
focal loss over every anchor.

Read top-down, as the paper:

1. ``transform``   normalise, resize (short side ``min_size``, long side <= ``max_size``), pad to /32;
2. ``backbone``    ResNet + FPN P3..P7: P3..P5 from C3..C5 (top-down + lateral), P6 = conv3x3/2 on P5
                   (torchvision's v1; on C5 in the paper: ``LastLevelP6P7(2048, 256)``), P7 =
                   conv3x3/2(ReLU(P6)); 256 channels each;
3. ``anchor_generator``  A = 9 anchors per cell and level: sizes 2^0, 2^(1/3), 2^(2/3) x (32 .. 512 on
                   P3 .. P7), ratios 1:2, 1:1, 2:1;
4. ``head``        two subnets shared by all levels: classification (4 x [conv3x3 + ReLU], then a
                   conv3x3 to K x A logits, bias -log((1 - pi) / pi) with prior pi = 0.01, so that
                   every anchor starts as background) and box regression (4 x [conv3x3 + ReLU], then
                   4 x A offsets: the R-CNN box coding of ``pydetops.ops.BoxCoder``);
5. training        each anchor is matched (``assign.match``) to the ground truth with its highest IoU:
                   >= 0.5 foreground, < 0.4 background, in between ignored; every ground truth also keeps
                   its best anchor(s) (low-quality matches). Classification: the sigmoid focal loss
                   (alpha 0.25, gamma 2, the fused op) over all non-ignored anchors x K classes, divided
                   by the number of foreground anchors; box regression over the foreground anchors:
                   L1 (torchvision's default), smooth-L1 on the coded offsets, or GIoU on the decoded
                   boxes, divided by the same number; both averaged over the images;
6. inference       one fused ``detection_postprocess`` call for the batch: per level the (anchor,
                   class) pairs with probability > 0.05, the best 1000 of them, decoded, clipped,
                   per-class NMS at IoU 0.5, the best 300 per image;
7. ``transform.postprocess``  boxes back to the input images' pixels.

Model contract (``MODELS.md``): ``model.train(); model(images, targets)`` -> dict of the two losses
``classification`` and ``bbox_regression`` (torchvision's names); ``model.eval(); model(images)`` -> one
dict ``boxes`` Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels`` Tensor[D] int64, ``scores``
Tensor[D] (sigmoid probabilities) per image. ``images``: list of Tensor[3, H, W] in [0, 1].

``retinanet_resnet50_fpn`` has torchvision's signature, defaults and ``state_dict`` keys (its weights
give the same detections); ``retinanet`` builds small models for training from scratch on a CPU.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import AnchorGenerator, BoxCoder, detection_postprocess
from .assign import BETWEEN_THRESHOLDS, match
from .backbones import (BackboneWithFPN, ConvNormAct, FrozenBatchNorm2d, LastLevelP6P7, TinyCNN,
                        norm_layer_by_name, resnet_fpn_backbone)
from .fast_paths import FastPathsMixin
from .faster_rcnn import _load_backbone, _load_weights, _trainable_layers, validate_targets
from .losses import focal_loss, giou_loss, smooth_l1_loss
from .transform import DetectionTransform

__all__ = ["RetinaNet", "RetinaNetHead", "RetinaNetClassificationHead", "RetinaNetRegressionHead",
           "retinanet_anchor_generator", "retinanet_resnet50_fpn", "retinanet"]

BOX_LOSSES = ("l1", "smooth_l1", "giou")


# ---------------------------------------------------------------------------
# 3. anchors
# ---------------------------------------------------------------------------


def retinanet_anchor_generator(base_sizes=(32, 64, 128, 256, 512),
                               aspect_ratios=(0.5, 1.0, 2.0)) -> AnchorGenerator:
    """The paper's anchors: on level i, sizes ``s, int(s * 2^(1/3)), int(s * 2^(2/3))`` for
    ``s = base_sizes[i]`` times ``aspect_ratios`` (9 per cell), torchvision's ``_default_anchorgen``."""
    sizes = tuple((s, int(s * 2 ** (1.0 / 3)), int(s * 2 ** (2.0 / 3))) for s in base_sizes)
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


# ---------------------------------------------------------------------------
# 4. the two subnets
# ---------------------------------------------------------------------------


def _four_convs(channels: int, norm_layer) -> nn.Sequential:
    # conv.{i}.0 (.1 the norm when there is one), torchvision's Conv2dNormActivation layout
    return nn.Sequential(*[ConvNormAct(channels, channels, 3, norm_layer=norm_layer) for _ in range(4)])


def _rename_v1_keys(state_dict, prefix: str) -> None:
    # Checkpoints written before torchvision 0.13 (e.g. its published COCO weights) name the four convs
    # conv.0, conv.2, conv.4, conv.6 (a flat Sequential with the ReLUs between).
    for i in range(4):
        for kind in ("weight", "bias"):
            old = f"{prefix}conv.{2 * i}.{kind}"
            if old in state_dict and f"{prefix}conv.{i}.0.{kind}" not in state_dict:
                state_dict[f"{prefix}conv.{i}.0.{kind}"] = state_dict.pop(old)


class RetinaNetClassificationHead(nn.Module):
    """4 x [conv3x3 + (norm) + ReLU] and ``cls_logits``: conv3x3 to ``num_anchors * num_classes``.

    Weights N(0, 0.01), biases 0 except ``cls_logits``' bias ``-log((1 - prior) / prior)``.
    ``forward(features: List[Tensor[N, C, H_l, W_l]])`` -> List[Tensor[N, A * K, H_l, W_l]] (channel
    ``a * K + k``: anchor a, class k).
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 norm_layer=None):
        super().__init__()
        self.conv = _four_convs(in_channels, norm_layer)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        self.num_classes = num_classes
        self.num_anchors = num_anchors

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_v1_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        return [self.cls_logits(self.conv(f)) for f in features]


class RetinaNetRegressionHead(nn.Module):
    """4 x [conv3x3 + (norm) + ReLU] and ``bbox_reg``: conv3x3 to ``num_anchors * 4`` box offsets.

    ``forward(features)`` -> List[Tensor[N, A * 4, H_l, W_l]] (channel ``a * 4 + j``: anchor a, offset
    j of (dx, dy, dw, dh)).
    """

    def __init__(self, in_channels: int, num_anchors: int, norm_layer=None):
        super().__init__()
        self.conv = _four_convs(in_channels, norm_layer)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_v1_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        return [self.bbox_reg(self.conv(f)) for f in features]


class RetinaNetHead(nn.Module):
    """The classification and box subnets: ``forward(features)`` -> (class logit maps, offset maps)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, norm_layer=None,
                 prior_probability: float = 0.01):
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors, num_classes,
                                                               prior_probability, norm_layer)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, norm_layer)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        return self.classification_head(features), self.regression_head(features)


def concat_levels(maps: List[Tensor], values_per_anchor: int) -> Tensor:
    """Per-level maps Tensor[N, A * V, H_l, W_l] -> Tensor[N, sum_l H_l W_l A, V] ordered level, cell
    (row-major), anchor: the anchors' order. One copy (none per level); a channels-last map is read
    in place (its memory is already cell-major)."""
    n = maps[0].shape[0]
    sizes = [int(m.shape[1]) // values_per_anchor * int(m.shape[2]) * int(m.shape[3]) for m in maps]
    out = maps[0].new_empty((n, sum(sizes), values_per_anchor))
    start = 0
    for m, size in zip(maps, sizes):
        _, c, h, w = m.shape
        a = c // values_per_anchor
        out[:, start:start + size].view(n, h, w, a, values_per_anchor).copy_(
            m.view(n, a, values_per_anchor, h, w).permute(0, 3, 4, 1, 2))
        start += size
    return out


# ---------------------------------------------------------------------------
# 6. the score threshold on logits
# ---------------------------------------------------------------------------

_THRESHOLDS: Dict[Tuple[float, torch.dtype, str], float] = {}


def logit_threshold(score_thresh: float, dtype: torch.dtype, device: torch.device) -> float:
    """The value t of ``dtype`` with ``x > t`` exactly where ``torch.sigmoid(x) > score_thresh`` (as
    torchvision compares, in ``dtype`` on ``device``): so the post-processing can select on the logits
    and take the sigmoid of the few it keeps only. -inf / +inf where every / no logit passes."""
    key = (float(score_thresh), dtype, str(device))
    if key in _THRESHOLDS:
        return _THRESHOLDS[key]

    def passes(x: float) -> bool:
        # 64 copies: the vectorised sigmoid kernel, the one the big tensor takes
        v = torch.full((64,), x, dtype=dtype, device=device)
        return bool((torch.sigmoid(v) > score_thresh)[0])

    big = float(torch.finfo(dtype).max)
    if passes(-big):
        t = float("-inf")
    elif not passes(big):
        t = float("inf")
    else:
        lo, hi = -big, big  # lo fails, hi passes (sigmoid is monotone)
        for _ in range(2100):
            mid = lo / 2 + hi / 2
            if mid in (lo, hi):
                break
            lo, hi = (lo, mid) if passes(mid) else (mid, hi)
        # the largest dtype value that fails
        t_ = torch.tensor(lo, dtype=torch.float64).to(dtype)
        up = torch.tensor(float("inf"), dtype=dtype)
        down = torch.tensor(float("-inf"), dtype=dtype)
        while passes(float(t_)):
            t_ = torch.nextafter(t_, down)
        while not passes(float(torch.nextafter(t_, up))):
            t_ = torch.nextafter(t_, up)
        t = float(t_)
    if len(_THRESHOLDS) > 64:
        _THRESHOLDS.clear()
    _THRESHOLDS[key] = t
    return t


# ---------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------


class RetinaNet(FastPathsMixin, nn.Module):
    """RetinaNet from its parts, torchvision's ``RetinaNet`` keyword arguments and defaults.

    Args:
        backbone: a module with ``out_channels`` returning a Tensor or an ordered dict of maps (P3..P7).
        num_classes: classes including background (column 0 of the logits is never a training target).
        min_size, max_size, image_mean, image_std, size_divisible: the transform.
        anchor_generator: default :func:`retinanet_anchor_generator`.
        head: default ``RetinaNetHead(backbone.out_channels, A, num_classes)``.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: inference (probability > 0.05,
            per-class NMS at 0.5, 300 per image, 1000 candidates per level).
        fg_iou_thresh, bg_iou_thresh: matching (>= 0.5 foreground, < 0.4 background, between ignored).
        box_loss: "l1" (torchvision's), "smooth_l1" (beta ``smooth_l1_beta``, on the coded offsets) or
            "giou" (1 - GIoU of the decoded boxes).
        focal_alpha, focal_gamma: the focal loss.
    """

    CHANNELS_LAST_MODULES = ("backbone", "head")  # use_channels_last / optimize_for_inference: fast_paths.py

    def __init__(self, backbone: nn.Module, num_classes: int, min_size=800, max_size: int = 1333,
                 image_mean: Optional[List[float]] = None, image_std: Optional[List[float]] = None,
                 anchor_generator: Optional[AnchorGenerator] = None, head: Optional[nn.Module] = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 300,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.4, topk_candidates: int = 1000,
                 box_loss: str = "l1", smooth_l1_beta: float = 1.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, size_divisible: int = 32):
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone: must have an attribute out_channels (the channels of its feature maps)")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got "
                             f"{num_classes!r}")
        if anchor_generator is not None and not isinstance(anchor_generator, AnchorGenerator):
            raise TypeError(f"anchor_generator: expected an AnchorGenerator, got {type(anchor_generator).__name__}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss: must be one of {BOX_LOSSES}, got {box_loss!r}")
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh:
            raise ValueError(f"bg_iou_thresh ({bg_iou_thresh}) must be in [0, fg_iou_thresh ({fg_iou_thresh})]")
        if detections_per_img < 0:
            raise ValueError(f"detections_per_img: must be >= 0, got {detections_per_img}")
        self.num_classes = num_classes
        # 1. transform
        self.transform = DetectionTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                            image_std or [0.229, 0.224, 0.225], size_divisible)
        # 2. backbone + FPN
        self.backbone = backbone
        # 3. anchors
        self.anchor_generator = anchor_generator or retinanet_anchor_generator()
        # 4. subnets
        self.head = head or RetinaNetHead(backbone.out_channels,
                                          self.anchor_generator.num_anchors_per_location()[0], num_classes)
        # 5. training
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        # 6. inference
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3 or img.shape[1] < 1 \
                    or img.shape[2] < 1:
                raise ValueError(f"images[{i}]: expected Tensor[3, H, W] with H, W >= 1, got "
                                 f"{list(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        # 1. normalise, resize, batch
        image_list, targets = self.transform(images, targets)
        # 2. the pyramid
        features = self.backbone(self.to_memory_format(image_list.tensors))
        features = [features] if isinstance(features, Tensor) else list(features.values())
        # 3. anchors (the same for every image of the padded batch)
        anchors = self.anchor_generator(image_list, features)
        # 4. class logits and box offsets of every anchor
        cls_maps, box_maps = self.head(features)
        cls_logits = concat_levels(cls_maps, self.num_classes)   # [N, sum H W A, K]
        box_codes = concat_levels(box_maps, 4)                   # [N, sum H W A, 4]
        if self.training:
            # 5. matching and the two losses
            return self.compute_loss(targets, cls_logits, box_codes, anchors)
        # 6. detections
        level_sizes = [int(m.shape[2]) * int(m.shape[3]) * (int(m.shape[1]) // 4) for m in box_maps]
        detections = self.postprocess_detections(cls_logits, box_codes, anchors[0], image_list.image_sizes,
                                                 level_sizes)
        # 7. back to the input images' pixels
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    # -- 5. training -------------------------------------------------------------------------------

    def match_anchors(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Tensor[A] int64 per anchor: the matched ground truth index, -1 background (IoU <
        ``bg_iou_thresh``, or no ground truth), -2 ignored (between the thresholds)."""
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        return match(gt_boxes, anchors, self.fg_iou_thresh, self.bg_iou_thresh, allow_low_quality_matches=True)[0]

    def box_regression_loss(self, codes: Tensor, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Summed box loss of the foreground anchors: Tensor[F, 4] predicted offsets, their anchors and
        matched ground-truth boxes (x1, y1, x2, y2)."""
        if self.box_loss == "giou":
            return giou_loss(self.box_coder.decode_single(codes, anchors), gt_boxes, reduction="sum")
        target = self.box_coder.encode_single(gt_boxes, anchors)
        if self.box_loss == "l1":
            return F.l1_loss(codes, target, reduction="sum")
        return smooth_l1_loss(codes, target, beta=self.smooth_l1_beta, reduction="sum")

    def compute_loss(self, targets: List[Dict[str, Tensor]], cls_logits: Tensor, box_codes: Tensor,
                     anchors: List[Tensor]) -> Dict[str, Tensor]:
        """Per image: match, focal loss over the non-ignored anchors x classes and the box loss over the
        foreground anchors, each divided by max(1, foreground anchors); then the mean over images."""
        cls_losses, box_losses = [], []
        for logits, codes, anchors_i, target in zip(cls_logits, box_codes, anchors, targets):
            matched = self.match_anchors(anchors_i, target["boxes"])
            fg = torch.where(matched >= 0)[0]
            num_fg = int(fg.numel())
            gt_index = matched[fg]
            one_hot = torch.zeros_like(logits)
            one_hot[fg, target["labels"][gt_index]] = 1.0
            valid = matched != BETWEEN_THRESHOLDS
            if not bool(valid.all()):
                logits, one_hot = logits[valid], one_hot[valid]
            cls_losses.append(focal_loss(logits, one_hot, num_fg, self.focal_alpha, self.focal_gamma))
            box_losses.append(self.box_regression_loss(codes[fg], anchors_i[fg], target["boxes"][gt_index])
                              / max(1, num_fg))
        n = len(targets)
        return {"classification": sum(cls_losses) / n, "bbox_regression": sum(box_losses) / n}

    # -- 6. inference ------------------------------------------------------------------------------

    def postprocess_detections(self, cls_logits: Tensor, box_codes: Tensor, anchors: Tensor,
                               image_sizes: List[Tuple[int, int]], level_sizes: List[int]) -> List[Dict[str, Tensor]]:
        """Tensor[N, A, K] logits, Tensor[N, A, 4] offsets, Tensor[A, 4] anchors -> one dict per image
        (boxes in the resized image's pixels), in one fused ``detection_postprocess`` call.

        The kernel selects on the LOGITS, against the logit that the float sigmoid maps above
        ``score_thresh`` (:func:`logit_threshold`): the same (anchor, class) pairs pass as torchvision's
        ``sigmoid(logit) > score_thresh``, in the same order (the sigmoid is monotone), without a sigmoid
        over all N x A x K logits; only the kept ones are turned into probabilities. Where two logits
        round to one float probability torchvision's order among them is unspecified and ours keeps
        the larger logit first."""
        thresh = logit_threshold(self.score_thresh, cls_logits.dtype, cls_logits.device)
        w = self.box_coder.weights
        out = detection_postprocess(
            cls_logits.detach(), box_codes.detach(), anchors, image_sizes, level_sizes, thresh,
            self.topk_candidates, self.nms_thresh, self.detections_per_img,
            (float(w[0]), float(w[1]), float(w[2]), float(w[3])), self.box_coder.bbox_xform_clip, 0.0, False)
        for det in out:
            det["scores"] = torch.sigmoid(det["scores"])
        return out

    # -- inference speed-ups -------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------


def retinanet_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                           weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                           **kwargs) -> RetinaNet:
    """RetinaNet with a ResNet-50-FPN backbone (P3..P7), torchvision's constructor and ``state_dict`` keys.

    Args:
        weights: None or a local ``state_dict`` file of this model (torchvision's checkpoints load,
            their pre-0.13 subnet key names included); nothing is downloaded.
        progress: unused (nothing is downloaded), kept for torchvision's signature.
        num_classes: including background; default 91 (COCO).
        weights_backbone: None or a local ResNet-50 classification checkpoint (torchvision's keys).
        trainable_backbone_layers: 0..5 trainable ResNet stages from the top; default 3 when
            ``weights`` or ``weights_backbone`` is given (then FrozenBatchNorm2d), else 5 (BatchNorm2d).
        **kwargs: any :class:`RetinaNet` keyword (``min_size``, ``score_thresh``, ``box_loss``, ...).

    torchvision's published COCO weights were trained with FrozenBatchNorm2d eps 0 (torchvision sets
    it when it loads them): for exactly its detections with that file set every ``eps`` to 0.0.
    """
    if weights is not None:
        weights_backbone = None
    is_trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(50, norm_layer, trainable, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    _load_backbone(backbone, weights_backbone)
    model = RetinaNet(backbone, 91 if num_classes is None else num_classes, **kwargs)
    _load_weights(model, weights)
    return model


class _FromStride8(nn.Module):
    """TinyCNN's maps of strides 8, 16, 32 (its "1".."3") as "0".."2", for P3..P5."""

    def __init__(self, trunk: TinyCNN):
        super().__init__()
        self.trunk = trunk

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        feats = list(self.trunk(x).values())[1:]
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


def retinanet(num_classes: int, backbone: str = "tiny", image_size: int = 128, norm: str = "group",
              head_norm: Optional[str] = "group", fpn_channels: int = 64, box_loss: str = "giou",
              anchor_sizes: Tuple[int, ...] = (16, 32, 64, 128, 256), weights=None, **kwargs) -> RetinaNet:
    """A small RetinaNet for training from scratch on a CPU.

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        backbone: "tiny" (a 10-layer CNN; default), "resnet18" or "resnet50"; P3..P5 from its strides
            8, 16, 32 and P6, P7 from C5 (the paper).
        image_size: images resized to this short side (long side <= 1333 / 800 of it).
        norm: the backbone's normalisation, "group" (default), "batch" or "frozen".
        head_norm: the subnets' normalisation: "group" (GroupNorm before each ReLU, as torchvision's v2
            head; no batch statistics) or None (the paper's plain conv + ReLU).
        fpn_channels: FPN and subnet width.
        box_loss: "giou" (default here), "l1" or "smooth_l1".
        anchor_sizes: the base anchor size of P3..P7 (x 2^0, 2^(1/3), 2^(2/3), x 3 ratios): twice the
            stride by default (the paper: four times, 32..512, for 800-pixel images), so that objects
            of 16-60 pixels in small images meet anchors on the dense P3 / P4 grids.
        weights: None or a local ``state_dict`` file of this same configuration.
        **kwargs: any :class:`RetinaNet` keyword (``score_thresh``, ``detections_per_img``, ...).

    With the defaults, HELPERS' 2-minute CLI run on the synthetic scenes reaches val AP50 ~0.96
    (benchmarks/NOTES.md, "RetinaNet").
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size: must be an int >= 32, got {image_size!r}")
    norm_layer = norm_layer_by_name(norm)
    head_norm_layer = None if head_norm is None else norm_layer_by_name(head_norm)
    if backbone in ("resnet18", "resnet50"):
        depth = 18 if backbone == "resnet18" else 50
        c5 = 512 if depth == 18 else 2048
        body = resnet_fpn_backbone(depth, norm_layer, trainable_layers=5, returned_layers=[2, 3, 4],
                                   out_channels=fpn_channels, extra_blocks=LastLevelP6P7(c5, fpn_channels))
    elif backbone == "tiny":
        trunk = TinyCNN(norm_layer=norm_layer)
        body = BackboneWithFPN(_FromStride8(trunk), trunk.channels[1:], fpn_channels,
                               LastLevelP6P7(trunk.channels[-1], fpn_channels))
    else:
        raise ValueError(f"backbone: must be 'resnet18', 'resnet50' or 'tiny', got {backbone!r}")
    anchors = retinanet_anchor_generator(anchor_sizes)
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, head_norm_layer)
    defaults = dict(min_size=image_size, max_size=image_size * 1333 // 800, box_loss=box_loss,
                    detections_per_img=100)
    defaults.update(kwargs)
    model = RetinaNet(body, num_classes, anchor_generator=anchors, head=head, **defaults)
    _load_weights(model, weights)
    return model

