"""Fast R-CNN (Girshick 2015): RoI pooling of the proposals on one shared feature map, two FC layers,
softmax over K+1 classes and per-class box offsets, trained end to end with one multi-task loss.

Read top-down, as the paper:

1. ``proposal_fn``  object proposals: selective search in fast mode (~2000 per image; ``max_proposals``),
                    cached per image; or any callable ``image -> Tensor[P, 4]``, or ``proposals=``;
2. ``transform``    normalise, resize (short side ``image_size``), batch; proposals resized alongside;
3. ``backbone``     the convolutional layers once per image: a feature map of stride 16 (the paper;
                    ``feature_stride``, 8 by default for the small synthetic objects);
4. RoI pooling      each proposal projected onto the map (x 1/stride), split into 7 x 7 cells and each cell
                    max-pooled (``pydetops.ops.roi_pool``): Tensor[R, C, 7, 7];
5. fc6, fc7         two FC layers (``TwoMLPHead``), then two sibling outputs (``FastRCNNPredictor``):
                    softmax over K+1 classes and 4 box offsets per class;
6. loss             L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v): cross-entropy plus smooth-L1 of the
                    true class's offsets on foreground RoIs (``fastrcnn_loss``; ``box_loss_weight`` lambda = 1;
                    smooth-L1 with torchvision's beta 1/9 on targets scaled by (10, 10, 5, 5), the
                    paper's normalisation of the targets);
                    minibatches of R = 128 RoIs from N images (R / N each), 25 % foreground
                    (IoU >= 0.5), background IoU in [0.1, 0.5) (lower: ignored), ground truths included;
7. inference        decode per class, per-class NMS (0.3), boxes back to the input images' pixels.

The head (sampling, loss, post-processing) is the one of R-CNN and SPPNet
(``heads/region_classifier.py``) and of Faster R-CNN (``heads/roi_heads.py``).

Model contract (``MODELS.md``): train -> ``{"loss_classifier", "loss_box_reg"}``; eval -> one dict
``boxes`` Tensor[D, 4] (x1, y1, x2, y2, input pixels), ``labels`` Tensor[D] int64, ``scores`` per image.
"""
from typing import Callable, Dict, List, Optional, Union

from torch import Tensor

from ..ops import RoIPool
from .backbones import norm_layer_by_name, single_map_backbone
from .heads.region_classifier import RegionClassifierHeads
from .heads.roi_heads import FastRCNNPredictor, TwoMLPHead
from .proposals import ProposalDetector, make_proposal_fn
from .transform import DetectionTransform

__all__ = ["FastRCNN", "fast_rcnn"]


class FastRCNN(ProposalDetector):
    """Fast R-CNN from its parts; see the module docstring.

    Args:
        num_classes: classes including background.
        backbone: "tiny", "resnet18" or "resnet50", cut at ``feature_stride``.
        feature_stride: the feature map's stride: 8 (CPU default: the synthetic scenes' objects are
            20-50 px, a few cells at 8), 16 (the paper's, for objects of 100+ px in 600 px images) or 32.
        norm: "group" (default), "batch" or "frozen".
        image_size: short side of the resized images (the paper: 600; long side <= 1333/800 of it).
        pool_size: RoI pooling grid (7).
        representation_size: fc6 / fc7 width (the paper: 4096).
        rois_per_minibatch: R (128), drawn R / N from each of the N images of a batch.
        positive_fraction: 0.25; fg_iou_thresh: 0.5; bg_iou_low: 0.1 (background IoU in [0.1, 0.5)).
        box_loss_weight: lambda of the multi-task loss (1, the paper's).
        proposal_fn, max_proposals, cache_proposals, score_thresh, nms_thresh, detections_per_img,
        min_proposal_size: as :class:`RCNN`.
    """

    def __init__(self, num_classes: int, backbone: str = "tiny", norm: str = "group", image_size: int = 128,
                 feature_stride: int = 8, pool_size: int = 7, representation_size: int = 256,
                 proposal_fn: Union[str, Callable[[Tensor], Tensor], None] = "selective_search",
                 max_proposals: int = 500, cache_proposals: bool = True, rois_per_minibatch: int = 128,
                 positive_fraction: float = 0.25, fg_iou_thresh: float = 0.5, bg_iou_low: float = 0.1,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100,
                 min_proposal_size: float = 1.0, box_loss_weight: float = 1.0):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size: must be an int >= 16, got {image_size!r}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size: must be an int >= 1, got {pool_size!r}")
        self.num_classes = num_classes
        self.min_proposal_size = float(min_proposal_size)
        # 1. object proposals
        self.proposal_fn = make_proposal_fn(proposal_fn, max_proposals, cache_proposals)
        # 2. normalise, resize, batch
        self.transform = DetectionTransform(image_size, image_size * 1333 // 800, [0.485, 0.456, 0.406],
                                            [0.229, 0.224, 0.225], 32)
        # 3. the shared convolutional feature map
        self.backbone = single_map_backbone(backbone, norm_layer_by_name(norm), stride=feature_stride)
        # 4. RoI pooling, 5. fc6/fc7 and the two sibling outputs, 6./7. loss and post-processing
        self.roi_heads = RegionClassifierHeads(
            RoIPool(pool_size, 1.0 / self.backbone.stride),
            TwoMLPHead(self.backbone.out_channels * pool_size * pool_size, representation_size),
            FastRCNNPredictor(representation_size, num_classes), classifier="softmax",
            rois_per_minibatch=rois_per_minibatch, positive_fraction=positive_fraction, fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=fg_iou_thresh, bg_iou_low=bg_iou_low, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, box_loss_weight=box_loss_weight)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None,
                proposals: Optional[List[Tensor]] = None):
        # 1.-2. proposals (cached per image), normalised and resized images, proposals alongside
        image_list, targets, props, original_sizes = self.prepare(images, targets, proposals)
        # 3. one feature map per image
        features = self.backbone(image_list.tensors)
        # 4.-6. RoI pooling, fc6/fc7, K+1 scores and per-class offsets; training: R/N RoIs per image
        detections, losses = self.roi_heads(features, props, image_list.image_sizes, targets)
        if self.training:
            return losses
        # 7. per-class NMS happened in the head; boxes back to the input images' pixels
        return self.finish(detections, image_list, original_sizes)


def fast_rcnn(num_classes: int, backbone: str = "tiny", image_size: int = 128, weights=None, **kwargs) -> FastRCNN:
    """Fast R-CNN with CPU-sized defaults (tiny CNN at stride 8, 128 px images, 7 x 7 RoI pooling, FC width 256);
    ``weights``: None or a local ``state_dict`` file; other keywords go to :class:`FastRCNN`."""
    from .faster_rcnn import _load_weights
    model = FastRCNN(num_classes, backbone=backbone, image_size=image_size, **kwargs)
    _load_weights(model, weights)
    return model
