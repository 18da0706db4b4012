"""SSD: Single Shot MultiBox Detector (Liu, Anguelov, Erhan, Szegedy, Reed, Fu, Berg 2016).

One network, one pass: class scores and box offsets for a fixed set of default boxes on
several feature maps (early, fine maps for small objects; late, coarse maps for large ones).

Read top-down, as the paper:

1. ``transform``        normalise and resize every image to one fixed size (300 x 300);
2. ``backbone``         VGG-16 up to conv5_3 (pool5 3x3/1, fc6 as a dilated 3x3 conv, fc7 as a 1x1
                        conv), conv4_3 L2-normalised with a learned per-channel scale (init 20),
                        and extra layers that halve the map: six maps 38, 19, 10, 5, 3, 1 (Fig. 2);
3. ``anchor_generator`` default boxes of scales s_k and aspect ratios {1, 2, 1/2, (3, 1/3)} plus
                        a box of scale sqrt(s_k s_{k+1}) at every cell of every map (Sec. 2.2);
4. ``head``             a 3x3 conv per map predicting, for each default box, C class scores and
                        4 offsets (Sec. 2.1);
5. training             matching: a default box is positive for the ground truth of highest IoU
                        when that IoU is >= 0.5, and every ground truth also takes its best box;
                        offsets encoded as R-CNN's (weights 10, 10, 5, 5); hard negative mining:
                        the negatives of highest classification loss, 3 per positive; loss =
                        (softmax cross-entropy + smooth-L1) / number of positives (Sec. 2.2);
6. inference            softmax; per class: scores > 0.01, the 400 best, decode, clip, NMS 0.45;
                        the 200 best over all classes (Sec. 3), in one fused kernel call;
7. ``transform.postprocess``  boxes back to the input images' pixels.

Model contract (MODELS.md): ``model.train(); model(images, targets)`` -> dict ``bbox_regression``,
``classification`` (torchvision's names); ``model.eval(); model(images)`` -> one dict ``boxes``
Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels`` Tensor[D] int64, ``scores`` Tensor[D] per
image. ``images``: list of Tensor[3, H, W] in [0, 1], any sizes.

``ssd300_vgg16`` has torchvision's signature, defaults and ``state_dict`` keys (a torchvision
checkpoint loads with ``strict=True`` and gives the same detections); ``ssd`` builds small models
for training from scratch on a CPU (``backbone="tiny"``, 128 x 128 input).
"""
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import BoxCoder, DefaultBoxGenerator, detection_postprocess_padded
from .assign import match_with_best_per_gt
from .backbones import ConvNormAct, TinyCNN, norm_layer_by_name, vgg16_features
from .fast_paths import FastPathsMixin
from .faster_rcnn import _load_weights, _trainable_layers, validate_targets
from .losses import smooth_l1_loss
from .transform import DetectionTransform

__all__ = ["SSD", "SSDHead", "SSDClassificationHead", "SSDRegressionHead", "SSDVGG16Backbone", "SSDTinyBackbone",
           "hard_negative_mining", "ssd300_vgg16", "ssd"]


# ---------------------------------------------------------------------------
# 2. backbones
# ---------------------------------------------------------------------------


