"""Classification + localization as regression (the seeds' "Idea 1"; OverFeat / VGG style heads).

One object per image: a CNN, then fully connected layers, then two heads on the same features:

1. ``transform``   normalise, resize to ``image_size`` x ``image_size`` (fully connected layers fix the
                   input size); boxes become relative to the image ([0, 1] coordinates);
2. ``backbone``    a CNN to one feature map Tensor[N, C, h, w] (default ``"overfeat"``: unpadded convs,
                   BatchNorm and max pools, so the same network slides exactly over a larger image in
                   eval mode, :mod:`pydetops.models.overfeat`; or ``"tiny"`` / ``"resnet18"`` from
                   :mod:`pydetops.models.backbones`);
3. ``fc6``, ``fc7`` flatten (scaled by 1 / sqrt(h w), for stable SGD), two fully connected layers (ReLU);
4. heads           ``cls_score``: ``num_classes`` scores (softmax; 0 is background, which only sliding
                   window training uses); ``bbox_pred``: 4 numbers, class-agnostic or 4 per class:
                   the box coded relative to the input window as R-CNN's regression targets
                   (``encode_boxes``, weights 1: dx = (Gx - Px) / Pw, dy, dw = log(Gw / Pw), dh, P the
                   whole input), so a sliding window decodes against its own window with the same op;
                   optionally ``keypoint_pred``: K points (x, y relative to the input), the same idea
                   regressing a pose;
5. loss            the weighted sum ``L = L_cls + box_loss_weight * L_box (+ keypoint_loss_weight * L_kp)``:
                   softmax cross-entropy, and L2 or smooth-L1 on the box codes and relative points;
6. output          one detection per image: the best category (softmax score), its box (and points)
                   in the input image's pixels.

Model contract (``MODELS.md``): train mode ``model(images, targets)`` -> ``{"loss_classifier",
"loss_box_reg"[, "loss_keypoint"]}`` (already weighted: the total loss is their sum); eval mode
``model(images)`` -> one dict per image: ``boxes`` Tensor[1, 4] (x1, y1, x2, y2, pixels), ``labels``
Tensor[1] int64 (1..num_classes-1), ``scores`` Tensor[1] (+ ``keypoints`` Tensor[1, K, 3], visibility 1).
A target with several objects trains on its largest one; a target without objects is a ValueError.
Metrics for this task (classification accuracy, mean IoU, PCK) are in
:mod:`pydetops.evaluation.localization`.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import decode_boxes, encode_boxes
from .backbones import TinyCNN, norm_layer_by_name, resnet_fpn_backbone
from .faster_rcnn import _load_weights, validate_targets
from .losses import smooth_l1_loss
from .transform import FixedSizeTransform

__all__ = ["OverFeatTrunk", "LocalizationNet", "localization", "build_trunk", "localization_loss"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------
# 2. backbone
# ---------------------------------------------------------------------------


class OverFeatTrunk(nn.Sequential):
    """A small OverFeat-like CNN: unpadded convolutions, BatchNorm, ReLU and 2x2 max pools:

        conv 5x5 (3 -> w0), pool, conv 3x3 (w0 -> w1), pool, conv 3x3 (w1 -> w2), conv 3x3 (w2 -> w2), pool

    Total stride 8 (``stride``); a 64 x 64 input gives a 5 x 5 map of ``out_channels`` = w2. In eval
    mode every output value depends only on its receptive field (no padding; BatchNorm is then a
    fixed per-channel affine map), so the network applied to a larger image equals it applied to each
    window at multiples of the stride (the seeds' 14 x 14 -> 1 x 1, 16 x 16 -> 2 x 2). BatchNorm
    (batch statistics while training: N x H x W samples per channel) keeps SGD at lr 0.01 stable.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128)):
        w0, w1, w2 = widths
        layers = []
        for i, (cin, cout, k, pool) in enumerate(((3, w0, 5, True), (w0, w1, 3, True), (w1, w2, 3, False),
                                                  (w2, w2, 3, True)), 1):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, k, bias=False)), (f"bn{i}", nn.BatchNorm2d(cout)),
                       (f"relu{i}", nn.ReLU(inplace=True))]
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
        super().__init__(OrderedDict(layers))
        self.out_channels = w2
        self.stride = 8
        self.exact_sliding = True
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class _LastMap(nn.Module):
    """A trunk returning named maps -> its coarsest map as one Tensor."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride
        self.exact_sliding = False  # padded convs / GroupNorm: sliding is approximate

    def forward(self, x: Tensor) -> Tensor:
        return list(self.body(x).values())[-1]


def build_trunk(backbone: str, norm: str = "group") -> nn.Module:
    """``"overfeat"`` (:class:`OverFeatTrunk`, stride 8), ``"tiny"`` (TinyCNN, stride 32) or
    ``"resnet18"`` (ResNet-18 up to layer4, stride 32): a module mapping Tensor[N, 3, H, W] to one
    Tensor[N, C, h, w], with ``out_channels`` and ``stride``. ``norm`` applies to tiny / resnet18."""
    if backbone == "overfeat":
        return OverFeatTrunk()
    if backbone == "tiny":
        trunk = TinyCNN(norm_layer=norm_layer_by_name(norm))
        return _LastMap(trunk, trunk.channels[-1], 32)
    if backbone == "resnet18":
        body = resnet_fpn_backbone(18, norm_layer_by_name(norm), trainable_layers=5, fpn=False)
        return _LastMap(body, body.out_channels, 32)
    raise ValueError(f"backbone: must be 'overfeat', 'tiny' or 'resnet18', got {backbone!r}")


# ---------------------------------------------------------------------------
# 5. loss
# ---------------------------------------------------------------------------


def _box_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per row: sum over the coordinates of (pred - target)^2 ("l2") or smooth-L1 (beta 1/9)."""
    if kind == "l2":
        return ((pred - target) ** 2).sum(-1)
    return smooth_l1_loss(pred, target, reduction="none").sum(-1)


