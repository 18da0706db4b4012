"""optimize_for_inference() without vs with convolution fusion, side by side in one process.

For each detector (random weights, seeded): two copies with the same weights, both folded and
channels-last, one with ``fuse=False`` and one with ``fuse=True`` (the default). Times, alternating
the two on the same input so that load drifts hit both alike: the backbone + FPN on the padded
batch tensor, and the whole model on one image (800 x 1088; SSD300: 300 x 300). Prints medians,
their ratio and whether the outputs are identical (features max abs diff, detections equal).

    python benchmarks/fuse_side_by_side.py [--threads 2] [--repeats 5] [--models fasterrcnn_resnet50_fpn,...]
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


def _median_ms(fn_a, fn_b, repeats):
    ta, tb = [], []
    with torch.no_grad():
        fn_a(), fn_b()  # warm-up (oneDNN primitive caches, allocator)
        for i in range(repeats):
            for fn, acc in ((fn_a, ta), (fn_b, tb)) if i % 2 == 0 else ((fn_b, tb), (fn_a, ta)):
                t = time.perf_counter()
                fn()
                acc.append((time.perf_counter() - t) * 1e3)
    # medians, and the median of the per-pair ratios (each pair ran back to back: robust to load drift)
    return statistics.median(ta), statistics.median(tb), statistics.median(a / b for a, b in zip(ta, tb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats; "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}")
    print("model | backbone+FPN unfused ms | fused ms | ratio of medians | median pair ratio | whole unfused ms | "
          "fused ms | ratio of medians | median pair ratio | fused convs | features max diff | detections equal (count)")
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
        bb_a, bb_b, bb_r = _median_ms(lambda: plain.backbone(batch), lambda: fused.backbone(batch), args.repeats)
        wm_a, wm_b, wm_r = _median_ms(lambda: plain([img]), lambda: fused([img]), args.repeats)
        print(f"{name} | {bb_a:.0f} | {bb_b:.0f} | {bb_a / bb_b:.3f} | {bb_r:.3f} | {wm_a:.0f} | {wm_b:.0f} | "
              f"{wm_a / wm_b:.3f} | {wm_r:.3f} | {n_fused} | {diff:.3g} | {equal} ({len(da['boxes'])})", flush=True)
        del model, plain, fused
    print(f"loadavg after {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
