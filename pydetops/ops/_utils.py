"""Argument helpers shared by the op wrappers (TorchScript-compatible)."""
from typing import List, Tuple, Union

import torch
from torch import Tensor


def convert_boxes_to_roi_format(boxes: List[Tensor]) -> Tensor:
    """[Tensor[L_i, 4] per image] -> Tensor[K, 5] rows (batch index, x1, y1, x2, y2)."""
    concat = torch.cat(boxes, dim=0)
    idx = [torch.full((b.shape[0], 1), float(i), dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(idx, dim=0), concat], dim=1)


def check_roi_boxes(boxes: Union[Tensor, List[Tensor]]) -> None:
    """torchvision's accepted forms: Tensor[K, 5], or a list of Tensor[L, 4] (one per image)."""
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                raise ValueError("boxes: a list of boxes must hold one Tensor[L, 4] per image")
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2), got shape {list(boxes.shape)}")
    else:
        raise TypeError("boxes must be a Tensor[K, 5] or a list of Tensor[L, 4]")


def roi_boxes_as_tensor(boxes: Union[Tensor, List[Tensor]]) -> Tensor:
    """Validates ``boxes`` and returns the Tensor[K, 5] form."""
    check_roi_boxes(boxes)
    if not isinstance(boxes, Tensor):
        return convert_boxes_to_roi_format(boxes)
    return boxes


def pair(size: Union[int, Tuple[int, int], List[int]], name: str) -> Tuple[int, int]:
    """An int or a pair of ints -> (h, w); raises ValueError naming ``name`` otherwise."""
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {size}")
    return (int(size[0]), int(size[1]))
