"""ONNX export of pydetops' ops (pydetops.onnx): each exported graph holds standard ONNX
operators only and onnxruntime gives the results torch gives, on random and adversarial
inputs (ties, duplicates, inverted and zero-area boxes, many RoIs).

Skips where onnx / onnxruntime / onnxscript are absent (``pip install pydetops[onnx]``);
CI's second stage (torch 2.14.1 + torchvision venv) has them.
"""
import math

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import pydetops.onnx as pd_onnx  # noqa: E402
from pydetops import ops  # noqa: E402


def _export(model, args, **kw):
    prog = pd_onnx.export(model.eval(), args, **kw)
    proto = prog.model_proto
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard ONNX domains in the graph: {domains}"
    assert not proto.functions, "the graph must not call local functions"
    return prog, {n.op_type for n in proto.graph.node}


def _session(prog):
    return ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, args):
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == len(args)
    outs = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    return [torch.from_numpy(o) for o in outs]


def _boxes(n, dtype=torch.float32, scale=100.0):
    xy = torch.rand(n, 2, dtype=dtype) * scale
    wh = torch.rand(n, 2, dtype=dtype) * scale / 3 + 0.5
    return torch.cat([xy, xy + wh], 1)


def _adversarial_nms_inputs(n=300):
    boxes = _boxes(n)
    boxes[10:20] = boxes[0]  # duplicates (IoU 1)
    boxes[20:25] = boxes[25:30].flip(1)  # inverted boxes
    boxes[30:35, 2:] = boxes[30:35, :2]  # zero-area boxes
    boxes[35:40] = boxes[40:45] + 1e-3  # near-duplicates
    scores = torch.randint(0, 6, (n,)).float() / 5  # many exactly equal scores
    scores[50:55] = float("nan")
    scores[55:58] = float("-inf")
    scores[58:60] = float("inf")
    return boxes, scores


class _NMS(torch.nn.Module):
    def forward(self, boxes, scores):
        return tuple(ops.nms(boxes, scores, t) for t in (0.0, 0.3, 0.5, 0.7, 1.0, 1.5))


def test_nms_matches_torch_on_ties_and_degenerate_boxes():
    boxes, scores = _adversarial_nms_inputs()
    prog, types = _export(_NMS(), (boxes, scores), dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}))
    assert "NonMaxSuppression" in types
    sess = _session(prog)
    cases = [(boxes, scores), _adversarial_nms_inputs(57), (_boxes(1000), torch.rand(1000)), (_boxes(1), torch.rand(1))]
    cases.append((torch.zeros(0, 4), torch.zeros(0)))
    for b, s in cases:
        got = _run(sess, (b, s))
        want = _NMS()(b, s)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == torch.int64
            assert torch.equal(g, w), (g, w)
    # The thresholds >= 1 suppress nothing; 0 suppresses every overlapping box.
    want = _NMS()(boxes, scores)
    assert len(want[-1]) == len(boxes) and len(want[0]) < len(want[2])


class _BatchedNMS(torch.nn.Module):
    def forward(self, boxes, scores, idxs):
        return ops.batched_nms(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs, 0.0)


def test_batched_nms_matches_torch():
    n = 400
    boxes, scores = _adversarial_nms_inputs(n)
    idxs = torch.randint(-3, 5, (n,)) * 1_000_003  # negative, large and sparse categories
    dyn = {0: torch.export.Dim("n")}
    prog, types = _export(_BatchedNMS(), (boxes, scores, idxs), dynamic_shapes=(dyn, dyn, dyn))
    assert "NonMaxSuppression" in types
    sess = _session(prog)
    far = _boxes(200, scale=1e6) + 1e7  # large coordinates: exact (no class offsets)
    cases = [(boxes, scores, idxs), (far, torch.rand(200), torch.randint(0, 90, (200,))),
             (boxes[:50], scores[:50], torch.zeros(50, dtype=torch.int64)),  # one category: nms
             (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))]
    for b, s, i in cases:
        got = _run(sess, (b, s, i))
        want = _BatchedNMS()(b, s, i)
        for g, w in zip(got, want):
            assert torch.equal(g, w), (g, w)
    # categories kept apart: with one category per box, nothing is suppressed
    got = _run(sess, (boxes, scores, torch.arange(n)))
    assert sorted(got[1].tolist()) == list(range(n))


class _RoI(torch.nn.Module):
    def forward(self, x, rois):
        return (
            ops.roi_align(x, rois, (7, 7), 0.25, -1, True),
            ops.roi_align(x, rois, (5, 3), 0.5, 0, False),
            ops.roi_align(x, rois, 4, 0.25, 2, False),
            ops.roi_align(x, rois, (2, 6), 1.0, 3, True),
            ops.roi_pool(x, rois, (7, 7), 0.25),
            ops.roi_pool(x, rois, (3, 5), 0.5),
        )


