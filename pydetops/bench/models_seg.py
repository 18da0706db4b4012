"""Benchmarks: the FCN semantic segmentation model and the HOG + linear SVM sliding-window
detector (pydetops/models/fcn.py, hog_svm.py), inference and a training step, images/s.

Ours only: torchvision has neither model (its FCN is a ResNet-50 / 101 backbone with bilinear
up-sampling, not this encoder-decoder), so no baseline and no speed-up is claimed.
"""
from typing import Any, Dict, List, Tuple

import torch

from pydetops.bench._core import Case

_NONE = "none (torchvision has no such model)"


def _scene(hw: Tuple[int, int], n: int, device: str, seed: int = 0):
    """``n`` images with two filled rectangles each, their boxes, labels and instance masks."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    images, targets = [], []
    for _ in range(n):
        img = 0.45 + 0.05 * torch.randn(3, h, w, generator=g)
        boxes = torch.tensor([[0.1 * w, 0.15 * h, 0.45 * w, 0.5 * h], [0.5 * w, 0.4 * h, 0.9 * w, 0.85 * h]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[j, y1:y2, x1:x2] = 1
            img[:, y1:y2, x1:x2] = torch.tensor([0.9, 0.2, 0.1] if j == 0 else [0.1, 0.7, 0.2])[:, None, None]
        images.append(img.clamp(0, 1).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2], device=device),
                        "masks": masks.to(device)})
    return images, targets


def _cases_for(name: str, build, device: str, hw: Tuple[int, int], batch: int) -> List[Case]:
    state: Dict[str, Any] = {}

    def setup() -> Dict[str, Any]:
        if not state:
            torch.manual_seed(0)
            model = build().to(device)
            images, targets = _scene(hw, batch, device)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            state.update(model=model, images=images, targets=targets, opt=opt)
        return state

    def infer():
        s = setup()
        s["model"].eval()
        with torch.no_grad():
            return s["model"](s["images"][:1])

    def step():
        s = setup()
        s["model"].train()
        losses = s["model"](s["images"], s["targets"])
        s["opt"].zero_grad()
        sum(losses.values()).backward()
        s["opt"].step()

    def per_image(n: int):
        return lambda row: f"{n / (row['ours_ms'] / 1e3):.1f} images/s ({n} image(s) / median call)"

    return [
        Case(f"{name} inference", f"1 image {hw[0]}x{hw[1]}", infer, None, _NONE, device=device, comparable=False,
             note="ours only", details=per_image(1)),
        Case(f"{name} train step", f"batch {batch} {hw[0]}x{hw[1]}", step, None, _NONE, device=device,
             comparable=False, note="forward + backward + SGD step; ours only", details=per_image(batch)),
    ]


def seg_cases(device: str, hw: Tuple[int, int], batch: int) -> List[Case]:
    from pydetops.models import fcn, hog_svm
    return (_cases_for("fcn (transpose decoder)", lambda: fcn(num_classes=3), device, hw, batch)
            + _cases_for("hog_svm", lambda: hog_svm(num_classes=3), device, hw, batch))


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return seg_cases(device, (64, 64), 2)
    return seg_cases(device, (128, 128), 4)
