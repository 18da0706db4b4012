"""pydetops.models: the detector family, assembled from pydetops.ops.

``MODELS`` maps a command-line model name to its constructor, called as
``MODELS[name](num_classes=K, **kwargs)``; the order is the seeds' (the two-stage lineage,
then sliding windows, one-stage detectors and segmentation).
"""
from .faster_rcnn import FasterRCNN, faster_rcnn, fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from .fast_rcnn import FastRCNN, fast_rcnn
from .fcn import FCN, fcn
from .hog_svm import HOGSVM, hog_svm
from .keypoint_rcnn import KeypointRCNN, keypoint_rcnn, keypointrcnn_resnet50_fpn
from .localization import LocalizationNet, localization
from .mask_rcnn import MaskRCNN, mask_rcnn, maskrcnn_resnet50_fpn
from .overfeat import OverFeat, overfeat
from .rcnn import RCNN, rcnn
from .retinanet import RetinaNet, retinanet, retinanet_resnet50_fpn
from .sppnet import SPPNet, sppnet
from .ssd import SSD, ssd, ssd300_vgg16
from .yolo import YOLOv1, yolo_v1

MODELS = {
    "localization": localization,
    "overfeat": overfeat,
    "hog_svm": hog_svm,
    "rcnn": rcnn,
    "sppnet": sppnet,
    "fast_rcnn": fast_rcnn,
    "faster_rcnn": faster_rcnn,
    "mask_rcnn": mask_rcnn,
    "keypoint_rcnn": keypoint_rcnn,
    "yolo_v1": yolo_v1,
    "ssd": ssd,
    "retinanet": retinanet,
    "fcn": fcn,
}

__all__ = ["MODELS",
           "LocalizationNet", "localization", "OverFeat", "overfeat", "HOGSVM", "hog_svm",
           "RCNN", "rcnn", "SPPNet", "sppnet", "FastRCNN", "fast_rcnn",
           "FasterRCNN", "faster_rcnn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
           "MaskRCNN", "mask_rcnn", "maskrcnn_resnet50_fpn", "KeypointRCNN", "keypoint_rcnn",
           "keypointrcnn_resnet50_fpn",
           "YOLOv1", "yolo_v1", "SSD", "ssd", "ssd300_vgg16", "RetinaNet", "retinanet", "retinanet_resnet50_fpn",
           "FCN", "fcn"]
