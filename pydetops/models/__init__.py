"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``.
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .keypoint_rcnn import KeypointRCNN, keypoint_rcnn, keypointrcnn_resnet50_fpn
from .mask_rcnn import MaskRCNN, mask_rcnn, maskrcnn_resnet50_fpn

MODELS = {
    "faster_rcnn": faster_rcnn,
    "mask_rcnn": mask_rcnn,
    "keypoint_rcnn": keypoint_rcnn,
}

__all__ = ["MODELS", "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]
__all__ += ["MaskRCNN", "mask_rcnn", "maskrcnn_resnet50_fpn", "KeypointRCNN", "keypoint_rcnn",
            "keypointrcnn_resnet50_fpn"]