def _rois(k, n_images, scale):
    b = _boxes(k, scale=scale)
    b[:5] = b[:5, [2, 3, 0, 1]]  # inverted
    b[5:10, 2:] = b[5:10, :2]  # zero-size
    b[10:15] -= scale / 2  # partly outside the image
    b[15:20] = torch.tensor([0.0, 0.0, 0.3, 0.2])  # smaller than a pixel
    return torch.cat([torch.randint(0, n_images, (k, 1)).float(), b], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_and_roi_pool_match_torch(dtype):
    x = torch.randn(2, 3, 24, 32, dtype=dtype)
    rois = _rois(600, 2, 120.0).to(dtype)  # many RoIs
    dyn = {0: torch.export.Dim("k")}
    prog, types = _export(_RoI(), (x, rois), dynamic_shapes=(None, dyn))
    assert {"RoiAlign", "MaxRoiPool"} <= types
    sess = _session(prog)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for r in (rois, _rois(30, 2, 200.0).to(dtype)):
        got = _run(sess, (x, r))
        want = _RoI()(x, r)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and g.shape == w.shape
            if i >= 4 and dtype == torch.float64:  # roi_pool: pooled in float32 by the runtime
                torch.testing.assert_close(g, w.float().double(), rtol=0, atol=0)
            else:
                torch.testing.assert_close(g, w, **tol)


class _Overlaps(torch.nn.Module):
    def forward(self, a, b, a2):
        return (
            ops.box_iou(a, b),
            ops.box_overlaps(a, b, "iof"),
            ops.generalized_box_iou(a, b),
            ops.box_overlaps(a, a2, "iou", True, 1e-7),
            ops.box_overlaps(a, a2, "giou", True, 1e-7),
            ops.box_overlaps(a, a2, "iof", True, 1e-7),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_overlaps_match_torch(dtype):
    a, b = _boxes(70, dtype), _boxes(50, dtype)
    a[:5] = b[:5]  # identical boxes: IoU 1
    a[5:10] = b[5:10] + 500  # disjoint
    a[10:15, 2:] = a[10:15, :2] + torch.tensor([0.0, 3.0], dtype=dtype)  # zero width
    a2 = _boxes(70, dtype)
    a2[:10] = a[:10]
    a2[20:25] = a[20:25, [2, 3, 0, 1]]  # inverted partner
    prog, types = _export(_Overlaps(), (a, b, a2))
    assert "Div" in types
    got = _run(_session(prog), (a, b, a2))
    want = _Overlaps()(a, b, a2)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, equal_nan=True, **tol)


class _Decode(torch.nn.Module):
    def forward(self, codes, boxes):
        coder = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
        return (
            coder.decode_single(codes, boxes),
            ops.decode_boxes(codes, boxes, (1.0, 2.0, 3.0, 4.0), 1.5, (60, 90)),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_boxes_matches_torch(dtype):
    n, k = 300, 5
    boxes = _boxes(n, dtype)
    boxes[:5, 2:] = boxes[:5, :2]  # zero-size boxes
    codes = torch.randn(n, 4 * k, dtype=dtype) * 3
    codes[5:10, 2:4] = 80.0  # past both clamps
    codes[10, 0] = float("nan")
    prog, types = _export(_Decode(), (codes, boxes))
    assert "Exp" in types
    got = _run(_session(prog), (codes, boxes))
    want = _Decode()(codes, boxes)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, equal_nan=True, **tol)


def test_translation_table_and_export_arguments():
    table = pd_onnx.translation_table()
    pd = torch.ops.pydetops
    assert set(table) == {pd.nms.default, pd.batched_nms.default, pd.roi_align.default, pd.roi_pool.default,
                          pd.box_overlaps.default, pd.decode_boxes.default}
    table.clear()  # a copy: the module's table is untouched
    assert len(pd_onnx.translation_table()) == 6
    with pytest.raises(ValueError, match="dynamo"):
        pd_onnx.export(_NMS(), (torch.zeros(1, 4), torch.zeros(1)), dynamo=False)


class _DIoU(torch.nn.Module):
    def forward(self, a, b):
        return ops.box_overlaps(a, b, "diou")


def test_unsupported_mode_is_named_at_export():
    a = _boxes(4)
    with pytest.raises(Exception, match="diou"):
        pd_onnx.export(_DIoU().eval(), (a, a))


def test_plain_torch_onnx_export_with_the_table():
    # Users calling torch.onnx.export themselves pass the table.
    x, rois = torch.randn(1, 2, 16, 16), _rois(40, 1, 64.0)
    prog = torch.onnx.export(_RoI().eval(), (x, rois), dynamo=True, custom_translation_table=pd_onnx.translation_table())
    got = _run(_session(prog), (x, rois))
    for g, w in zip(got, _RoI()(x, rois)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(got[0].sum()))


def test_missing_onnxscript_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    monkeypatch.setattr(pd_onnx, "_TABLE", None)
    with pytest.raises(ImportError, match=r"pydetops\[onnx\]"):
        pd_onnx.translation_table()


class _RoIList(torch.nn.Module):
    def forward(self, x, b0, b1):
        return ops.roi_align(x, [b0, b1], 5, 0.5, 2, True)


def test_roi_align_with_a_list_of_boxes():
    x = torch.randn(2, 3, 20, 20)
    b0, b1 = _boxes(7, scale=40.0), _boxes(4, scale=40.0)
    prog, types = _export(_RoIList(), (x, b0, b1))
    assert "RoiAlign" in types
    got = _run(_session(prog), (x, b0, b1))[0]
    torch.testing.assert_close(got, _RoIList()(x, b0, b1), rtol=1e-5, atol=1e-5)
