"""Losses of the detector family (shapes in each docstring)."""
import torch.nn.functional as F
from torch import Tensor

__all__ = ["smooth_l1_loss", "objectness_loss"]


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1.0 / 9, reduction: str = "sum") -> Tensor:
    """Huber-like box regression loss: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta
    (beta = 1/9 as Faster R-CNN); Tensor[N, 4] inputs, ``reduction`` 'none' | 'sum' | 'mean'."""
    if input.shape != target.shape:
        raise ValueError(f"input and target must have one shape, got {list(input.shape)} and {list(target.shape)}")
    return F.smooth_l1_loss(input, target, beta=beta, reduction=reduction)


def objectness_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of Tensor[N] objectness logits against 0/1 labels, mean over N."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
