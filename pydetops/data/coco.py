"""COCO instances reader: a JSON file (``images``, ``annotations``, ``categories``) and a
folder of images.

Category ids need not be contiguous: labels are ``1..K-1`` in increasing category id
order (0 is background) and ``label_to_category_id`` maps them back for output.
Boxes come out as (x1, y1, x2, y2) in absolute pixels, masks as ``Tensor[N, H, W]``
uint8 decoded with pycocotools from polygons or RLE (compressed or not), keypoints as
``Tensor[N, K, 3]`` (x, y, visibility).

Bad data ends with one :class:`DatasetError` naming the file and the image or
annotation id; boxes with ``w <= 0`` or ``h <= 0`` are skipped with one warning that
counts them (as pycocotools and torchvision's references skip them).
"""
import json
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .errors import DatasetError

__all__ = ["CocoDetection", "load_coco_json", "keypoint_flip_indices", "decode_segmentation"]


def load_coco_json(path: str) -> Dict[str, Any]:
    """Read and check the top level of a COCO instances file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list '{key}'")
    return data


def keypoint_flip_indices(names: Sequence[str]) -> List[int]:
    """For keypoint names, the index each keypoint takes after a horizontal flip:
    a name containing ``left`` swaps with the same name with ``right`` (and back)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        if "left" in n:
            other = n.replace("left", "right")
        elif "right" in n:
            other = n.replace("right", "left")
        else:
            other = n
        out.append(index.get(other, i))
    return out


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as an
    ``[H, W]`` uint8 mask. Raises ValueError on a malformed one."""
    from pycocotools import mask as mask_utils
    if isinstance(seg, list):
        if len(seg) == 0:
            raise ValueError("empty polygon list")
        polys = []
        for p in seg:
            if not isinstance(p, list) or len(p) < 6 or len(p) % 2:
                raise ValueError("a polygon must be a list of at least 3 (x, y) pairs")
            polys.append([float(v) for v in p])
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise ValueError(f"RLE size {list(seg['size'])} differs from the image's [{height}, {width}]")
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg["counts"], (str, bytes)):
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            rle = {"size": [height, width], "counts": counts}
        else:
            raise ValueError("RLE 'counts' must be a list or a string")
    else:
        raise ValueError("segmentation must be a list of polygons or an RLE dict with 'counts' and 'size'")
    m = mask_utils.decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return m.astype(np.uint8)


def _finite_numbers(v: Any, n: Optional[int]) -> bool:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        return False
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


class CocoDetection(torch.utils.data.Dataset):
    """COCO instances dataset.

    Args:
        images_dir: folder the ``file_name`` of each image is relative to.
        annotations: path of the COCO JSON file (or an already loaded dict; then
            ``source`` names it in messages).
        masks: decode ``segmentation`` into ``target["masks"]`` ``[N, H, W]`` uint8.
        keypoints: put ``target["keypoints"]`` ``[N, K, 3]`` float.
        transforms: callable ``(image, target) -> (image, target)``.
        check_files: check at construction that every image file exists.
        skip_crowd: leave ``iscrowd`` annotations out of the targets (for training, as
            torchvision's references do; evaluation still sees them through pycocotools).

    Attributes: ``categories`` (the JSON's, sorted by id), ``label_to_category_id``
    (index = label; entry 0 is None), ``category_id_to_label``, ``num_classes``
    (background included), ``keypoint_names``, ``flip_indices``, ``ids`` (image ids),
    ``num_degenerate`` (skipped boxes).
    """

    def __init__(self, images_dir: str, annotations, masks: bool = False, keypoints: bool = False,
                 transforms=None, check_files: bool = True, source: Optional[str] = None,
                 skip_crowd: bool = False):
        if isinstance(annotations, dict):
            self.ann_file = source or "<annotations>"
            data = annotations
            for key in ("images", "annotations", "categories"):
                if not isinstance(data.get(key), list):
                    raise DatasetError(f"{self.ann_file}: missing or non-list '{key}'")
        else:
            self.ann_file = str(annotations)
            data = load_coco_json(self.ann_file)
        self.dataset = data  # the raw COCO dict (ground truth for pycocotools)
        self.images_dir = str(images_dir)
        self.want_masks = masks
        self.want_keypoints = keypoints
        self.transforms = transforms
        src = self.ann_file

        cats = {}
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
                raise DatasetError(f"{src}: a category without an integer 'id': {str(c)[:80]}")
            if c["id"] in cats:
                raise DatasetError(f"{src}: category id {c['id']} appears twice")
            cats[c["id"]] = c
        if not cats:
            raise DatasetError(f"{src}: no categories")
        self.categories = [cats[i] for i in sorted(cats)]
        self.category_id_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_category_id = [None] + [c["id"] for c in self.categories]
        self.num_classes = len(self.categories) + 1
        kp_names = None
        for c in self.categories:
            names = c.get("keypoints")
            if names:
                if kp_names is not None and len(names) != len(kp_names):
                    raise DatasetError(f"{src}: category id {c['id']} has {len(names)} keypoints, "
                                       f"another has {len(kp_names)}; one model needs one count")
                kp_names = kp_names or list(names)
        self.keypoint_names = kp_names or []
        self.flip_indices = keypoint_flip_indices(self.keypoint_names)
        if keypoints and not self.keypoint_names:
            raise DatasetError(f"{src}: keypoints requested but no category names its 'keypoints'")

        self.images = {}
        self.ids = []
        for im in data["images"]:
            if not isinstance(im, dict) or not isinstance(im.get("id"), int) or isinstance(im.get("id"), bool):
                raise DatasetError(f"{src}: an image without an integer 'id': {str(im)[:80]}")
            iid = im["id"]
            if iid in self.images:
                raise DatasetError(f"{src}: image id {iid} appears twice")
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise DatasetError(f"{src}: image id {iid} has no 'file_name'")
            path = os.path.join(self.images_dir, im["file_name"])
            if check_files and not os.path.isfile(path):
                raise DatasetError(f"{path}: image file not found (image id {iid} in {src})")
            self.images[iid] = im
            self.ids.append(iid)

        self.anns = {iid: [] for iid in self.ids}
        self.num_degenerate = 0
        self.num_crowd_skipped = 0
        first_degenerate = None
        seen = set()
        K = len(self.keypoint_names)
        for a in data["annotations"]:
            if not isinstance(a, dict):
                raise DatasetError(f"{src}: an annotation is not an object: {str(a)[:80]}")
            aid = a.get("id")
            where = f"annotation id {aid}"
            if aid in seen and aid is not None:
                raise DatasetError(f"{src}: {where} appears twice")
            seen.add(aid)
            iid = a.get("image_id")
            if iid not in self.anns:
                raise DatasetError(f"{src}: {where} refers to unknown image id {iid}")
            where += f" (image id {iid})"
            if a.get("category_id") not in self.category_id_to_label:
                raise DatasetError(f"{src}: {where} has unknown category_id {a.get('category_id')}")
            if not _finite_numbers(a.get("bbox"), 4):
                raise DatasetError(f"{src}: {where} has a malformed bbox {a.get('bbox')} (expected 4 finite numbers [x, y, w, h])")
            if "keypoints" in a and a["keypoints"] is not None:
                kp = a["keypoints"]
                if not _finite_numbers(kp, None) or len(kp) != 3 * K:
                    raise DatasetError(f"{src}: {where} has {len(kp) if isinstance(kp, list) else 'malformed'} "
                                       f"keypoint values, expected {3 * K} (x, y, v for {K} keypoints)")
            x, y, w, h = a["bbox"]
            if w <= 0 or h <= 0:
                self.num_degenerate += 1
                if first_degenerate is None:
                    first_degenerate = where
                continue
            if skip_crowd and a.get("iscrowd", 0):
                self.num_crowd_skipped += 1
                continue
            self.anns[iid].append(a)
        if self.num_degenerate:
            warnings.warn(f"{src}: skipped {self.num_degenerate} annotation(s) with a degenerate box "
                          f"(w <= 0 or h <= 0), first: {first_degenerate}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.images[self.ids[index]]["file_name"])

    def load_image(self, index: int):
        from PIL import Image
        iid = self.ids[index]
        path = self.image_path(index)
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file not found (image id {iid} in {self.ann_file})") from None
        except Exception as e:  # PIL raises several types for broken files
            raise DatasetError(f"{path}: unreadable image (image id {iid} in {self.ann_file}): "
                               f"{type(e).__name__}: {e}") from None
        info = self.images[iid]
        W, H = img.size
        if ("width" in info and info["width"] != W) or ("height" in info and info["height"] != H):
            raise DatasetError(f"{path}: image is {W}x{H} but {self.ann_file} says "
                               f"{info.get('width')}x{info.get('height')} (image id {iid})")
        return img

    def load_target(self, index: int, width: int, height: int) -> Dict[str, torch.Tensor]:
        iid = self.ids[index]
        anns = self.anns[iid]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns],
                             dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(bool(a.get("iscrowd", 0))) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
                                 dtype=torch.float32),
            "image_id": torch.tensor(iid, dtype=torch.int64),
        }
        if self.want_masks:
            masks = np.zeros((len(anns), height, width), dtype=np.uint8)
            for j, a in enumerate(anns):
                if "segmentation" not in a:
                    raise DatasetError(f"{self.ann_file}: annotation id {a.get('id')} (image id {iid}) "
                                       f"has no segmentation (masks requested)")
                try:
                    masks[j] = decode_segmentation(a["segmentation"], height, width)
                except Exception as e:
                    raise DatasetError(f"{self.ann_file}: annotation id {a.get('id')} (image id {iid}) "
                                       f"has a malformed segmentation: {e}") from None
            target["masks"] = torch.from_numpy(masks)
        if self.want_keypoints:
            K = len(self.keypoint_names)
            kps = torch.zeros(len(anns), K, 3, dtype=torch.float32)
            for j, a in enumerate(anns):
                if a.get("keypoints"):
                    kps[j] = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(K, 3)
            target["keypoints"] = kps
        return target

    def __getitem__(self, index: int):
        img = self.load_image(index)
        target = self.load_target(index, img.size[0], img.size[1])
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target
