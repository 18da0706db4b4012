"""SPPNet for detection (He, Zhang, Ren, Sun 2014): the CNN once per image, spatial pyramid pooling
of each proposal on its feature map.

Read top-down, as the paper:

1. ``proposal_fn``  region proposals: selective search in fast mode (~2000 per image; ``max_proposals``),
                    cached per image; or any callable ``image -> Tensor[P, 4]``, or ``proposals=``;
2. ``transform``    normalise, resize (short side ``image_size``), batch; proposals resized alongside;
3. ``backbone``     the convolutional layers ONCE per image: one feature map (stride 16 in the paper;
                    ``feature_stride``, 8 by default for the small synthetic objects)
                    (R-CNN's main cost, a CNN per region, is gone);
4. SPP              each proposal's window on the map max-pooled into ``levels`` grids (4x4, 2x2, 1x1
                    by default; the paper's detector 6x6, 3x3, 2x2, 1x1) and concatenated: a
                    fixed-length vector for any window size (``pydetops.ops.spp_pool``, one kernel);
5. fc6, fc7         then R-CNN's classifier (softmax over K+1, or per-class linear SVMs) and per-class
                    box regressor, the same code (``heads/region_classifier.py``);
6. NMS              per class at test time; boxes back to the input images' pixels.

Training minibatches: 128 regions, 25 % positives (IoU >= 0.5, ground-truth boxes included), the
rest background (IoU < 0.5). The paper fine-tunes only the FC layers on a pre-trained CNN; trained
from scratch here, the whole network learns.

Model contract (``MODELS.md``): train -> ``{"loss_classifier", "loss_box_reg"}`` (+ ``"loss_svm"``);
eval -> one dict ``boxes`` Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels``, ``scores`` per image.
"""
from typing import Callable, Dict, List, Optional, Sequence, Union

from torch import Tensor

from ..ops import SpatialPyramidPooling
from .backbones import norm_layer_by_name, single_map_backbone
from .heads.region_classifier import RegionClassifierHeads
from .heads.roi_heads import FastRCNNPredictor, TwoMLPHead
from .proposals import ProposalDetector, make_proposal_fn
from .transform import DetectionTransform

__all__ = ["SPPNet", "sppnet"]


class SPPNet(ProposalDetector):
    """SPPNet from its parts; see the module docstring.

    Args:
        num_classes: classes including background.
        backbone: "tiny", "resnet18" or "resnet50", cut at ``feature_stride``.
        feature_stride: the feature map's stride: 8 (CPU default: the synthetic scenes' objects are
            20-50 px, a few cells at 8), 16 (the paper's, for objects of 100+ px in 600 px images) or 32.
        norm: "group" (default), "batch" or "frozen".
        image_size: short side of the resized images (long side <= 1333/800 of it).
        levels: the pyramid's grid sizes; each region becomes C * sum(l * l) numbers.
        representation_size: fc6 / fc7 width.
        classifier, proposal_fn, max_proposals, cache_proposals, rois_per_minibatch, positive_fraction,
        fg_iou_thresh, score_thresh, nms_thresh, detections_per_img, min_proposal_size: as :class:`RCNN`.
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", norm: str = "group", image_size: int = 128,
                 feature_stride: int = 8, levels: Sequence[int] = (4, 2, 1), representation_size: int = 256,
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
        # 3. the CNN once per image
        self.backbone = single_map_backbone(backbone, norm_layer_by_name(norm), stride=feature_stride)
        # 4. spatial pyramid pooling, 5. fc6/fc7 + the shared classifier and regressor
        spp = SpatialPyramidPooling(levels, 1.0 / self.backbone.stride)
        self.roi_heads = RegionClassifierHeads(
            spp, TwoMLPHead(spp.output_features(self.backbone.out_channels), representation_size),
            FastRCNNPredictor(representation_size, num_classes), classifier=classifier,
            rois_per_minibatch=rois_per_minibatch, positive_fraction=positive_fraction, fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=fg_iou_thresh, bg_iou_low=0.0, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None,
                proposals: Optional[List[Tensor]] = None):
        # 1.-2. proposals (cached per image), normalised and resized images, proposals alongside
        image_list, targets, props, original_sizes = self.prepare(images, targets, proposals)
        # 3. one feature map per image
        features = self.backbone(image_list.tensors)
        # 4.-5. SPP of every proposal, fc6/fc7, classify, regress (train: 25 % positives of 128)
        detections, losses = self.roi_heads(features, props, image_list.image_sizes, targets)
        if self.training:
            return losses
        # 6. per-class NMS happened in the head; boxes back to the input images' pixels
        return self.finish(detections, image_list, original_sizes)


def sppnet(num_classes: int, backbone: str = "tiny", image_size: int = 128, weights=None, **kwargs) -> SPPNet:
    """SPPNet with CPU-sized defaults (tiny CNN at stride 8, 128 px images, levels 4x4, 2x2, 1x1, softmax);
    ``weights``: None or a local ``state_dict`` file; other keywords go to :class:`SPPNet`."""
    from .faster_rcnn import _load_weights
    model = SPPNet(num_classes, backbone=backbone, image_size=image_size, **kwargs)
    _load_weights(model, weights)
    return model
