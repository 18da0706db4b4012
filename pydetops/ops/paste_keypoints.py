"""Mask R-CNN / Keypoint R-CNN post-processing: ``paste_masks`` and ``heatmaps_to_keypoints``.

Both compute exactly what torchvision's ``roi_heads.paste_masks_in_image`` and
``roi_heads.heatmaps_to_keypoints`` (eager path) compute, in one kernel call
instead of a Python loop over the RoIs, without a resized map per RoI. They are
inference-only: the outputs are not differentiable (inputs that require grad are
accepted; the outputs carry no graph).

Boxes and RoIs are ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` image pixels.
"""
from typing import Any, Tuple

import torch
from torch import Tensor

from ._utils import as_int

__all__ = ["paste_masks", "heatmaps_to_keypoints"]


@torch.jit.unused
def _image_size(image_size: Any) -> Tuple[int, int]:
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    h, w = as_int(image_size[0], "image_size"), as_int(image_size[1], "image_size")
    if h < 0 or w < 0:
        raise ValueError(f"image_size must be (H, W) with H, W >= 0, got {tuple(image_size)}")
    return h, w


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int = 1) -> Tensor:
    """Pastes per-RoI mask probabilities into zero images (torchvision's ``paste_masks_in_image``).

    For each mask: the mask is zero-padded by ``padding`` pixels per side and its box
    scaled about its centre by ``(M + 2 padding) / M`` (M the mask width), in the
    boxes' dtype; the scaled box is truncated to integers ``(x0, y0, x1, y1)``
    (like ``Tensor.to(torch.int64)``); the padded mask is resized bilinearly
    (``align_corners=False``) to ``max(y1 - y0 + 1, 1)`` x ``max(x1 - x0 + 1, 1)``
    pixels and pasted at rows ``y0..y1``, columns ``x0..x1``, clipped to the image.
    Every other pixel is 0. Each output pixel inside the box is sampled directly
    from the padded mask; nothing else is allocated.

    On the CPU (Linux), results of 1 MiB and more are allocated as memory the OS
    zero-fills on demand and only the pixels inside the boxes are written: pages
    outside every box are never touched (they read as zeros and count in the RSS
    only once written). The result is an ordinary, owning CPU tensor.

    Differences from torchvision (where it does not fail, the results are equal up
    to float rounding):

    * boxes with a NaN or infinite coordinate, or whose scaled coordinates reach
      2^62 in magnitude, give an all-zero mask (torchvision fails or runs out of
      memory on them); a box lying entirely outside the image gives an all-zero
      mask (torchvision raises for boxes more than a pixel above or left of it).
    * huge boxes cost only the pixels inside the image (torchvision resizes the
      mask to the full box size first).
    * the sampling positions are computed in float64 (torchvision: in float32 for
      float32 masks), the interpolation in float32 (float64 for float64 masks).

    Args:
        masks: Tensor[N, 1, M, M] (or Tensor[N, M, M]) floating point: mask
            probabilities of each RoI (float16/bfloat16 are computed in float32).
        boxes: Tensor[N, 4] (x1, y1, x2, y2) floating point, in image pixels.
        image_size: (H, W), ints >= 0.
        padding: pixels of zeros added around each mask before resizing (>= 0).

    Returns:
        Tensor[N, 1, H, W] of ``masks``' dtype.
    """
    if not torch.jit.is_scripting():
        if not isinstance(masks, Tensor):
            raise TypeError(f"masks must be a Tensor[N, 1, M, M], got {type(masks).__name__}")
        if not isinstance(boxes, Tensor):
            raise TypeError(f"boxes must be a Tensor[N, 4], got {type(boxes).__name__}")
        h, w = _image_size(image_size)
        padding = as_int(padding, "padding")
    else:
        h, w = image_size[0], image_size[1]
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    return torch.ops.pydetops.paste_masks(masks, boxes, h, w, padding)


