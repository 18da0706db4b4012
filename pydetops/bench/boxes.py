"""Benchmarks of the IoU family (box_overlaps) against torchvision.

torchvision's box_iou / generalized_box_iou / distance_box_iou / complete_box_iou
and its *_box_iou_loss functions are pure torch. Where torchvision does not
import, the baseline is the same formula written here in plain torch (N x M
broadcasting, as torchvision does), labelled "plain torch (torchvision's formula)":
a fair stand-in, since it is what torchvision would run.
"""
import math
from typing import List, Tuple

import torch
from torch import Tensor

from pydetops import ops

from ._core import Case, baseline_torchvision

# ---- torchvision's formulas in plain torch (the fallback baseline) ----------


def _up(t: Tensor) -> Tensor:
    # float16/bfloat16 -> float32, small integers -> int32 (what torchvision calls _upcast)
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _area(b: Tensor) -> Tensor:
    b = _up(b)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _inter_union(b1: Tensor, b2: Tensor) -> Tuple[Tensor, Tensor]:
    top_left = torch.max(b1[:, None, :2], b2[:, :2])
    bottom_right = torch.min(b1[:, None, 2:], b2[:, 2:])
    side = _up(bottom_right - top_left).clamp(min=0)
    inter = side[..., 0] * side[..., 1]
    return inter, _area(b1)[:, None] + _area(b2) - inter


def _enclosing_sides(b1: Tensor, b2: Tensor) -> Tensor:
    return _up(torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)


def torch_box_iou(b1: Tensor, b2: Tensor) -> Tensor:
    inter, union = _inter_union(b1, b2)
    return inter / union


def torch_generalized_box_iou(b1: Tensor, b2: Tensor) -> Tensor:
    inter, union = _inter_union(b1, b2)
    side = _enclosing_sides(b1, b2)
    enclose = side[..., 0] * side[..., 1]
    return inter / union - (enclose - union) / enclose


