"""YOLO v1 (Redmon, Divvala, Girshick, Farhadi 2016): detection as one regression over an S x S grid.

Read top-down, as the paper:

1. ``transform``  normalise and resize every image to ``image_size`` x ``image_size`` (the fully
                  connected head fixes it; an image of any size, even smaller than the network's
                  stride, is resized: it gets a defined result);
2. ``backbone``   a CNN to one feature map (``"tiny"`` / ``"resnet18"`` from
                  :mod:`pydetops.models.backbones`, stride 32);
3. ``head``       two fully connected layers (leaky ReLU 0.1; the flattened map scaled by 1 / sqrt(h w)
                  for stable SGD) to the S x S x (5B + C) tensor: per cell
                  B boxes (x, y: the centre relative to the cell, in [0, 1]; sqrt(w), sqrt(h): the
                  square roots of the size relative to the image; a confidence) and C conditional class
                  probabilities Pr(class | object). By default x, y, sqrt(w), sqrt(h) and the
                  confidence go through a sigmoid and the class scores through a softmax, so every
                  value stays in its range and the sum-squared error's gradients stay bounded (trained
                  from scratch with the command line's SGD, lr 0.01, batch 2, the paper's linear last
                  layer diverges within ~20 steps); ``linear=True`` is the paper's linear layer (x, y,
                  sqrt(w), sqrt(h) offset by 0.5, class scores by 1 / C, clamped when decoded);
4. loss           (:func:`yolo_v1_loss`) the paper's sum-squared error: the cell holding a ground truth
                  box's centre is responsible for it, and of its B predictors the one whose box has the
                  highest IoU with it (``box_overlaps``, the shared op);
                  ``lambda_coord`` (5) x [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
                  for responsible predictors, (C - IoU)^2 for their confidence (``rescore``; else 1),
                  ``lambda_noobj`` (0.5) x C^2 for every other predictor, and the squared error of the
                  class probabilities in cells with an object; summed, divided by the batch size;
5. decoding       class-specific confidence = Pr(class | object) x confidence per box and class, boxes
                  from the grid (``yolo_decode``), then thresholding, per-class NMS and the best
                  ``detections_per_img`` in the fused ``detection_postprocess`` kernel (the boxes are
                  already decoded: they go in as its anchors with zero offsets, which decode to
                  themselves).

Model contract (``MODELS.md``): train mode ``model(images, targets)`` -> ``{"loss_coord", "loss_obj",
"loss_noobj", "loss_class"}`` (their sum is the paper's loss); an image without objects contributes the
no-object term only. Eval mode -> one dict ``boxes`` Tensor[D, 4] (x1, y1, x2, y2, input pixels),
``labels`` Tensor[D] int64 (1..num_classes-1), ``scores`` Tensor[D] per image. Labels out of range,
malformed targets or images: ValueError naming them.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import box_overlaps, detection_postprocess, yolo_decode
from .faster_rcnn import _load_weights, validate_targets
from .localization import IMAGENET_MEAN, IMAGENET_STD, build_trunk
from .transform import FixedSizeTransform

__all__ = ["YOLOv1", "yolo_v1", "yolo_v1_loss", "build_yolo_targets"]


# ---------------------------------------------------------------------------
# 4. targets and loss
# ---------------------------------------------------------------------------


def build_yolo_targets(boxes: Tensor, labels: Tensor, grid: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image's ground truth on the grid.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2) relative to the image ([0, 1]); labels: Tensor[N] (1..C).
        grid: S.

    Returns ``(cells, boxes, params, labels)`` for the objects that own a cell (one per cell: where
    several centres fall in one cell, the largest object): ``cells`` Tensor[M] (row * S + column),
    ``boxes`` Tensor[M, 4] relative x1y1x2y2, ``params`` Tensor[M, 4] (x, y in the cell, sqrt(w),
    sqrt(h)), ``labels`` Tensor[M].
    """
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    col = (cx * grid).floor().clamp(0, grid - 1)
    row = (cy * grid).floor().clamp(0, grid - 1)
    cells = (row * grid + col).long()
    order = torch.argsort(w * h, descending=True, stable=True)
    seen, keep = set(), []
    for j in order.tolist():
        c = int(cells[j])
        if c not in seen:
            seen.add(c)
            keep.append(j)
    k = torch.tensor(sorted(keep), dtype=torch.long, device=boxes.device)
    params = torch.stack([cx * grid - col, cy * grid - row, w.sqrt(), h.sqrt()], 1)
    return cells[k], boxes[k], params[k], labels[k]


