"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``.
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .localization import LocalizationNet, localization
from .overfeat import OverFeat, overfeat
from .yolo import YOLOv1, yolo_v1

MODELS = {
    "faster_rcnn": faster_rcnn,
    "localization": localization,
    "overfeat": overfeat,
    "yolo_v1": yolo_v1,
}

__all__ = ["MODELS", "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]
__all__ += ["LocalizationNet", "localization", "OverFeat", "overfeat", "YOLOv1", "yolo_v1"]
