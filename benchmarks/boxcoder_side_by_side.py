"""BoxCoder.decode_single / encode_single, pydetops vs torchvision, interleaved in one process.

    T=2 R=300 python benchmarks/boxcoder_side_by_side.py         # wall-clock medians, 2 threads
    T=1 CPU=1 python benchmarks/boxcoder_side_by_side.py         # per-thread CPU time (loaded machine)

Prints the load average before and after, the medians, the speed-up and the largest
difference between the two results. Needs torchvision.
"""
import os
import statistics
import time

import torch

from pydetops import ops
from torchvision.models.detection import _utils as tv_utils

torch.set_num_threads(int(os.environ.get("T", "2")))
reps = int(os.environ.get("R", "200"))
# CPU=1: CPU time of this thread (1 thread only: immune to preemption on a loaded machine)
clock = time.thread_time if os.environ.get("CPU") == "1" else time.perf_counter
weights = (10.0, 10.0, 5.0, 5.0)
ours, tv = ops.BoxCoder(weights), tv_utils.BoxCoder(weights)


def boxes(n):
    xy = torch.rand(n, 2) * 1000
    wh = torch.rand(n, 2) * 200 + 1
    return torch.cat([xy, xy + wh], 1)


cases = []
for n, k in ((200_000, 1), (1000, 91)):
    b, c = boxes(n), torch.randn(n, 4 * k)
    cases.append((f"decode_single {n} x {k}", lambda c=c, b=b: ours.decode_single(c, b),
                  lambda c=c, b=b: tv.decode_single(c, b)))
for n in (200_000, 91_000):
    g, p = boxes(n), boxes(n)
    cases.append((f"encode_single {n}", lambda g=g, p=p: ours.encode_single(g, p), lambda g=g, p=p: tv.encode_single(g, p)))

print("load", open("/proc/loadavg").read().strip(), "| threads", torch.get_num_threads(), "| clock", clock.__name__)
for name, fo, ft in cases:
    a, b = fo(), ft()
    diff = (a - b).abs().max().item()
    to, tt = [], []
    for _ in range(reps):
        t0 = clock()
        fo()
        t1 = clock()
        ft()
        t2 = clock()
        to.append(t1 - t0)
        tt.append(t2 - t1)
    mo, mt = statistics.median(to) * 1e3, statistics.median(tt) * 1e3
    print(f"{name:26s} pydetops {mo:.3f} ms  torchvision {mt:.3f} ms  {mt / mo:.2f}x  max|diff| {diff:.3g}")
print("load", open("/proc/loadavg").read().strip())