def heatmaps_to_keypoints(heatmaps: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor]:
    """Keypoint positions and scores from per-RoI heatmaps (torchvision's ``heatmaps_to_keypoints``).

    For RoI ``(x1, y1, x2, y2)`` with ``w = max(x2 - x1, 1)``, ``h = max(y2 - y1, 1)``
    (in the rois' dtype), each of its K heatmaps is resized bicubically
    (``align_corners=False``, A = -0.75, as ``F.interpolate(mode="bicubic")``) to
    ``ceil(h)`` x ``ceil(w)`` pixels, rounded to the heatmaps' dtype; at its first
    maximum in row-major order ``(yi, xi)`` (a NaN counts as the maximum, as
    ``torch.argmax``) the keypoint is
    ``x = (xi + 0.5) * w / ceil(w) + x1``, ``y = (yi + 0.5) * h / ceil(h) + y1``,
    and its score the resized map's value there. The resized maps are never stored;
    rows that provably cannot hold the maximum are skipped (the result is that of
    the full scan).

    RoIs with a non-finite coordinate, or a side above 2^24 pixels, give NaN
    keypoints and scores (torchvision raises on non-finite RoIs). The cost grows
    with the RoI area, as torchvision's.

    Args:
        heatmaps: Tensor[R, K, S, S] floating point: keypoint logits of each RoI
            (any S_h x S_w works).
        rois: Tensor[R, 4] (x1, y1, x2, y2) floating point, in image pixels.

    Returns:
        (keypoints, scores): Tensor[R, K, 3] of (x, y, 1) and Tensor[R, K]; float64
        when ``heatmaps`` or ``rois`` is float64, float32 otherwise (torchvision:
        always float32).
    """
    if not torch.jit.is_scripting():
        if not isinstance(heatmaps, Tensor):
            raise TypeError(f"heatmaps must be a Tensor[R, K, S, S], got {type(heatmaps).__name__}")
        if not isinstance(rois, Tensor):
            raise TypeError(f"rois must be a Tensor[R, 4], got {type(rois).__name__}")
    return torch.ops.pydetops.heatmaps_to_keypoints(heatmaps, rois)


# ------------------------------------------------------------------ fake kernels

def _check_float(t: Tensor, name: str) -> None:
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {t.dtype}")


@torch.library.register_fake("pydetops::paste_masks")
def _paste_masks_fake(masks, boxes, image_height, image_width, padding=1):
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be a Tensor[N, 1, M, M], got shape {list(masks.shape)}")
    _check_float(masks, "masks")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a Tensor[N, 4], got shape {list(boxes.shape)}")
    _check_float(boxes, "boxes")
    torch._check(masks.shape[0] == boxes.shape[0], lambda: "masks and boxes must have the same length N")
    if image_height < 0 or image_width < 0:
        raise ValueError(f"image_size must be (H, W) with H, W >= 0, got ({image_height}, {image_width})")
    if padding < 0:
        raise ValueError(f"padding must be an int in [0, 2^30], got {padding}")
    return masks.new_empty((masks.shape[0], 1, image_height, image_width))


@torch.library.register_fake("pydetops::heatmaps_to_keypoints")
def _heatmaps_to_keypoints_fake(heatmaps, rois):
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be a Tensor[R, K, S, S], got shape {list(heatmaps.shape)}")
    _check_float(heatmaps, "heatmaps")
    if rois.dim() != 2 or rois.shape[1] != 4:
        raise ValueError(f"rois must be a Tensor[R, 4], got shape {list(rois.shape)}")
    _check_float(rois, "rois")
    torch._check(heatmaps.shape[0] == rois.shape[0], lambda: "heatmaps and rois must have the same length R")
    dt = torch.float64 if torch.float64 in (heatmaps.dtype, rois.dtype) else torch.float32
    R, K = heatmaps.shape[0], heatmaps.shape[1]
    return heatmaps.new_empty((R, K, 3), dtype=dt), heatmaps.new_empty((R, K), dtype=dt)
