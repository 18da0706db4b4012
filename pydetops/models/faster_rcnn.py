"""Faster R-CNN (Ren, He, Girshick, Sun 2015): a Region Proposal Network and a Fast R-CNN head
sharing one backbone (optionally with a feature pyramid).

Read top-down, as the paper:

1. ``transform``   normalise, resize (short side ``min_size``, long side <= ``max_size``), pad to /32;
2. ``backbone``    features (ResNet / MobileNetV3 [+ FPN]);
3. ``rpn``         anchors (3 scales x 3 ratios, or one size per FPN level) -> objectness and offsets
                   -> proposals (top-k, NMS); in training labels anchors (IoU >= 0.7 or best per
                   gt: positive, < 0.3: negative), 256 per image at 1:1, two losses;
4. ``roi_heads``   RoIAlign of each proposal -> two FC layers -> K+1 scores and per-class offsets;
                   in training 512 RoIs per image, 25 % foreground (IoU >= 0.5), two losses;
                   in inference decode, threshold, per-class NMS;
5. ``transform.postprocess``  boxes back to the input images' pixels.

Model contract (``pydetops/MODELS.md``): ``model.train(); model(images, targets)`` -> dict of the
four losses ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``;
``model.eval(); model(images)`` -> one dict ``boxes`` Tensor[D, 4] (x1, y1, x2, y2, pixels),
``labels`` Tensor[D] int64, ``scores`` Tensor[D] per image. ``images``: list of Tensor[3, H, W] in [0, 1].

The torchvision-compatible constructors (``fasterrcnn_resnet50_fpn``,
``fasterrcnn_mobilenet_v3_large_fpn``) have torchvision's signatures, defaults and ``state_dict``
keys; ``faster_rcnn`` builds small models for training from scratch on a CPU.
"""
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops import AnchorGenerator, MultiScaleRoIAlign
from .backbones import (FrozenBatchNorm2d, TinyCNN, BackboneWithFPN,
                        mobilenet_v3_fpn_backbone, norm_layer_by_name, resnet_fpn_backbone)
from .fast_paths import FastPathsMixin
from .heads.roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .heads.rpn import RegionProposalNetwork, RPNHead
from .transform import DetectionTransform

__all__ = ["FasterRCNN", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "faster_rcnn",
           "validate_targets"]


def validate_targets(targets: Optional[List[Dict[str, Tensor]]], num_images: int, num_classes: int) -> None:
    """Raise ValueError naming the bad target: missing, wrong count, ``boxes`` not Tensor[N, 4] floating
    point, ``labels`` not Tensor[N] integer in [1, num_classes - 1], degenerate boxes (x2 <= x1 or y2 <= y1)."""
    if targets is None:
        raise ValueError("targets: required in training mode")
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        raise ValueError(f"targets: expected a list of {num_images} dicts (one per image), got "
                         f"{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__}")
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}]: must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes']: expected Tensor[N, 4], got "
                             f"{list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes']: expected a floating point tensor, got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"targets[{i}]['labels']: expected Tensor[{boxes.shape[0]}] (one per box), got "
                             f"{list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels']: expected an integer tensor, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels']: labels must be in [1, {num_classes - 1}] (0 is background), "
                             f"got values in [{int(labels.min())}, {int(labels.max())}]")
        if boxes.numel():
            if not bool(torch.isfinite(boxes).all()):
                raise ValueError(f"targets[{i}]['boxes']: non-finite coordinates")
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bool(bad.any()):
                j = int(torch.where(bad)[0][0])
                raise ValueError(f"targets[{i}]['boxes'][{j}]: degenerate box {boxes[j].tolist()} "
                                 "(needs x2 > x1 and y2 > y1)")


