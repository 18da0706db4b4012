"""Synthetic scenes: a COCO-layout dataset with no download.

    python -m pydetops.data.synthetic OUT --images N --seed S [--size H W] [--single-object]

writes ``OUT/images/000001.png ...`` and ``OUT/annotations.json``. Each image has a
noisy background and 1-4 non-overlapping objects (exactly one with
``--single-object``) of three categories with non-contiguous ids: red rectangles
(id 1), green ellipses (id 3) and blue triangles (id 7). Every object has a box (tight
around its pixels), an instance mask (rectangles and triangles as polygons, ellipses as
compressed RLE) and five keypoints ``left, right, top, bottom, center`` (extreme points
and centre; a horizontal flip swaps left and right). The output depends only on the
arguments: the same seed gives byte-identical files.
"""
import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["CATEGORIES", "KEYPOINT_NAMES", "generate", "main"]

KEYPOINT_NAMES = ["left", "right", "top", "bottom", "center"]
CATEGORIES = [
    {"id": 1, "name": "rectangle", "colour": (220, 40, 40)},
    {"id": 3, "name": "ellipse", "colour": (40, 200, 60)},
    {"id": 7, "name": "triangle", "colour": (50, 70, 230)},
]


def _overlaps(box, boxes, margin=2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin
               for b in boxes)


def _shape(rng, kind: str, box) -> Tuple[list, list]:
    """Polygon (flat list) and keypoints [(x, y)] x 5 of a shape inside ``box``."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if kind == "rectangle":
        poly = [x1, y1, x2, y1, x2, y2, x1, y2]
        kps = [(x1, cy), (x2, cy), (cx, y1), (cx, y2), (cx, cy)]
    elif kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        poly = np.stack([cx + (x2 - x1) / 2 * np.cos(t), cy + (y2 - y1) / 2 * np.sin(t)], 1).ravel().tolist()
        kps = [(x1, cy), (x2, cy), (cx, y1), (cx, y2), (cx, cy)]
    else:  # triangle: apex on the top edge, base corners on the bottom edge
        ax = x1 + rng.uniform(0.2, 0.8) * (x2 - x1)
        pts = [(ax, y1), (x2, y2), (x1, y2)]
        poly = [v for p in pts for v in p]
        kps = [min(pts), max(pts), min(pts, key=lambda p: p[1]), max(pts, key=lambda p: (p[1], -p[0])),
               (sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3)]
    return [float(round(v, 2)) for v in poly], [(float(round(x, 2)), float(round(y, 2))) for x, y in kps]


def generate(out: str, images: int, seed: int, size: Tuple[int, int] = (128, 128),
             single_object: bool = False) -> dict:
    """Write the dataset and return its COCO dict."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    H, W = size
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if H < 16 or W < 16:
        raise ValueError(f"size must be at least 16 x 16, got {H} x {W}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    coco = {"info": {"description": "pydetops synthetic scenes", "seed": seed, "size": [H, W]},
            "images": [], "annotations": [],
            "categories": [{"id": c["id"], "name": c["name"], "supercategory": "shape",
                            "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 5], [2, 5], [3, 5], [4, 5]],
                            "keypoint_sigmas": [0.05] * len(KEYPOINT_NAMES)} for c in CATEGORIES]}
    short = min(H, W)
    for i in range(images):
        base = rng.uniform(60, 190, size=3)
        arr = base + rng.normal(0, 18, size=(H, W, 3))
        n = 1 if single_object else int(rng.integers(1, 5))
        placed: List[list] = []
        objects = []
        for _ in range(n):
            for _try in range(50):
                lo, hi = (0.3, 0.7) if single_object else (0.12, 0.45)
                w = rng.uniform(lo, hi) * short
                h = w * rng.uniform(0.6, 1.6)
                if w >= W - 2 or h >= H - 2:
                    continue
                x1 = rng.uniform(1, W - w - 1)
                y1 = rng.uniform(1, H - h - 1)
                box = [x1, y1, x1 + w, y1 + h]
                if not _overlaps(box, placed):
                    break
            else:
                continue
            placed.append(box)
            cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
            objects.append((cat, box))
        for cat, box in objects:
            poly, kps = _shape(rng, cat["name"], box)
            # The pixels are drawn from pycocotools' own rasterisation of the polygon, so
            # the mask a reader decodes is exactly the object's pixels.
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W))).astype(np.uint8)
            if m.sum() == 0:
                continue
            colour = np.clip(np.array(cat["colour"]) + rng.normal(0, 12, size=3), 0, 255)
            arr[m.astype(bool)] = colour + rng.normal(0, 10, size=(int(m.sum()), 3))
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            if cat["name"] == "ellipse":
                rle = mask_utils.encode(np.asfortranarray(m))
                seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            else:
                seg = [poly]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": cat["id"],
                "bbox": bbox, "area": float(m.sum()), "iscrowd": 0, "segmentation": seg,
                "keypoints": [v for x, y in kps for v in (x, y, 2)], "num_keypoints": len(kps)})
        name = f"{i + 1:06d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(os.path.join(out, "images", name))
        coco["images"].append({"id": i + 1, "file_name": name, "width": W, "height": H})
    tmp = os.path.join(out, "annotations.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, os.path.join(out, "annotations.json"))
    return coco


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pydetops.data.synthetic",
                                description="Write a synthetic COCO-layout dataset (images/ + annotations.json).")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--single-object", action="store_true", help="exactly one object per image")
    a = p.parse_args(argv)
    try:
        coco = generate(a.out, a.images, a.seed, tuple(a.size), a.single_object)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {len(coco['images'])} images, {len(coco['annotations'])} objects "
          f"({', '.join(c['name'] for c in CATEGORIES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
