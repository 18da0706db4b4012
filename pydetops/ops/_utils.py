"""Argument helpers shared by the op wrappers (TorchScript-compatible)."""
import operator
from typing import Any, List, Tuple, Union

import torch
from torch import Tensor


def convert_boxes_to_roi_format(boxes: List[Tensor]) -> Tensor:
    """[Tensor[L_i, 4] per image] -> Tensor[K, 5] rows (batch index, x1, y1, x2, y2)."""
    if len(boxes) == 0:
        raise ValueError("boxes: a list of boxes must hold one Tensor[L, 4] per image, got an empty list")
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


_INT64_MIN = -(2 ** 63)
_INT64_MAX = 2 ** 63 - 1


@torch.jit.unused
def as_int(value: Any, name: str) -> int:
    """An int (or an object with ``__index__``, e.g. an integer Tensor of one element) -> int.

    Raises TypeError naming ``name`` for a float (as torch does where an int is due; a float is
    never truncated silently) and ValueError when the value does not fit in int64.
    """
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if not _INT64_MIN <= i <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {i}")
    return i


@torch.jit.unused
def int_list(values: Any, name: str) -> List[int]:
    """A sequence of ints -> List[int] (each checked by :func:`as_int`)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__} {values!r}")
    return [as_int(v, name) for v in values]


@torch.jit.unused
def pair(size: Union[int, Tuple[int, int], List[int]], name: str) -> Tuple[int, int]:
    """An int or a pair of ints -> (h, w); raises TypeError (not ints) or ValueError (not a
    pair, not in int64) naming ``name`` otherwise."""
    if not hasattr(size, "__len__"):
        i = as_int(size, name)
        return (i, i)
    if isinstance(size, Tensor) and size.dim() == 0:
        i = as_int(size, name)
        return (i, i)
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {size}")
    return (as_int(size[0], name), as_int(size[1], name))


@torch.jit.unused
def int_pair_list(v: Any, name: str) -> List[int]:
    """An int or a sequence of one or two ints -> [a, b] (``int[2]`` schema arguments)."""
    if not hasattr(v, "__len__"):
        i = as_int(v, name)
        return [i, i]
    vals = int_list(v, name)
    if len(vals) == 1:
        return [vals[0], vals[0]]
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {list(vals)}")
    return vals
