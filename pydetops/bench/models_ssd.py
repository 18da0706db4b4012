"""Benchmarks: SSD (pydetops/models/ssd.py).

* ``ssd300_vgg16 inference``: one image (resized to 300 x 300 by both) against torchvision's
  ``ssd300_vgg16`` with the same weights: torchvision's random-init ``state_dict`` loaded into ours,
  its classification convs made to score like a trained detector's (weights x 0.25 so that the
  scores are not saturated at 1.0, background logit + 7 so that most default boxes are
  background: ~11k of the 8732 x 90 (default box, class) pairs pass the 0.01 threshold).
  Ours runs as torchvision does (contiguous NCHW); the ``optimized`` row runs ours after
  :meth:`SSD.optimize_for_inference` (NHWC, fused, Winograd), same weights.
* ``ssd300_vgg16 postprocess``: the selection alone (softmax, per class threshold 0.01 / top 400 /
  decode / clip / NMS 0.45, the 200 best) on the same head outputs: ours' one fused kernel call
  against torchvision's per-image, per-class loop (``SSD.postprocess_detections``); on the
  trained-like scores, and on "spread" ones (no background offset: ~420k pairs pass, every class
  hits the 400 cap), the worst case for both.
* ``ssd_tiny train step``: ``ssd(backbone="tiny")`` forward, backward, SGD step; ours only.

Under the table: ours' per-stage medians (transform, backbone, head, default boxes,
postprocess; forward hooks) and how many of torchvision's detections ours reproduces. Without
torchvision only ours is timed (random weights) and the rows say so.
"""
import statistics
import time
from typing import Any, Callable, Dict, List

import torch

from pydetops.bench._core import Case, torchvision_status
from pydetops.bench.models import agreement, structured_image

STAGES = ("transform", "backbone", "head", "default boxes", "postprocess")
_MODULES = {"transform": "transform", "backbone": "backbone", "head": "head", "default boxes": "anchor_generator"}


class SSDStageTimer:
    """Wall time per stage of an SSD (ours or torchvision's): forward hooks on ``transform``,
    ``backbone``, ``head``, ``anchor_generator`` and a wrapper around ``postprocess_detections``."""

    def __init__(self, model):
        self.t: Dict[str, List[float]] = {}
        self._start: Dict[str, float] = {}
        for name, attr in _MODULES.items():
            mod = getattr(model, attr)
            mod.register_forward_pre_hook(self._pre(name))
            mod.register_forward_hook(self._post(name))
        inner = model.postprocess_detections

        def postprocess(*args, **kwargs):
            self._pre("postprocess")(None, None)
            out = inner(*args, **kwargs)
            self._post("postprocess")(None, None, None)
            return out
        model.postprocess_detections = postprocess

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, out):
            self.t.setdefault(name, []).append(time.perf_counter() - self._start[name])
        return hook

    def medians(self) -> Dict[str, float]:
        return {k: statistics.median(self.t[k]) for k in STAGES if self.t.get(k)}

    def reset(self) -> None:
        self.t = {}


def _format_stages(st: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in st.items())


# The background logit's offset that makes the random model's scores look like a trained SSD's:
# most default boxes are background, ~11k of the 8732 x 90 (default box, class) pairs pass 0.01.
BACKGROUND_BIAS = 7.0


def _trained_like_scores(model, num_classes: int) -> None:
    """Classification convs scaled by 0.25 (spread class scores, not saturated at 1.0) and
    ``BACKGROUND_BIAS`` added to each default box's background logit."""
    with torch.no_grad():
        for conv in model.head.classification_head.module_list:
            conv.weight.mul_(0.25)
            conv.bias[0::num_classes] += BACKGROUND_BIAS


def model_pair(num_classes: int = 91):
    """(ours, torchvision's) ``ssd300_vgg16`` with the same random weights (see the module doc)."""
    from torchvision.models.detection import ssd300_vgg16 as tv_ssd300_vgg16

    from pydetops.models import ssd300_vgg16
    torch.manual_seed(0)
    theirs = tv_ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
    _trained_like_scores(theirs, num_classes)
    ours = ssd300_vgg16(num_classes=num_classes)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval(), theirs.eval()


def ours_only(num_classes: int = 91):
    from pydetops.models import ssd300_vgg16
    torch.manual_seed(0)
    ours = ssd300_vgg16(num_classes=num_classes)
    _trained_like_scores(ours, num_classes)
    return ours.eval()


def _shared_state(device: str) -> Callable[[], Dict[str, Any]]:
    """Builds the models and the image once, on the first call of any SSD300 case."""
    tv = torchvision_status()
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            img = structured_image(375, 500).to(device)
            ours, theirs = model_pair() if tv.usable else (ours_only(), None)
            ours.to(device)
            if theirs is not None:
                theirs.to(device)
            with torch.no_grad():
                # the head outputs and default boxes of this image, for the postprocess case
                il, _ = ours.transform([img])
                feats = list(ours.backbone(il.tensors).values())
                head = ours.head(feats)
                anchors = ours.anchor_generator(il, feats)
                want = theirs([img])[0] if theirs is not None else None
            state.update(img=img, ours=ours, theirs=theirs, want=want, head=head, anchors=anchors,
                         image_sizes=il.image_sizes)
        return state
    return build


