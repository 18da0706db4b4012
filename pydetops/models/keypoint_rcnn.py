"""Keypoint R-CNN (Mask R-CNN paper, section 5): Faster R-CNN plus K keypoint heatmaps per RoI.

The seeds' "regress K joints" done per RoI, as a segmentation: each keypoint is a one-hot mask.
Read top-down:

1. ``transform``   normalise, resize (training: a random short side in ``min_size``), pad to /32;
                   the gt keypoints are scaled with the image;
2. ``backbone``    ResNet + FPN features;
3. ``rpn``         proposals, as Faster R-CNN;
4. ``roi_heads``   the box branch and, in parallel, the keypoint branch (``heads/keypoint_head.py``):
                   RoIAlign 14x14 -> eight 3x3 convs (512) -> 4x4 stride-2 transposed conv (28x28)
                   -> bilinear 2x -> K heatmaps of 56x56. Loss: for each visible gt keypoint of a
                   positive RoI's matched object, the cross-entropy of a softmax over the 56*56
                   positions against the keypoint's cell (``L = L_cls + L_box + L_keypoint``);
                   at test time on the final detections: each heatmap resized to its box (bicubic),
                   argmax -> (x, y) and its score (``pydetops.ops.heatmaps_to_keypoints``);
5. ``transform.postprocess``  boxes and keypoints back to the input image's pixels.

Model contract: ``model.train(); model(images, targets)`` -> ``loss_classifier``, ``loss_box_reg``,
``loss_keypoint``, ``loss_objectness``, ``loss_rpn_box_reg``; targets need ``keypoints``
Tensor[N, K, 3] float (x, y, visibility; v = 0: not labelled). ``model.eval(); model(images)`` -> per
image ``boxes``, ``labels``, ``scores``, ``keypoints`` Tensor[D, K, 3] (x, y, 1; input pixels) and
``keypoints_scores`` Tensor[D, K] (heatmap logits at the argmax).

``keypointrcnn_resnet50_fpn`` has torchvision's signature, defaults (2 classes, 17 keypoints) and
``state_dict`` keys; ``keypoint_rcnn`` builds a small model (5 keypoints by default: the synthetic
data's left, right, top, bottom, center) that trains from scratch on a CPU.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..ops import MultiScaleRoIAlign
from .backbones import FrozenBatchNorm2d, resnet_fpn_backbone
from .faster_rcnn import (FasterRCNN, _load_backbone, _load_weights, _trainable_layers, faster_rcnn,
                          validate_targets)
from .heads.keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor

__all__ = ["KeypointRCNN", "keypointrcnn_resnet50_fpn", "keypoint_rcnn", "validate_keypoint_targets"]


def validate_keypoint_targets(targets: List[Dict[str, Tensor]], num_keypoints: int) -> None:
    """Raise ValueError naming the bad target: ``keypoints`` missing, not a floating point
    Tensor[N, K, 3] with N the number of boxes and K ``num_keypoints``, or non-finite."""
    for i, t in enumerate(targets):
        if "keypoints" not in t:
            raise ValueError(f"targets[{i}]['keypoints']: required by Keypoint R-CNN (Tensor[N, K, 3])")
        kp = t["keypoints"]
        n = int(t["boxes"].shape[0])
        if not isinstance(kp, Tensor) or kp.dim() != 3 or tuple(kp.shape) != (n, num_keypoints, 3):
            got = list(kp.shape) if isinstance(kp, Tensor) else type(kp).__name__
            raise ValueError(f"targets[{i}]['keypoints']: expected Tensor[{n}, {num_keypoints}, 3] (x, y, visibility "
                             f"per keypoint, one row per box), got {got}")
        if not kp.is_floating_point():
            raise ValueError(f"targets[{i}]['keypoints']: expected a floating point tensor, got {kp.dtype}")
        if kp.numel() and not bool(torch.isfinite(kp).all()):
            raise ValueError(f"targets[{i}]['keypoints']: non-finite values")


class KeypointRCNN(FasterRCNN):
    """Keypoint R-CNN from its parts: torchvision's ``KeypointRCNN`` keyword arguments and defaults
    (``min_size`` (640, 672, 704, 736, 768, 800) when None, every ``FasterRCNN`` keyword, plus
    ``keypoint_roi_pool`` (MultiScaleRoIAlign 14x14, sampling 2), ``keypoint_head``
    (``KeypointRCNNHeads(out_channels, (512,) * 8)``), ``keypoint_predictor``
    (``KeypointRCNNPredictor(512, num_keypoints)``) and ``num_keypoints`` (17 when None)).
    """

    CHANNELS_LAST_MODULES = FasterRCNN.CHANNELS_LAST_MODULES + ("roi_heads.keypoint_head",)  # its FCN too

    target_fields = ("keypoints",)

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, min_size=None,
                 max_size: int = 1333, image_mean: Optional[List[float]] = None,
                 image_std: Optional[List[float]] = None, *args,
                 keypoint_roi_pool: Optional[nn.Module] = None, keypoint_head: Optional[nn.Module] = None,
                 keypoint_predictor: Optional[nn.Module] = None, num_keypoints: Optional[int] = None, **kwargs):
        if keypoint_roi_pool is not None and not isinstance(keypoint_roi_pool, MultiScaleRoIAlign):
            raise TypeError(f"keypoint_roi_pool: expected a MultiScaleRoIAlign or None, "
                            f"got {type(keypoint_roi_pool).__name__}")
        if min_size is None:
            min_size = (640, 672, 704, 736, 768, 800)
        if num_keypoints is not None:
            if keypoint_predictor is not None:
                raise ValueError("num_keypoints: must be None when keypoint_predictor is given")
            if not isinstance(num_keypoints, int) or num_keypoints < 1:
                raise ValueError(f"num_keypoints: must be a positive int, got {num_keypoints!r}")
        else:
            num_keypoints = 17
        super().__init__(backbone, num_classes, min_size, max_size, image_mean, image_std, *args, **kwargs)
        if keypoint_roi_pool is None:
            keypoint_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
        if keypoint_head is None:
            keypoint_head = KeypointRCNNHeads(backbone.out_channels, (512,) * 8)
        if keypoint_predictor is None:
            keypoint_predictor = KeypointRCNNPredictor(512, num_keypoints)
        self.roi_heads.keypoint_roi_pool = keypoint_roi_pool
        self.roi_heads.keypoint_head = keypoint_head
        self.roi_heads.keypoint_predictor = keypoint_predictor

    @property
    def num_keypoints(self) -> int:
        return int(self.roi_heads.keypoint_predictor.out_channels)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and isinstance(images, (list, tuple)) and len(images) > 0:
            validate_targets(targets, len(images), self.num_classes)
            validate_keypoint_targets(targets, self.num_keypoints)
        return super().forward(images, targets)


def keypointrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                              num_keypoints: Optional[int] = None, weights_backbone=None,
                              trainable_backbone_layers: Optional[int] = None, **kwargs) -> KeypointRCNN:
    """Keypoint R-CNN with a ResNet-50-FPN backbone: torchvision's constructor, defaults (2 classes,
    17 keypoints) and ``state_dict`` keys. ``weights`` / ``weights_backbone``: None or a local file."""
    is_trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    norm_layer = FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(50, norm_layer, trainable)
    _load_backbone(backbone, weights_backbone)
    model = KeypointRCNN(backbone, 2 if num_classes is None else num_classes,
                         num_keypoints=17 if num_keypoints is None else num_keypoints, **kwargs)
    _load_weights(model, weights)
    return model


def keypoint_rcnn(num_classes: int, num_keypoints: int = 5, backbone: str = "resnet18", fpn: bool = True,
                  norm: str = "group", min_size: int = 320, max_size: int = 512, fpn_channels: int = 64,
                  representation_size: int = 256, keypoint_channels: int = 64, keypoint_layers: int = 8,
                  weights=None, **kwargs) -> KeypointRCNN:
    """A small Keypoint R-CNN for training from scratch on a CPU: :func:`faster_rcnn`'s model (same
    arguments and recipe) with a keypoint branch of ``keypoint_layers`` 3x3 convs of
    ``keypoint_channels`` (torchvision: 8 x 512) on 14x14 RoIAlign features, 56x56 heatmaps.

    ``num_keypoints``: K (5 for the synthetic data). ``weights``: None or a local ``state_dict`` file of
    this same configuration. ``**kwargs``: any ``KeypointRCNN`` / ``FasterRCNN`` keyword.
    """
    if not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(f"num_keypoints: must be a positive int, got {num_keypoints!r}")
    if not isinstance(keypoint_channels, int) or keypoint_channels < 1:
        raise ValueError(f"keypoint_channels: must be a positive int, got {keypoint_channels!r}")
    if not isinstance(keypoint_layers, int) or keypoint_layers < 1:
        raise ValueError(f"keypoint_layers: must be a positive int, got {keypoint_layers!r}")
    names = ["0", "1", "2", "3"] if fpn else ["0"]
    model = faster_rcnn(num_classes, backbone=backbone, fpn=fpn, norm=norm, min_size=min_size, max_size=max_size,
                        fpn_channels=fpn_channels, representation_size=representation_size,
                        model_class=KeypointRCNN, keypoint_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                        num_keypoints=num_keypoints, **kwargs)
    model.roi_heads.keypoint_head = KeypointRCNNHeads(model.backbone.out_channels,
                                                      (keypoint_channels,) * keypoint_layers)
    model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(keypoint_channels, num_keypoints)
    _load_weights(model, weights)
    return model


# The CLI's SGD rate for the small model: its 56 x 56-way keypoint cross-entropy (~8 at the start)
# diverged at 0.01 with 2 images per step on the synthetic data; 0.005 trains (benchmarks/RESULTS.md).
keypoint_rcnn.default_lr = 0.005
