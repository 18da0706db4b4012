"""Evaluation: COCO metrics through pycocotools (bbox, segm, keypoints) with named
stats and per-class AP, precision-recall curves as PNG, and FPS; classification + localization
metrics (accuracy, mean IoU, PCK) on single-object datasets."""
from .coco_eval import STAT_NAMES, coco_evaluate, detections_to_coco
from .plots import plot_pr_curves, plot_losses
from .fps import FPSMeter, measure_fps
from .localization import classification_accuracy, localization_metrics, mean_iou, pck

__all__ = ["STAT_NAMES", "coco_evaluate", "detections_to_coco", "plot_pr_curves", "plot_losses",
           "FPSMeter", "measure_fps"]
__all__ += ["classification_accuracy", "mean_iou", "pck", "localization_metrics"]