def localization_loss(class_logits: Tensor, box_pred: Tensor, labels: Tensor, box_targets: Tensor,
                      box_loss: str = "smooth_l1", box_loss_weight: float = 1.0,
                      keypoint_pred: Optional[Tensor] = None, keypoint_targets: Optional[Tensor] = None,
                      keypoint_loss_weight: float = 1.0) -> Dict[str, Tensor]:
    """The weighted multi-task loss of classification + localization.

    Args:
        class_logits: Tensor[N, num_classes]; labels: Tensor[N] int64 (0: background, no box loss).
        box_pred: Tensor[N, 4] (class-agnostic) or Tensor[N, num_classes, 4] (per class: the
            row of the true class is used); box_targets: Tensor[N, 4]; both R-CNN codes (dx, dy, dw, dh)
            relative to the window.
        box_loss: "smooth_l1" or "l2" (sum over the 4 coordinates, mean over the N windows/images).
        keypoint_pred: Tensor[N, K, 2]; keypoint_targets: Tensor[N, K, 3] (x, y relative,
            visibility): L2 / smooth-L1 over the visible points of foreground rows, divided by N.

    Returns ``{"loss_classifier": CE, "loss_box_reg": box_loss_weight * L_box[, "loss_keypoint":
    keypoint_loss_weight * L_kp]}``; their sum is the total loss.
    """
    n = max(int(labels.shape[0]), 1)
    loss_cls = F.cross_entropy(class_logits, labels)
    fg = labels > 0
    if box_pred.dim() == 3:
        box_pred = box_pred[torch.arange(box_pred.shape[0], device=labels.device), labels]
    loss_box = _box_loss(box_pred[fg], box_targets[fg], box_loss).sum() / n
    out = {"loss_classifier": loss_cls, "loss_box_reg": box_loss_weight * loss_box}
    if keypoint_pred is not None:
        if keypoint_targets is None:
            raise ValueError("keypoint_targets: required when the model regresses keypoints")
        vis = (keypoint_targets[..., 2] > 0) & fg[:, None]
        kp = _box_loss(keypoint_pred[vis], keypoint_targets[..., :2][vis], box_loss).sum() / n
        out["loss_keypoint"] = keypoint_loss_weight * kp
    return out


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class LocalizationNet(nn.Module):
    """Classification + localization (+ K points) by regression from one fixed-size input.

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        backbone: "overfeat", "tiny" or "resnet18" (:func:`build_trunk`).
        image_size: the network's input side (images are resized to it).
        hidden: width of fc6 / fc7.
        box_loss: "smooth_l1" or "l2"; class_agnostic: one box (True) or one per class.
        num_keypoints: K > 0 adds the point-regression head (pose).
        box_loss_weight, keypoint_loss_weight: the weights of the sum.
        norm: normalisation of "tiny" / "resnet18" ("group", "batch", "frozen").
    """

    def __init__(self, num_classes: int, backbone: str = "overfeat", image_size: int = 64, hidden: int = 256,
                 box_loss: str = "smooth_l1", class_agnostic: bool = True, num_keypoints: int = 0,
                 box_loss_weight: float = 1.0, keypoint_loss_weight: float = 1.0, norm: str = "group",
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if box_loss not in ("smooth_l1", "l2"):
            raise ValueError(f"box_loss: must be 'smooth_l1' or 'l2', got {box_loss!r}")
        if not isinstance(num_keypoints, int) or num_keypoints < 0:
            raise ValueError(f"num_keypoints: must be an int >= 0, got {num_keypoints!r}")
        self.num_classes = num_classes
        self.box_loss = box_loss
        self.class_agnostic = class_agnostic
        self.num_keypoints = num_keypoints
        self.box_loss_weight = float(box_loss_weight)
        self.keypoint_loss_weight = float(keypoint_loss_weight)
        # 1. fixed-size input
        self.transform = FixedSizeTransform(image_size, image_mean, image_std)
        # 2. backbone
        self.backbone = build_trunk(backbone, norm)
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            try:
                c, h, w = self.backbone(torch.zeros(1, 3, image_size, image_size)).shape[1:]
            except RuntimeError:
                raise ValueError(f"image_size: {image_size} is too small for backbone {backbone!r}") from None
            self.backbone.train(was)
        self.feature_shape = (int(c), int(h), int(w))
        # the flattened map enters fc6 scaled by 1 / sqrt(h w): without it, SGD at the command line's
        # lr 0.01 with batches of 2 images stalls (fc6's input norm makes each step too large)
        self.feature_scale = 1.0 / math.sqrt(float(h * w))
        # 3. fully connected layers
        self.fc6 = nn.Linear(c * h * w, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        # 4. heads
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, 4 if class_agnostic else 4 * num_classes)
        self.keypoint_pred = nn.Linear(hidden, 2 * num_keypoints) if num_keypoints else None
        for m, start in ((self.bbox_pred, 0.0), (self.keypoint_pred, 0.5)):
            if m is not None:  # codes 0: the whole input; points at its centre
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, start)

    @property
    def image_size(self) -> int:
        return self.transform.size

    def heads(self, x: Tensor) -> Dict[str, Tensor]:
        """Normalised Tensor[N, 3, image_size, image_size] -> ``class_logits`` [N, num_classes],
        ``boxes`` [N, 4] or [N, num_classes, 4] (codes against the input box), ``keypoints`` [N, K, 2]
        (relative to the input)."""
        return self.head_outputs(self.backbone(x))

    def head_outputs(self, feats: Tensor) -> Dict[str, Tensor]:
        """The fully connected part on the backbone's Tensor[N, C, h, w] (``feature_shape``)."""
        f = feats.flatten(1) * self.feature_scale
        f = F.relu(self.fc7(F.relu(self.fc6(f))))
        n = f.shape[0]
        out = {"class_logits": self.cls_score(f), "boxes": self.bbox_pred(f)}
        if not self.class_agnostic:
            out["boxes"] = out["boxes"].reshape(n, self.num_classes, 4)
        if self.keypoint_pred is not None:
            out["keypoints"] = self.keypoint_pred(f).reshape(n, self.num_keypoints, 2)
        return out

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        # 1. fixed-size input
        x, sizes = self.transform(images)
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        # 2-4. backbone, fully connected layers, heads
        out = self.heads(x)
        if self.training:
            labels, boxes, kps = self.select_targets(targets, sizes)
            # 5. the weighted sum of the losses
            return localization_loss(out["class_logits"], out["boxes"], labels, boxes, self.box_loss,
                                     self.box_loss_weight, out.get("keypoints"), kps, self.keypoint_loss_weight)
        # 6. one detection per image
        return self.postprocess(out, sizes)

    def select_targets(self, targets: List[Dict[str, Tensor]], sizes: List[Tuple[int, int]]
                       ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Per image its largest object: labels [N], boxes [N, 4] (codes against the whole image),
        keypoints [N, K, 3] relative (when the model regresses K points)."""
        labels, boxes, kps = [], [], []
        for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
            if t["boxes"].shape[0] == 0:
                raise ValueError(f"targets[{i}]: localization needs an object in every image, got none")
            b = t["boxes"].float()
            j = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
            boxes.append(encode_boxes(b[j:j + 1], b.new_tensor([[0.0, 0.0, w, h]]), b.new_ones(4))[0])
            labels.append(t["labels"][j].long())
            if self.num_keypoints:
                if "keypoints" not in t:
                    raise ValueError(f"targets[{i}]: 'keypoints' Tensor[N, {self.num_keypoints}, 3] required "
                                     f"(num_keypoints={self.num_keypoints})")
                k = t["keypoints"]
                if k.dim() != 3 or k.shape[0] != b.shape[0] or k.shape[1:] != (self.num_keypoints, 3):
                    raise ValueError(f"targets[{i}]['keypoints']: expected "
                                     f"Tensor[{b.shape[0]}, {self.num_keypoints}, 3], "
                                     f"got {list(k.shape)}")
                k = k[j].float()
                kps.append(torch.cat([k[:, :2] / k.new_tensor([w, h]), k[:, 2:]], 1))
        return (torch.stack(labels), torch.stack(boxes),
                torch.stack(kps) if self.num_keypoints else None)

    def postprocess(self, out: Dict[str, Tensor], sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        probs = out["class_logits"].softmax(-1)
        scores, labels = probs[:, 1:].max(-1)
        labels = labels + 1
        codes = out["boxes"]
        if codes.dim() == 3:
            codes = codes[torch.arange(codes.shape[0], device=codes.device), labels]
        results = []
        for i, (h, w) in enumerate(sizes):
            b = decode_boxes(codes[i:i + 1], codes.new_tensor([[0.0, 0.0, w, h]]), image_size=(h, w))
            r = {"boxes": b, "labels": labels[i:i + 1], "scores": scores[i:i + 1]}
            if "keypoints" in out:
                k = out["keypoints"][i:i + 1] * codes.new_tensor([w, h])
                r["keypoints"] = torch.cat([k, torch.ones_like(k[..., :1])], -1)
            results.append(r)
        return results


def localization(num_classes: int, backbone: str = "overfeat", image_size: int = 64, num_keypoints: int = 0,
                 box_loss: str = "smooth_l1", class_agnostic: bool = True, weights=None, **kwargs) -> LocalizationNet:
    """Classification + localization as regression, CPU-sized (64 x 64 input, the OverFeat-like
    trunk). ``num_keypoints`` > 0 also regresses that many points (the command line sets it to the
    dataset's keypoint count). Other keywords go to :class:`LocalizationNet`; ``weights``: None or a
    local ``state_dict`` file of this configuration."""
    model = LocalizationNet(num_classes, backbone=backbone, image_size=image_size, num_keypoints=num_keypoints,
                            box_loss=box_loss, class_agnostic=class_agnostic, **kwargs)
    _load_weights(model, weights)
    return model


# train.py: load keypoints when the dataset has them and pass num_keypoints=K.
localization.optional_target_fields = ("keypoints",)
