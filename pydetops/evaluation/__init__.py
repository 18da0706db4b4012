"""Evaluation: COCO metrics through pycocotools (bbox, segm, keypoints) with named
stats and per-class AP, precision-recall curves as PNG, FPS, semantic segmentation pixel
accuracy / mean IoU, and classification + localization metrics (accuracy, mean box IoU, PCK)
on single-object datasets."""
from .coco_eval import STAT_NAMES, coco_evaluate, detections_to_coco
from .plots import plot_pr_curves, plot_losses
from .fps import FPSMeter, measure_fps
from .localization import box_mean_iou, classification_accuracy, localization_metrics, pck
from .segmentation import confusion_matrix, mean_iou, pixel_accuracy, segmentation_metrics, semantic_target

__all__ = ["STAT_NAMES", "coco_evaluate", "detections_to_coco", "plot_pr_curves", "plot_losses",
           "FPSMeter", "measure_fps", "confusion_matrix", "pixel_accuracy", "mean_iou", "segmentation_metrics",
           "semantic_target", "classification_accuracy", "box_mean_iou", "pck", "localization_metrics"]
