"""Benchmarks: RetinaNet (pydetops.models.retinanet).

* ``retinanet_r50_fpn inference`` on one image (800x1088; smaller under ``--quick``) against
  torchvision's ``retinanet_resnet50_fpn`` with the same weights: torchvision's random-init
  ``state_dict`` (random BatchNorm statistics, class biases spread below the prior so that ~0.2 % of
  the (anchor, class) pairs pass the 0.05 score threshold, as a trained detector's) loaded into ours.
  Two rows: ours as built (same layers as torchvision's), and ours after ``optimize_for_inference()``
  (BatchNorm folded, channels-last). Under each row, ours' per-stage medians (transform,
  backbone+FPN, anchors, head, postprocess) and how many of torchvision's detections ours reproduces.
* ``retinanet postprocess``: ``postprocess_detections`` alone (threshold, top-k per level, decode,
  clip, NMS, top 300) on the same head outputs of that image: ours (one fused kernel call on the
  logits) against torchvision's per-level loop.
* ``retinanet_tiny train step``: the small model's training step, images/s; ours only.

Without torchvision there is no plain-torch stand-in for a whole detector: ours is timed alone
(random weights, randomised the same way) and the rows say so.
"""
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from pydetops.bench._core import Case, torchvision_status
from pydetops.bench.models import agreement, structured_image

STAGES = ("transform", "backbone+FPN", "anchors", "head", "postprocess")
_MODULES = {"transform": "transform", "backbone+FPN": "backbone", "anchors": "anchor_generator", "head": "head"}


class RetinaStageTimer:
    """Wall time per call of each stage of a RetinaNet (ours or torchvision's): forward hooks on
    ``transform``, ``backbone``, ``anchor_generator``, ``head``, and a wrapper around
    ``postprocess_detections``. ``sync``: called before each clock read (e.g. a CUDA synchronize)."""

    def __init__(self, model, sync: Optional[Callable[[], None]] = None):
        self.t: Dict[str, List[float]] = {}
        self._start: Dict[str, float] = {}
        self._sync = sync or (lambda: None)
        for stage, attr in _MODULES.items():
            mod = getattr(model, attr)
            mod.register_forward_pre_hook(lambda m, a, s=stage: self._begin(s))
            mod.register_forward_hook(lambda m, a, o, s=stage: self._end(s))
        inner = model.postprocess_detections

        def postprocess_detections(*args, **kwargs):
            self._begin("postprocess")
            out = inner(*args, **kwargs)
            self._end("postprocess")
            return out
        model.postprocess_detections = postprocess_detections

    def _begin(self, stage: str) -> None:
        self._sync()
        self._start[stage] = time.perf_counter()

    def _end(self, stage: str) -> None:
        self._sync()
        self.t.setdefault(stage, []).append(time.perf_counter() - self._start[stage])

    def medians(self) -> Dict[str, float]:
        return {k: statistics.median(self.t[k]) for k in STAGES if self.t.get(k)}

    def reset(self) -> None:
        self.t = {}


def _format(st: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in st.items())


def randomize_for_detections(model, class_bias: float = -6.6) -> None:
    """Random BatchNorm statistics, and class biases N(class_bias, 0.5) (the 0.01 prior's logit is -4.6):
    with -6.6 the random-init head puts ~0.2 % of the (anchor, class) pairs above 0.05 at 320x448 and
    up (10 % with the prior), the order of a trained detector's; tiny images need a higher bias."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        bias = model.head.classification_head.cls_logits.bias
        bias.copy_(torch.randn(bias.shape, generator=g) * 0.5 + class_bias)


def model_pair(class_bias: float = -6.6, **kwargs):
    """(ours, torchvision's) RetinaNet-R50-FPN with the same (random, randomised) weights, both with
    FrozenBatchNorm2d as torchvision's pretrained detectors; ``kwargs`` (min_size, ...) go to both."""
    from torchvision.models.detection import RetinaNet as TvRetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models import resnet50
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TvP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d
    from pydetops.models import retinanet_resnet50_fpn
    torch.manual_seed(0)
    body = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4],
                                 extra_blocks=TvP6P7(256, 256))
    theirs = TvRetinaNet(body, 91, **kwargs)
    randomize_for_detections(theirs, class_bias)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.pt")
        torch.save(theirs.state_dict(), path)
        ours = retinanet_resnet50_fpn(weights=path, **kwargs)  # weights given -> FrozenBatchNorm2d, as theirs
    return ours, theirs


