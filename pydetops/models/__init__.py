"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``.
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .fast_rcnn import FastRCNN, fast_rcnn
from .rcnn import RCNN, rcnn
from .sppnet import SPPNet, sppnet

MODELS = {
    "faster_rcnn": faster_rcnn,
    "rcnn": rcnn,
    "sppnet": sppnet,
    "fast_rcnn": fast_rcnn,
}

__all__ = ["MODELS", "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]
__all__ += ["RCNN", "rcnn", "SPPNet", "sppnet", "FastRCNN", "fast_rcnn"]