def _inference_case(device: str, build, channels_last: bool) -> Case:
    tv = torchvision_status()
    mine: Dict[str, Any] = {}

    def model():
        s = build()
        if not mine:
            from pydetops.models import ssd300_vgg16
            m = ssd300_vgg16(num_classes=91)
            m.load_state_dict(s["ours"].state_dict())
            m.eval().to(device)
            if channels_last:
                m.optimize_for_inference()
            timer = SSDStageTimer(m)
            with torch.no_grad():
                out = m([s["img"]])[0]
            timer.reset()
            mine.update(model=m, timer=timer, count=len(out["boxes"]),
                        agree=agreement(out, s["want"], 1e-3) if s["want"] is not None else None)
        return mine

    def run_ours():
        m = model()
        with torch.no_grad():
            return m["model"]([build()["img"]])

    def run_theirs():
        s = build()
        with torch.no_grad():
            return s["theirs"]([s["img"]])

    def details(row: dict) -> str:
        m = model()
        line = f"ours per stage (medians): {_format_stages(m['timer'].medians())}"
        if m["agree"] is not None:
            hit, total = m["agree"]
            line += f"; {hit}/{total} of torchvision's detections in ours' {m['count']} (labels equal, 1e-3 px)"
        return line

    name = "ssd300_vgg16 inference" + (" optimized" if channels_last else "")
    config = "1 image 375x500 -> 300x300, 91 classes"
    if tv.usable:
        return Case(name, config, run_ours, run_theirs, f"torchvision {tv.version} ssd300_vgg16, same weights",
                    device=device, details=details,
                    note=("ours after optimize_for_inference() (NHWC backbone and head, each conv fused with its ReLU, "
                          "the 3x3 stride-1 convs by Winograd F(2x2, 3x3)), torchvision as it ships")
                    if channels_last else "")
    return Case(name, config, run_ours, None, "none (torchvision not usable here)", device=device, comparable=False,
                note="a whole detector has no plain-torch equivalent: without torchvision only pydetops is timed "
                     "(random weights), no speed-up", details=details)


def _postprocess_case(device: str, build, spread: bool) -> Case:
    tv = torchvision_status()
    heads: Dict[str, Any] = {}

    def head():
        s = build()
        if not heads:
            h = dict(s["head"])
            if spread:  # without the background offset: most pairs pass the threshold
                h["cls_logits"] = h["cls_logits"].clone()
                h["cls_logits"][..., 0] -= BACKGROUND_BIAS
            heads["h"] = h
        return heads["h"]

    def run_ours():
        s = build()
        return s["ours"].postprocess_detections(head(), s["anchors"], s["image_sizes"])

    def run_theirs():
        s = build()
        return s["theirs"].postprocess_detections(head(), s["anchors"], s["image_sizes"])

    def details(row: dict) -> str:
        s = build()
        scores = torch.softmax(head()["cls_logits"][0], -1)[:, 1:]
        line = (f"{int((scores > 0.01).sum())} (default box, class) pairs above 0.01 of "
                f"{scores.numel()}")
        if s["theirs"] is not None:
            a, b = run_ours()[0], run_theirs()[0]
            hit, total = agreement(a, b, 1e-3)
            line += f"; {hit}/{total} of torchvision's detections in ours' {len(a['boxes'])}"
        return line

    config = "1 image, 8732 x 91, " + ("spread scores" if spread else "trained-like scores")
    if tv.usable:
        return Case("ssd300_vgg16 postprocess", config, run_ours, run_theirs,
                    f"torchvision {tv.version} SSD.postprocess_detections", device=device, details=details,
                    note="ours: one detection_postprocess call; torchvision: a loop over images and classes")
    return Case("ssd300_vgg16 postprocess", config, run_ours, None, "none (torchvision not usable here)",
                device=device, comparable=False, note="ours only", details=details)


def _train_case(device: str, batch: int, size: int) -> Case:
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            from pydetops.models import ssd
            torch.manual_seed(0)
            model = ssd(num_classes=4, backbone="tiny", image_size=size).train().to(device)
            g = torch.Generator().manual_seed(2)
            images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
            s = float(size)
            box = torch.tensor([[0.1 * s, 0.1 * s, 0.5 * s, 0.6 * s], [0.4 * s, 0.3 * s, 0.9 * s, 0.8 * s]])
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

    return Case("ssd_tiny train step", f"batch {batch} {size}x{size}", step, None,
                "none (torchvision has no 'tiny' backbone)", device=device, comparable=False,
                note="forward + backward + SGD step; ours only", details=details)


def cases(device: str, quick: bool) -> List[Case]:
    build = _shared_state(device)
    out = [_inference_case(device, build, False), _inference_case(device, build, True),
           _postprocess_case(device, build, False), _postprocess_case(device, build, True)]
    out.append(_train_case(device, 2 if quick else 8, 128))
    return out