def ours_only(class_bias: float = -6.6, **kwargs):
    from pydetops.models import retinanet_resnet50_fpn
    torch.manual_seed(0)
    ours = retinanet_resnet50_fpn(trainable_backbone_layers=3, weights_backbone=None, **kwargs)
    randomize_for_detections(ours, class_bias)
    return ours


def _sync_fn(device: str) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _shared_state(device: str, hw: Tuple[int, int], min_size: int, max_size: int, store: Dict[str, Any]):
    """Models and image, built once for all the RetinaNet cases."""
    if "ours" not in store:
        tv = torchvision_status()
        img = structured_image(*hw).to(device)
        if tv.usable:
            ours, theirs = model_pair(store.get("class_bias", -6.6), min_size=min_size, max_size=max_size)
            theirs.eval().to(device)
        else:
            ours, theirs = ours_only(store.get("class_bias", -6.6), min_size=min_size, max_size=max_size), None
        ours.eval().to(device)
        store.update(tv=tv, img=img, ours=ours, theirs=theirs)
    return store


def _optimized_model(device: str, hw, min_size: int, max_size: int, store: Dict[str, Any]):
    """A second copy of ours with the same weights, after ``optimize_for_inference()``."""
    s = _shared_state(device, hw, min_size, max_size, store)
    if "fast" not in s:
        from pydetops.models import retinanet_resnet50_fpn
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "w.pt")
            torch.save(s["ours"].state_dict(), path)
            fast = retinanet_resnet50_fpn(weights=path, min_size=min_size, max_size=max_size)
        s["fast"] = fast.to(device).optimize_for_inference()
    return s["fast"]


def _inference_case(device: str, hw, min_size: int, max_size: int, store: Dict[str, Any], optimized: bool) -> Case:
    tv = torchvision_status()
    local: Dict[str, Any] = {}

    def build():
        s = _shared_state(device, hw, min_size, max_size, store)
        if not local:
            model = _optimized_model(device, hw, min_size, max_size, store) if optimized else s["ours"]
            timer = RetinaStageTimer(model, _sync_fn(device))
            with torch.no_grad():
                a = model([s["img"]])[0]
                agree = agreement(a, s["theirs"]([s["img"]])[0], 1e-3 if not optimized else 5e-3) \
                    if s["theirs"] is not None else None
            timer.reset()
            local.update(model=model, timer=timer, agree=agree, count=len(a["boxes"]))
        return s, local

    def run_ours():
        s, lo = build()
        with torch.no_grad():
            return lo["model"]([s["img"]])

    def run_theirs():
        s, _ = build()
        with torch.no_grad():
            return s["theirs"]([s["img"]])

    def details(row: dict) -> str:
        _, lo = build()
        line = f"ours per stage (medians): {_format(lo['timer'].medians())}"
        if lo["agree"] is not None:
            hit, total = lo["agree"]
            tol = "5e-3" if optimized else "1e-3"
            line += f"; {hit}/{total} of torchvision's detections in ours' {lo['count']} (labels equal, {tol} px)"
        return line

    name = "retinanet_r50_fpn inference" + (" optimized" if optimized else "")
    config = f"1 image {hw[0]}x{hw[1]}, min_size {min_size}" + (", BN folded + channels-last" if optimized else "")
    if tv.usable:
        return Case(name, config, run_ours, run_theirs, f"torchvision {tv.version} RetinaNet, same weights",
                    device=device, details=details)
    return Case(name, config, run_ours, None, "none (torchvision not usable here)", device=device, comparable=False,
                note="a whole detector has no plain-torch equivalent: without torchvision only pydetops is timed "
                     "(random weights), no speed-up", details=details)


