"""optimize_for_inference() without vs with convolution fusion, side by side in one process.

For each detector (random weights, seeded): two copies with the same weights, both folded and
channels-last, one with ``fuse=False`` and one with ``fuse=True`` (the default). Times, alternating
the two on the same input so that load drifts hit both alike: the backbone + FPN on the padded
batch tensor, and the whole model on one image (800 x 1088; SSD300: 300 x 300). Prints wall and
CPU-time medians, their ratios and whether the outputs are identical (features max abs diff,
detections equal).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fuse_side_by_side.py [--threads 2] [--repeats 5] [--models a,b]
"""
import argparse
import copy
import statistics
import time

import torch

from pydetops.models import (fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn, keypointrcnn_resnet50_fpn,
                             maskrcnn_resnet50_fpn, retinanet_resnet50_fpn, ssd300_vgg16)
from pydetops.models.fast_paths import FusedConv2d

MODELS = {
    "fasterrcnn_resnet50_fpn": (fasterrcnn_resnet50_fpn, (800, 1088)),
    "fasterrcnn_mobilenet_v3_large_fpn": (fasterrcnn_mobilenet_v3_large_fpn, (800, 1088)),
    "maskrcnn_resnet50_fpn": (maskrcnn_resnet50_fpn, (800, 1088)),
    "keypointrcnn_resnet50_fpn": (keypointrcnn_resnet50_fpn, (800, 1088)),
    "retinanet_resnet50_fpn": (retinanet_resnet50_fpn, (800, 1088)),
    "ssd300_vgg16": (ssd300_vgg16, (300, 300)),
}


def _side_by_side(fn_a, fn_b, repeats):
    """Wall and CPU (all threads) milliseconds of ``fn_a`` and ``fn_b``, run alternately: their
    medians and the median of the per-pair wall ratios (each pair back to back, robust to drift).
    On a loaded machine the wall time waits for the CPU; the CPU time (with
    OMP_WAIT_POLICY=PASSIVE, so that waiting threads sleep instead of spinning) counts the work."""
    wall = {0: [], 1: []}
    cpu = {0: [], 1: []}
    with torch.no_grad():
        fn_a(), fn_b()  # warm-up (oneDNN primitive caches, allocator)
        for i in range(repeats):
            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                fn = fn_a if k == 0 else fn_b
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall[k].append((time.perf_counter() - t) * 1e3)
                cpu[k].append((time.process_time() - c) * 1e3)
    med = statistics.median
    return (med(wall[0]), med(wall[1]), med(a / b for a, b in zip(wall[0], wall[1])), med(cpu[0]), med(cpu[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats; "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}")
    print("model | part | unfused wall ms | fused wall ms | ratio | median pair ratio | unfused CPU ms | "
          "fused CPU ms | CPU ratio")
    details = []
    for name in args.models.split(","):
        ctor, hw = MODELS[name]
        torch.manual_seed(0)
        model = ctor(weights=None, weights_backbone=None).eval()
        plain = copy.deepcopy(model).optimize_for_inference(fuse=False)
        fused = model.optimize_for_inference()
        n_fused = sum(isinstance(m, FusedConv2d) for m in fused.modules())
        g = torch.Generator().manual_seed(1)
        img = torch.rand(3, *hw, generator=g)
        with torch.no_grad():
            batch = plain.transform([img])[0].tensors.contiguous(memory_format=torch.channels_last)
            fa, fb = plain.backbone(batch), fused.backbone(batch)
            diff = max(float((fa[k] - fb[k]).abs().max()) for k in fa)
            da, db = plain([img])[0], fused([img])[0]
        equal = all(torch.equal(da[k], db[k]) for k in da)
        for part, fa_, fb_ in (("backbone+FPN", lambda: plain.backbone(batch), lambda: fused.backbone(batch)),
                               ("whole", lambda: plain([img]), lambda: fused([img]))):
            wa, wb, wr, ca, cb = _side_by_side(fa_, fb_, args.repeats)
            print(f"{name} | {part} | {wa:.0f} | {wb:.0f} | {wa / wb:.3f} | {wr:.3f} | {ca:.0f} | {cb:.0f} | "
                  f"{ca / cb:.3f}", flush=True)
        details.append(f"{name}: {n_fused} FusedConv2d, features max abs diff {diff:.3g}, detections equal "
                       f"{equal} ({len(da['boxes'])} detections)")
        del model, plain, fused
    print("\n".join(details))
    print(f"loadavg after {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
