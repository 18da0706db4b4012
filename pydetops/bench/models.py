"""Benchmarks: whole Faster R-CNN models.

* ``faster_rcnn_r50_fpn`` / ``faster_rcnn_mobilenet_v3_fpn`` inference on one image (smaller
  under ``--quick``) against torchvision's ``FasterRCNN`` with the same weights: torchvision's
  random-init state_dict (with random BatchNorm statistics and peaky class scores, so that
  there are detections) is loaded into ours, both built as torchvision's pretrained detectors
  are (FrozenBatchNorm2d backbone). When torchvision is not usable there is no plain-torch
  stand-in for a whole detector: ours is timed alone and the row says so.
* Under the table, ours' per-stage medians (transform, backbone+FPN, RPN, RoI heads,
  postprocess; forward hooks) and how many of torchvision's detections ours reproduces.
* The same two after ``optimize_for_inference()`` (BatchNorm folded into the convolutions,
  channels-last backbone and RPN head): the speed-ups issue 10 asks for (R50 1.5x, MobileNet 2x).
* ``faster_rcnn(backbone="tiny")`` training step (forward, backward, SGD), images/s; ours only
  (torchvision has no such backbone).
* ``faster_rcnn_r50_fpn`` training step, ours with ``use_channels_last(True).use_winograd(True)`` against
  torchvision's with the same weights, image and targets (the issue's 1.3x).

``benchmarks/faster_rcnn_speed.py`` (the longer side-by-side script with the optimized
variants) imports its shared pieces from here: :class:`StageTimer`, :func:`tv_model`,
:func:`model_pair`, :func:`structured_image`.
"""
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from pydetops.bench._core import Case, torchvision_status

STAGES = ("transform", "backbone+FPN", "RPN", "RoI heads", "postprocess")
_MODULES = {"transform": "transform", "backbone+FPN": "backbone", "RPN": "rpn", "RoI heads": "roi_heads"}


class StageTimer:
    """Wall time of each stage of a GeneralizedRCNN-style model (ours or torchvision's), per call:
    forward hooks on ``transform`` / ``backbone`` / ``rpn`` / ``roi_heads`` and a wrapper around
    ``transform.postprocess``. ``sync``: called before each clock read (e.g. a CUDA synchronize)."""

    def __init__(self, model, sync: Optional[Callable[[], None]] = None):
        self.t: Dict[str, List[float]] = {}
        self._start: Dict[str, float] = {}
        self._sync = sync or (lambda: None)
        for name, attr in _MODULES.items():
            mod = getattr(model, attr)
            mod.register_forward_pre_hook(self._pre(name))
            mod.register_forward_hook(self._post(name))
        transform = model.transform
        inner = transform.postprocess

        def postprocess(*args, **kwargs):
            self._pre("postprocess")(None, None)
            out = inner(*args, **kwargs)
            self._post("postprocess")(None, None, None)
            return out
        transform.postprocess = postprocess

    def _pre(self, name):
        def hook(module, args):
            self._sync()
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, out):
            self._sync()
            self.t.setdefault(name, []).append(time.perf_counter() - self._start[name])
        return hook

    def medians(self) -> Dict[str, float]:
        """Median seconds per stage, in the model's order."""
        return {k: statistics.median(self.t[k]) for k in STAGES if self.t.get(k)}

    def reset(self) -> None:
        self.t = {}


def format_stages(st: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in st.items())


