"""Export models that call pydetops' ops to ONNX (standard ONNX operators only).

``torch.onnx.export(..., dynamo=True)`` turns each ``torch.ops.pydetops.*`` call into ONNX
with the translation functions of :func:`translation_table` (onnxscript functions given to
torch.onnx's ``custom_translation_table``). :func:`export` passes the table for you::

    import pydetops.onnx
    pydetops.onnx.export(model, (images, boxes), "model.onnx")
    # or, with your own torch.onnx.export call:
    torch.onnx.export(model, args, "model.onnx", dynamo=True,
                      custom_translation_table=pydetops.onnx.translation_table())

Needs ``onnxscript`` (and ``onnx``/``onnxruntime`` to check or run the result):
``pip install pydetops[onnx]``. Exported ops and their ONNX form (inference only: the
exported graphs have no backward; float32 and float64 inputs):

* ``nms``: NonMaxSuppression (center_point_box=0; suppression when IoU > threshold, as
  pydetops). The visiting order (decreasing score, equal scores by lower index, NaN scores
  last) is computed in the graph (TopK) and given to NonMaxSuppression as distinct rank
  scores, so it does not depend on the runtime's tie order. Inverted boxes (x2 < x1 or
  y2 < y1) are made zero-area, so, as in pydetops, they neither suppress nor are suppressed.
  IoU is computed by the runtime in float32 (float64 boxes are rounded), so a float64 pair
  whose IoU is within float32 rounding of the threshold may be decided differently.
* ``batched_nms``: one NonMaxSuppression batch per category (categories from Unique of
  ``idxs``; boxes of other categories are zero-area in a category's batch), then the kept
  boxes ordered by rank: exact for any coordinate range, like pydetops' own (no class
  offsets), at a memory cost of (number of categories) x N x 4 values.
* ``roi_align``: RoiAlign, mode avg, ``coordinate_transformation_mode`` half_pixel for
  ``aligned=True`` and output_half_pixel (legacy: no shift, RoIs at least 1 x 1) for
  ``aligned=False``; ``sampling_ratio <= 0`` becomes 0 (adaptive, ceil(roi size / output size)).
  RoIs with NaN/Inf coordinates are not zeroed as pydetops does (runtime-defined result).
* ``roi_pool``: MaxRoiPool (Fast R-CNN's rounding and bins, as pydetops/torchvision).
  float64 inputs and RoIs are pooled in float32 (onnxruntime's MaxRoiPool has no float64
  kernel): the maxima come back rounded to float32. Only the pooled values are exported: the op's second output, the argmax that its
  backward uses, is not computed by ONNX and is -1 in the exported graph.
* ``box_overlaps`` (``box_iou``, ``box_iof``, ``generalized_box_iou`` and the aligned
  forms): elementwise ops (Max, Min, Mul, Div, ...), modes 'iou', 'iof' and 'giou';
  'diou' and 'ciou' raise NotImplementedError at export. float64 for float64 boxes,
  otherwise float32, as the op.
* ``decode_boxes`` (``BoxCoder.decode_single``): elementwise ops with Exp; the clamp and
  the optional clip are Where selects (NaN propagates as in pydetops).

Not exportable (no translation; torch.onnx reports them as unsupported): the backward
ops (``_roi_align_backward`` etc.), ``soft_nms`` (sequential score decay, no ONNX
equivalent), ``ps_roi_align``/``ps_roi_pool``, ``multi_level_roi_align``, and the other
ops without an entry in :func:`translation_table`. float16/bfloat16 inputs are not
supported by onnxruntime's RoiAlign/MaxRoiPool/NonMaxSuppression kernels.
"""
import math
from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["translation_table", "export"]

_TABLE: Optional[Dict[Any, Callable]] = None


