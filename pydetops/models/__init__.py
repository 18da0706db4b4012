"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``.
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .retinanet import RetinaNet, retinanet, retinanet_resnet50_fpn

MODELS = {
    "faster_rcnn": faster_rcnn,
    "retinanet": retinanet,
}

__all__ = ["MODELS", "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
           "RetinaNet", "retinanet", "retinanet_resnet50_fpn"]