def _xavier_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SSDVGG16Backbone(nn.Module):
    """SSD300's feature extractor on VGG-16 (torchvision's ``SSDFeatureExtractorVGG`` keys).

    ``features``: VGG-16's trunk (:func:`pydetops.models.backbones.vgg16_features`); its third
    pool gets ``ceil_mode=True`` (38 x 38 conv4_3 at 300 x 300, as the paper).

    Parameters: ``scale_weight`` Tensor[512] (conv4_3's L2-norm scale, init 20); ``features``
    (conv1_1 .. conv4_3); ``extra[0]`` (pool4, conv5_1 .. conv5_3, then ``extra[0][7]`` = pool5
    3x3/1, fc6 3x3 dilation 6, fc7 1x1); ``extra[1..4]`` (1x1 then 3x3 convs: conv8_2 .. conv11_2).

    ``forward(Tensor[N, 3, H, W])`` -> OrderedDict "0".."5" of Tensor[N, C_k, H_k, W_k] with
    ``out_channels`` = [512, 1024, 512, 256, 256, 256] (38, 19, 10, 5, 3, 1 at 300 x 300).
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5:
            raise ValueError(f"features: expected VGG-16's trunk with 5 max pools, got {len(pools)}")
        _, _, pool3, pool4, _ = pools
        features[pool3].ceil_mode = True
        self.scale_weight = nn.Parameter(torch.full((512,), 20.0))
        self.features = nn.Sequential(*features[:pool4])  # up to conv4_3 (+ ReLU)
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),                 # pool5
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),       # fc6 (atrous)
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),                             # fc7
            nn.ReLU(inplace=True),
        )
        extra = [
            self._extra_block(1024, 256, 512, padding=1, stride=2),  # conv8_2: 10 x 10
            self._extra_block(512, 128, 256, padding=1, stride=2),   # conv9_2: 5 x 5
            self._extra_block(256, 128, 256, padding=0, stride=1),   # conv10_2: 3 x 3
            self._extra_block(256, 128, 256, padding=0, stride=1),   # conv11_2: 1 x 1
        ]
        _xavier_init(fc)
        for block in extra:
            _xavier_init(block)
        self.extra = nn.ModuleList([nn.Sequential(*features[pool4:-1], fc)] + extra)  # conv5_x without pool5
        self.out_channels = [512, 1024, 512, 256, 256, 256]

    @staticmethod
    def _extra_block(cin: int, mid: int, cout: int, padding: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, mid, kernel_size=1), nn.ReLU(inplace=True),
                             nn.Conv2d(mid, cout, kernel_size=3, padding=padding, stride=stride),
                             nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.features(x)
        # conv4_3's activations are much larger than the later maps': L2-normalise each
        # position's channel vector and rescale by a learned per-channel factor (Sec. 3.1, ParseNet)
        out = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(out))


def _vgg_map_sizes(size: int) -> List[int]:
    """The six map sizes of :class:`SSDVGG16Backbone` for a size x size input."""
    s = size // 2 // 2
    s = -(-s // 2)                 # pool3, ceil mode
    maps = [s]                     # conv4_3
    s = s // 2                     # pool4 (pool5 3x3/1 keeps the size)
    maps.append(s)                 # fc7
    s = (s - 1) // 2 + 1
    maps.append(s)                 # conv8_2
    s = (s - 1) // 2 + 1
    maps.append(s)                 # conv9_2
    maps.append(s - 2)             # conv10_2
    maps.append(s - 4)             # conv11_2
    return maps


class SSDTinyBackbone(nn.Module):
    """A small SSD backbone for training from scratch on a CPU.

    :class:`~pydetops.models.backbones.TinyCNN`'s stride 8, 16 and 32 maps, then ``num_extra``
    extra blocks (1x1 conv to half width, 3x3 conv of stride 2), each halving the map (a 1 x 1 map
    stays 1 x 1); GroupNorm after every conv. At 128 x 128: maps 16, 8, 4, 2, 1.

    ``forward(Tensor[N, 3, H, W])`` -> OrderedDict "0".."(2 + num_extra)" of Tensor[N, C_k, H_k, W_k]
    with ``out_channels`` channels.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128, 128), num_extra: int = 2,
                 extra_channels: int = 128, norm: str = "group"):
        super().__init__()
        norm_layer = norm_layer_by_name(norm)
        self.body = TinyCNN(widths, norm_layer=norm_layer)
        cin = self.body.channels[-1]
        blocks = []
        for _ in range(num_extra):
            blocks.append(nn.Sequential(ConvNormAct(cin, extra_channels // 2, 1, norm_layer=norm_layer),
                                        ConvNormAct(extra_channels // 2, extra_channels, 3, 2, norm_layer=norm_layer)))
            cin = extra_channels
        self.extra = nn.ModuleList(blocks)
        self.out_channels = list(self.body.channels[1:]) + [extra_channels] * num_extra

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        trunk = self.body(x)
        maps = [trunk["1"], trunk["2"], trunk["3"]]
        y = maps[-1]
        for block in self.extra:
            y = block(y)
            maps.append(y)
        return OrderedDict((str(i), v) for i, v in enumerate(maps))


# ---------------------------------------------------------------------------
# 4. head
# ---------------------------------------------------------------------------


class _SSDScoringHead(nn.Module):
    """One 3x3 conv per feature map; ``forward(List[Tensor[N, C_k, H_k, W_k]])`` ->
    Tensor[N, sum_k H_k W_k A_k, num_columns], cell by cell (row-major), default box by default box
    (the order of :class:`~pydetops.ops.DefaultBoxGenerator`)."""

    def __init__(self, module_list: nn.ModuleList, num_columns: int):
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, x: List[Tensor]) -> Tensor:
        if len(x) != len(self.module_list):
            raise ValueError(f"features: got {len(x)} feature maps for a head of {len(self.module_list)} convs")
        out = []
        for features, conv in zip(x, self.module_list):
            y = conv(features)
            n, _, h, w = y.shape
            # (N, A * K, H, W) -> (N, H, W, A, K) -> (N, H W A, K)
            out.append(y.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_columns))
        return torch.cat(out, dim=1)


class SSDClassificationHead(_SSDScoringHead):
    """``num_classes`` scores (background = column 0) per default box: Tensor[N, A_total, num_classes]."""

    def __init__(self, in_channels: List[int], num_anchors: List[int], num_classes: int):
        convs = nn.ModuleList(nn.Conv2d(c, num_classes * a, kernel_size=3, padding=1)
                              for c, a in zip(in_channels, num_anchors))
        _xavier_init(convs)
        super().__init__(convs, num_classes)


class SSDRegressionHead(_SSDScoringHead):
    """4 offsets (dx, dy, dw, dh) per default box: Tensor[N, A_total, 4]."""

    def __init__(self, in_channels: List[int], num_anchors: List[int]):
        convs = nn.ModuleList(nn.Conv2d(c, 4 * a, kernel_size=3, padding=1) for c, a in zip(in_channels, num_anchors))
        _xavier_init(convs)
        super().__init__(convs, 4)


class SSDHead(nn.Module):
    """``forward(features)`` -> {"bbox_regression": Tensor[N, A_total, 4], "cls_logits": Tensor[N, A_total, C]}."""

    def __init__(self, in_channels: List[int], num_anchors: List[int], num_classes: int):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"in_channels ({len(in_channels)} maps) and num_anchors ({len(num_anchors)}) differ")
        self.classification_head = SSDClassificationHead(in_channels, num_anchors, num_classes)
        self.regression_head = SSDRegressionHead(in_channels, num_anchors)

    def forward(self, x: List[Tensor]) -> Dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


# ---------------------------------------------------------------------------
# 5. training: hard negative mining
# ---------------------------------------------------------------------------


def hard_negative_mining(cls_loss: Tensor, positive: Tensor, neg_to_pos_ratio: float) -> Tensor:
    """The negatives SSD trains on: per image, the ``neg_to_pos_ratio * P`` default boxes of highest
    classification loss among the non-positive ones (P: the image's positives), so an image without
    positives contributes no negatives (torchvision's rule).

    Args:
        cls_loss: Tensor[B, A], the per-default-box classification loss.
        positive: Tensor[B, A] bool, the matched default boxes.
        neg_to_pos_ratio: negatives per positive (3 in SSD).

    Returns:
        Tensor[B, A] bool. Among equal losses at the cut, which boxes are taken is unspecified
        (the sum of their losses is not).
    """
    if cls_loss.shape != positive.shape or cls_loss.dim() != 2:
        raise ValueError(f"cls_loss and positive must be Tensor[B, A] of one shape, got {list(cls_loss.shape)} "
                         f"and {list(positive.shape)}")
    b, a = cls_loss.shape
    num_neg = neg_to_pos_ratio * positive.sum(dim=1, keepdim=True).to(cls_loss.dtype)   # [B, 1]
    negative = torch.zeros_like(positive)
    if b == 0 or a == 0:
        return negative
    k = min(a, int(math.ceil(float(num_neg.max()))))
    if k == 0:
        return negative
    candidates = cls_loss.detach().masked_fill(positive, -math.inf)
    idx = candidates.topk(k, dim=1).indices                                              # by decreasing loss
    rank = torch.arange(k, device=cls_loss.device)[None, :]
    negative.scatter_(1, idx, rank < num_neg)
    return negative & ~positive


# ---------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------


class SSD(FastPathsMixin, nn.Module):
    """SSD from its parts (torchvision's ``SSD`` arguments and defaults).

    Args:
        backbone: returns a Tensor or an ordered dict of feature maps; needs ``out_channels`` (a list,
            one per map) unless ``head`` is given.
        anchor_generator: a :class:`~pydetops.ops.DefaultBoxGenerator` with one entry per map.
        size: (width, height) every image is resized to.
        num_classes: classes including the background (labels 1..num_classes-1).
        image_mean, image_std: per-channel normalisation (default ImageNet's).
        head: default :class:`SSDHead`.
        score_thresh: per-class score threshold (0.01); nms_thresh: 0.45; detections_per_img: 200;
        iou_thresh: the matching IoU (0.5); topk_candidates: per class before NMS (400);
        positive_fraction: 0.25, i.e. 3 hard negatives per positive.
    """

    CHANNELS_LAST_MODULES = ("backbone", "head")  # use_channels_last / optimize_for_inference: fast_paths.py

    def __init__(self, backbone: nn.Module, anchor_generator: DefaultBoxGenerator, size: Tuple[int, int],
                 num_classes: int, image_mean: Optional[List[float]] = None, image_std: Optional[List[float]] = None,
                 head: Optional[nn.Module] = None, score_thresh: float = 0.01, nms_thresh: float = 0.45,
                 detections_per_img: int = 200, iou_thresh: float = 0.5, topk_candidates: int = 400,
                 positive_fraction: float = 0.25, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"SSD: unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ValueError(f"size: must be (width, height) >= 1, got {size}")
        if not 0.0 < positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction: must be in (0, 1], got {positive_fraction}")
        if detections_per_img < 0:
            raise ValueError(f"detections_per_img: must be >= 0, got {detections_per_img}")
        if topk_candidates < 0:
            raise ValueError(f"topk_candidates: must be >= 0, got {topk_candidates}")
        if head is None:
            if not hasattr(backbone, "out_channels"):
                raise ValueError("backbone: must have out_channels (one per feature map) when head is not given")
            if len(backbone.out_channels) != len(anchor_generator.aspect_ratios):
                raise ValueError(f"anchor_generator: has aspect ratios for {len(anchor_generator.aspect_ratios)} "
                                 f"maps, the backbone gives {len(backbone.out_channels)}")
            head = SSDHead(list(backbone.out_channels), anchor_generator.num_anchors_per_location(), num_classes)
        self.num_classes = num_classes
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.head = head
        self.transform = DetectionTransform(min(size), max(size), image_mean or [0.485, 0.456, 0.406],
                                            image_std or [0.229, 0.224, 0.225], size_divisible=1,
                                            fixed_size=(int(size[0]), int(size[1])))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.iou_thresh = iou_thresh
        self.topk_candidates = topk_candidates
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[-1] < 1 or img.shape[-2] < 1:
                raise ValueError(f"images[{i}]: expected Tensor[C, H, W] with H, W >= 1, got "
                                 f"{list(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        # 1. normalise, resize to the fixed size
        image_list, targets = self.transform(images, targets)
        # 2. feature maps
        features = self.backbone(self.to_memory_format(image_list.tensors))
        feature_list = [features] if isinstance(features, Tensor) else list(features.values())
        # 3. default boxes, 4. scores and offsets per default box
        head_outputs = self.head(feature_list)
        anchors = self.anchor_generator(image_list, feature_list)
        if self.training:
            # 5. matching, hard negative mining, losses
            matched = [match_with_best_per_gt(t["boxes"], a, self.iou_thresh) for t, a in zip(targets, anchors)]
            return self.compute_loss(targets, head_outputs, anchors, matched)
        # 6. per-class selection and NMS; 7. back to the input images' pixels
        detections = self.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor], anchors: List[Tensor],
                     matched_idxs: List[Tensor]) -> Dict[str, Tensor]:
        """The two losses, both divided by the batch's number of positives (at least 1).

        ``bbox_regression``: smooth-L1 (beta 1) between the positives' offsets and their ground truths
        encoded against their default boxes; ``classification``: softmax cross-entropy over the positives
        (their class) and the hard negatives (background).
        """
        regression, logits = head_outputs["bbox_regression"], head_outputs["cls_logits"]
        num_positive = 0
        box_losses = []
        cls_targets = []
        for t, codes, default_boxes, matches in zip(targets, regression, anchors, matched_idxs):
            fg = torch.where(matches >= 0)[0]
            gt = matches[fg]
            num_positive += int(fg.numel())
            target_codes = self.box_coder.encode_single(t["boxes"][gt], default_boxes[fg])
            box_losses.append(smooth_l1_loss(codes[fg], target_codes, beta=1.0, reduction="sum"))
            labels = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
            labels[fg] = t["labels"][gt].to(torch.int64)
            cls_targets.append(labels)
        labels = torch.stack(cls_targets)                                                    # [B, A]
        num_classes = logits.shape[-1]
        cls_loss = F.cross_entropy(logits.reshape(-1, num_classes), labels.reshape(-1),
                                   reduction="none").view(labels.shape)
        positive = labels > 0
        negative = hard_negative_mining(cls_loss, positive, self.neg_to_pos_ratio)
        n = max(1, num_positive)
        return {"bbox_regression": torch.stack(box_losses).sum() / n,
                "classification": (cls_loss[positive].sum() + cls_loss[negative].sum()) / n}

    def postprocess_detections(self, head_outputs: Dict[str, Tensor], anchors: List[Tensor],
                               image_shapes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Detections per image, in the resized images' pixels (torchvision's selection).

        Per image and class c >= 1: the default boxes with softmax score > ``score_thresh``, the
        ``topk_candidates`` best, decoded (weights 10, 10, 5, 5) and clipped, NMS at ``nms_thresh``;
        then the ``detections_per_img`` best over all classes by decreasing score.

        One ``detection_postprocess`` kernel call does the batch on the scores as they are
        (Tensor[B, A, C], the background column set to -inf): threshold, the per-class cap
        (``topk_per_class``), decode, clip, NMS per class, the best ``detections_per_img``.
        """
        # float32 at least (under autocast the head gives bfloat16 / float16: too coarse for pixels)
        dtype = torch.promote_types(head_outputs["bbox_regression"].dtype, torch.float32)
        codes = head_outputs["bbox_regression"].detach().to(dtype)
        logits = head_outputs["cls_logits"].detach().to(dtype)
        scores = F.softmax(logits, dim=-1)                                            # [B, A, C]
        scores[:, :, 0] = -math.inf                                                    # background
        if all(x is anchors[0] or torch.equal(x, anchors[0]) for x in anchors[1:]):
            default_boxes = anchors[0]                                       # shared: Tensor[A, 4]
        else:
            default_boxes = torch.stack(anchors)                                       # [B, A, 4]
        boxes, sc, labels, counts = detection_postprocess_padded(
            scores, codes, default_boxes, [(int(s[0]), int(s[1])) for s in image_shapes], None,
            self.score_thresh, -1, self.nms_thresh, self.detections_per_img, self.box_coder.weights,
            self.box_coder.bbox_xform_clip, topk_per_class=int(self.topk_candidates))
        return [{"boxes": boxes[i, :n], "scores": sc[i, :n], "labels": labels[i, :n]}
                for i, n in enumerate(counts.tolist())]


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------


def _load_vgg16_features(features: nn.Sequential, weights_backbone) -> None:
    """torchvision's VGG-16 classification checkpoint (keys ``features.N.*``) into the trunk."""
    if weights_backbone is None:
        return
    if not isinstance(weights_backbone, (str, os.PathLike)) or not os.path.isfile(weights_backbone):
        raise ValueError(f"weights_backbone: expected None or an existing local file, got {weights_backbone!r}")
    state = torch.load(weights_backbone, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"weights_backbone: {weights_backbone} holds no state_dict")
    mapped = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing = sorted(set(features.state_dict()) - set(mapped))
    if missing:
        raise ValueError(f"weights_backbone: {weights_backbone} lacks {len(missing)} VGG-16 trunk tensors, e.g. "
                         f"features.{missing[0]}")
    features.load_state_dict({k: mapped[k] for k in features.state_dict()}, strict=True)


def _freeze_vgg_stages(features: nn.Sequential, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of VGG-16's five stages (torchvision's rule)."""
    stage_starts = [0] + [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)][:-1]
    freeze_before = len(features) if trainable_layers == 0 else stage_starts[len(stage_starts) - trainable_layers]
    for m in list(features)[:freeze_before]:
        for p in m.parameters():
            p.requires_grad_(False)


def ssd300_vgg16(*, weights=None, progress: bool = True, num_classes: Optional[int] = None, weights_backbone=None,
                 trainable_backbone_layers: Optional[int] = None, **kwargs: Any) -> SSD:
    """SSD300 with a VGG-16 backbone: torchvision's constructor, defaults and ``state_dict`` keys.

    Args:
        weights: None or a local ``state_dict`` file of this model (e.g. torchvision's
            ``ssd300_vgg16_coco`` checkpoint); nothing is downloaded. ``progress``: unused.
        num_classes: with background; default 91 (COCO).
        weights_backbone: None or a local torchvision VGG-16 classification checkpoint.
        trainable_backbone_layers: VGG stages that train (0..5); default 4 with weights, else 5.
        **kwargs: :class:`SSD` keywords (``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``topk_candidates``, ``image_mean``, ...); ``size`` is fixed at 300 x 300 and ignored.

    Default boxes: scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87 (and 1.05), steps 8, 16, 32, 64, 100,
    300, aspect ratios {2} on maps 1, 5, 6 and {2, 3} on maps 2-4: 8732 boxes. Input normalised as
    torchvision's SSD (mean 0.48235, 0.45882, 0.40784, std 1/255: pixel values 0..255 less the mean).
    """
    if "size" in kwargs:
        warnings.warn("ssd300_vgg16: the size of the model is fixed at 300 x 300; ignoring size")
        kwargs.pop("size")
    if weights is not None:
        weights_backbone = None
    if num_classes is None:
        num_classes = 91
    trainable = _trainable_layers(weights is not None or weights_backbone is not None, trainable_backbone_layers, 5, 4)
    features = vgg16_features()
    _load_vgg16_features(features, weights_backbone)
    _freeze_vgg_stages(features, trainable)
    backbone = SSDVGG16Backbone(features)
    anchor_generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                           scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
                                           steps=[8, 16, 32, 64, 100, 300])
    defaults: Dict[str, Any] = {"image_mean": [0.48235, 0.45882, 0.40784], "image_std": [1.0 / 255.0] * 3}
    model = SSD(backbone, anchor_generator, (300, 300), num_classes, **{**defaults, **kwargs})
    _load_weights(model, weights)
    return model


def ssd(num_classes: int, backbone: str = "tiny", image_size: Optional[int] = None, weights=None,
        **kwargs: Any) -> SSD:
    """An SSD for training from scratch (the command line's ``--model ssd``).

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        backbone: "tiny" (:class:`SSDTinyBackbone`, GroupNorm; default image_size 128: maps 16, 8,
            4, 2, 1, 5 scales from 0.1 to 0.8 of the image) or "vgg16" (SSD300's network and default
            boxes, from scratch; default image_size 300, at least 268).
        image_size: the square input size.
        weights: None or a local ``state_dict`` file of this same configuration.
        **kwargs: any :class:`SSD` keyword (``score_thresh``, ``detections_per_img``, ...).

    Images are normalised with ImageNet's mean and std.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
    if backbone == "tiny":
        size = 128 if image_size is None else int(image_size)
        if size < 32:
            raise ValueError(f"image_size: the tiny backbone needs >= 32 (its stride), got {size}")
        body: nn.Module = SSDTinyBackbone()
        anchor_generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2], [2]], min_ratio=0.1, max_ratio=0.8)
    elif backbone == "vgg16":
        size = 300 if image_size is None else int(image_size)
        if min(_vgg_map_sizes(size)) < 1:
            raise ValueError(f"image_size: the vgg16 backbone needs >= 268 (six maps down to 1 x 1), got {size}")
        body = SSDVGG16Backbone(vgg16_features())
        steps = [8, 16, 32, 64, 100, 300] if size == 300 else None
        anchor_generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                               scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=steps)
    else:
        raise ValueError(f"backbone: must be 'tiny' or 'vgg16', got {backbone!r}")
    model = SSD(body, anchor_generator, (size, size), num_classes, **kwargs)
    _load_weights(model, weights)
    return model
