"""Benchmarks: Mask R-CNN and Keypoint R-CNN (pydetops.models.mask_rcnn / keypoint_rcnn).

* ``mask_rcnn_r50_fpn`` / ``keypoint_rcnn_r50_fpn`` inference on one image (800 x 1088; smaller
  under ``--quick``) against torchvision's ``maskrcnn_resnet50_fpn`` / ``keypointrcnn_resnet50_fpn``
  with the same weights: torchvision's random-init ``state_dict`` (FrozenBatchNorm2d backbone as
  its pretrained detectors, random BatchNorm statistics, class scores scaled up so that there are
  detections) loaded into ours. Ours runs as :meth:`optimize_for_inference` leaves it (BatchNorm
  folded, channels-last backbone, RPN head and mask / keypoint FCN); torchvision as it ships.
  Without torchvision ours is timed alone (random weights) and the row says so.
* Under the table: ours' per-stage medians, how many of torchvision's detections ours reproduces,
  and the mask paste / keypoint decoding broken out: ``pydetops.ops.paste_masks`` against
  torchvision's ``paste_masks_in_image`` (and ``heatmaps_to_keypoints``) on the same model outputs.
* ``mask_rcnn(backbone="tiny")`` / ``keypoint_rcnn(backbone="tiny")`` training steps (forward,
  backward, SGD), images/s; ours only.
"""
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from pydetops.bench._core import Case, torchvision_status
from pydetops.bench.models import StageTimer, agreement, format_stages, structured_image

_NAMES = {"mask": "mask_rcnn_r50_fpn", "keypoint": "keypoint_rcnn_r50_fpn"}


def tv_model(kind: str, num_classes: int, **kwargs):
    """torchvision's Mask / Keypoint R-CNN R50-FPN built as its pretrained detectors are
    (FrozenBatchNorm2d, 3 trainable stages), random weights, nothing downloaded."""
    from torchvision.models.detection import KeypointRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    if kind == "mask":
        return MaskRCNN(backbone, num_classes, **kwargs)
    return KeypointRCNN(backbone, num_classes, **kwargs)


