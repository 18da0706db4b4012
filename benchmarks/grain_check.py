"""Small inputs on the calling thread? Times a few ops on small inputs (microseconds
alone) with torch's intra-op threads, optionally with a busy-loop neighbour pinned to one
core (``--busy-core 1``), and prints median / min / max per op in microseconds.

    python benchmarks/grain_check.py --threads 2 [--busy-core 1] [--reps 200]

A parallel region on a 2-core machine whose other core is busy waits for the
descheduled partner thread (a scheduler slice, milliseconds); an op that stays on the
calling thread does not. See benchmarks/NOTES.md, section "Hardening".
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch


def cases():
    from pydetops import ops

    torch.manual_seed(0)
    x = torch.randn(1, 64, 16, 16)
    xy = torch.rand(50, 2) * 100
    b = torch.cat([xy, xy + torch.rand(50, 2) * 20 + 1], 1)
    rois = torch.cat([torch.zeros(8, 1), b[:8] * 0.1], 1)
    s = torch.rand(50)
    xu = torch.randn(1, 16, 8, 8)
    _, idx = torch.nn.functional.max_pool2d(torch.randn(1, 16, 16, 16), 2, return_indices=True)
    xp = torch.randn(1, 16 * 4, 16, 16)
    return {
        "roi_align 8 RoIs C=64 7x7": lambda: ops.roi_align(x, rois, 7, 1.0, 2),
        "roi_pool 8 RoIs C=64 7x7": lambda: ops.roi_pool(x, rois, 7),
        "ps_roi_align 8 RoIs C=64 2x2": lambda: ops.ps_roi_align(xp, rois, 2, 1.0, 2),
        "spp_pool 8 RoIs C=64 [4,2,1]": lambda: ops.spp_pool(x, rois, [4, 2, 1]),
        "box_iou 50x50": lambda: ops.box_iou(b, b),
        "giou_loss 50": lambda: ops.generalized_box_iou_loss(b, b.flip(0)),
        "nms 50": lambda: ops.nms(b, s, 0.5),
        "batched_nms 50, 5 classes": lambda: ops.batched_nms(b, s, torch.arange(50) % 5, 0.5),
        "max_unpool2d 16x8x8": lambda: ops.max_unpool2d(xu, idx, 2),
        "nearest_unpool2d 16x8x8 x2": lambda: ops.nearest_unpool2d(xu, 2),
        "conv_transpose2d 16->16 8x8 k4 s2": lambda: ops.conv_transpose2d(xu, torch.randn(16, 16, 4, 4), stride=2,
                                                                          padding=1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy-core", type=int, default=None, help="pin a busy loop to this core while timing")
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    busy = None
    if a.busy_core is not None:
        busy = subprocess.Popen(["taskset", "-c", str(a.busy_core), sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        print(f"threads={a.threads} busy_core={a.busy_core} load={os.getloadavg()[0]:.1f}")
        for name, fn in cases().items():
            # Let the worker threads of anything that ran before (setup, the previous op) go idle
            # first: OpenMP workers spin after a region and would compete with this op.
            time.sleep(1.0)
            for _ in range(5):
                fn()
            t = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                fn()
                t.append((time.perf_counter() - t0) * 1e6)
            slow = sum(v > 1000.0 for v in t)
            print(f"{name:36s} median {statistics.median(t):8.1f} us  mean {statistics.mean(t):8.1f}  "
                  f"max {max(t):9.1f}  calls > 1 ms: {slow}/{len(t)}")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


if __name__ == "__main__":
    main()
