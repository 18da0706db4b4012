"""Faster R-CNN speed, pydetops against torchvision with the same weights, side by side.

Run in the torchvision venv (torch 2.14.1 + torchvision 0.29.1), with a pydetops built for it:
  cd /tmp/tvpkg-wt-py10 && PYTHONPATH=/tmp/tvpkg-wt-py10 /work/venvtv/bin/python \
      /work/wt-py10/benchmarks/faster_rcnn_speed.py [--threads 2] [--repeats 5] [--cases r50,mobilenet,train]

One 800 x 1088 image (already the size both models resize to), CPU.
Both models are built as torchvision's pretrained detectors are (FrozenBatchNorm2d backbone,
3 trainable stages), with random weights and random BN statistics loaded into both, so the
arithmetic is the same; detections are checked equal before timing. For each case the median
of ``--repeats`` calls (after one warm-up) is printed, with a per-stage breakdown (transform,
backbone, rpn, roi_heads, postprocess) taken by forward hooks on the same-named submodules of both
models (pydetops.bench.models.StageTimer).

The variants run interleaved (round after round, each variant once per round) so that a change
of load on a shared machine hits them alike. Ours is timed as shipped (``default``) and with ``optimize_for_inference()`` (BN folded into the
convs, channels-last backbone + RPN head); the training step with ``use_channels_last()``.
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch

# The shared pieces (stage timer, the same-weights model pair, the test image) live with the
# model cases of ``python -m pydetops.bench`` (pydetops/bench/models.py).
from pydetops.bench.models import StageTimer, agreement, model_pair, structured_image


def _load_avg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _pair(kind):
    return model_pair(kind)


def _image():
    return structured_image(800, 1088)


def _fmt_stages(st):
    return " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in st.items())


def _agreement(a, b, tol):
    """How many of b's detections a has too (same label, every coordinate within tol), and the counts."""
    hit, total = agreement(a, b, tol)
    return f"{hit}/{total} of torchvision's detections found in ours ({len(a['boxes'])}) within {tol} px"


def _interleaved(calls, repeats):
    """calls: [(label, fn, model)]. One warm-up round, then ``repeats`` rounds that run every
    variant once each in turn (so a change of machine load hits all of them alike).
    Returns [(label, median, stage medians, all times)]."""
    timers = [StageTimer(m) for _, _, m in calls]
    for _, fn, _ in calls:
        fn()
    for t in timers:
        t.reset()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, (_, fn, _) in enumerate(calls):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [(label, statistics.median(ts), tm.medians(), ts) for (label, _, _), ts, tm in zip(calls, times, timers)]


def _print(tag, rows):
    base = rows[0][1]
    for label, med, st, all_t in rows:
        print(f"[{tag}] {label:18s} median {med * 1e3:8.0f} ms  x{base / med:4.2f}  ({_fmt_stages(st)})  "
              f"runs {[round(t * 1e3) for t in all_t]}", flush=True)


def bench_inference(kind, repeats):
    ours, theirs = _pair(kind)
    img = _image()
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = ours([img]), theirs([img])
    print(f"[{kind}] default: {_agreement(a[0], b[0], 1e-3)}", flush=True)
    fast = copy.deepcopy(ours).optimize_for_inference()
    with torch.no_grad():
        c = fast([img])
        x = theirs.transform([img])[0].tensors
        fa, fb = fast.backbone(x.contiguous(memory_format=torch.channels_last)), theirs.backbone(x)
        rel = max(float((fa[k] - fb[k]).abs().max() / fb[k].abs().max()) for k in fb)
    # A random-weight detector's ranking is sensitive to rounding (a float64 run of the same
    # model also differs from torchvision's float32 in a few detections), so the features are
    # compared too.
    print(f"[{kind}] optimized (BN folded, channels-last): {_agreement(c[0], b[0], 1e-2)}; "
          f"FPN features max |diff| / max |value| = {rel:.1e}", flush=True)

    def run(model):
        def fn():
            with torch.no_grad():
                model([img])
        return fn
    rows = _interleaved([("torchvision", run(theirs), theirs), ("ours default", run(ours), ours),
                         ("ours optimized", run(fast), fast)], repeats)
    _print(f"{kind} inference", rows)


def bench_train(repeats):
    ours, theirs = _pair("r50")
    cl = copy.deepcopy(ours).use_channels_last(True)
    img = _image()
    target = [{"boxes": torch.tensor([[10.0, 20.0, 170.0, 140.0], [400.0, 300.0, 560.0, 420.0],
                                      [610.0, 420.0, 880.0, 600.0]]), "labels": torch.tensor([1, 5, 17])}]
    calls = []
    for label, model in (("torchvision", theirs), ("ours default", ours), ("ours channels-last", cl)):
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def step(model=model, opt=opt):
            losses = model([img], target)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        calls.append((label, step, model))
    torch.manual_seed(0)
    _print("r50 train step (stages: forward only)", _interleaved(calls, repeats))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cases", default="r50,mobilenet,train")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torchvision
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {args.threads}, "
          f"cpus {os.cpu_count()}, load average at start {_load_avg():.1f}")
    cases = args.cases.split(",")
    if "r50" in cases:
        bench_inference("r50", args.repeats)
    if "mobilenet" in cases:
        bench_inference("mobilenet", args.repeats)
    if "train" in cases:
        bench_train(args.repeats)
    print(f"load average at end {_load_avg():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
