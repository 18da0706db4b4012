"""Benchmarks of nms, batched_nms and soft_nms.

Inputs: boxes with (x1, y1) uniform in [0, 1024) and sides uniform in [1, 128]
(float32), uniform random scores. Baseline: torchvision.ops when it imports;
otherwise a greedy loop written in Python over torch ops (one vectorised IoU
row per kept box), labelled as such and not comparable to torchvision's C++
kernel. torchvision's own figures measured on the project's 2-core machine are
in benchmarks/NOTES.md.
"""
from typing import List

import torch

from pydetops.bench._core import Case, baseline_torchvision
import pydetops.ops as P

_PY_LABEL = "python greedy loop (not comparable to torchvision C++)"


def make_boxes(n: int, device: str, seed: int = 0, canvas: float = 1024.0, max_side: float = 128.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * canvas
    wh = torch.rand(n, 2, generator=g) * (max_side - 1) + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    return boxes.to(device), scores.to(device)


def python_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> torch.Tensor:
    """torchvision's greedy algorithm, one vectorised IoU row per kept box."""
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        iw = (torch.minimum(x2[i], x2[i + 1:]) - torch.maximum(x1[i], x1[i + 1:])).clamp(min=0)
        ih = (torch.minimum(y2[i], y2[i + 1:]) - torch.maximum(y1[i], y1[i + 1:])).clamp(min=0)
        inter = iw * ih
        suppressed[i + 1:] |= inter / (area[i] + area[i + 1:] - inter) > thr
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def python_batched_nms(boxes, scores, idxs, thr):
    keep = []
    for c in torch.unique(idxs):
        sel = torch.where(idxs == c)[0]
        keep.append(sel[python_greedy_nms(boxes[sel], scores[sel], thr)])
    keep = torch.cat(keep)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def python_soft_nms(boxes, scores, thr=0.3, sigma=0.5, score_threshold=0.001):
    """Gaussian Soft-NMS, one vectorised decay per selected box."""
    cur = scores.clone()
    alive = cur >= score_threshold
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    keep, out = [], []
    neg_inf = torch.tensor(float("-inf"), device=boxes.device)
    while bool(alive.any()):
        i = int(torch.where(alive, cur, neg_inf).argmax())
        keep.append(i)
        out.append(cur[i])
        alive[i] = False
        iw = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        ih = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = iw * ih
        iou = inter / (area[i] + area - inter)
        cur = torch.where(alive, cur * torch.exp(-iou * iou / sigma), cur)
        alive &= cur >= score_threshold
    return torch.tensor(keep), torch.stack(out) if out else cur[:0]


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    out: List[Case] = []
    n = 2000 if quick else 10000
    boxes, scores = make_boxes(n, device)
    if tv is not None:
        base, name, comparable = (lambda: tv.nms(boxes, scores, 0.5)), f"torchvision {tv_version}", True
    else:
        base, name, comparable = (lambda: python_greedy_nms(boxes, scores, 0.5)), _PY_LABEL, False
    out.append(Case("nms", f"{n} boxes thr 0.5 float32", lambda: P.nms(boxes, scores, 0.5), base, name, device,
                    comparable, note=f"{len(P.nms(boxes, scores, 0.5))} kept"))

    nb = 4000 if quick else 20000
    bboxes, bscores = make_boxes(nb, device, seed=1)
    idxs = torch.randint(0, 80, (nb,), generator=torch.Generator().manual_seed(2)).to(device)
    if tv is not None:
        base, name, comparable = (lambda: tv.batched_nms(bboxes, bscores, idxs, 0.5)), f"torchvision {tv_version}", True
    else:
        base, name, comparable = (lambda: python_batched_nms(bboxes, bscores, idxs, 0.5)), _PY_LABEL, False
    out.append(Case("batched_nms", f"{nb} boxes 80 classes thr 0.5 float32",
                    lambda: P.batched_nms(bboxes, bscores, idxs, 0.5), base, name, device, comparable))

    ns = 1000 if quick else 5000
    sboxes, sscores = make_boxes(ns, device, seed=3)
    out.append(Case("soft_nms", f"{ns} boxes gaussian float32", lambda: P.soft_nms(sboxes, sscores),
                    lambda: python_soft_nms(sboxes, sscores), "python loop over torch ops (mmcv not available)",
                    device, False))
    return out
