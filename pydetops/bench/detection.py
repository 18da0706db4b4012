"""Benchmarks: match_boxes, sigmoid_focal_loss (forward + backward), detection_postprocess.

Baselines, run side by side in the same process:

* match_boxes vs torchvision's ``Matcher(box_iou(gt, anchors))`` (the N x M matrix,
  then the Matcher), or the same two steps written in plain torch when torchvision
  is not usable (torchvision implements both in Python on ATen ops: a fair stand-in).
* sigmoid_focal_loss forward + backward vs ``torchvision.ops.sigmoid_focal_loss``
  through autograd, or its formula in plain torch (what torchvision runs).
* detection_postprocess (RetinaNet-style: 5 levels, 80 classes, 2 images) vs the
  per-image, per-level composition torchvision's RetinaNet runs (threshold, topk,
  BoxCoder decode, clip, batched_nms, top max_det) with torchvision's ops, or with
  pydetops' ops when torchvision is not usable.
"""
import math
from typing import List

import torch

import pydetops.ops as P
from pydetops.bench._core import Case, baseline_torchvision

_CLIP = math.log(1000.0 / 16)


def _boxes(n: int, canvas: float, max_side: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * canvas
    wh = torch.rand(n, 2, generator=g) * (max_side - 4) + 4
    return torch.cat([xy, xy + wh], 1)


# ---- plain-torch equivalents of torchvision's Python code ----

def _torch_box_iou(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def _torch_matcher(q: torch.Tensor, high: float, low: float, allow: bool) -> torch.Tensor:
    vals, matches = q.max(dim=0)
    all_matches = matches.clone() if allow else None
    below = vals < low
    between = (vals >= low) & (vals < high)
    matches[below] = -1
    matches[between] = -2
    if allow:
        best, _ = q.max(dim=1)
        pred = torch.where(q == best[:, None])[1]
        matches[pred] = all_matches[pred]
    return matches


def _torch_focal(x, t, alpha=0.25, gamma=2.0, reduction="sum"):
    p = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _composed_postprocess(scores, codes, anchors, image_sizes, levels, thr, topk, nms_thr, max_det, ops, decode):
    out = []
    nc = scores.shape[2]
    for b in range(scores.shape[0]):
        boxes_all, scores_all, labels_all = [], [], []
        start = 0
        for size in levels:
            s = scores[b, start:start + size].flatten()
            keep = s > thr
            s = s[keep]
            idx = torch.where(keep)[0]
            k = min(topk, idx.numel())
            s, order = s.topk(k)
            idx = idx[order]
            a = idx // nc + start
            boxes = decode(codes[b, a], anchors[a])
            boxes = ops.clip_boxes_to_image(boxes, image_sizes[b])
            boxes_all.append(boxes)
            scores_all.append(s)
            labels_all.append(idx % nc)
            start += size
        boxes, s, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = ops.batched_nms(boxes, s, labels, nms_thr)[:max_det]
        out.append((boxes[keep], s[keep], labels[keep]))
    return out


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    out: List[Case] = []

    # ---- match_boxes: RPN-sized anchors x ground truths
    n, m = (20000, 20) if quick else (120000, 60)
    anchors = _boxes(n, 800, 256, 0).to(device)
    gt = _boxes(m, 800, 300, 1).to(device)
    if tv is not None:
        from torchvision.models.detection._utils import Matcher

        matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
        base, name = (lambda: matcher(tv.box_iou(gt, anchors))), f"torchvision {tv_version} box_iou + Matcher"
    else:
        base, name = (lambda: _torch_matcher(_torch_box_iou(gt, anchors), 0.7, 0.3, True)), \
            "plain torch box_iou + Matcher (torchvision's code)"
    out.append(Case("match_boxes", f"{n} anchors x {m} gt, 0.7/0.3 low-quality", lambda: P.match_boxes(
        anchors, gt, 0.7, 0.3, True), base, name, device,
        note=f"IoU matrix avoided: {n * m * 4 / 1e6:.0f} MB"))

    # ---- focal loss forward + backward (RetinaNet: anchors x 80 classes)
    rows = 5000 if quick else 40000
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(rows, 80, generator=g) * 3).to(device).requires_grad_()
    t = (torch.rand(rows, 80, generator=g) < 0.01).float().to(device)

    def ours_focal():
        P.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum").backward()

    if tv is not None:
        def base_focal():
            tv.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum").backward()
        name = f"torchvision {tv_version} (autograd)"
    else:
        def base_focal():
            _torch_focal(x, t).backward()
        name = "plain torch formula (torchvision's code, autograd)"
    out.append(Case("sigmoid_focal_loss fwd+bwd", f"{rows}x80 float32 sum", ours_focal, base_focal, name, device))

    # ---- post-processing: RetinaNet-style, 2 images, 5 levels, 80 classes
    side = 256 if quick else 512
    levels = [(side // s) ** 2 * 9 for s in (8, 16, 32, 64, 128)]
    na, nc, nb = sum(levels), 80, 2
    g = torch.Generator().manual_seed(3)
    anchors_pp = _boxes(na, side, side / 2, 4).to(device)
    # Sparse, peaked scores as a trained detector's sigmoid outputs.
    scores = (torch.rand(nb, na, nc, generator=g) ** 12).to(device)
    codes = (torch.randn(nb, na, 4, generator=g) * 0.2).to(device)
    sizes = [(side, side)] * nb
    args = dict(thr=0.05, topk=1000, nms_thr=0.5, max_det=100)

    def ours_pp():
        return P.detection_postprocess_padded(scores, codes, anchors_pp, sizes, levels, args["thr"], args["topk"],
                                              args["nms_thr"], args["max_det"], (1.0, 1.0, 1.0, 1.0), _CLIP, 0.0)

    if tv is not None:
        from torchvision.models.detection._utils import BoxCoder

        coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        base_pp = lambda: _composed_postprocess(scores, codes, anchors_pp, sizes, levels, args["thr"],  # noqa: E731
                                                args["topk"], args["nms_thr"], args["max_det"], tv,
                                                coder.decode_single)
        name = f"torchvision {tv_version} ops composed (RetinaNet's steps)"
    else:
        base_pp = lambda: _composed_postprocess(scores, codes, anchors_pp, sizes, levels, args["thr"],  # noqa: E731
                                                args["topk"], args["nms_thr"], args["max_det"], P,
                                                lambda c, a: P.decode_boxes(c, a))
        name = "pydetops ops composed (RetinaNet's steps)"
    kept = ours_pp()[3].tolist()
    out.append(Case("detection_postprocess", f"{nb} img x {na} anchors x {nc} cls, 5 levels, top-1000",
                    ours_pp, base_pp, name, device, note=f"kept {kept}"))
    return out
