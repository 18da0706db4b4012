"""Mask R-CNN (He, Gkioxari, Dollar, Girshick 2017): Faster R-CNN plus a mask per RoI.

Read top-down, as the paper:

1. ``transform``   normalise, resize, pad to /32 (the gt masks are resized with the image);
2. ``backbone``    ResNet + FPN features;
3. ``rpn``         proposals, as Faster R-CNN;
4. ``roi_heads``   RoIAlign (not RoIPool: the quantisation-free pooling the paper introduces) of each
                   RoI, the box branch (classes, per-class offsets) and, in parallel, the mask branch:
                   RoIAlign 14x14 -> four 3x3 convs (256) -> 2x2 transposed conv to 28x28 -> one
                   sigmoid mask per class (``heads/mask_head.py``). Classes do not compete for a pixel:
                   ``L = L_cls + L_box + L_mask``, L_mask the per-pixel binary cross-entropy of the gt
                   class's mask against the gt mask cropped to the RoI (RoIAlign), positives only;
                   at test time the mask branch runs on the final detections and keeps the mask of
                   the predicted class;
5. ``transform.postprocess``  boxes back to the input image, each 28x28 mask pasted into the image at
                   its box (``pydetops.ops.paste_masks``: one kernel for all masks).

Model contract: ``model.train(); model(images, targets)`` -> ``loss_classifier``, ``loss_box_reg``,
``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``; targets need ``masks`` Tensor[N, H, W]
(uint8/bool/float 0-1, the image's size). ``model.eval(); model(images)`` -> per image ``boxes``
Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels`` Tensor[D], ``scores`` Tensor[D], ``masks``
Tensor[D, 1, H, W] float in [0, 1] (threshold at 0.5 for a binary mask).

``maskrcnn_resnet50_fpn`` has torchvision's signature, defaults and ``state_dict`` keys (gives
torchvision's detections and masks with its weights); ``mask_rcnn`` builds a small model that
trains from scratch on a CPU.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..ops import MultiScaleRoIAlign
from .backbones import FrozenBatchNorm2d, resnet_fpn_backbone
from .faster_rcnn import (FasterRCNN, _load_backbone, _load_weights, _trainable_layers, faster_rcnn,
                          validate_targets)
from .heads.mask_head import MaskRCNNHeads, MaskRCNNPredictor

__all__ = ["MaskRCNN", "maskrcnn_resnet50_fpn", "mask_rcnn", "validate_mask_targets"]


def validate_mask_targets(images: List[Tensor], targets: List[Dict[str, Tensor]]) -> None:
    """Raise ValueError naming the bad target: ``masks`` missing, not Tensor[N, H, W] with N the
    number of boxes and (H, W) the image's size, or not numeric."""
    for i, (img, t) in enumerate(zip(images, targets)):
        if "masks" not in t:
            raise ValueError(f"targets[{i}]['masks']: required by Mask R-CNN (Tensor[N, H, W], one mask per box)")
        m = t["masks"]
        n = int(t["boxes"].shape[0])
        hw = tuple(int(s) for s in img.shape[-2:])
        if not isinstance(m, Tensor) or m.dim() != 3 or int(m.shape[0]) != n or tuple(m.shape[-2:]) != hw:
            got = list(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"targets[{i}]['masks']: expected Tensor[{n}, {hw[0]}, {hw[1]}] (one mask per box, "
                             f"the image's size), got {got}")
        if m.is_complex():
            raise ValueError(f"targets[{i}]['masks']: expected uint8, bool or float values in [0, 1], got {m.dtype}")


class MaskRCNN(FasterRCNN):
    """Mask R-CNN from its parts: torchvision's ``MaskRCNN`` keyword arguments and defaults (every
    ``FasterRCNN`` keyword, plus ``mask_roi_pool`` (default ``MultiScaleRoIAlign`` 14x14 over "0".."3",
    sampling ratio 2), ``mask_head`` (default ``MaskRCNNHeads(out_channels, (256,) * 4)``) and
    ``mask_predictor`` (default ``MaskRCNNPredictor(256, 256, num_classes)``)).
    """

    CHANNELS_LAST_MODULES = FasterRCNN.CHANNELS_LAST_MODULES + ("roi_heads.mask_head",)  # its FCN too

    target_fields = ("masks",)

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, *args,
                 mask_roi_pool: Optional[nn.Module] = None, mask_head: Optional[nn.Module] = None,
                 mask_predictor: Optional[nn.Module] = None, **kwargs):
        if mask_roi_pool is not None and not isinstance(mask_roi_pool, MultiScaleRoIAlign):
            raise TypeError(f"mask_roi_pool: expected a MultiScaleRoIAlign or None, got {type(mask_roi_pool).__name__}")
        if num_classes is not None and mask_predictor is not None:
            raise ValueError("num_classes: must be None when mask_predictor is given")
        super().__init__(backbone, num_classes, *args, **kwargs)
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
        if mask_head is None:
            mask_head = MaskRCNNHeads(backbone.out_channels, (256, 256, 256, 256), 1)
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(256, 256, self.num_classes)
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and isinstance(images, (list, tuple)) and len(images) > 0:
            validate_targets(targets, len(images), self.num_classes)
            validate_mask_targets(images, targets)
        return super().forward(images, targets)


def maskrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                          weights_backbone=None, trainable_backbone_layers: Optional[int] = None,
                          **kwargs) -> MaskRCNN:
    """Mask R-CNN with a ResNet-50-FPN backbone: torchvision's constructor, defaults (91 classes) and
    ``state_dict`` keys. ``weights`` / ``weights_backbone``: None or a local file (nothing is
    downloaded); with either the backbone's BatchNorm is frozen and 3 stages train by default."""
    is_trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(50, norm_layer, trainable)
    _load_backbone(backbone, weights_backbone)
    model = MaskRCNN(backbone, num_classes=91 if num_classes is None else num_classes, **kwargs)
    _load_weights(model, weights)
    return model


def mask_rcnn(num_classes: int, backbone: str = "resnet18", fpn: bool = True, norm: str = "group",
              min_size: int = 320, max_size: int = 512, fpn_channels: int = 64, representation_size: int = 256,
              mask_channels: int = 64, mask_layers: int = 4, weights=None, **kwargs) -> MaskRCNN:
    """A small Mask R-CNN for training from scratch on a CPU: :func:`faster_rcnn`'s model (same
    arguments and recipe) with a mask branch of ``mask_layers`` 3x3 convs of ``mask_channels``
    (torchvision: 4 x 256) on 14x14 RoIAlign features, 28x28 masks.

    ``weights``: None or a local ``state_dict`` file of this same configuration. ``**kwargs``: any
    ``MaskRCNN`` / ``FasterRCNN`` keyword.
    """
    if not isinstance(mask_channels, int) or mask_channels < 1:
        raise ValueError(f"mask_channels: must be a positive int, got {mask_channels!r}")
    if not isinstance(mask_layers, int) or mask_layers < 1:
        raise ValueError(f"mask_layers: must be a positive int, got {mask_layers!r}")
    names = ["0", "1", "2", "3"] if fpn else ["0"]
    model = faster_rcnn(num_classes, backbone=backbone, fpn=fpn, norm=norm, min_size=min_size, max_size=max_size,
                        fpn_channels=fpn_channels, representation_size=representation_size, model_class=MaskRCNN,
                        mask_roi_pool=MultiScaleRoIAlign(names, 14, 2), **kwargs)
    model.roi_heads.mask_head = MaskRCNNHeads(model.backbone.out_channels, (mask_channels,) * mask_layers, 1)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    _load_weights(model, weights)
    return model