def tv_model(kind: str, num_classes: int = 91, **kwargs):
    """torchvision's Faster R-CNN ("r50": ResNet-50-FPN, "mobilenet": MobileNetV3-Large-FPN) as its
    pretrained detectors are built (FrozenBatchNorm2d, 3 trainable stages), random weights."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    if kind == "r50":
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                       trainable_layers=3)
        return FasterRCNN(backbone, num_classes, **kwargs)
    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d), True, 3)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return FasterRCNN(backbone, num_classes, rpn_anchor_generator=anchors, rpn_score_thresh=0.05, **kwargs)


def _randomize_for_detections(model, kind: str) -> None:
    """Peaky class scores (as a trained model's, so that there are detections) and random BN statistics."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0 if kind == "r50" else 300.0)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def _ours_ctor(kind: str):
    from pydetops.models import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
    return fasterrcnn_resnet50_fpn if kind == "r50" else fasterrcnn_mobilenet_v3_large_fpn


def model_pair(kind: str, **kwargs):
    """(ours, torchvision's) with the same weights; ``kwargs`` (e.g. min_size, max_size) go to both."""
    torch.manual_seed(0)
    theirs = tv_model(kind, **kwargs)
    _randomize_for_detections(theirs, kind)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.pt")
        torch.save(theirs.state_dict(), path)
        ours = _ours_ctor(kind)(weights=path, **kwargs)  # weights given -> FrozenBatchNorm2d, as theirs
    return ours, theirs


def ours_only(kind: str, **kwargs):
    """Ours alone (no torchvision here): random weights, randomized as in :func:`model_pair`."""
    torch.manual_seed(0)
    ours = _ours_ctor(kind)(**kwargs)
    _randomize_for_detections(ours, kind)
    return ours


def structured_image(height: int = 800, width: int = 1088) -> torch.Tensor:
    """A fixed random image with bright rectangles, so that the RPN ranks boxes meaningfully."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, height, width, generator=g) * 0.3
    sy, sx = height / 800.0, width / 1088.0
    for k in range(12):
        y, x = int((50 * k + 20) * sy), int((80 * k + 10) * sx)
        img[k % 3, y:y + max(1, int(120 * sy)), x:x + max(1, int(160 * sx))] = 0.9
    return img


def agreement(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], tol: float) -> Tuple[int, int]:
    """How many of b's detections a has too (same label, every coordinate within tol), of b's count."""
    hit = 0
    for box, label in zip(b["boxes"], b["labels"]):
        close = (a["labels"] == label) & ((a["boxes"] - box).abs().amax(dim=1) <= tol)
        hit += int(close.any())
    return hit, len(b["boxes"])


_NAMES = {"r50": "faster_rcnn_r50_fpn", "mobilenet": "faster_rcnn_mobilenet_v3_fpn"}


def _sync_fn(device: str) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _inference_case(kind: str, device: str, hw: Tuple[int, int], min_size: int, max_size: int,
                    optimized: bool = False) -> Case:
    """Ours against torchvision's model with the same weights; ``optimized``: ours after
    ``optimize_for_inference()`` (BatchNorm folded into the convs, channels-last backbone)."""
    tv = torchvision_status()
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            img = structured_image(*hw).to(device)
            if tv.usable:
                ours, theirs = model_pair(kind, min_size=min_size, max_size=max_size)
                theirs.eval().to(device)
            else:
                ours, theirs = ours_only(kind, min_size=min_size, max_size=max_size), None
            ours.eval().to(device)
            if optimized:
                ours.optimize_for_inference()
            timer = StageTimer(ours, _sync_fn(device))
            with torch.no_grad():
                a = ours([img])[0]
                state["agree"] = agreement(a, theirs([img])[0], 1e-3) if theirs is not None else None
            timer.reset()
            state.update(img=img, ours=ours, theirs=theirs, timer=timer, count=len(a["boxes"]))
        return state

    def run_ours():
        s = build()
        with torch.no_grad():
            return s["ours"]([s["img"]])

    def run_theirs():
        s = build()
        with torch.no_grad():
            return s["theirs"]([s["img"]])

    def details(row: dict) -> str:
        s = build()
        line = f"ours per stage (medians): {format_stages(s['timer'].medians())}"
        if s["agree"] is not None:
            hit, total = s["agree"]
            line += f"; {hit}/{total} of torchvision's detections in ours' {s['count']} (labels equal, 1e-3 px)"
        return line

    if tv.usable:
        baseline, name, comparable, note = (run_theirs, f"torchvision {tv.version} FasterRCNN, same weights", True,
                                            "")
    else:
        baseline, name, comparable = None, "none (torchvision not usable here)", False
        note = ("a whole detector has no plain-torch equivalent: without torchvision only pydetops is timed "
                "(random weights), no speed-up")
    if optimized:
        note = (note + " " if note else "") + (
            "optimize_for_inference(): BatchNorm folded into the convolutions, channels-last, each conv fused with "
            "its ReLU / residual sum, the 3x3 stride-1 convs by Winograd F(2x2, 3x3); its features differ from the "
            "plain model's by float rounding (~5e-6 relative), which can reorder near-tied scores of a "
            "random-weight model (benchmarks/NOTES.md, issue 10)")
    config = f"1 image {hw[0]}x{hw[1]}, min_size {min_size}"
    op = _NAMES[kind] + (" inference optimized" if optimized else " inference")
    return Case(op, config, run_ours, baseline, name, device=device, comparable=comparable, note=note,
                details=details)


def _tv_train_case(kind: str, device: str, hw: Tuple[int, int]) -> Case:
    """One training step (forward, backward, SGD) of ours in channels-last (``use_channels_last()``)
    against torchvision's model with the same weights, on the same image and targets."""
    tv = torchvision_status()
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            h, w = hw
            img = structured_image(h, w).to(device)
            sy, sx = h / 800.0, w / 1088.0
            boxes = torch.tensor([[(80 * k + 10) * sx, (50 * k + 20) * sy, (80 * k + 170) * sx, (50 * k + 140) * sy]
                                  for k in range(4)], device=device)
            targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3, 4], device=device)}]
            if tv.usable:
                ours, theirs = model_pair(kind, min_size=min(hw), max_size=max(hw))
                theirs.train().to(device)
            else:
                ours, theirs = ours_only(kind, min_size=min(hw), max_size=max(hw)), None
            ours.train().to(device).use_channels_last(True).use_winograd(True)

            def stepper(model):
                opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

                def step():
                    losses = model([img], targets)
                    opt.zero_grad()
                    sum(losses.values()).backward()
                    opt.step()
                return step
            state.update(ours=stepper(ours), theirs=stepper(theirs) if theirs is not None else None)
        return state

    def run_ours():
        build()["ours"]()

    def run_theirs():
        build()["theirs"]()

    if tv.usable:
        baseline, name, comparable, note = (run_theirs, f"torchvision {tv.version} FasterRCNN, same weights", True,
                                            "")
    else:
        baseline, name, comparable = None, "none (torchvision not usable here)", False
        note = "without torchvision only pydetops is timed (random weights), no speed-up"
    note = (note + " " if note else "") + (
        "ours with use_channels_last(True).use_winograd(True): channels-last backbone and RPN head; "
        "FrozenBatchNorm2d folded into the convolutions on the fly (same parameters), conv+ReLU(+residual) fused, "
        "the RPN head's two 1x1 predictors as one conv, channels-last gradients from the RoI heads, the 3x3 "
        "stride-1 convs on large maps by Winograd F(2x2, 3x3) forward and backward (benchmarks/NOTES.md)")
    return Case(_NAMES[kind] + " train step channels-last", f"1 image {hw[0]}x{hw[1]}, forward+backward+SGD",
                run_ours, baseline, name, device=device, comparable=comparable, note=note)