class FasterRCNN(FastPathsMixin, nn.Module):
    """Faster R-CNN from its parts (torchvision's ``FasterRCNN`` keyword arguments and defaults).

    ``backbone`` must have ``out_channels`` and return a Tensor or an ordered dict of feature maps.

    ``rpn_fused_proposals`` (not a torchvision keyword): select the RPN's proposals with one fused
    ``detection_postprocess`` call for the batch instead of torchvision's per-image steps. Same
    proposals, except among EQUAL objectness logits (flat image regions give many), where the
    fused kernel keeps the lower anchor index and torchvision whatever ``torch.topk`` / its NMS
    sort returns; so it is off by default (torchvision's detections, tests/test_models_faster_rcnn.py)
    and on in :func:`faster_rcnn`.

    ``use_channels_last()`` / ``optimize_for_inference()``: the opt-in CPU fast paths
    (:mod:`pydetops.models.fast_paths`) for the backbone and the RPN head.
    """

    CHANNELS_LAST_MODULES = ("backbone", "rpn.head")

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None,
                 # transform
                 min_size=800, max_size: int = 1333, image_mean: Optional[List[float]] = None,
                 image_std: Optional[List[float]] = None,
                 # RPN
                 rpn_anchor_generator: Optional[AnchorGenerator] = None, rpn_head: Optional[nn.Module] = None,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_score_thresh: float = 0.0, rpn_fused_proposals: bool = False,
                 # Box
                 box_roi_pool: Optional[nn.Module] = None, box_head: Optional[nn.Module] = None,
                 box_predictor: Optional[nn.Module] = None, box_score_thresh: float = 0.05,
                 box_nms_thresh: float = 0.5, box_detections_per_img: int = 100, box_fg_iou_thresh: float = 0.5,
                 box_bg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
                 box_positive_fraction: float = 0.25, bbox_reg_weights: Optional[Tuple[float, ...]] = None,
                 box_bg_iou_low: float = 0.0, size_divisible: int = 32):
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone: must have an attribute out_channels (the channels of its feature maps)")
        if num_classes is None and box_predictor is None:
            raise ValueError("num_classes: required when box_predictor is not given")
        if num_classes is not None and box_predictor is not None:
            raise ValueError("num_classes: must be None when box_predictor is given")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes: must be >= 2 (background + at least one class), got {num_classes}")
        out_channels = backbone.out_channels
        if rpn_anchor_generator is None:
            rpn_anchor_generator = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        if rpn_head is None:
            rpn_head = RPNHead(out_channels, rpn_anchor_generator.num_anchors_per_location()[0])
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(out_channels * resolution ** 2, 1024)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(1024, num_classes)
        self.num_classes = num_classes if num_classes is not None else box_predictor.cls_score.out_features

        self.transform = DetectionTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                            image_std or [0.229, 0.224, 0.225], size_divisible)
        self.backbone = backbone
        self.rpn = RegionProposalNetwork(
            rpn_anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction, dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test), rpn_nms_thresh,
            rpn_score_thresh, fused_proposals=rpn_fused_proposals)
        self.roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, bbox_reg_weights, box_score_thresh, box_nms_thresh, box_detections_per_img,
            bg_iou_low=box_bg_iou_low)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        # 1. normalise, resize, batch
        image_list, targets = self.transform(images, targets)
        # 2. shared features
        features = self.backbone(self.to_memory_format(image_list.tensors))
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        # 3. region proposals
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        # 4. Fast R-CNN head on the proposals
        detections, detector_losses = self.roi_heads(self.roi_features(features), proposals, image_list.image_sizes,
                                                     targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        # 5. back to the input images' pixels
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------


def _load_weights(model: nn.Module, weights: Union[None, str, os.PathLike]) -> None:
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights: expected None or a local file path, got {type(weights).__name__} "
                        "(nothing is ever downloaded)")
    if not os.path.isfile(weights):
        raise ValueError(f"weights: no such file: {weights}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state, strict=True)


def _trainable_layers(is_trained: bool, value: Optional[int], max_value: int, default: int) -> int:
    if not is_trained:
        return max_value if value is None else _check_range(value, max_value)
    return default if value is None else _check_range(value, max_value)


def _check_range(value: int, max_value: int) -> int:
    if not 0 <= value <= max_value:
        raise ValueError(f"trainable_backbone_layers: must be in [0, {max_value}], got {value}")
    return value


def _load_backbone(backbone: BackboneWithFPN, weights_backbone) -> None:
    """A classification checkpoint (torchvision's ResNet / MobileNetV3 keys) into the trunk."""
    if weights_backbone is None:
        return
    if not isinstance(weights_backbone, (str, os.PathLike)) or not os.path.isfile(weights_backbone):
        raise ValueError(f"weights_backbone: expected None or an existing local file, got {weights_backbone!r}")
    state = torch.load(weights_backbone, map_location="cpu", weights_only=True)
    body_keys = set(backbone.body.state_dict().keys())
    mapped = {}
    for k, v in state.items():
        k2 = k[len("features."):] if k.startswith("features.") else k
        if k2 in body_keys:
            mapped[k2] = v
    missing = body_keys - set(mapped) - {k for k in body_keys if k.endswith("num_batches_tracked")}
    if missing:
        raise ValueError(f"weights_backbone: {weights_backbone} lacks {len(missing)} backbone tensors, e.g. "
                         f"{sorted(missing)[:3]}")
    backbone.body.load_state_dict(mapped, strict=False)


def fasterrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                            weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                            **kwargs) -> FasterRCNN:
    """Faster R-CNN with a ResNet-50-FPN backbone, torchvision's constructor and ``state_dict`` keys.

    ``weights`` / ``weights_backbone``: None or a local file (a detector / an ImageNet ResNet-50
    ``state_dict``); with either, the backbone's BatchNorm is frozen and ``trainable_backbone_layers``
    defaults to 3 (else BatchNorm2d and all 5 train), as torchvision. ``num_classes`` defaults to 91.
    Other keyword arguments go to ``FasterRCNN``.
    """
    is_trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(50, norm_layer, trainable)
    _load_backbone(backbone, weights_backbone)
    model = FasterRCNN(backbone, num_classes=91 if num_classes is None else num_classes, **kwargs)
    _load_weights(model, weights)
    return model


