"""Benchmarks: AnchorGenerator (FPN), decode_boxes, encode_boxes.

Baseline: torchvision's AnchorGenerator / BoxCoder when torchvision imports here, otherwise
plain-torch equivalents written below with the same vectorised tensor formulas torchvision
uses (a fair stand-in: torchvision implements these in Python on top of the same ATen ops).
"""
import math
from typing import List

import torch

from pydetops import ops
from pydetops.bench._core import Case, baseline_torchvision

_CLIP = math.log(1000.0 / 16)


# ---- plain-torch equivalents of torchvision's implementations (same vectorised formulas) ----

def _torch_grid_anchors(cell_anchors: List[torch.Tensor], grid_sizes, strides) -> List[torch.Tensor]:
    out = []
    for (gh, gw), (sy, sx), base in zip(grid_sizes, strides, cell_anchors):
        dev = base.device
        shifts_x = torch.arange(0, gw, dtype=torch.int32, device=dev) * torch.tensor(sx, device=dev)
        shifts_y = torch.arange(0, gh, dtype=torch.int32, device=dev) * torch.tensor(sy, device=dev)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return out


def _torch_anchor_generator(cell_anchors, image_hw, feature_maps, num_images):
    grid_sizes = [fm.shape[-2:] for fm in feature_maps]
    strides = [(image_hw[0] // g[0], image_hw[1] // g[1]) for g in grid_sizes]
    cells = [c.to(dtype=feature_maps[0].dtype, device=feature_maps[0].device) for c in cell_anchors]
    levels = _torch_grid_anchors(cells, grid_sizes, strides)
    return [torch.cat(levels) for _ in range(num_images)]


def _torch_decode_single(rel_codes, boxes, weights, clip=_CLIP):
    boxes = boxes.to(rel_codes.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = torch.clamp(rel_codes[:, 2::4] / ww, max=clip)
    dh = torch.clamp(rel_codes[:, 3::4] / wh, max=clip)
    pcx = dx * widths[:, None] + ctr_x[:, None]
    pcy = dy * heights[:, None] + ctr_y[:, None]
    pw = torch.exp(dw) * widths[:, None]
    ph = torch.exp(dh) * heights[:, None]
    half = torch.tensor(0.5, dtype=pcx.dtype, device=pcx.device)
    return torch.stack((pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph), dim=2).flatten(1)


def _torch_clip(boxes, size):
    h, w = size
    b = boxes.reshape(boxes.shape[0], -1, 4)
    x = b[..., 0::2].clamp(min=0, max=w)
    y = b[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _torch_encode(reference_boxes, proposals, weights):
    wx, wy, ww, wh = weights[0], weights[1], weights[2], weights[3]
    px1, py1, px2, py2 = (proposals[:, i].unsqueeze(1) for i in range(4))
    gx1, gy1, gx2, gy2 = (reference_boxes[:, i].unsqueeze(1) for i in range(4))
    ex_w, ex_h = px2 - px1, py2 - py1
    ex_cx, ex_cy = px1 + 0.5 * ex_w, py1 + 0.5 * ex_h
    gt_w, gt_h = gx2 - gx1, gy2 - gy1
    gt_cx, gt_cy = gx1 + 0.5 * gt_w, gy1 + 0.5 * gt_h
    return torch.cat((wx * (gt_cx - ex_cx) / ex_w, wy * (gt_cy - ex_cy) / ex_h,
                      ww * torch.log(gt_w / ex_w), wh * torch.log(gt_h / ex_h)), dim=1)


def _random_boxes(n, device, scale=1000.0):
    xy = torch.rand(n, 2, device=device) * scale
    wh = torch.rand(n, 2, device=device) * 200 + 1
    return torch.cat([xy, xy + wh], 1)


def cases(device: str, quick: bool) -> List[Case]:
    tv_ops, tv_version = baseline_torchvision()
    tv_det = None
    if tv_ops is not None:
        try:
            from torchvision.models.detection import _utils as tv_utils
            from torchvision.models.detection import anchor_utils as tv_anchor
            from torchvision.models.detection.image_list import ImageList as TvImageList
            tv_det = (tv_utils, tv_anchor, TvImageList)
        except Exception:  # noqa: BLE001
            tv_det = None
    plain = "plain torch (torchvision's vectorised formulas)"
    name = f"torchvision {tv_version}" if tv_det is not None else plain

    out: List[Case] = []

    # ---- AnchorGenerator: FPN, 5 levels of an 800 x 1216 image, 3 ratios -------------------
    scale = 4 if quick else 1
    img_h, img_w = 800 // scale, 1216 // scale
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    strides = (4, 8, 16, 32, 64)
    fmaps = [torch.zeros(1, 1, math.ceil(img_h / s), math.ceil(img_w / s), device=device) for s in strides]
    images = ops.ImageList(torch.zeros(1, 3, img_h, img_w, device=device), [(img_h, img_w)])
    gen = ops.AnchorGenerator(sizes, ratios)
    total = sum(f.shape[-2] * f.shape[-1] * 3 for f in fmaps)
    if tv_det is not None:
        tv_gen = tv_det[1].AnchorGenerator(sizes, ratios)
        tv_images = tv_det[2](images.tensors, images.image_sizes)
        base_fn = lambda: tv_gen(tv_images, fmaps)  # noqa: E731
    else:
        cells = [c.clone() for c in gen.cell_anchors]
        base_fn = lambda: _torch_anchor_generator(cells, (img_h, img_w), fmaps, 1)  # noqa: E731
    out.append(Case("AnchorGenerator", f"FPN 5 lvl {img_h}x{img_w} ({total} anchors) f32",
                    lambda: gen(images, fmaps), base_fn, name, device))

    # ---- decode -----------------------------------------------------------------------------
    weights = (10.0, 10.0, 5.0, 5.0)
    if tv_det is not None:
        coder = tv_det[0].BoxCoder(weights)
        tv_decode = coder.decode_single
        tv_encode = coder.encode_single
    else:
        tv_decode = lambda c, b: _torch_decode_single(c, b, weights)  # noqa: E731
        w_t = torch.tensor(weights, device=device)
        tv_encode = lambda r, p: _torch_encode(r, p, w_t)  # noqa: E731

    coder = ops.BoxCoder(weights)
    for n, k in ((200_000 // scale, 1), (1000 // scale, 91)):
        boxes = _random_boxes(n, device)
        codes = torch.randn(n, 4 * k, device=device)
        out.append(Case("decode_boxes", f"BoxCoder.decode_single {n} boxes x {k} cls f32",
                        lambda c=codes, b=boxes: coder.decode_single(c, b),
                        lambda c=codes, b=boxes: tv_decode(c, b), name, device))

    n = 100_000 // scale
    boxes = _random_boxes(n, device)
    codes = torch.randn(n, 4, device=device)
    out.append(Case("decode_boxes", f"{n} x 1 cls + clip to image f32",
                    lambda: ops.decode_boxes(codes, boxes, weights, _CLIP, (800, 1216)),
                    lambda: (tv_ops.clip_boxes_to_image(tv_decode(codes, boxes), (800, 1216)) if tv_det is not None
                             else _torch_clip(tv_decode(codes, boxes), (800, 1216))),
                    name + " (decode, then clip)", device))

    codes_g = codes.clone().requires_grad_(True)

    def ours_fb():
        ops.decode_boxes(codes_g, boxes, weights).sum().backward()

    def base_fb():
        tv_decode(codes_g, boxes).sum().backward()

    out.append(Case("decode_boxes", f"{n} x 1 cls fwd+bwd f32", ours_fb, base_fb, name + " + autograd", device))

    # ---- encode -----------------------------------------------------------------------------
    for n_enc in (200_000 // scale, 91_000 // scale):  # 200k boxes; 1000 proposals x 91 classes
        gt = _random_boxes(n_enc, device)
        prop = _random_boxes(n_enc, device)
        out.append(Case("encode_boxes", f"BoxCoder.encode_single {n_enc} boxes f32",
                        lambda g=gt, p=prop: coder.encode_single(g, p),
                        lambda g=gt, p=prop: tv_encode(g, p), name, device))
    return out
