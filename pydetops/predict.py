"""Run a checkpoint on image files and draw what it finds.

    python -m pydetops.predict --checkpoint FILE --out DIR IMAGE [IMAGE ...] [--score-threshold T]

writes ``OUT/<image name>.png`` (boxes, class names, scores, masks and keypoints drawn on
the image) and ``OUT/predictions.json``: per image its file, size and detections with
the dataset's ``category_id``, ``category`` name, ``score``, ``bbox`` [x, y, w, h], +
``segmentation`` (RLE), + ``keypoints``. For a semantic segmentation model (``sem_seg``
outputs) the drawing is its class map (each pixel's most likely class, a colour per class
blended over the image; background left as is) and the JSON gives each class's pixel count.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .checkpoint import CheckpointError, build_model, load_checkpoint
from .data import DatasetError
from .data.transforms import _to_tensor
from .evaluate import UsageError, _autocast, resolve_device, write_json
from .evaluation import detections_to_coco

__all__ = ["main", "draw_detections", "draw_class_map"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40)]


def _colour(label: int):
    return _PALETTE[(label - 1) % len(_PALETTE)]


def draw_detections(image, dets: List[Dict[str, Any]], masks: Optional[np.ndarray] = None):
    """A copy of the PIL ``image`` with each detection's mask (blended), box, ``name
    score`` and keypoints drawn. ``masks``: ``[N, H, W]`` bool, one per detection."""
    from PIL import Image, ImageDraw
    img = image.convert("RGB")
    if masks is not None and len(masks):
        arr = np.asarray(img, dtype=np.float32).copy()
        for d, m in zip(dets, masks):
            arr[m] = 0.55 * arr[m] + 0.45 * np.array(_colour(d["label"]), dtype=np.float32)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for d in dets:
        c = _colour(d["label"])
        x, y, w, h = d["bbox"]
        draw.rectangle([x, y, x + w, y + h], outline=c, width=2)
        text = f"{d['category']} {d['score']:.2f}"
        tx, ty = x + 1, max(0.0, y - 11)
        tb = draw.textbbox((tx, ty), text)
        draw.rectangle(tb, fill=c)
        draw.text((tx, ty), text, fill=(0, 0, 0) if sum(c) > 400 else (255, 255, 255))
        kps = d.get("keypoints")
        if kps:
            for k in range(0, len(kps), 3):
                if kps[k + 2] > 0:
                    draw.ellipse([kps[k] - 2, kps[k + 1] - 2, kps[k] + 2, kps[k + 1] + 2], fill=c,
                                 outline=(255, 255, 255))
    return img


def draw_class_map(image, class_map: np.ndarray, alpha: float = 0.5):
    """A copy of the PIL ``image`` with ``class_map`` ([H, W] int labels, 0 = background) blended
    in: label l's pixels take ``alpha`` of its colour (the same colours as the boxes of label l)."""
    from PIL import Image
    arr = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for lab in np.unique(class_map):
        if lab == 0:
            continue
        m = class_map == lab
        arr[m] = (1 - alpha) * arr[m] + alpha * np.array(_colour(int(lab)), dtype=np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pydetops.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    a = p.parse_args(argv)
    if not 0.0 <= a.score_threshold <= 1.0:
        p.error("--score-threshold must be in [0, 1]")
    return a


def _read_image(path: str):
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Exception as e:
        raise DatasetError(f"{path}: unreadable image: {type(e).__name__}: {e}") from None


@torch.no_grad()
def predict(a: argparse.Namespace) -> List[Dict[str, Any]]:
    device = resolve_device(a.device)
    ckpt = load_checkpoint(a.checkpoint)
    model = build_model(ckpt, a.checkpoint).to(device).eval()
    names = {c["id"]: c.get("name", str(c["id"])) for c in ckpt["categories"]}
    lab_of = {cid: i for i, cid in enumerate(ckpt["label_to_category_id"]) if cid is not None}
    images = [(p, _read_image(p)) for p in a.images]  # all errors before any work
    os.makedirs(a.out, exist_ok=True)
    used, results = set(), []
    for path, img in images:
        with _autocast(device, a.amp):
            out = model([_to_tensor(img).to(device)])[0]
        class_map = None
        if "sem_seg" in out:
            class_map = out["sem_seg"].float().argmax(0).cpu().numpy()
        if "scores" not in out:  # a segmentation model without detections
            out = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
        keep = out["scores"].float() >= a.score_threshold
        out = {k: v[keep] for k, v in out.items() if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape}
        dets = detections_to_coco(0, out, ckpt["label_to_category_id"])
        for d in dets:
            del d["image_id"]
            d["category"] = names.get(d["category_id"], str(d["category_id"]))
            d["label"] = lab_of[d["category_id"]]
        masks = None
        if "masks" in out:
            m = out["masks"].float().cpu()
            masks = (m[:, 0] if m.dim() == 4 else m).numpy() >= 0.5
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem + ".png", 1
        while name in used:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name)
        base = img if class_map is None else draw_class_map(img, class_map)
        draw_detections(base, dets, masks).save(os.path.join(a.out, name))
        for d in dets:
            del d["label"]
        results.append({"image": os.path.abspath(path), "drawn": name, "width": img.size[0],
                        "height": img.size[1], "detections": dets})
        if class_map is not None:
            counts = np.bincount(class_map.reshape(-1), minlength=len(ckpt["label_to_category_id"]))
            results[-1]["sem_seg_pixels"] = {
                ("background" if lab == 0 else names.get(cid, str(cid))): int(counts[lab])
                for lab, cid in enumerate(ckpt["label_to_category_id"]) if counts[lab] > 0}
        print(f"{path}: {len(dets)} detection(s) -> {os.path.join(a.out, name)}")
    write_json(os.path.join(a.out, "predictions.json"), results)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    try:
        predict(a)
    except (DatasetError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
