"""Benchmarks: the regression and sliding-window models (classification + localization, OverFeat,
YOLO v1) at their CPU-sized defaults: inference and a training step (forward, backward, SGD), in
images/s. Ours only: torchvision has none of these models (no baseline, no speed-up claimed).
"""
from typing import Any, Callable, Dict, List, Tuple

import torch

from pydetops.bench._core import Case

_NOTE = "ours only: torchvision has no such model; images/s under the table"


def _batch(n: int, hw: Tuple[int, int], device: str):
    g = torch.Generator().manual_seed(7)
    h, w = hw
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(n)]
    box = torch.tensor([[0.2 * w, 0.25 * h, 0.6 * w, 0.7 * h], [0.55 * w, 0.1 * h, 0.9 * w, 0.4 * h]])
    centre = (box[:, :2] + box[:, 2:]) / 2
    kps = torch.stack([box[:, [0, 1]], box[:, [2, 1]], box[:, [0, 3]], box[:, [2, 3]], centre], 1)
    kps = torch.cat([kps, torch.full((2, 5, 1), 2.0)], -1)
    targets = [{"boxes": box.to(device), "labels": torch.tensor([1, 3], device=device), "keypoints": kps.to(device)}
               for _ in range(n)]
    return images, targets


def _build(name: str, device: str):
    from pydetops.models import MODELS
    torch.manual_seed(0)
    kwargs: Dict[str, Any] = {"num_keypoints": 5} if name == "localization" else {}
    return MODELS[name](num_classes=4, **kwargs).to(device)


def _cases_for(name: str, device: str, n: int, hw: Tuple[int, int]) -> List[Case]:
    state: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        if not state:
            images, targets = _batch(n, hw, device)
            model = _build(name, device)
            state.update(model=model, images=images, targets=targets,
                         opt=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        return state

    def infer():
        s = build()
        s["model"].eval()
        with torch.no_grad():
            return s["model"](s["images"])

    def step():
        s = build()
        s["model"].train()
        losses = s["model"](s["images"], s["targets"])
        s["opt"].zero_grad()
        sum(losses.values()).backward()
        s["opt"].step()

    def rate(what: str) -> Callable[[dict], str]:
        return lambda row: f"{n / (row['ours_ms'] / 1e3):.1f} images/s ({what}, batch {n} / median call)"

    config = f"batch {n} {hw[0]}x{hw[1]}, defaults"
    return [Case(f"{name} inference", config, infer, None, "none (torchvision has no such model)", device=device,
                 comparable=False, note=_NOTE, details=rate("inference")),
            Case(f"{name} train step", config, step, None, "none (torchvision has no such model)", device=device,
                 comparable=False, note=_NOTE, details=rate("training"))]


def model_cases(device: str, n: int, hw: Tuple[int, int]) -> List[Case]:
    cases: List[Case] = []
    for name in ("localization", "overfeat", "yolo_v1"):
        cases += _cases_for(name, device, n, hw)
    return cases


def cases(device: str, quick: bool) -> List[Case]:
    return model_cases(device, 2 if quick else 8, (128, 128))