def _train_case(device: str, batch: int, hw: Tuple[int, int]) -> Case:
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            from pydetops.models import faster_rcnn
            torch.manual_seed(0)
            model = faster_rcnn(num_classes=4, backbone="tiny", min_size=min(hw), max_size=max(hw)).train()
            model.to(device)
            g = torch.Generator().manual_seed(2)
            h, w = hw
            images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(batch)]
            box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.8 * h]])
            targets = [{"boxes": box.to(device), "labels": torch.tensor([1, 3], device=device)}
                       for _ in range(batch)]
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            state.update(model=model, images=images, targets=targets, opt=opt)
        return state

    def step():
        s = build()
        losses = s["model"](s["images"], s["targets"])
        s["opt"].zero_grad()
        sum(losses.values()).backward()
        s["opt"].step()

    def details(row: dict) -> str:
        return f"{batch / (row['ours_ms'] / 1e3):.1f} images/s (batch {batch} / median step)"

    return Case("faster_rcnn_tiny train step", f"batch {batch} {hw[0]}x{hw[1]}", step, None,
                "none (torchvision has no 'tiny' backbone)", device=device, comparable=False,
                note="forward + backward + SGD step; ours only", details=details)


def model_cases(device: str, image_hw: Tuple[int, int], min_size: int, max_size: int,
                train_batch: int, train_hw: Tuple[int, int], kinds=("r50", "mobilenet")) -> List[Case]:
    """The model cases at the given sizes (the models are built on their first call, not here)."""
    cases = [_inference_case(k, device, image_hw, min_size, max_size, optimized)
             for k in kinds for optimized in (False, True)]
    cases.append(_train_case(device, train_batch, train_hw))
    if "r50" in kinds:
        cases.append(_tv_train_case("r50", device, image_hw))
    return cases


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return model_cases(device, (320, 448), 320, 448, 2, (128, 128))
    return model_cases(device, (800, 1088), 800, 1333, 4, (256, 256))
