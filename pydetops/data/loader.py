"""Batching for the model contract (a list of images and a list of targets) and a
sampler whose global order depends only on the seed and the epoch, so that N processes
with batch B see the same global batches as one process with batch N * B."""
import math
from typing import Iterator, List

import torch

__all__ = ["collate_fn", "EpochSampler", "make_loader"]


def collate_fn(batch):
    """``[(image, target), ...]`` -> ``(list of images, list of targets)``."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    return images, targets


class EpochSampler(torch.utils.data.Sampler):
    """Indices of a dataset of ``size``: a permutation drawn from ``seed + epoch`` (or
    the identity when ``shuffle`` is False), padded by wrapping to a multiple of
    ``world_size``, of which rank ``r`` takes entries ``r, r + world_size, ...``.
    Call :meth:`set_epoch` before each epoch."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: bad rank {rank} / world_size {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.num_samples = math.ceil(size / world_size) if size else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.world_size
        if self.size and total > self.size:
            order += (order * (total // self.size + 1))[: total - self.size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def make_loader(dataset, batch_size: int, sampler=None, workers: int = 0, shuffle: bool = False):
    """A DataLoader with :func:`collate_fn`; ``workers`` processes read images."""
    if batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"make_loader: workers must be >= 0, got {workers}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       shuffle=shuffle if sampler is None else False,
                                       num_workers=workers, collate_fn=collate_fn,
                                       persistent_workers=False)
