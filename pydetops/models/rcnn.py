"""R-CNN (Girshick, Donahue, Darrell, Malik 2014): regions with CNN features.

Read top-down, as the paper:

1. ``proposal_fn``  region proposals: selective search in fast mode (~2000 per image in the paper;
                    ``max_proposals``), computed once per image and cached (``ProposalCache``);
                    or any callable ``image -> Tensor[P, 4]``, or ``proposals=`` per call;
2. ``transform``    normalise, resize (short side ``image_size``), batch; proposals resized alongside;
3. warp             each proposal, dilated so that ``context_padding`` pixels of image context surround
                    it at the warped size (the paper: 16 px at 227), is cropped and resized to
                    ``warp_size`` x ``warp_size`` (RoIAlign on the image itself: ``RegionWarp``);
4. CNN              a CNN per warped region (the backbone, stride 32), then fc6 -> fc7 (``RegionCNN``);
5. classify         softmax over K+1 classes (fine-tuning) or, with ``classifier="svm"``, one linear
                    SVM per class (hinge loss, hard negatives) on the fc7 features;
6. box regression   per-class offsets (the shared ``BoxCoder`` coding), smooth-L1 (the paper: ridge
                    regression on pool5; here a linear layer trained jointly);
7. NMS              per class at test time (fused ``detection_postprocess``), boxes back to input pixels.

Training minibatches: 128 regions, 32 positives (IoU >= 0.5 with a ground truth, the ground-truth
boxes themselves included) and 96 background (IoU < 0.5), by the shared matcher and sampler
(``heads/region_classifier.py``, shared with SPPNet and Fast R-CNN).

Model contract (``MODELS.md``): ``model.train(); model(images, targets)`` -> ``{"loss_classifier",
"loss_box_reg"}`` (+ ``"loss_svm"``); ``model.eval(); model(images)`` -> one dict ``boxes``
Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels`` Tensor[D] int64, ``scores`` Tensor[D] per image.
Both accept ``proposals=[Tensor[P_i, 4], ...]`` (input pixels) instead of ``proposal_fn``'s.
"""
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import Tensor, nn

from ..ops import roi_align
from .backbones import norm_layer_by_name, single_map_backbone
from .heads.region_classifier import RegionClassifierHeads
from .heads.roi_heads import FastRCNNPredictor, TwoMLPHead
from .proposals import ProposalDetector, make_proposal_fn
from .transform import DetectionTransform

__all__ = ["RCNN", "rcnn", "RegionWarp", "RegionCNN"]


class RegionWarp(nn.Module):
    """Crop and warp each proposal (with context) to ``size`` x ``size``, whatever its aspect ratio.

    ``forward(images: Tensor[N, 3, H, W], proposals: List[Tensor[P_i, 4]])`` -> Tensor[sum P_i, 3, size, size].
    Each box is dilated about its centre by ``size / (size - 2 * context_padding)`` so that the
    original box fills the warped square less ``context_padding`` pixels on each side (the paper's
    "p = 16" at 227); what falls outside the image reads as 0 (the mean, after normalisation).
    The crop-and-resize is ``roi_align`` (aligned, ``sampling_ratio`` bilinear samples per bin side).
    """

    def __init__(self, size: int = 64, context_padding: int = 4, sampling_ratio: int = 2):
        super().__init__()
        if not isinstance(size, int) or size < 4:
            raise ValueError(f"warp_size: must be an int >= 4, got {size!r}")
        if not isinstance(context_padding, int) or not 0 <= 2 * context_padding < size:
            raise ValueError(f"context_padding: must be an int in [0, warp_size / 2), got {context_padding!r}")
        self.size, self.context_padding, self.sampling_ratio = size, context_padding, sampling_ratio

    def forward(self, images: Tensor, proposals: List[Tensor]) -> Tensor:
        grow = self.size / (self.size - 2 * self.context_padding)
        boxes = []
        for b in proposals:
            centre = (b[:, :2] + b[:, 2:]) * 0.5
            half = (b[:, 2:] - b[:, :2]) * (0.5 * grow)
            boxes.append(torch.cat([centre - half, centre + half], dim=1))
        return roi_align(images, boxes, (self.size, self.size), 1.0, self.sampling_ratio, True)

    def extra_repr(self) -> str:
        return f"size={self.size}, context_padding={self.context_padding}"


class RegionCNN(nn.Module):
    """The per-region network: ``backbone`` (Tensor[R, 3, S, S] -> Tensor[R, C, h, w]) -> ``mlp`` (fc6,
    fc7) -> Tensor[R, D]. Outside training the regions go through in chunks of ``chunk_size``
    (thousands of proposals per image)."""

    def __init__(self, backbone: nn.Module, mlp: nn.Module, chunk_size: int = 256):
        super().__init__()
        self.backbone = backbone
        self.mlp = mlp
        self.chunk_size = chunk_size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:  # no region: an empty feature batch (normalisation layers reject N = 0)
            return x.new_zeros((0, self.mlp.fc7.out_features)) + 0 * sum(p.sum() for p in self.mlp.parameters())
        if self.training or x.shape[0] <= self.chunk_size:
            return self.mlp(self.backbone(x))
        return torch.cat([self.mlp(self.backbone(c)) for c in x.split(self.chunk_size)])


