"""Datasets for the detectors: COCO instances and Pascal VOC readers, a synthetic scene
generator (``python -m pydetops.data.synthetic``), transforms and batching.

Every reader yields ``(image, target)`` with the model contract of ``MODELS.md``:
``image`` a PIL image (``ToTensor`` makes it ``Tensor[3, H, W]`` in [0, 1]) and
``target`` a dict with ``boxes`` ``Tensor[N, 4]`` (x1, y1, x2, y2, absolute pixels),
``labels`` ``Tensor[N]`` int64 (contiguous, 1..K-1; 0 is background), ``iscrowd``,
``image_id`` and, when asked for, ``masks`` ``Tensor[N, H, W]`` uint8 and
``keypoints`` ``Tensor[N, K, 3]``.
"""
from .errors import DatasetError
from .coco import CocoDetection, load_coco_json, keypoint_flip_indices
from .voc import read_voc_xml, voc_to_coco
from .transforms import (Compose, ToTensor, Resize, RandomHorizontalFlip, Normalize,
                         hflip, batch_images)
from .loader import collate_fn, EpochSampler, make_loader

__all__ = ["DatasetError", "CocoDetection", "load_coco_json", "keypoint_flip_indices",
           "read_voc_xml", "voc_to_coco", "Compose", "ToTensor", "Resize",
           "RandomHorizontalFlip", "Normalize", "hflip", "batch_images", "collate_fn",
           "EpochSampler", "make_loader"]
