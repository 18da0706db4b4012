"""OverFeat (Sermanet et al. 2014): the classification + localization network slid over the image
in one pass, by turning its fully connected layers into convolutions, at several scales.

Read top-down, as the paper (and the seeds' slides):

1. the network   :class:`~pydetops.models.localization.LocalizationNet` (``self.net``): a CNN trunk,
                 fc6, fc7, a class head (softmax over background + categories) and a box head (R-CNN
                 codes relative to the input window), trained on ``image_size`` x ``image_size``
                 crops (``window``): crops around each object (the object fully inside, 1.15-2x its
                 size: its class and box) and background crops (no object more than 25 % inside);
2. FC -> conv    :func:`fully_convolutional` copies the weights (nothing is retrained):
                 ``Linear(C * h * w -> F)`` becomes ``Conv2d(C, F, kernel h x w)`` and the following
                 Linears 1 x 1 convolutions. On a larger image the network then gives a score map and
                 a box per window position in one pass (the seeds' 14 x 14 -> 1 x 1, 16 x 16 -> 2 x 2);
                 with the default trunk (unpadded convs, BatchNorm, max pools) output (i, j) EQUALS the FC
                 network on the window at (i * stride, j * stride) (tests check every window);
3. scales        the image (short side ``min_size``) is resized by each of ``scales``, so the fixed
                 window covers objects of several sizes (an image smaller than the window at some
                 scale is upsampled to the window: one position);
4. merging       every (window, class) with its class probability and its box decoded against its
                 window, thresholded and merged by per-class NMS in the fused
                 ``detection_postprocess`` kernel (greedy NMS, as later detectors; the paper's
                 merging averages overlapping boxes instead).

Model contract (``MODELS.md``): train mode ``model(images, targets)`` -> ``{"loss_classifier",
"loss_box_reg"}`` on the sampled crops (images without objects give background crops only);
eval mode -> one dict ``boxes`` Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels``, ``scores``
per image.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import detection_postprocess, encode_boxes, roi_align
from .faster_rcnn import _load_weights, validate_targets
from .localization import LocalizationNet, localization_loss
from .transform import check_images

__all__ = ["OverFeat", "FullyConvolutionalNet", "fully_convolutional", "overfeat"]


# ---------------------------------------------------------------------------
# 2. fully connected layers -> convolutions (weights copied)
# ---------------------------------------------------------------------------


def _linear_to_conv(linear: nn.Linear, in_channels: int, kernel: Tuple[int, int]) -> nn.Conv2d:
    """``Linear(in_channels * kh * kw -> F)`` (input flattened C-major, as ``Tensor.flatten``) as
    ``Conv2d(in_channels, F, (kh, kw))`` with the same weights."""
    kh, kw = kernel
    if linear.in_features != in_channels * kh * kw:
        raise ValueError(f"linear: {linear.in_features} inputs, not {in_channels} x {kh} x {kw}")
    conv = nn.Conv2d(in_channels, linear.out_features, (kh, kw), bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, in_channels, kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class FullyConvolutionalNet(nn.Module):
    """:class:`LocalizationNet` with fc6 as an h x w convolution and fc7 and the heads as 1 x 1
    convolutions. ``forward(x: Tensor[N, 3, H, W] normalised)`` -> ``class_logits`` [N, num_classes,
    H', W'], ``boxes`` [N, 4 or 4 * num_classes, H', W'] (codes against each window),
    ``keypoints`` [N, 2K, H', W'] when the network regresses points. ``backbone`` is the network's
    own (shared, not copied: it is convolutional already)."""

    def __init__(self, net: LocalizationNet):
        super().__init__()
        c, h, w = net.feature_shape
        self.backbone = net.backbone
        self.fc6 = _linear_to_conv(net.fc6, c, (h, w))
        hidden = net.fc6.out_features
        self.fc7 = _linear_to_conv(net.fc7, hidden, (1, 1))
        self.cls_score = _linear_to_conv(net.cls_score, hidden, (1, 1))
        self.bbox_pred = _linear_to_conv(net.bbox_pred, hidden, (1, 1))
        self.keypoint_pred = (_linear_to_conv(net.keypoint_pred, hidden, (1, 1))
                              if net.keypoint_pred is not None else None)
        self.feature_scale = net.feature_scale
        self.window = net.image_size
        self.stride = int(getattr(net.backbone, "stride", 1))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        f = F.relu(self.fc7(F.relu(self.fc6(self.backbone(x) * self.feature_scale))))
        out = {"class_logits": self.cls_score(f), "boxes": self.bbox_pred(f)}
        if self.keypoint_pred is not None:
            out["keypoints"] = self.keypoint_pred(f)
        return out


def fully_convolutional(net: LocalizationNet) -> FullyConvolutionalNet:
    """The FC network as a fully convolutional one, weights copied (see the module docstring)."""
    return FullyConvolutionalNet(net)


# ---------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------


class OverFeat(nn.Module):
    """OverFeat-style sliding-window detector around a :class:`LocalizationNet`.

    Args:
        num_classes: classes including background.
        backbone, image_size (the window side), hidden, box_loss, class_agnostic, norm: the
            network's (:class:`LocalizationNet`).
        scales: factors applied to the image after resizing its short side to ``min_size``.
        positives_per_image, negatives_per_image: crops sampled per training image.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: the merging step.
    """

    def __init__(self, num_classes: int, backbone: str = "overfeat", image_size: int = 64, hidden: int = 256,
                 box_loss: str = "smooth_l1", class_agnostic: bool = True, norm: str = "group",
                 scales: Sequence[float] = (0.5, 0.8, 1.3, 2.1), min_size: int = 128,
                 positives_per_image: int = 3, negatives_per_image: int = 2, score_thresh: float = 0.05,
                 nms_thresh: float = 0.3, detections_per_img: int = 100, topk_candidates: int = 1000,
                 **kwargs):
        super().__init__()
        if not scales or any(not (float(s) > 0 and math.isfinite(float(s))) for s in scales):
            raise ValueError(f"scales: must be a non-empty list of positive numbers, got {scales!r}")
        if positives_per_image < 0 or negatives_per_image < 0 or positives_per_image + negatives_per_image == 0:
            raise ValueError("positives_per_image, negatives_per_image: must be >= 0 and not both 0")
        self.net = LocalizationNet(num_classes, backbone=backbone, image_size=image_size, hidden=hidden,
                                   box_loss=box_loss, class_agnostic=class_agnostic, norm=norm, **kwargs)
        if self.net.num_keypoints:
            raise ValueError("num_keypoints: the sliding-window detector regresses boxes only")
        self.num_classes = num_classes
        self.scales = tuple(float(s) for s in scales)
        self.min_size = int(min_size)
        self.positives_per_image = int(positives_per_image)
        self.negatives_per_image = int(negatives_per_image)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.topk_candidates = int(topk_candidates)

    @property
    def window(self) -> int:
        return self.net.image_size

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        check_images(images)
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
            return self.train_on_crops(images, targets)
        return self.detect(images)

    # 1. training on crops -------------------------------------------------------------------

    def sample_windows(self, boxes: Tensor, labels: Tensor, height: int, width: int
                       ) -> Tuple[Tensor, Tensor, Tensor]:
        """Training windows of one image: (windows Tensor[M, 4] x1y1x2y2 pixels, labels Tensor[M]
        (0 background), target boxes Tensor[M, 4] pixels (the window itself for background)).

        Positives: up to ``positives_per_image`` objects, each in a square window of side
        U(1.15, 2) x its longer side (at most the image's shorter side), placed at random with the
        object inside. Negatives: ``negatives_per_image`` square windows of side U(0.15, 0.8) x the
        shorter side at random places where no object is more than 25 % inside (up to 20 tries each)."""
        dev = boxes.device
        short = float(min(height, width))
        wins, labs, tgts = [], [], []
        order = torch.randperm(boxes.shape[0], device=dev)[: self.positives_per_image]
        for j in order.tolist():
            x1, y1, x2, y2 = boxes[j].tolist()
            side = min(max(x2 - x1, y2 - y1) * float(torch.empty(1).uniform_(1.15, 2.0)), short)
            pos = []
            for lo_edge, hi_edge, extent in ((x1, x2, width), (y1, y2, height)):
                lo, hi = max(0.0, hi_edge - side), min(lo_edge, extent - side)
                if lo > hi:
                    lo = hi = min(max(0.5 * (lo_edge + hi_edge) - 0.5 * side, 0.0), extent - side)
                pos.append(lo + (hi - lo) * float(torch.rand(1)))
            wins.append([pos[0], pos[1], pos[0] + side, pos[1] + side])
            labs.append(int(labels[j]))
            tgts.append([x1, y1, x2, y2])
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
        for _ in range(self.negatives_per_image):
            for _try in range(20):
                side = short * float(torch.empty(1).uniform_(0.15, 0.8))
                x0 = (width - side) * float(torch.rand(1))
                y0 = (height - side) * float(torch.rand(1))
                if boxes.shape[0]:
                    iw = (boxes[:, 2].clamp(max=x0 + side) - boxes[:, 0].clamp(min=x0)).clamp(min=0)
                    ih = (boxes[:, 3].clamp(max=y0 + side) - boxes[:, 1].clamp(min=y0)).clamp(min=0)
                    if bool((iw * ih / area > 0.25).any()):
                        continue
                wins.append([x0, y0, x0 + side, y0 + side])
                labs.append(0)
                tgts.append(wins[-1])
                break
        w = torch.tensor(wins, dtype=torch.float32, device=dev).reshape(-1, 4)
        return w, torch.tensor(labs, dtype=torch.int64, device=dev), torch.tensor(tgts, dtype=torch.float32,
                                                                                  device=dev).reshape(-1, 4)

    def train_on_crops(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Crops resized to the window with ``roi_align`` (the RoI op: one call for the batch), then
        the network's weighted loss on them."""
        h = max(int(im.shape[1]) for im in images)
        w = max(int(im.shape[2]) for im in images)
        batch = images[0].new_zeros(len(images), 3, h, w)
        rois, labels, tboxes = [], [], []
        for i, (im, t) in enumerate(zip(images, targets)):
            batch[i, :, : im.shape[1], : im.shape[2]].copy_(im)
            win, lab, tb = self.sample_windows(t["boxes"].float(), t["labels"], int(im.shape[1]), int(im.shape[2]))
            rois.append(win.to(im.dtype))
            labels.append(lab)
            tboxes.append(tb)
        windows = torch.cat(rois)
        if windows.shape[0] == 0:  # cannot happen with negatives_per_image > 0 unless every try hit an object
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss_classifier": zero, "loss_box_reg": zero}
        crops = roi_align(batch, rois, output_size=self.window, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        out = self.net.heads(self._normalize_batch(crops))
        labels_t = torch.cat(labels)
        codes = encode_boxes(torch.cat(tboxes), windows.float(), windows.new_ones(4, dtype=torch.float32))
        return localization_loss(out["class_logits"], out["boxes"], labels_t, codes, self.net.box_loss,
                                 self.net.box_loss_weight)

    def _normalize_batch(self, x: Tensor) -> Tensor:
        t = self.net.transform
        mean = torch.as_tensor(t.image_mean, dtype=x.dtype, device=x.device)[None, :, None, None]
        std = torch.as_tensor(t.image_std, dtype=x.dtype, device=x.device)[None, :, None, None]
        return (x - mean) / std

    # 2-4. detection: FC -> conv, scales, merging ----------------------------------------------

    def dense_windows(self, dense: FullyConvolutionalNet, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """All windows of one image at every scale: (windows Tensor[A, 4], class probabilities
        Tensor[A, num_classes], codes Tensor[A, 4 or 4 * num_classes]), windows in the image's pixels."""
        H, W = int(image.shape[1]), int(image.shape[2])
        base = self.min_size / float(min(H, W))
        x0 = self._normalize_batch(image[None])
        wins, probs, codes = [], [], []
        for s in self.scales:
            sh = max(int(round(H * base * s)), self.window)
            sw = max(int(round(W * base * s)), self.window)
            x = F.interpolate(x0, size=(sh, sw), mode="bilinear", align_corners=False) if (sh, sw) != (H, W) else x0
            out = dense(x)
            logits, code = out["class_logits"][0], out["boxes"][0]
            ho, wo = logits.shape[-2:]
            ys = torch.arange(ho, device=image.device, dtype=image.dtype) * dense.stride
            xs = torch.arange(wo, device=image.device, dtype=image.dtype) * dense.stride
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            fx, fy = W / float(sw), H / float(sh)
            win = torch.stack([gx * fx, gy * fy, (gx + self.window) * fx, (gy + self.window) * fy], -1)
            wins.append(win.reshape(-1, 4))
            probs.append(logits.softmax(0).permute(1, 2, 0).reshape(ho * wo, -1))
            codes.append(code.permute(1, 2, 0).reshape(ho * wo, -1))
        return torch.cat(wins), torch.cat(probs), torch.cat(codes)

    def detect(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        dense = fully_convolutional(self.net)
        results = []
        for image in images:
            wins, probs, codes = self.dense_windows(dense, image)
            probs = torch.cat([torch.zeros_like(probs[:, :1]), probs[:, 1:]], 1)  # background never detected
            results.extend(detection_postprocess(
                probs[None], codes[None], wins, [(int(image.shape[1]), int(image.shape[2]))],
                score_thresh=self.score_thresh, topk_per_level=self.topk_candidates, nms_thresh=self.nms_thresh,
                max_det=self.detections_per_img))
        return results


def overfeat(num_classes: int, backbone: str = "overfeat", image_size: int = 64, weights=None, **kwargs) -> OverFeat:
    """OverFeat-style detector, CPU-sized: a 64 x 64 window network (the localization model's
    OverFeat-like trunk, stride 8) slid over the image (short side 128) at 4 scales: windows of
    128, 80, 49 and 30 input pixels, for objects of about 15 to 110 pixels. ``weights``: None or a local
    ``state_dict`` file of this configuration (a trained ``localization`` model's weights load into
    ``model.net``). Other keywords go to :class:`OverFeat`."""
    model = OverFeat(num_classes, backbone=backbone, image_size=image_size, **kwargs)
    _load_weights(model, weights)
    return model
