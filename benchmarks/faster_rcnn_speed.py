"""Faster R-CNN speed, pydetops against torchvision with the same weights, side by side.

Run in the torchvision venv (torch 2.14.1 + torchvision 0.29.1), with a pydetops built for it:
  cd /tmp/tvpkg-wt-py10 && PYTHONPATH=/tmp/tvpkg-wt-py10 /work/venvtv/bin/python \
      /work/wt-py10/benchmarks/faster_rcnn_speed.py [--threads 2] [--repeats 5] [--cases r50,mobilenet,train]

One 800 x 1088 image (resized by both to 800 x 1088... it is already that size), CPU.
Both models are built as torchvision's pretrained detectors are (FrozenBatchNorm2d backbone,
3 trainable stages), with random weights and random BN statistics loaded into both, so the
arithmetic is the same; detections are checked equal before timing. For each case the median
of ``--repeats`` calls (after one warm-up) is printed, with a per-stage breakdown (transform +
backbone, rpn, roi_heads) taken by forward hooks on the same-named submodules of both models.

Ours is timed as shipped (``default``) and with ``optimize_for_inference()`` (BN folded into the
convs, channels-last backbone + RPN head); the training step with ``use_channels_last()``.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch


def _load_avg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class StageTimer:
    """Wall time of the model's backbone / rpn / roi_heads forwards (hooks), per call."""

    def __init__(self, model):
        self.t = {}
        self._start = {}
        for name in ("backbone", "rpn", "roi_heads"):
            mod = getattr(model, name)
            mod.register_forward_pre_hook(self._pre(name))
            mod.register_forward_hook(self._post(name))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, out):
            self.t.setdefault(name, []).append(time.perf_counter() - self._start[name])
        return hook

    def medians(self):
        return {k: statistics.median(v) for k, v in self.t.items()}

    def reset(self):
        self.t = {}


def _tv_models(kind, num_classes=91):
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    if kind == "r50":
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                       trainable_layers=3)
        return FasterRCNN(backbone, num_classes)
    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d), True, 3)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return FasterRCNN(backbone, num_classes, rpn_anchor_generator=anchors, rpn_score_thresh=0.05)


def _pair(kind):
    from pydetops.models import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
    torch.manual_seed(0)
    theirs = _tv_models(kind)
    g = torch.Generator().manual_seed(1)
    for name, buf in theirs.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.pt")
        torch.save(theirs.state_dict(), path)
        ctor = fasterrcnn_resnet50_fpn if kind == "r50" else fasterrcnn_mobilenet_v3_large_fpn
        ours = ctor(weights=path)  # weights given -> FrozenBatchNorm2d, 3 trainable stages, as theirs
    return ours, theirs


def _image():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 800, 1088, generator=g) * 0.3
    for k in range(12):  # some structure so that the RPN ranks boxes meaningfully
        y, x = 50 * k + 20, 80 * k + 10
        img[k % 3, y:y + 120, x:x + 160] = 0.9
    return img


def _time(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out), out


def _fmt_stages(st):
    return " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in st.items())


def bench_inference(kind, repeats):
    ours, theirs = _pair(kind)
    img = _image()
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = ours([img]), theirs([img])
    n = min(len(a[0]["boxes"]), len(b[0]["boxes"]))
    same = (len(a[0]["boxes"]) == len(b[0]["boxes"]) and torch.equal(a[0]["labels"], b[0]["labels"])
            and bool((a[0]["boxes"] - b[0]["boxes"]).abs().max() <= 1e-3) if n else True)
    print(f"[{kind}] detections: ours {len(a[0]['boxes'])}, torchvision {len(b[0]['boxes'])}, same: {same}")
    rows = []
    for label, model in (("torchvision", theirs), ("ours default", ours)):
        timer = StageTimer(model)
        with torch.no_grad():
            med, all_t = _time(lambda: model([img]), repeats)
        rows.append((label, med, timer.medians(), all_t))
    ours.optimize_for_inference()
    with torch.no_grad():
        c = ours([img])
    same_opt = len(c[0]["boxes"]) == len(b[0]["boxes"]) and torch.equal(c[0]["labels"], b[0]["labels"]) and (
        not len(c[0]["boxes"]) or bool((c[0]["boxes"] - b[0]["boxes"]).abs().max() <= 1e-2))
    print(f"[{kind}] optimized (BN folded, channels-last) detections same (boxes 1e-2): {same_opt}")
    timer = StageTimer(ours)
    with torch.no_grad():
        med, all_t = _time(lambda: ours([img]), repeats)
    rows.append(("ours optimized", med, timer.medians(), all_t))
    base = rows[0][1]
    for label, med, st, all_t in rows:
        print(f"[{kind} inference] {label:15s} median {med * 1e3:8.0f} ms  x{base / med:4.2f}  "
              f"({_fmt_stages(st)})  runs {[round(t * 1e3) for t in all_t]}")


def bench_train(repeats):
    ours, theirs = _pair("r50")
    img = _image()
    target = [{"boxes": torch.tensor([[10.0, 20.0, 170.0, 140.0], [400.0, 300.0, 560.0, 420.0],
                                      [610.0, 420.0, 880.0, 600.0]]), "labels": torch.tensor([1, 5, 17])}]
    rows = []
    for label, model, cl in (("torchvision", theirs, False), ("ours default", ours, False),
                             ("ours channels-last", ours, True)):
        if cl:
            model.use_channels_last(True)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step():
            losses = model([img], target)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        timer = StageTimer(model)
        torch.manual_seed(0)
        med, all_t = _time(step, repeats)
        rows.append((label, med, timer.medians(), all_t))
    base = rows[0][1]
    for label, med, st, all_t in rows:
        print(f"[r50 train step] {label:18s} median {med * 1e3:8.0f} ms  x{base / med:4.2f}  "
              f"(forward: {_fmt_stages(st)})  runs {[round(t * 1e3) for t in all_t]}")


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
