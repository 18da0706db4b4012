"""Box utilities and the IoU family, with torchvision.ops' signatures.

Boxes are ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format unless stated. The IoU
matrices are computed by one fused N x M kernel (``torch.ops.pydetops.box_overlaps``)
and are differentiable; float16/bfloat16 boxes are computed in float32, integer boxes in
float64 (exact beyond 2^24; the result is float32).

Gradients at the kinks are fixed, whatever the torch version: boxes that exactly touch
(overlap width or height 0) pass the gradient on (d max(w, 0)/dw = 1 at w = 0, the
convention of torch <= 2.13's ``clamp``; torch 2.14's ``clamp`` gives 0 there, so
torchvision's gradient for touching boxes depends on the torch it runs on), and ties in
min/max (equal edges) split it in half.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._meta import accumulate_dtype

__all__ = [
    "box_area",
    "box_convert",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "box_overlaps",
    "box_iou",
    "box_iof",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "generalized_box_iou_loss",
    "distance_box_iou_loss",
    "complete_box_iou_loss",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box. ``boxes``: Tensor[N, 4] (x1, y1, x2, y2) -> Tensor[N].

    float16/bfloat16 areas are returned in float32 and small integers in int32, as torchvision does.
    """
    return torch.ops.pydetops.box_area(boxes)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert Tensor[..., 4] boxes between 'xyxy', 'xywh' (x, y, width, height) and 'cxcywh'."""
    return torch.ops.pydetops.box_convert(boxes, in_fmt, out_fmt)


@torch.jit.unused
def _check_image_size(size) -> None:
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    for v in size:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not (isinstance(v, Tensor) and v.numel() == 1):
            raise TypeError(f"size must be two numbers (height, width), got {size!r}")


def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clip Tensor[..., 4] (x1, y1, x2, y2) boxes to an image of ``size = (height, width)``.

    Sizes may be ints or floats (clipped to exactly that value, as torchvision); anything but two
    finite numbers >= 0 raises ValueError naming ``size``.
    """
    if not torch.jit.is_scripting():
        _check_image_size(size)
    return torch.ops.pydetops.clip_boxes_to_image(boxes, [float(size[0]), float(size[1])])


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64, increasing) of the Tensor[N, 4] boxes whose width and height are both >= ``min_size``."""
    return torch.ops.pydetops.remove_small_boxes(boxes, float(min_size))


def box_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", aligned: bool = False, eps: float = 0.0) -> Tensor:
    """The whole overlap family in one call (mmcv's ``bbox_overlaps``, extended).

    Args:
        boxes1: Tensor[N, 4] (x1, y1, x2, y2).
        boxes2: Tensor[M, 4], or Tensor[N, 4] when ``aligned``.
        mode: 'iou', 'iof' (intersection over the area of the box from ``boxes1``),
            'giou', 'diou' or 'ciou'.
        aligned: False gives the Tensor[N, M] matrix over all pairs; True gives
            Tensor[N], boxes1[i] against boxes2[i].
        eps: added to the denominators as torchvision does (see
            csrc/common/box_overlap_math.h); in matrix form the IoU term has none.

    Returns float64 for float64 boxes, otherwise float32 (as torchvision's functions and losses,
    which upcast float16/bfloat16/integer boxes). int32/int64 boxes are computed in float64
    (float32 cannot hold their coordinates beyond 2**24) and rounded to float32 at the end.
    Differentiable twice: under ``create_graph=True`` the backward is itself differentiable.
    """
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, mode, aligned, eps)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: Tensor[N, 4], Tensor[M, 4] -> Tensor[N, M]."""
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, "iou", False, 0.0)


def box_iof(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of the first box: Tensor[N, 4], Tensor[M, 4] -> Tensor[N, M]."""
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, "iof", False, 0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of every pair: Tensor[N, M] in [-1, 1]."""
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, "giou", False, 0.0)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance IoU (Zheng et al., 2019) of every pair: Tensor[N, M]."""
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, "diou", False, eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al., 2019) of every pair: Tensor[N, M]."""
    return torch.ops.pydetops.box_overlaps(boxes1, boxes2, "ciou", False, eps)


def _reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(
        f"Invalid Value for arg 'reduction': '{reduction}'. Supported reduction modes: 'none', 'mean', 'sum'"
    )


def _aligned_loss(boxes1: Tensor, boxes2: Tensor, mode: str, reduction: str, eps: float) -> Tensor:
    if boxes1.shape != boxes2.shape or boxes1.dim() == 0 or boxes1.shape[-1] != 4:
        raise ValueError(
            f"boxes1 and boxes2 must both be Tensor[..., 4] of the same shape, got {list(boxes1.shape)} "
            f"and {list(boxes2.shape)}"
        )
    value = torch.ops.pydetops.box_overlaps(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), mode, True, eps)
    return _reduce_loss(1.0 - value.reshape(boxes1.shape[:-1]), reduction)


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - GIoU of boxes1[i] and boxes2[i] (Tensor[..., 4] each); ``reduction``: 'none' | 'mean' | 'sum'."""
    return _aligned_loss(boxes1, boxes2, "giou", reduction, eps)


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - DIoU of boxes1[i] and boxes2[i] (Tensor[..., 4] each); ``reduction``: 'none' | 'mean' | 'sum'."""
    return _aligned_loss(boxes1, boxes2, "diou", reduction, eps)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - CIoU of boxes1[i] and boxes2[i] (Tensor[..., 4] each); ``reduction``: 'none' | 'mean' | 'sum'."""
    return _aligned_loss(boxes1, boxes2, "ciou", reduction, eps)


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----

@torch.library.register_fake("pydetops::box_overlaps")
def _box_overlaps_fake(boxes1, boxes2, mode="iou", aligned=False, eps=0.0):
    torch._check(boxes1.dim() == 2 and boxes1.shape[1] == 4, lambda: f"boxes1 must be a Tensor[N, 4], got {boxes1.shape}")
    torch._check(boxes2.dim() == 2 and boxes2.shape[1] == 4, lambda: f"boxes2 must be a Tensor[N, 4], got {boxes2.shape}")
    dtype = accumulate_dtype(boxes1.dtype)
    if aligned:
        torch._check(boxes1.shape[0] == boxes2.shape[0], lambda: "aligned=True needs as many boxes2 as boxes1")
        return boxes1.new_empty((boxes1.shape[0],), dtype=dtype)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]), dtype=dtype)


@torch.library.register_fake("pydetops::_box_overlaps_backward")
def _box_overlaps_backward_fake(grad, boxes1, boxes2, mode, aligned, eps):
    return torch.empty_like(boxes1, memory_format=torch.contiguous_format), torch.empty_like(
        boxes2, memory_format=torch.contiguous_format
    )
