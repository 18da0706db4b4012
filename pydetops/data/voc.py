"""Pascal VOC XML reader and a VOC -> COCO converter.

    python -m pydetops.data.voc VOC_ROOT OUT.json [--split trainval] [--classes a,b,...]

reads ``VOC_ROOT/ImageSets/Main/SPLIT.txt`` and ``VOC_ROOT/Annotations/ID.xml`` and
writes a COCO instances file whose images are relative to ``VOC_ROOT/JPEGImages``.
VOC's pixel coordinates are 1-based and inclusive: ``x = xmin - 1``,
``w = xmax - xmin + 1``. ``difficult`` objects become ``iscrowd = 1`` so that COCO
evaluation ignores them, as VOC's does.
"""
import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

from .errors import DatasetError

__all__ = ["VOC_CLASSES", "read_voc_xml", "voc_to_coco", "main"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def _num(node, tag: str, path: str) -> float:
    el = node.find(tag)
    if el is None or el.text is None:
        raise DatasetError(f"{path}: missing <{tag}>")
    try:
        return float(el.text)
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is not a number: {el.text!r}") from None


def read_voc_xml(path: str) -> Dict:
    """One VOC annotation file -> ``{"filename", "width", "height", "objects": [
    {"name", "bbox" [x, y, w, h] (0-based), "difficult", "truncated"}]}``."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML: {e}") from None
    fn = root.findtext("filename")
    if not fn:
        raise DatasetError(f"{path}: missing <filename>")
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{path}: missing <size>")
    out = {"filename": fn.strip(), "width": int(_num(size, "width", path)),
           "height": int(_num(size, "height", path)), "objects": []}
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{path}: object {i} has no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object {i} ({name}) has no <bndbox>")
        x1, y1 = _num(bb, "xmin", path), _num(bb, "ymin", path)
        x2, y2 = _num(bb, "xmax", path), _num(bb, "ymax", path)
        out["objects"].append({
            "name": name, "bbox": [x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0],
            "difficult": int(float(obj.findtext("difficult") or 0)),
            "truncated": int(float(obj.findtext("truncated") or 0)),
        })
    return out


def voc_to_coco(root: str, split: str = "trainval", classes: Optional[Sequence[str]] = None) -> Dict:
    """Convert one split of a VOC-layout folder to a COCO instances dict."""
    list_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    try:
        with open(list_file, "r", encoding="utf-8") as f:
            ids = [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"{list_file}: split list not found") from None
    records = [(i, read_voc_xml(os.path.join(root, "Annotations", f"{vid}.xml"))) for i, vid in enumerate(ids)]
    names = sorted({o["name"] for _, r in records for o in r["objects"]})
    if classes is None:
        classes = list(VOC_CLASSES) if set(names) <= set(VOC_CLASSES) else names
    cat_id = {c: k + 1 for k, c in enumerate(classes)}
    images, anns = [], []
    for image_id, r in records:
        images.append({"id": image_id + 1, "file_name": r["filename"], "width": r["width"], "height": r["height"]})
        for o in r["objects"]:
            if o["name"] not in cat_id:
                raise DatasetError(f"{os.path.join(root, 'Annotations', ids[image_id] + '.xml')}: "
                                   f"unknown class {o['name']!r} (classes: {', '.join(classes)})")
            x, y, w, h = o["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": image_id + 1, "category_id": cat_id[o["name"]],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": o["difficult"],
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    return {"images": images, "annotations": anns,
            "categories": [{"id": cat_id[c], "name": c, "supercategory": "voc"} for c in classes]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pydetops.data.voc", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="VOC folder (with Annotations/, JPEGImages/, ImageSets/Main/)")
    p.add_argument("out", help="COCO JSON file to write")
    p.add_argument("--split", default="trainval")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: VOC's 20, or those found)")
    a = p.parse_args(argv)
    try:
        data = voc_to_coco(a.root, a.split, a.classes.split(",") if a.classes else None)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {len(data['images'])} images, {len(data['annotations'])} objects, "
          f"{len(data['categories'])} classes; images are in {os.path.join(a.root, 'JPEGImages')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
