"""Throughput with warm-up and device synchronisation (CUDA work is asynchronous: a
timer read without a sync measures the launch, not the work)."""
import time
from typing import Callable, Optional

import torch

__all__ = ["FPSMeter", "measure_fps"]


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class FPSMeter:
    """Time calls one by one; the first ``warmup`` are not counted.

        meter = FPSMeter(warmup=2, device="cuda")
        with meter.measure(images=len(batch)):
            model(batch)
        meter.fps  # images per second, or None before any counted call
    """

    def __init__(self, warmup: int = 2, device=None):
        if warmup < 0:
            raise ValueError(f"FPSMeter: warmup must be >= 0, got {warmup}")
        self.warmup, self.device = warmup, device
        self.calls, self.images, self.seconds = 0, 0, 0.0

    class _Ctx:
        def __init__(self, meter, images):
            self.m, self.n = meter, images

        def __enter__(self):
            _sync(self.m.device)
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            _sync(self.m.device)
            dt = time.perf_counter() - self.t
            self.m.calls += 1
            if self.m.calls > self.m.warmup:
                self.m.images += self.n
                self.m.seconds += dt
            return False

    def measure(self, images: int = 1):
        return FPSMeter._Ctx(self, images)

    @property
    def fps(self) -> Optional[float]:
        return self.images / self.seconds if self.seconds > 0 else None


def measure_fps(fn: Callable[[], object], images_per_call: int = 1, warmup: int = 3, iters: int = 10,
                device=None) -> float:
    """Images per second of ``fn()`` over ``iters`` timed calls after ``warmup`` calls."""
    if iters < 1:
        raise ValueError(f"measure_fps: iters must be >= 1, got {iters}")
    meter = FPSMeter(warmup, device)
    for _ in range(warmup + iters):
        with meter.measure(images_per_call):
            fn()
    return meter.fps
