"""COCO metrics through pycocotools, as named numbers.

``coco_evaluate(gt, detections)`` returns, per IoU type evaluated, ``AP`` (mean over
IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``,
``AR100``, ``ARs``, ``ARm``, ``ARl`` (keypoints: ``AP``, ``AP50``, ``AP75``, ``APm``,
``APl``, ``AR``, ``AR50``, ``AR75``, ``ARm``, ``ARl``), ``per_class_AP`` (category name
-> AP over IoU 0.50:0.95, area all, 100 detections) and ``pr_curves`` (category name ->
precision at the 101 recall thresholds at IoU 0.5). Values pycocotools leaves undefined
(-1: no ground truth in that range) come out as ``None``. No detection at all gives
zeros (pycocotools cannot load an empty result list).
"""
import contextlib
import copy
import io
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["STAT_NAMES", "KEYPOINT_STAT_NAMES", "coco_evaluate", "detections_to_coco"]

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
KEYPOINT_STAT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def _clean(v: float) -> Optional[float]:
    return None if v < 0 else float(v)


def _coco_from_dict(gt: Dict[str, Any]):
    from pycocotools.coco import COCO
    c = COCO()
    d = dict(gt)
    d.setdefault("info", {})
    d.setdefault("licenses", [])
    c.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def _default_sigmas(k: int) -> np.ndarray:
    if k == 17:  # COCO's person keypoints
        return np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                         .87, .87, .89, .89]) / 10.0
    return np.full(k, 0.05)


def detections_to_coco(image_id: int, output: Dict[str, torch.Tensor], label_to_category_id: Sequence,
                       mask_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """One image's model output (``boxes`` x1y1x2y2, ``labels``, ``scores``, optional
    ``masks`` [N, 1, H, W] in [0, 1] and ``keypoints`` [N, K, 3]) -> COCO result dicts
    with the dataset's category ids, ``bbox`` [x, y, w, h], masks as compressed RLE."""
    boxes = output["boxes"].detach().float().cpu()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    n = len(labels)
    rles = None
    if "masks" in output and n:
        from pycocotools import mask as mask_utils
        m = output["masks"].detach().float().cpu()
        if m.dim() == 4:
            m = m[:, 0]
        m = (m >= mask_threshold).numpy().astype(np.uint8)
        rles = []
        for j in range(n):
            r = mask_utils.encode(np.asfortranarray(m[j]))
            rles.append({"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")})
    kps = output["keypoints"].detach().float().cpu() if "keypoints" in output else None
    out = []
    for j in range(n):
        lab = int(labels[j])
        if not 0 < lab < len(label_to_category_id):
            continue
        x1, y1, x2, y2 = boxes[j].tolist()
        d = {"image_id": int(image_id), "category_id": int(label_to_category_id[lab]),
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[j])}
        if rles is not None:
            d["segmentation"] = rles[j]
        if kps is not None:
            k = kps[j].clone()
            k[:, 2] = torch.where(k[:, 2] > 0, torch.ones_like(k[:, 2]), torch.zeros_like(k[:, 2]))
            d["keypoints"] = [float(v) for v in k.reshape(-1).tolist()]
        out.append(d)
    return out


class _PerCategorySigmaEval:
    """Factory of a COCOeval whose OKS uses each category's own sigmas."""

    @staticmethod
    def make(coco_gt, coco_dt, iou_type: str, sigmas: Dict[int, np.ndarray]):
        from pycocotools.cocoeval import COCOeval

        class _Eval(COCOeval):
            def computeOks(self, imgId, catId):
                self.params.kpt_oks_sigmas = sigmas[catId]
                return super().computeOks(imgId, catId)

        return _Eval(coco_gt, coco_dt, iou_type)


def coco_evaluate(gt: Dict[str, Any], detections: List[Dict[str, Any]],
                  iou_types: Sequence[str] = ("bbox",),
                  keypoint_sigmas: Optional[Dict[int, Sequence[float]]] = None) -> Dict[str, Dict[str, Any]]:
    """Evaluate COCO result dicts against a COCO instances dict.

    ``keypoint_sigmas``: category id -> per-keypoint OKS sigmas; by default a
    category's ``keypoint_sigmas`` field, else COCO's for 17 keypoints, else 0.05."""
    from pycocotools.cocoeval import COCOeval
    for t in iou_types:
        if t not in ("bbox", "segm", "keypoints"):
            raise ValueError(f"coco_evaluate: iou_types entries must be 'bbox', 'segm' or 'keypoints', got {t!r}")
    coco_gt = _coco_from_dict(gt)
    cats = sorted(coco_gt.cats.values(), key=lambda c: c["id"])
    results: Dict[str, Dict[str, Any]] = {}
    for iou_type in iou_types:
        names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
        key = "keypoints" if iou_type == "keypoints" else ("segmentation" if iou_type == "segm" else "bbox")
        dets = [d for d in detections if key in d]
        if iou_type == "keypoints":
            cats_t = [c for c in cats if c.get("keypoints")]
        else:
            cats_t = cats
        if not dets:
            results[iou_type] = {**{n: 0.0 for n in names},
                                 "per_class_AP": {c["name"]: 0.0 for c in cats_t},
                                 "pr_curves": {c["name"]: [0.0] * 101 for c in cats_t}}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
            if iou_type == "keypoints":
                sig = {}
                for c in cats_t:
                    given = (keypoint_sigmas or {}).get(c["id"], c.get("keypoint_sigmas"))
                    sig[c["id"]] = np.asarray(given if given is not None else _default_sigmas(len(c["keypoints"])),
                                              dtype=np.float64)
                    if len(sig[c["id"]]) != len(c["keypoints"]):
                        raise ValueError(f"coco_evaluate: category id {c['id']} has {len(c['keypoints'])} "
                                         f"keypoints but {len(sig[c['id']])} sigmas")
                E = _PerCategorySigmaEval.make(coco_gt, coco_dt, iou_type, sig)
                E.params.catIds = [c["id"] for c in cats_t]
            else:
                E = COCOeval(coco_gt, coco_dt, iou_type)
            E.evaluate()
            E.accumulate()
            E.summarize()
        stats = {n: _clean(v) for n, v in zip(names, E.stats)}
        prec = E.eval["precision"]  # [T, R, K, A, M]
        iou50 = int(np.argmin(np.abs(E.params.iouThrs - 0.5)))
        per_class, curves = {}, {}
        for k, cid in enumerate(E.params.catIds):
            name = coco_gt.cats[cid]["name"]
            p = prec[:, :, k, 0, -1]
            valid = p[p > -1]
            per_class[name] = float(valid.mean()) if valid.size else None
            curves[name] = [max(0.0, float(v)) for v in prec[iou50, :, k, 0, -1]]
        stats["per_class_AP"] = per_class
        stats["pr_curves"] = curves
        results[iou_type] = stats
    return results