def _randomize_for_detections(model) -> None:
    """Peaky class scores (as a trained model's) and random BatchNorm statistics."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cls = model.roi_heads.box_predictor.cls_score
        cls.weight.mul_(30.0)
        if cls.out_features == 2:
            # one class (Keypoint R-CNN's person): random weights put it far below the background
            # everywhere; a foreground row close to the background's spreads its scores over (0, 1)
            cls.weight[1].copy_(cls.weight[0] + 0.003 * torch.randn(cls.weight.shape[1], generator=g))
            cls.bias[1].copy_(cls.bias[0])
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def _ours_ctor(kind: str):
    from pydetops.models import keypointrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
    return maskrcnn_resnet50_fpn if kind == "mask" else keypointrcnn_resnet50_fpn


def _kwargs(kind: str, **kwargs) -> Dict[str, Any]:
    if kind == "mask":
        return dict(num_classes=91, **kwargs)
    return dict(num_classes=2, num_keypoints=17, **kwargs)


def model_pair(kind: str, **kwargs):
    """(ours, torchvision's) with the same weights; ``kwargs`` go to both constructors."""
    torch.manual_seed(0)
    kw = _kwargs(kind, **kwargs)
    num_classes = kw.pop("num_classes")
    theirs = tv_model(kind, num_classes, **kw)
    _randomize_for_detections(theirs)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.pt")
        torch.save(theirs.state_dict(), path)
        ours = _ours_ctor(kind)(weights=path, num_classes=num_classes, **kw)  # weights -> FrozenBatchNorm2d
    return ours, theirs


def ours_only(kind: str, **kwargs):
    torch.manual_seed(0)
    ours = _ours_ctor(kind)(**_kwargs(kind, **kwargs))
    _randomize_for_detections(ours)
    return ours


def _median_ms(fn: Callable[[], Any], calls: int = 5) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class _RoIOutputs:
    """Keeps copies of the last eval forward's inputs of the paste / decode: the roi_heads' result
    (masks 28x28, boxes in the resized image) and the keypoint predictor's heatmaps."""

    def __init__(self, model):
        self.result: List[Dict[str, torch.Tensor]] = []
        self.heatmaps: Optional[torch.Tensor] = None
        model.roi_heads.register_forward_hook(self._roi)
        if getattr(model.roi_heads, "keypoint_predictor", None) is not None:
            model.roi_heads.keypoint_predictor.register_forward_hook(self._maps)

    def _roi(self, module, args, out):
        self.result = [{k: v.detach().clone() for k, v in r.items()} for r in out[0]]

    def _maps(self, module, args, out):
        self.heatmaps = out.detach().clone()


def _breakdown(kind: str, captured: _RoIOutputs, final_boxes: torch.Tensor, hw: Tuple[int, int],
               tv_ok: bool) -> str:
    """paste / decode of ours against torchvision's function, on the model's own last outputs."""
    from pydetops import ops
    r = captured.result[0]
    if kind == "mask":
        masks = r["masks"]
        line = (f"paste of {len(masks)} masks into {hw[0]}x{hw[1]}: ours "
                f"{_median_ms(lambda: ops.paste_masks(masks, final_boxes, hw, 1)):.1f} ms")
        if tv_ok:
            from torchvision.models.detection.roi_heads import paste_masks_in_image
            line += f", torchvision {_median_ms(lambda: paste_masks_in_image(masks, final_boxes, hw, 1)):.1f} ms"
        return line
    maps, boxes = captured.heatmaps, r["boxes"]
    line = (f"decode of {maps.shape[0]} RoIs x {maps.shape[1]} heatmaps {maps.shape[2]}x{maps.shape[3]}: ours "
            f"{_median_ms(lambda: ops.heatmaps_to_keypoints(maps, boxes)):.1f} ms")
    if tv_ok:
        from torchvision.models.detection.roi_heads import heatmaps_to_keypoints
        line += f", torchvision {_median_ms(lambda: heatmaps_to_keypoints(maps, boxes)):.1f} ms"
    return line


def _inference_case(kind: str, device: str, hw: Tuple[int, int], min_size: int, max_size: int,
                    detections: int) -> Case:
    tv = torchvision_status()
    state: Dict[str, Any] = {}
    kw = dict(min_size=min_size, max_size=max_size, box_detections_per_img=detections)

    def build() -> Dict[str, Any]:
        if not state:
            img = structured_image(*hw).to(device)
            if tv.usable:
                ours, theirs = model_pair(kind, **kw)
                theirs.eval().to(device)
            else:
                ours, theirs = ours_only(kind, **kw), None
            ours.to(device).optimize_for_inference()
            timer = StageTimer(ours, torch.cuda.synchronize if device.startswith("cuda") else None)
            captured = _RoIOutputs(ours)
            with torch.no_grad():
                a = ours([img])[0]
                state["agree"] = agreement(a, theirs([img])[0], 1e-2) if theirs is not None else None
            timer.reset()
            state.update(img=img, ours=ours, theirs=theirs, timer=timer, captured=captured, count=len(a["boxes"]))
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
        with torch.no_grad():  # the hooks keep this call's masks / heatmaps
            out = s["ours"]([s["img"]])[0]
        line += "; " + _breakdown(kind, s["captured"], out["boxes"], hw, tv.usable)
        if s["agree"] is not None:
            hit, total = s["agree"]
            line += (f"; {hit}/{total} of torchvision's detections in ours' {s['count']} (labels equal, 1e-2 px; "
                     "BatchNorm folding moves random-weight scores slightly)")
        return line

    if tv.usable:
        baseline = run_theirs
        name = f"torchvision {tv.version} {'MaskRCNN' if kind == 'mask' else 'KeypointRCNN'}, same weights"
        comparable, note = True, ("ours after optimize_for_inference() (BatchNorm folded, channels-last backbone, "
                                  "convs fused with their ReLU / residual sums, 3x3 stride-1 convs by Winograd, "
                                  "RPN head and mask / keypoint FCN); torchvision as it ships")
    else:
        baseline, name, comparable = None, "none (torchvision not usable here)", False
        note = ("a whole detector has no plain-torch equivalent: without torchvision only pydetops is timed "
                "(random weights), no speed-up")
    config = f"1 image {hw[0]}x{hw[1]}, min_size {min_size}, <= {detections} detections"
    return Case(_NAMES[kind] + " inference", config, run_ours, baseline, name, device=device,
                comparable=comparable, note=note, details=details)


def _train_case(kind: str, device: str, batch: int, hw: Tuple[int, int]) -> Case:
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            from pydetops.models import keypoint_rcnn, mask_rcnn
            torch.manual_seed(0)
            ctor = mask_rcnn if kind == "mask" else keypoint_rcnn
            model = ctor(num_classes=4, backbone="tiny", min_size=min(hw), max_size=max(hw)).train().to(device)
            h, w = hw
            g = torch.Generator().manual_seed(2)
            images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(batch)]
            box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.8 * h]])
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            for j, (x1, y1, x2, y2) in enumerate(box.tolist()):
                masks[j, int(y1):int(y2), int(x1):int(x2)] = 1
            cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
            kps = torch.stack([torch.stack([box[:, 0], cy], 1), torch.stack([box[:, 2], cy], 1),
                               torch.stack([cx, box[:, 1]], 1), torch.stack([cx, box[:, 3]], 1),
                               torch.stack([cx, cy], 1)], 1)
            kps = torch.cat([kps, torch.full((2, 5, 1), 2.0)], 2)
            targets = [{"boxes": box.to(device), "labels": torch.tensor([1, 3], device=device),
                        "masks": masks.to(device), "keypoints": kps.to(device)} for _ in range(batch)]
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

    return Case(f"{kind}_rcnn_tiny train step", f"batch {batch} {hw[0]}x{hw[1]}", step, None,
                "none (torchvision has no 'tiny' backbone)", device=device, comparable=False,
                note="forward + backward + SGD step; ours only", details=details)


def model_cases(device: str, image_hw: Tuple[int, int], min_size: int, max_size: int, detections: int,
                train_batch: int, train_hw: Tuple[int, int], kinds=("mask", "keypoint")) -> List[Case]:
    """The cases at the given sizes (the models are built on their first call, not here)."""
    cases = [_inference_case(k, device, image_hw, min_size, max_size, detections) for k in kinds]
    cases += [_train_case(k, device, train_batch, train_hw) for k in kinds]
    return cases


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return model_cases(device, (320, 448), 320, 448, 20, 2, (128, 128))
    return model_cases(device, (800, 1088), 800, 1333, 100, 4, (256, 256))