def _build_table() -> Dict[Any, Callable]:
    try:
        import numpy as np
        from onnxscript import ir  # onnx_ir, as torch.onnx's exporter uses it
        from onnxscript import opset18 as op
    except ImportError as e:  # pragma: no cover - exercised only without onnxscript
        raise ImportError(
            "pydetops.onnx needs onnxscript (and onnx, onnxruntime to run the result): "
            "pip install 'pydetops[onnx]'"
        ) from e

    FLOAT = ir.DataType.FLOAT.value
    DOUBLE = ir.DataType.DOUBLE.value
    INT64 = ir.DataType.INT64.value

    def _is_double(x) -> bool:
        return getattr(x, "dtype", None) == ir.DataType.DOUBLE

    def _col(x, i: int, axis: int):
        return op.Slice(x, [i], [i + 1], [axis])

    def _scalar_like(value: float, like):
        # A float64 constant for float64 tensors (a float32 one would round e.g. the clamp).
        if _is_double(like):
            return op.Constant(value=ir.tensor(np.array(float(value), dtype=np.float64)))
        return op.CastLike(op.Constant(value_float=float(value)), like)

    # -- NMS helpers ---------------------------------------------------------------------
    def _visit_ranks(scores_f):
        """Rank scores [N] (float32): N for the first box pydetops visits, then N - 1, ...
        Order: decreasing score, equal scores by lower index, NaN scores last."""
        n = op.Shape(scores_f)
        nan = op.Cast(op.IsNaN(scores_f), to=FLOAT)
        # Pass 1: non-NaN before NaN, index order kept within each group (TopK's tie rule:
        # the lower index first).
        _, perm1 = op.TopK(nan, n, axis=0, largest=0, sorted=1)
        key = op.Where(op.IsNaN(scores_f), _scalar_like(float("-inf"), scores_f), scores_f)
        # Pass 2: decreasing score; ties keep pass 1's order.
        _, perm2 = op.TopK(op.Gather(key, perm1, axis=0), n, axis=0, largest=1, sorted=1)
        perm = op.Gather(perm1, perm2, axis=0)
        n_f = op.Cast(op.Squeeze(n, [0]), to=FLOAT)
        rank = op.Sub(n_f, op.Cast(op.Range(op.Constant(value_int=0), op.Squeeze(n, [0]),
                                            op.Constant(value_int=1)), to=FLOAT))
        return op.ScatterElements(op.Expand(op.Constant(value_float=0.0), n), perm, rank, axis=0)

    def _nms_boxes(boxes):
        b = op.Cast(boxes, to=FLOAT)
        lo = op.Slice(b, [0], [2], [1])
        hi = op.Max(op.Slice(b, [2], [4], [1]), lo)  # inverted -> zero width/height
        return op.Concat(lo, hi, axis=1)

    def _threshold(iou_threshold: float):
        # IoU <= 1: "IoU > t" for t >= 1 never holds, which t = 1 reproduces (the runtime
        # requires t in [0, 1]).
        return op.Constant(value_float=min(float(iou_threshold), 1.0))

    def pydetops_nms(boxes, scores, iou_threshold: float):
        b = _nms_boxes(boxes)
        ranks = _visit_ranks(op.Cast(scores, to=FLOAT))
        n = op.Shape(b, start=0, end=1)
        sel = op.NonMaxSuppression(op.Unsqueeze(b, [0]), op.Unsqueeze(ranks, [0, 1]), n,
                                   _threshold(iou_threshold), op.Constant(value_float=0.5), center_point_box=0)
        return op.Squeeze(op.Slice(sel, [2], [3], [1]), [1])

    def pydetops_batched_nms(boxes, scores, idxs, iou_threshold: float):
        b = _nms_boxes(boxes)
        ranks = _visit_ranks(op.Cast(scores, to=FLOAT))
        n = op.Shape(b, start=0, end=1)
        uniq, _, category, _ = op.Unique(op.Cast(idxs, to=INT64), sorted=1)  # category: dense id of each box
        num_cat = op.Shape(uniq)
        cats = op.Range(op.Constant(value_int=0), op.Squeeze(num_cat, [0]), op.Constant(value_int=1))
        member = op.Equal(op.Unsqueeze(cats, [1]), op.Unsqueeze(category, [0]))  # [C, N]
        per_cat_boxes = op.Where(op.Unsqueeze(member, [2]), op.Unsqueeze(b, [0]), op.Constant(value_float=0.0))
        per_cat_scores = op.Unsqueeze(op.Where(member, op.Unsqueeze(ranks, [0]), op.Constant(value_float=0.0)), [1])
        sel = op.NonMaxSuppression(per_cat_boxes, per_cat_scores, n, _threshold(iou_threshold),
                                   op.Constant(value_float=0.5), center_point_box=0)
        kept = op.Squeeze(op.Slice(sel, [2], [3], [1]), [1])
        # Every box is in exactly one category's batch with a rank >= 1 (others score 0,
        # under the score threshold), so `kept` holds no duplicates: order it by rank.
        kept_ranks = op.Gather(ranks, kept, axis=0)
        _, order = op.TopK(kept_ranks, op.Shape(kept), axis=0, largest=1, sorted=1)
        return op.Gather(kept, order, axis=0)

    # -- RoI ops -------------------------------------------------------------------------
    def pydetops_roi_align(input, boxes, spatial_scale: float, pooled_height: int, pooled_width: int,
                           sampling_ratio: int, aligned: bool):
        rois = op.Slice(boxes, [1], [5], [1])
        batch = op.Cast(op.Squeeze(op.Slice(boxes, [0], [1], [1]), [1]), to=INT64)
        return op.RoiAlign(
            input, op.CastLike(rois, input), batch,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
            mode="avg", output_height=int(pooled_height), output_width=int(pooled_width),
            sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale))

    def pydetops_roi_pool(input, boxes, spatial_scale: float, pooled_height: int, pooled_width: int):
        x = op.Cast(input, to=FLOAT) if _is_double(input) else input  # the runtime has float32 only
        out = op.MaxRoiPool(x, op.CastLike(boxes, x), pooled_shape=[int(pooled_height), int(pooled_width)],
                            spatial_scale=float(spatial_scale))
        if _is_double(input):
            out = op.Cast(out, to=DOUBLE)
        # The argmax output (used by the backward only) has no ONNX counterpart: -1.
        argmax = op.Expand(op.Constant(value_int=-1), op.Shape(out))
        return out, op.Cast(argmax, to=ir.DataType.INT32.value)

    # -- box_overlaps --------------------------------------------------------------------
    def pydetops_box_overlaps(boxes1, boxes2, mode: str = "iou", aligned: bool = False, eps: float = 0.0):
        if mode not in ("iou", "iof", "giou"):
            raise NotImplementedError(
                f"pydetops.onnx: box_overlaps mode {mode!r} is not exportable (supported: 'iou', 'iof', 'giou')")
        dt = DOUBLE if _is_double(boxes1) or _is_double(boxes2) else FLOAT
        a = op.Cast(boxes1, to=dt)
        b = op.Cast(boxes2, to=dt)
        if not aligned:  # [N, 1] against [1, M]
            a = op.Unsqueeze(a, [1])
            b = op.Unsqueeze(b, [0])
        ax = -1
        a1, b1, a2, b2 = _col(a, 0, ax), _col(b, 0, ax), _col(a, 2, ax), _col(b, 2, ax)
        ay1, by1, ay2, by2 = _col(a, 1, ax), _col(b, 1, ax), _col(a, 3, ax), _col(b, 3, ax)
        area_a = op.Mul(op.Sub(a2, a1), op.Sub(ay2, ay1))
        area_b = op.Mul(op.Sub(b2, b1), op.Sub(by2, by1))
        w = op.Sub(op.Min(a2, b2), op.Max(a1, b1))
        h = op.Sub(op.Min(ay2, by2), op.Max(ay1, by1))
        zero = op.CastLike(op.Constant(value_float=0.0), a)
        eps_t = op.Constant(value=ir.tensor(np.array(float(eps), dtype=np.float64 if dt == DOUBLE else np.float32)))
        if aligned and mode != "iof":  # the loss form: no overlap unless both sides are > 0
            inter = op.Where(op.And(op.Greater(w, zero), op.Greater(h, zero)), op.Mul(w, h), zero)
        else:
            inter = op.Mul(op.Max(w, zero), op.Max(h, zero))
        if mode == "iof":
            res = op.Div(inter, op.Add(area_a, eps_t) if aligned else area_a)
        else:
            union = op.Sub(op.Add(area_a, area_b), inter)
            res = op.Div(inter, op.Add(union, eps_t) if aligned else union)
            if mode == "giou":
                cw = op.Sub(op.Max(a2, b2), op.Min(a1, b1))
                ch = op.Sub(op.Max(ay2, by2), op.Min(ay1, by1))
                if not aligned:
                    cw, ch = op.Max(cw, zero), op.Max(ch, zero)
                c_area = op.Mul(cw, ch)
                res = op.Sub(res, op.Div(op.Sub(c_area, union), op.Add(c_area, eps_t)))
        return op.Squeeze(res, [-1])

    # -- decode_boxes --------------------------------------------------------------------
    def pydetops_decode_boxes(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000.0 / 16),
                              image_size=None):
        # (defaults: the op schema's; the exporter leaves out arguments equal to them)
        codes = op.Reshape(rel_codes, op.Constant(value_ints=[0, -1, 4]))  # [N, K, 4]
        b = op.Unsqueeze(op.CastLike(boxes, rel_codes), [1])  # [N, 1, 4]
        x1, y1, x2, y2 = (_col(b, i, 2) for i in range(4))
        w = op.Sub(x2, x1)
        h = op.Sub(y2, y1)
        half = _scalar_like(0.5, rel_codes)
        cx = op.Add(x1, op.Mul(half, w))
        cy = op.Add(y1, op.Mul(half, h))
        c = _scalar_like(clamp, rel_codes)
        dx = op.Div(_col(codes, 0, 2), _scalar_like(weights[0], rel_codes))
        dy = op.Div(_col(codes, 1, 2), _scalar_like(weights[1], rel_codes))
        dw = op.Div(_col(codes, 2, 2), _scalar_like(weights[2], rel_codes))
        dh = op.Div(_col(codes, 3, 2), _scalar_like(weights[3], rel_codes))
        dw = op.Where(op.Greater(dw, c), c, dw)  # torch.clamp(max=): NaN stays NaN
        dh = op.Where(op.Greater(dh, c), c, dh)
        pcx = op.Add(op.Mul(dx, w), cx)
        pcy = op.Add(op.Mul(dy, h), cy)
        pw = op.Mul(op.Exp(dw), w)
        ph = op.Mul(op.Exp(dh), h)
        out = [op.Sub(pcx, op.Mul(half, pw)), op.Sub(pcy, op.Mul(half, ph)),
               op.Add(pcx, op.Mul(half, pw)), op.Add(pcy, op.Mul(half, ph))]
        if image_size is not None:
            zero = _scalar_like(0.0, rel_codes)
            limits = [_scalar_like(image_size[1], rel_codes), _scalar_like(image_size[0], rel_codes)]
            for i in range(4):
                v = op.Where(op.Less(out[i], zero), zero, out[i])
                out[i] = op.Where(op.Greater(v, limits[i % 2]), limits[i % 2], v)
        return op.Reshape(op.Concat(*out, axis=2), op.Shape(rel_codes))

    pd = torch.ops.pydetops
    return {
        pd.nms.default: pydetops_nms,
        pd.batched_nms.default: pydetops_batched_nms,
        pd.roi_align.default: pydetops_roi_align,
        pd.roi_pool.default: pydetops_roi_pool,
        pd.box_overlaps.default: pydetops_box_overlaps,
        pd.decode_boxes.default: pydetops_decode_boxes,
    }


def translation_table() -> Dict[Any, Callable]:
    """``{torch.ops.pydetops.<op>.default: onnxscript translation}`` for torch.onnx.export's
    ``custom_translation_table`` (dynamo=True). A new dict each call (extend it freely).
    Raises ImportError naming ``pydetops[onnx]`` when onnxscript is missing."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _build_table()
    return dict(_TABLE)


def export(model: torch.nn.Module, args: tuple = (), f=None, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=..., **kwargs)``
    with pydetops' translations (entries of a ``custom_translation_table`` in ``kwargs``
    are added and take precedence). Returns torch.onnx's ``ONNXProgram``."""
    if "dynamo" in kwargs and not kwargs["dynamo"]:
        raise ValueError("dynamo: pydetops.onnx.export needs torch.onnx's dynamo exporter (dynamo=True)")
    kwargs.pop("dynamo", None)
    table = translation_table()
    extra = kwargs.pop("custom_translation_table", None)
    if extra:
        table.update(extra)
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
