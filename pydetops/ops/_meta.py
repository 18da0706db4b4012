"""Helpers for the fake (meta) kernels that each op module registers."""
import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype is computed in float32 (as in csrc/common/checks.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