class RCNN(ProposalDetector):
    """R-CNN from its parts: ``RCNN(num_classes, backbone=..., ...)``; see the module docstring.

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        backbone: "tiny" (TinyCNN, 128 channels) or "resnet18" / "resnet50": the per-region CNN (stride 32).
        norm: "group" (default), "batch" or "frozen" normalisation in the CNN.
        image_size: short side the images are resized to before warping (long side <= 1333/800 of it).
        warp_size: the CNN's input size (paper: 227; CPU default 64).
        context_padding: context pixels at the warped size (paper: 16 at 227; default 16 * warp_size / 227).
        representation_size: fc6 / fc7 width.
        classifier: "softmax" (default: it trains best in minutes) or "svm" (per-class linear SVMs).
        proposal_fn: "selective_search", a callable ``image -> Tensor[P, 4]``, or None (give ``proposals=``).
        max_proposals: selective search's proposals per image (paper ~2000; CPU default 500).
        cache_proposals: remember ``proposal_fn``'s boxes per image (``ProposalCache``).
        rois_per_minibatch, positive_fraction: 128 and 0.25 (32 positives + 96 background).
        fg_iou_thresh: positives' IoU (0.5); every other region is background.
        score_thresh, nms_thresh, detections_per_img: inference (per-class NMS at 0.3, the paper's).
        min_proposal_size: proposals narrower or lower than this (input pixels, after clipping) are dropped.
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", norm: str = "group", image_size: int = 128,
                 warp_size: int = 64, context_padding: Optional[int] = None, representation_size: int = 256,
                 classifier: str = "softmax",
                 proposal_fn: Union[str, Callable[[Tensor], Tensor], None] = "selective_search",
                 max_proposals: int = 500, cache_proposals: bool = True, rois_per_minibatch: int = 128,
                 positive_fraction: float = 0.25, fg_iou_thresh: float = 0.5, score_thresh: float = 0.05,
                 nms_thresh: float = 0.3, detections_per_img: int = 100, min_proposal_size: float = 1.0):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size: must be an int >= 16, got {image_size!r}")
        self.num_classes = num_classes
        self.min_proposal_size = float(min_proposal_size)
        # 1. region proposals
        self.proposal_fn = make_proposal_fn(proposal_fn, max_proposals, cache_proposals)
        # 2. normalise, resize, batch
        self.transform = DetectionTransform(image_size, image_size * 1333 // 800, [0.485, 0.456, 0.406],
                                            [0.229, 0.224, 0.225], 32)
        # 3. warp, 4. CNN + fc6/fc7, 5./6. classifier and box regressor
        if context_padding is None:
            context_padding = int(round(16 * warp_size / 227))
        cnn = single_map_backbone(backbone, norm_layer_by_name(norm), stride=32)
        cells = -(-warp_size // 32)
        region_cnn = RegionCNN(cnn, TwoMLPHead(cnn.out_channels * cells * cells, representation_size))
        self.roi_heads = RegionClassifierHeads(
            RegionWarp(warp_size, context_padding), region_cnn, FastRCNNPredictor(representation_size, num_classes),
            classifier=classifier, rois_per_minibatch=rois_per_minibatch, positive_fraction=positive_fraction,
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=fg_iou_thresh, bg_iou_low=0.0, score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None,
                proposals: Optional[List[Tensor]] = None):
        # 1.-2. proposals (cached per image), normalised and resized images, proposals alongside
        image_list, targets, props, original_sizes = self.prepare(images, targets, proposals)
        # 3.-6. warp every proposal, CNN per region, classify, regress (train: sample 32 + 96 of 128)
        detections, losses = self.roi_heads(image_list.tensors, props, image_list.image_sizes, targets)
        if self.training:
            return losses
        # 7. per-class NMS happened in the head; boxes back to the input images' pixels
        return self.finish(detections, image_list, original_sizes)


def rcnn(num_classes: int, backbone: str = "tiny", image_size: int = 128, weights=None, **kwargs) -> RCNN:
    """R-CNN with CPU-sized defaults (tiny CNN, 64 x 64 warps, softmax); ``weights``: None or a local
    ``state_dict`` file of this configuration; other keywords go to :class:`RCNN`."""
    from .faster_rcnn import _load_weights
    model = RCNN(num_classes, backbone=backbone, image_size=image_size, **kwargs)
    _load_weights(model, weights)
    return model