def fasterrcnn_mobilenet_v3_large_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                                      weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                                      **kwargs) -> FasterRCNN:
    """Faster R-CNN with a MobileNetV3-Large-FPN backbone (high resolution), torchvision's constructor:
    anchors of 5 sizes x 3 ratios on each of 3 levels, ``rpn_score_thresh`` 0.05 by default."""
    is_trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(is_trained, trainable_backbone_layers, 6, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = mobilenet_v3_fpn_backbone(norm_layer, trainable)
    _load_backbone(backbone, weights_backbone)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * 3)
    kwargs = {"rpn_score_thresh": 0.05, **kwargs}
    model = FasterRCNN(backbone, num_classes=91 if num_classes is None else num_classes,
                       rpn_anchor_generator=anchors, **kwargs)
    _load_weights(model, weights)
    return model


class _SingleMap(nn.Module):
    """A trunk's coarsest map as the one feature map "0" (no FPN)."""

    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.body = trunk
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        feats = self.body(x)
        return OrderedDict([("0", list(feats.values())[-1])])


def faster_rcnn(num_classes: int, backbone: str = "resnet18", fpn: bool = True, norm: str = "group",
                min_size: int = 320, max_size: int = 512, fpn_channels: int = 64,
                representation_size: int = 256, weights=None, model_class=None, **kwargs) -> FasterRCNN:
    """A small Faster R-CNN for training from scratch on a CPU, with the seeds' training recipe.

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        backbone: "resnet18" or "tiny" (a 10-layer CNN); or "resnet50".
        fpn: a feature pyramid (strides 4..32 + "pool", one anchor size per level x 3 ratios), or
            the trunk's last map alone (stride 32) with 3 sizes x 3 ratios anchors.
        norm: "group" (GroupNorm: no batch statistics; default), "batch" or "frozen".
        min_size, max_size: image resize (short side, cap of the long side).
        fpn_channels: FPN width; representation_size: the box head's FC width.
        weights: None or a local ``state_dict`` file of this same configuration.
        **kwargs: any ``FasterRCNN`` keyword (e.g. ``box_score_thresh``, ``rpn_pre_nms_top_n_test``;
            ``rpn_fused_proposals`` is True here: no torchvision model to match).
        model_class: the class built (default ``FasterRCNN``; a subclass such as ``MaskRCNN``, which
            then also receives its own keywords from ``kwargs``).

    Defaults follow the seeds: RPN positive IoU >= 0.7 (or best per gt), negative < 0.3, 256 per
    image at 1:1; RoI head 512 per image, 25 % foreground (IoU >= 0.5), background IoU in
    [0.1, 0.5) (below 0.1: ignored).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
    norm_layer = norm_layer_by_name(norm)
    if backbone in ("resnet18", "resnet50"):
        depth = 18 if backbone == "resnet18" else 50
        if fpn:
            body = resnet_fpn_backbone(depth, norm_layer, trainable_layers=5, out_channels=fpn_channels)
        else:
            body = resnet_fpn_backbone(depth, norm_layer, trainable_layers=5, fpn=False)
    elif backbone == "tiny":
        trunk = TinyCNN(norm_layer=norm_layer)
        if fpn:
            body = BackboneWithFPN(trunk, trunk.channels, fpn_channels)
        else:
            body = _SingleMap(trunk, trunk.channels[-1])
    else:
        raise ValueError(f"backbone: must be 'resnet18', 'resnet50' or 'tiny', got {backbone!r}")
    defaults = dict(min_size=min_size, max_size=max_size, box_bg_iou_low=0.1, rpn_fused_proposals=True,
                    rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                    rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300)
    if fpn:
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    else:
        defaults["rpn_anchor_generator"] = AnchorGenerator(((64, 128, 256),), ((0.5, 1.0, 2.0),))
        pool = MultiScaleRoIAlign(["0"], 7, 2)
    defaults.update(kwargs)
    head = TwoMLPHead(body.out_channels * 49, representation_size)
    model = (model_class or FasterRCNN)(body, num_classes=None, box_roi_pool=pool, box_head=head,
                                        box_predictor=FastRCNNPredictor(representation_size, num_classes), **defaults)
    _load_weights(model, weights)
    return model