def yolo_v1_loss(box_params: Tensor, confidence: Tensor, class_probs: Tensor, targets: List[Dict[str, Tensor]],
                 lambda_coord: float = 5.0, lambda_noobj: float = 0.5, rescore: bool = True) -> Dict[str, Tensor]:
    """The YOLO v1 loss.

    Args:
        box_params: Tensor[N, S, S, B, 4]: (x, y, sqrt(w), sqrt(h)) per box (see the module docstring).
        confidence: Tensor[N, S, S, B]; class_probs: Tensor[N, S, S, C] (class c is label c + 1).
        targets: per image ``boxes`` Tensor[M, 4] relative x1y1x2y2 and ``labels`` Tensor[M] (1..C).
        lambda_coord, lambda_noobj: the paper's weights (5, 0.5).
        rescore: the responsible predictor's confidence target is its IoU with the ground truth
            (the paper); False: 1.

    Returns ``{"loss_coord", "loss_obj", "loss_noobj", "loss_class"}``, each summed over the batch and
    divided by N (their sum is the paper's loss / N).
    """
    n, S, _, B, _ = box_params.shape
    C = class_probs.shape[-1]
    # decoded boxes, relative to the image, for the IoU of each predictor with its cell's object
    pred_boxes = yolo_decode(box_params, (1.0, 1.0))  # [N, S, S, B, 4]
    responsible = torch.zeros(n, S * S, B, dtype=torch.bool, device=box_params.device)
    coord = box_params.new_zeros(())
    obj = box_params.new_zeros(())
    cls = box_params.new_zeros(())
    flat_params = box_params.reshape(n, S * S, B, 4)
    flat_conf = confidence.reshape(n, S * S, B)
    flat_boxes = pred_boxes.reshape(n, S * S, B, 4)
    flat_cls = class_probs.reshape(n, S * S, C)
    for i, t in enumerate(targets):
        if t["boxes"].shape[0] == 0:
            continue
        cells, gt, params, labels = build_yolo_targets(t["boxes"].to(box_params.dtype), t["labels"], S)
        m = cells.shape[0]
        cand = flat_boxes[i, cells]  # [M, B, 4]
        ious = box_overlaps(cand.reshape(-1, 4).detach(), gt.repeat_interleave(B, 0), "iou", True).reshape(m, B)
        best = ious.argmax(1)  # the responsible predictor of each object's cell
        responsible[i, cells, best] = True
        ar = torch.arange(m, device=cells.device)
        p = flat_params[i, cells, best]  # [M, 4]
        coord = coord + ((p - params) ** 2).sum()
        target_conf = ious[ar, best].to(flat_conf.dtype) if rescore else torch.ones_like(ious[ar, best])
        obj = obj + ((flat_conf[i, cells, best] - target_conf) ** 2).sum()
        onehot = F.one_hot(labels.long() - 1, C).to(flat_cls.dtype)
        cls = cls + ((flat_cls[i, cells] - onehot) ** 2).sum()
    noobj = (flat_conf[~responsible] ** 2).sum()
    return {"loss_coord": lambda_coord * coord / n, "loss_obj": obj / n, "loss_noobj": lambda_noobj * noobj / n,
            "loss_class": cls / n}


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class YOLOv1(nn.Module):
    """YOLO v1 from a backbone; see the module docstring.

    Args:
        num_classes: classes including background (C = num_classes - 1 class probabilities per cell).
        backbone: "tiny" or "resnet18" (or "overfeat"); norm: their normalisation.
        image_size: the input side; grid_size: S (7); boxes_per_cell: B (2); hidden: the first FC width.
        lambda_coord, lambda_noobj, rescore: the loss (:func:`yolo_v1_loss`).
        linear: the paper's linear last layer (True) or (default) sigmoids on the box values and
            the confidence and a softmax on the class scores.
        dropout: after the first FC layer (the paper: 0.5; 0 here, for short CPU runs).
        score_thresh, nms_thresh, detections_per_img: decoding.
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", image_size: int = 128, grid_size: int = 7,
                 boxes_per_cell: int = 2, hidden: int = 512, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 rescore: bool = True, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, norm: str = "group", dropout: float = 0.0, linear: bool = False,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"grid_size: must be a positive int, got {grid_size!r}")
        if not isinstance(boxes_per_cell, int) or boxes_per_cell < 1:
            raise ValueError(f"boxes_per_cell: must be a positive int, got {boxes_per_cell!r}")
        self.num_classes = num_classes
        self.S, self.B, self.C = grid_size, boxes_per_cell, num_classes - 1
        self.lambda_coord, self.lambda_noobj, self.rescore = float(lambda_coord), float(lambda_noobj), bool(rescore)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
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
        # 3. two fully connected layers to S x S x (5B + C)
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(c * h * w, hidden), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, self.S * self.S * (5 * self.B + self.C)))
        self.linear = bool(linear)
        self.feature_scale = 1.0 / math.sqrt(float(h * w))  # as the localization model's fc6 input

    def predict_grid(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Normalised Tensor[N, 3, size, size] -> (box params Tensor[N, S, S, B, 4], confidence
        Tensor[N, S, S, B], class probabilities Tensor[N, S, S, C]); the raw output is
        Tensor[N, S, S, 5B + C] laid out as B x (x, y, sqrt w, sqrt h, confidence), then C scores."""
        n = x.shape[0]
        raw = self.head(self.backbone(x) * self.feature_scale).reshape(n, self.S, self.S, 5 * self.B + self.C)
        per_box = raw[..., : 5 * self.B].reshape(n, self.S, self.S, self.B, 5)
        if self.linear:  # the paper: a linear last layer; kept in range where decoded
            per_box = per_box + 0.5 * per_box.new_tensor([1.0, 1.0, 1.0, 1.0, 0.0])
            return per_box[..., :4], per_box[..., 4], raw[..., 5 * self.B:] + 1.0 / self.C
        per_box = per_box.sigmoid()
        return per_box[..., :4], per_box[..., 4], raw[..., 5 * self.B:].softmax(-1)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        # 1. fixed-size input
        x, sizes = self.transform(images)
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        # 2-3. backbone and head
        params, conf, probs = self.predict_grid(x)
        if self.training:
            # 4. the loss, boxes relative to each image
            rel = [{"boxes": t["boxes"] / t["boxes"].new_tensor([w, h, w, h]), "labels": t["labels"]}
                   for t, (h, w) in zip(targets, sizes)]
            return yolo_v1_loss(params.float(), conf.float(), probs.float(), rel,  # float32 sums under autocast
                                self.lambda_coord, self.lambda_noobj, self.rescore)
        # 5. decoding
        return self.decode(params, conf, probs, sizes)

    def decode(self, params: Tensor, conf: Tensor, probs: Tensor, sizes: List[Tuple[int, int]]
               ) -> List[Dict[str, Tensor]]:
        n = params.shape[0]
        scale = params.new_tensor([[w, h, w, h] for h, w in sizes])  # [N, 4]
        if self.linear:
            params, conf, probs = params.clamp(min=0.0), conf.clamp(0.0, 1.0), probs.clamp(0.0, 1.0)
        boxes = yolo_decode(params, (1.0, 1.0)).reshape(n, -1, 4) * scale[:, None, :]  # [N, S*S*B, 4]
        scores = (probs[:, :, :, None, :] * conf[..., None]).reshape(n, -1, self.C)  # class-specific confidence
        scores = torch.cat([torch.zeros_like(scores[..., :1]), scores], -1)  # column 0: background, never kept
        return detection_postprocess(scores, torch.zeros_like(boxes), boxes, sizes, score_thresh=self.score_thresh,
                                     topk_per_level=-1, nms_thresh=self.nms_thresh,
                                     max_det=self.detections_per_img)


def yolo_v1(num_classes: int, backbone: str = "tiny", image_size: int = 128, grid_size: int = 7,
            boxes_per_cell: int = 2, weights=None, **kwargs) -> YOLOv1:
    """YOLO v1, CPU-sized: TinyCNN backbone, 128 x 128 input, 7 x 7 grid, 2 boxes per cell (the
    paper: 448 x 448, its 24-layer CNN). Other keywords go to :class:`YOLOv1`; ``weights``: None or
    a local ``state_dict`` file of this configuration."""
    model = YOLOv1(num_classes, backbone=backbone, image_size=image_size, grid_size=grid_size,
                   boxes_per_cell=boxes_per_cell, **kwargs)
    _load_weights(model, weights)
    return model