def _diou_and_iou(b1: Tensor, b2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    iou = torch_box_iou(b1, b2)
    side = _enclosing_sides(b1, b2)
    diag2 = side[..., 0] ** 2 + side[..., 1] ** 2 + eps
    cx1, cy1 = (b1[:, 0] + b1[:, 2]) / 2, (b1[:, 1] + b1[:, 3]) / 2
    cx2, cy2 = (b2[:, 0] + b2[:, 2]) / 2, (b2[:, 1] + b2[:, 3]) / 2
    dist2 = _up(cx1[:, None] - cx2[None, :]) ** 2 + _up(cy1[:, None] - cy2[None, :]) ** 2
    return iou - dist2 / diag2, iou


def torch_distance_box_iou(b1: Tensor, b2: Tensor, eps: float = 1e-7) -> Tensor:
    return _diou_and_iou(_up(b1), _up(b2), eps)[0]


def torch_complete_box_iou(b1: Tensor, b2: Tensor, eps: float = 1e-7) -> Tensor:
    b1, b2 = _up(b1), _up(b2)
    diou, iou = _diou_and_iou(b1, b2, eps)
    ang1 = torch.atan((b1[:, None, 2] - b1[:, None, 0]) / (b1[:, None, 3] - b1[:, None, 1]))
    ang2 = torch.atan((b2[:, 2] - b2[:, 0]) / (b2[:, 3] - b2[:, 1]))
    v = (4 / math.pi**2) * torch.pow(ang1 - ang2, 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _loss_parts(b1: Tensor, b2: Tensor):
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    ix1, iy1, ix2, iy2 = torch.max(x1, u1), torch.max(y1, v1), torch.min(x2, u2), torch.min(y2, v2)
    inter = torch.zeros_like(x1)
    hit = (iy2 > iy1) & (ix2 > ix1)
    inter[hit] = (ix2[hit] - ix1[hit]) * (iy2[hit] - iy1[hit])
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    cw, ch = torch.max(x2, u2) - torch.min(x1, u1), torch.max(y2, v2) - torch.min(y1, v1)
    return (x1, y1, x2, y2), (u1, v1, u2, v2), inter, union, cw, ch


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    return loss.sum() if reduction == "sum" else loss


def torch_generalized_box_iou_loss(b1: Tensor, b2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    _, _, inter, union, cw, ch = _loss_parts(b1, b2)
    enclose = cw * ch
    return _reduce(1 - (inter / (union + eps) - (enclose - union) / (enclose + eps)), reduction)


def _diou_loss_and_iou(b1: Tensor, b2: Tensor, eps: float):
    (x1, y1, x2, y2), (u1, v1, u2, v2), inter, union, cw, ch = _loss_parts(b1, b2)
    iou = inter / (union + eps)
    dist2 = ((x1 + x2) / 2 - (u1 + u2) / 2) ** 2 + ((y1 + y2) / 2 - (v1 + v2) / 2) ** 2
    return 1 - iou + dist2 / (cw**2 + ch**2 + eps), iou


def torch_distance_box_iou_loss(b1: Tensor, b2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    return _reduce(_diou_loss_and_iou(b1, b2, eps)[0], reduction)


def torch_complete_box_iou_loss(b1: Tensor, b2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    loss, iou = _diou_loss_and_iou(b1, b2, eps)
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(loss + alpha * v, reduction)


# ---- cases --------------------------------------------------------------------


def _boxes(n: int, device: str, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], 1).to(device)


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    if tv is not None:
        base = {name: getattr(tv, name) for name in [
            "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou",
            "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]}
        base_name = f"torchvision {tv_version}"
    else:
        base = {
            "box_iou": torch_box_iou,
            "generalized_box_iou": torch_generalized_box_iou,
            "distance_box_iou": torch_distance_box_iou,
            "complete_box_iou": torch_complete_box_iou,
            "generalized_box_iou_loss": torch_generalized_box_iou_loss,
            "distance_box_iou_loss": torch_distance_box_iou_loss,
            "complete_box_iou_loss": torch_complete_box_iou_loss,
        }
        base_name = "plain torch (torchvision's formula)"

    big = 500 if quick else 4000
    mid = 300 if quick else 2000
    pairs = 10_000 if quick else 100_000
    a_big, b_big = _boxes(big, device, 0), _boxes(big, device, 1)
    a_mid, b_mid = _boxes(mid, device, 2), _boxes(mid, device, 3)
    p1, p2 = _boxes(pairs, device, 4), _boxes(pairs, device, 5)

    out: List[Case] = [
        Case("box_iou", f"{big}x{big} float32", lambda: ops.box_iou(a_big, b_big),
             lambda: base["box_iou"](a_big, b_big), base_name, device),
        Case("box_iou (floor)", f"write {big}x{big} float32: torch.empty().fill_(1)",
             lambda: torch.empty(big, big, device=device).fill_(1.0), None, "none (reference row, not an op)",
             device, comparable=False,
             note=("box_iou (floor) is not an op: it times torch.empty(N, N).fill_(1), allocating and writing an "
                   "output as large as box_iou's. No box_iou can be faster, so read box_iou's time against this "
                   "floor (how close to memory speed it runs), not only against the baseline.")),
    ]
    for name in ["generalized_box_iou", "distance_box_iou", "complete_box_iou"]:
        out.append(Case(name, f"{mid}x{mid} float32",
                        (lambda f: lambda: f(a_mid, b_mid))(getattr(ops, name)),
                        (lambda f: lambda: f(a_mid, b_mid))(base[name]), base_name, device))
    for name in ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]:
        out.append(Case(name, f"{pairs} pairs float32, mean",
                        (lambda f: lambda: f(p1, p2, reduction="mean"))(getattr(ops, name)),
                        (lambda f: lambda: f(p1, p2, reduction="mean"))(base[name]), base_name, device))

    def train_step(f):
        def run():
            x = p1.clone().requires_grad_(True)
            f(x, p2, reduction="mean").backward()
            return x.grad
        return run

    out.append(Case("generalized_box_iou_loss", f"{pairs} pairs float32, mean, forward+backward",
                    train_step(ops.generalized_box_iou_loss), train_step(base["generalized_box_iou_loss"]),
                    base_name, device))
    return out
