"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``.
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .ssd import SSD, ssd, ssd300_vgg16

MODELS = {
    "faster_rcnn": faster_rcnn,
    "ssd": ssd,
}

__all__ = ["MODELS", "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]
__all__ += ["SSD", "ssd", "ssd300_vgg16"]
