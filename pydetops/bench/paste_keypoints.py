"""paste_masks / heatmaps_to_keypoints benchmarks (Mask R-CNN / Keypoint R-CNN post-processing).

Baseline: torchvision's ``roi_heads.paste_masks_in_image`` / ``roi_heads.heatmaps_to_keypoints``
(Python loops over the RoIs around F.interpolate) when torchvision imports here; otherwise
plain-torch loops written for this benchmark that do the same (labelled as such).

Inputs: 100 masks 28x28 pasted into 800x1088 (boxes of 20-400 px); 100 RoIs x 17 keypoints x
56x56 heatmaps with RoI sides of 50-400 px. The heatmaps are logit-like (noise plus one Gaussian
peak per map, as a trained head's); a second case uses pure noise, where few rows can be pruned.
"""
import math
from typing import List

import torch
import torch.nn.functional as F

from pydetops import ops
from pydetops.bench._core import Case, baseline_torchvision


def _boxes(n, image_hw, gen, min_side, max_side):
    ih, iw = image_hw
    w = torch.rand(n, generator=gen) * (max_side - min_side) + min_side
    h = torch.rand(n, generator=gen) * (max_side - min_side) + min_side
    x1 = torch.rand(n, generator=gen) * (iw - w).clamp(min=1)
    y1 = torch.rand(n, generator=gen) * (ih - h).clamp(min=1)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def _peaked(R, K, S, gen):
    ys = torch.arange(S, dtype=torch.float32)
    cy = torch.rand(R, K, 1, 1, generator=gen) * (S - 1)
    cx = torch.rand(R, K, 1, 1, generator=gen) * (S - 1)
    peak = 8 * torch.exp(-((ys[:, None] - cy) ** 2 + (ys[None, :] - cx) ** 2) / 8)
    return peak + torch.randn(R, K, S, S, generator=gen)


def torch_paste_masks_loop(masks, boxes, image_hw, padding=1):
    """Plain torch: per mask, pad, resize the padded mask to its integer box, paste it clipped."""
    H, W = image_hw
    M = masks.shape[-1]
    scale = (M + 2 * padding) / M
    padded = F.pad(masks, (padding,) * 4)
    c = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    ib = torch.cat([c - half, c + half], 1).to(torch.int64).tolist()
    out = masks.new_zeros((masks.shape[0], 1, H, W))
    for n, (x0, y0, x1, y1) in enumerate(ib):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        ys, ye, xs, xe = max(y0, 0), min(y1 + 1, H), max(x0, 0), min(x1 + 1, W)
        if ys >= ye or xs >= xe:
            continue
        m = F.interpolate(padded[n:n + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out[n, 0, ys:ye, xs:xe] = m[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def torch_heatmaps_to_keypoints_loop(maps, rois):
    """Plain torch: per RoI, bicubic resize of its K maps, argmax, position and score."""
    R, K = maps.shape[:2]
    xy = maps.new_zeros((R, K, 3))
    sc = maps.new_zeros((R, K))
    wh = (rois[:, 2:] - rois[:, :2]).clamp(min=1)
    for i, ((w, h), (x1, y1)) in enumerate(zip(wh.tolist(), rois[:, :2].tolist())):
        wc, hc = math.ceil(w), math.ceil(h)
        m = F.interpolate(maps[i][:, None], size=(hc, wc), mode="bicubic", align_corners=False)[:, 0]
        pos = m.reshape(K, -1).argmax(1)
        xi, yi = pos % wc, pos // wc
        xy[i, :, 0] = (xi.float() + 0.5) * (w / wc) + x1
        xy[i, :, 1] = (yi.float() + 0.5) * (h / hc) + y1
        xy[i, :, 2] = 1
        sc[i] = m[torch.arange(K), yi, xi]
    return xy, sc


def cases(device: str, quick: bool) -> List[Case]:
    tv, tv_version = baseline_torchvision()
    roi_heads = None
    if tv is not None:
        try:
            from torchvision.models.detection import roi_heads  # noqa: F811
        except Exception:  # noqa: BLE001 - any import failure means: no torchvision baseline
            roi_heads = None
    gen = torch.Generator().manual_seed(0)
    out: List[Case] = []

    n = 30 if quick else 100
    image_hw = (400, 544) if quick else (800, 1088)
    masks = torch.rand(n, 1, 28, 28, generator=gen).to(device)
    boxes = _boxes(n, image_hw, gen, 20.0, 200.0 if quick else 400.0).to(device)
    if roi_heads is not None:
        base_name = f"torchvision {tv_version} roi_heads"
        base_paste = lambda: roi_heads.paste_masks_in_image(masks, boxes, image_hw, 1)  # noqa: E731
    else:
        base_name = "plain torch (Python loop over RoIs)"
        base_paste = lambda: torch_paste_masks_loop(masks, boxes, image_hw, 1)  # noqa: E731
    out.append(Case("paste_masks", f"{n} masks 28x28 -> {image_hw[0]}x{image_hw[1]} f32",
                    lambda: ops.paste_masks(masks, boxes, image_hw, 1), base_paste, base_name, device))

    R = 30 if quick else 100
    hm = _peaked(R, 17, 56, gen).to(device)
    noise = torch.randn(R, 17, 56, 56, generator=gen).to(device)
    rois = _boxes(R, (800, 1088), gen, 50.0, 200.0 if quick else 400.0).to(device)
    for name, maps in (("peaked", hm), ("noise", noise)):
        if roi_heads is not None:
            base = (lambda maps=maps: roi_heads.heatmaps_to_keypoints(maps, rois))
        else:
            base = (lambda maps=maps: torch_heatmaps_to_keypoints_loop(maps, rois))
        out.append(Case("heatmaps_to_keypoints",
                        f"{R} RoIs x 17 x 56x56 ({name}), sides 50-{200 if quick else 400} px f32",
                        lambda maps=maps: ops.heatmaps_to_keypoints(maps, rois), base, base_name, device))
    return out
