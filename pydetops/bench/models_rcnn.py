"""Benchmarks: R-CNN, SPPNet and Fast R-CNN (ours only: torchvision has none of them).

Per model, with the CPU-sized defaults (tiny CNN; ``--quick``: smaller):

* inference on one image with a fixed set of grid proposals (``proposals=``, so the row times the
  network and not the proposal method; P per image as in the config), images/s under the table;
* a training step (forward, backward, SGD) on a batch of 2 with jittered ground-truth proposals;
* selective search on one image (fast mode), where ``cv2.ximgproc`` imports: the proposal cost
  that the cache removes from every later epoch.

The three inference rows show the lineage's point: R-CNN runs the CNN once per proposal,
SPPNet and Fast R-CNN once per image.
"""
import math
from typing import Any, Dict, List, Tuple

import torch

from pydetops.bench._core import Case

_NONE = "none (torchvision has no such model)"


def grid_proposals(h: int, w: int, count: int) -> torch.Tensor:
    """``count`` boxes: 3 sizes x 3 aspect ratios at each point of a regular grid over an h x w image."""
    per = max(1, -(-count // 9))
    ny = max(1, math.ceil(math.sqrt(per * h / w)))
    nx = max(1, -(-per // ny))
    cy, cx = torch.meshgrid((torch.arange(ny) + 0.5) * h / ny, (torch.arange(nx) + 0.5) * w / nx, indexing="ij")
    centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], 1)
    boxes = []
    for size in (min(h, w) / 8, min(h, w) / 4, min(h, w) / 2):
        for ar in (0.5, 1.0, 2.0):
            half = torch.tensor([size * math.sqrt(ar), size / math.sqrt(ar)]) / 2
            boxes.append(torch.cat([centres - half, centres + half], 1))
    return torch.stack(boxes, 1).reshape(-1, 4)[:count]  # every point's 9 boxes, then the next point


def _scene(h: int, w: int, seed: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g) * 0.3
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.4 * w, 0.5 * h], [0.5 * w, 0.4 * h, 0.9 * w, 0.8 * h]])
    for k, b in enumerate(box.round().long().tolist()):
        img[k, b[1]:b[3], b[0]:b[2]] = 1.0
    return img, {"boxes": box, "labels": torch.tensor([1, 2])}


def _build(name: str, device: str, image_size: int):
    from pydetops.models import MODELS
    torch.manual_seed(0)
    return MODELS[name](num_classes=4, image_size=image_size, proposal_fn=None).to(device)


def _inference_case(name: str, device: str, hw: Tuple[int, int], count: int) -> Case:
    state: Dict[str, Any] = {}

    def run():
        if not state:
            model = _build(name, device, min(hw)).eval()
            img, _ = _scene(*hw, seed=1)
            state.update(model=model, img=[img.to(device)], props=[grid_proposals(*hw, count).to(device)])
        with torch.no_grad():
            state["model"](state["img"], proposals=state["props"])

    def details(row: dict) -> str:
        return f"{name}: {1e3 / row['ours_ms']:.2f} images/s inference ({count} proposals per image)"

    return Case(f"{name} inference", f"1 image {hw[0]}x{hw[1]}, {count} proposals", run, None, _NONE,
                device=device, comparable=False, note="tiny CNN, given proposals; ours only", details=details)


def _train_case(name: str, device: str, hw: Tuple[int, int], batch: int) -> Case:
    state: Dict[str, Any] = {}

    def step():
        if not state:
            model = _build(name, device, min(hw)).train()
            g = torch.Generator().manual_seed(3)
            imgs, targets, props = [], [], []
            for i in range(batch):
                img, t = _scene(*hw, seed=10 + i)
                gt = t["boxes"].repeat(8, 1)
                jit = gt + torch.randn(gt.shape, generator=g) * 0.1 * (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
                imgs.append(img.to(device))
                targets.append({k: v.to(device) for k, v in t.items()})
                props.append(torch.cat([jit, grid_proposals(*hw, 300)]).to(device))
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            state.update(model=model, imgs=imgs, targets=targets, props=props, opt=opt)
        losses = state["model"](state["imgs"], state["targets"], proposals=state["props"])
        state["opt"].zero_grad()
        sum(losses.values()).backward()
        state["opt"].step()

    def details(row: dict) -> str:
        return f"{name}: {batch / (row['ours_ms'] / 1e3):.2f} images/s training (batch {batch} / median step)"

    return Case(f"{name} train step", f"batch {batch} {hw[0]}x{hw[1]}, 128 RoIs", step, None, _NONE, device=device,
                comparable=False, note="forward + backward + SGD step; ours only", details=details)


def _selective_search_case(hw: Tuple[int, int]) -> Case:
    state: Dict[str, Any] = {}

    def run():
        if not state:
            from pydetops.models.proposals import SelectiveSearch
            state.update(ss=SelectiveSearch("fast", 2000), img=_scene(*hw, seed=2)[0])
        state["ss"](state["img"])

    return Case("selective_search (fast)", f"1 image {hw[0]}x{hw[1]}", run, None, "none (OpenCV ximgproc itself)",
                comparable=False, note="OpenCV's selective search, 1 thread: the cost the proposal cache pays once")


def rcnn_family_cases(device: str, hw: Tuple[int, int], count: int, train_hw: Tuple[int, int],
                      selective_search: bool = True) -> List[Case]:
    """The cases at the given sizes (models are built on their first call, not here)."""
    out: List[Case] = []
    for name in ("rcnn", "sppnet", "fast_rcnn"):
        out.append(_inference_case(name, device, hw, count))
        out.append(_train_case(name, device, train_hw, 2))
    from pydetops.models.proposals import selective_search_available
    if selective_search and device == "cpu" and selective_search_available():
        out.append(_selective_search_case(hw))
    return out


def cases(device: str, quick: bool) -> List[Case]:
    if quick:
        return rcnn_family_cases(device, (128, 128), 300, (128, 128))
    return rcnn_family_cases(device, (256, 320), 2000, (128, 128))