def _postprocess_case(device: str, hw, min_size: int, max_size: int, store: Dict[str, Any]) -> Case:
    tv = torchvision_status()
    local: Dict[str, Any] = {}

    def build():
        s = _shared_state(device, hw, min_size, max_size, store)
        if not local:
            from pydetops.models.retinanet import concat_levels
            m = s["ours"]
            with torch.no_grad():
                image_list, _ = m.transform([s["img"]])
                feats = list(m.backbone(image_list.tensors).values())
                anchors = m.anchor_generator(image_list, feats)
                cls_maps, box_maps = m.head(feats)
                logits, codes = concat_levels(cls_maps, m.num_classes), concat_levels(box_maps, 4)
            levels = [int(b.shape[2] * b.shape[3] * (b.shape[1] // 4)) for b in box_maps]
            thresh = torch.logit(torch.tensor(m.score_thresh)).item()
            local.update(args=(logits, codes, anchors[0], image_list.image_sizes, levels),
                         split=({"cls_logits": list(logits.split(levels, 1)),
                                 "bbox_regression": list(codes.split(levels, 1))},
                                [list(a.split(levels)) for a in anchors], image_list.image_sizes),
                         candidates=int((logits > thresh).sum()))
            if s["theirs"] is not None:
                a = run_ours()[0]
                local["agree"] = agreement(a, run_theirs()[0], 1e-3)
        return s, local

    def run_ours():
        s, lo = build()
        with torch.no_grad():
            return s["ours"].postprocess_detections(*lo["args"])

    def run_theirs():
        s, lo = build()
        with torch.no_grad():
            return s["theirs"].postprocess_detections(*lo["split"])

    def details(row: dict) -> str:
        _, lo = build()
        line = f"{lo['candidates']} (anchor, class) pairs of {lo['args'][0].numel()} above the score threshold"
        if lo.get("agree") is not None:
            hit, total = lo["agree"]
            line += f"; {hit}/{total} of torchvision's detections in ours' (labels equal, 1e-3 px)"
        return line

    config = f"head outputs of 1 image {hw[0]}x{hw[1]}, 91 classes, topk 1000/level, 300 dets"
    if tv.usable:
        return Case("retinanet postprocess", config, run_ours, run_theirs,
                    f"torchvision {tv.version} RetinaNet.postprocess_detections", device=device, details=details)
    return Case("retinanet postprocess", config, run_ours, None, "none (torchvision not usable here)", device=device,
                comparable=False, note="torchvision's per-level loop is not available: ours only", details=details)


def _train_case(device: str, batch: int, size: int) -> Case:
    state: Dict[str, Any] = {}

    def build():
        if not state:
            from pydetops.models import retinanet
            torch.manual_seed(0)
            model = retinanet(num_classes=4, backbone="tiny", image_size=size).train().to(device)
            g = torch.Generator().manual_seed(2)
            images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
            box = torch.tensor([[0.1 * size, 0.1 * size, 0.5 * size, 0.6 * size],
                                [0.4 * size, 0.3 * size, 0.9 * size, 0.8 * size]])
            targets = [{"boxes": box.to(device), "labels": torch.tensor([1, 3], device=device)} for _ in range(batch)]
            state.update(model=model, images=images, targets=targets,
                         opt=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        return state

    def step():
        s = build()
        losses = s["model"](s["images"], s["targets"])
        s["opt"].zero_grad()
        sum(losses.values()).backward()
        s["opt"].step()

    def details(row: dict) -> str:
        return f"{batch / (row['ours_ms'] / 1e3):.1f} images/s (batch {batch} / median step)"

    return Case("retinanet_tiny train step", f"batch {batch} {size}x{size}", step, None,
                "none (torchvision has no 'tiny' backbone)", device=device, comparable=False,
                note="forward + backward + SGD step; ours only", details=details)


def retinanet_cases(device: str, image_hw: Tuple[int, int], min_size: int, max_size: int, train_batch: int,
                    train_size: int, class_bias: float = -6.6) -> List[Case]:
    """The cases at the given sizes (models are built on first use, shared by the cases);
    ``class_bias``: see :func:`randomize_for_detections` (higher: more candidates, e.g. for tiny images)."""
    store: Dict[str, Any] = {"class_bias": class_bias}
    return [_inference_case(device, image_hw, min_size, max_size, store, False),
            _inference_case(device, image_hw, min_size, max_size, store, True),
            _postprocess_case(device, image_hw, min_size, max_size, store),
            _train_case(device, train_batch, train_size)]


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return retinanet_cases(device, (320, 448), 320, 448, 2, 128)
    return retinanet_cases(device, (800, 1088), 800, 1333, 4, 128)
