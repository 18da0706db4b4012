"""Bad-input battery (issue "Hardening the op layer"): no crash, no hang, no silently
wrong result.

Each case is one call with an adversarial argument and the exact exception type it must
raise, plus a word its message must contain (the argument's name). Cases that could
crash the interpreter (overflowing sizes, huge requests) run in child processes, many
cases per child: the child announces each case before running it, so a crash (a signal)
is pinned on the case that caused it and the other cases of the batch are rerun.

Run as a script (``python tests/test_bad_input.py [PACKAGE_ROOT]``) it prints the
counts per class for the pydetops found under PACKAGE_ROOT (the worktree by default):
how benchmarks/NOTES.md got its before/after figures.

Also here: the silently-wrong classes checked by value (NaN RoIs pool to zeros, integer
boxes beyond 2**24, float image sizes) and double backward (gradgradcheck where it is
supported, a clear error where it is not).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

# ---------------------------------------------------------------- the battery
# (class, id, code, exception type name, word the message must contain)
# The code runs with ``ops`` = pydetops.ops, ``torch``, ``x`` = randn(1, 4, 8, 8),
# ``r`` = one RoI [[0, 0, 0, 4, 4]], ``b`` = boxes Tensor[3, 4].
BIG = 2 ** 62
CASES = [
    # crashes (SIGFPE / SIGSEGV before): overflowing products of sizes
    ("crash", "ps_roi_align 2**32 x 2**32", "ops.ps_roi_align(x, r, (2**32, 2**32))", "ValueError", "output_size"),
    ("crash", "ps_roi_align 2**62 x 4", "ops.ps_roi_align(x, r, (2**62, 4))", "ValueError", "output_size"),
    ("crash", "ps_roi_pool 2**32 x 2**32", "ops.ps_roi_pool(x, r, (2**32, 2**32))", "ValueError", "output_size"),
    ("crash", "ps_roi_pool 2**62 x 4", "ops.ps_roi_pool(x, r, (2**62, 4))", "ValueError", "output_size"),
    ("crash", "nearest_unpool2d (2**62+1, 1)", "ops.nearest_unpool2d(torch.randn(1, 1, 4, 4), (2**62 + 1, 1))",
     "ValueError", "scale_factor"),
    ("crash", "nearest_unpool2d (1, 2**62+1)", "ops.nearest_unpool2d(torch.randn(1, 1, 4, 4), (1, 2**62 + 1))",
     "ValueError", "scale_factor"),
    ("crash", "bed_of_nails (2**62+1, 1)", "ops.bed_of_nails_unpool2d(torch.randn(1, 1, 4, 4), (2**62 + 1, 1))",
     "ValueError", "scale_factor"),
    ("crash", "roi_align 2**32 x 2**32", "ops.roi_align(x, r, (2**32, 2**32))", "ValueError", "output_size"),
    ("crash", "roi_pool 2**32 x 2**32", "ops.roi_pool(x, r, (2**32, 2**32))", "ValueError", "output_size"),
    ("crash", "spp_pool level 2**40", "ops.spp_pool(x, r, [2**40])", "ValueError", "levels"),
    ("crash", "max_unpool2d stride 2**62 + output",
     "ops.max_unpool2d(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), 2, 2**62)",
     "ValueError", "stride"),
    # silently wrong shapes from wrapped sizes (now errors naming the argument)
    ("wrong_shape", "conv_transpose2d stride 2**62",
     "ops.conv_transpose2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3), stride=2**62)", "ValueError", "stride"),
    ("wrong_shape", "conv_transpose2d dilation 2**62",
     "ops.conv_transpose2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3), dilation=2**62)", "ValueError",
     "dilation"),
    ("wrong_shape", "conv_transpose2d padding 2**63-1",
     "ops.conv_transpose2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3), padding=2**63 - 1)", "ValueError",
     "padding"),
    ("wrong_shape", "max_unpool2d (2, 2**62)",
     "ops.max_unpool2d(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), 2, 2**62)",
     "ValueError", "stride"),
    ("wrong_shape", "nearest_unpool2d (2**62, 1)", "ops.nearest_unpool2d(torch.randn(1, 1, 4, 4), (2**62, 1))",
     "ValueError", "scale_factor"),
    ("wrong_shape", "bed_of_nails (2**62, 1)", "ops.bed_of_nails_unpool2d(torch.randn(1, 1, 4, 4), (2**62, 1))",
     "ValueError", "scale_factor"),
    # hangs and memory: capped work, sizes checked before allocating
    ("hang_memory", "roi_align sampling_ratio 1e5", "ops.roi_align(x, r, 2, 1.0, 100000)", "ValueError",
     "sampling_ratio"),
    ("hang_memory", "roi_align sampling_ratio 2**31", "ops.roi_align(x, r, 2, 1.0, 2**31)", "ValueError",
     "sampling_ratio"),
    ("hang_memory", "ps_roi_align sampling_ratio 1e5", "ops.ps_roi_align(x, r, 2, 1.0, 100000)", "ValueError",
     "sampling_ratio"),
    ("hang_memory", "multi_level_roi_align sampling_ratio 1e5",
     "ops.multi_level_roi_align([x, x], r, torch.tensor([1]), [1.0, 0.5], 2, 100000)", "ValueError",
     "sampling_ratio"),
    ("hang_memory", "MultiScaleRoIAlign sampling_ratio 1e5", "ops.MultiScaleRoIAlign(['a'], 2, 100000)",
     "ValueError", "sampling_ratio"),
    ("hang_memory", "roi_pool output_size 1e5 x 1e5", "ops.roi_pool(x, r, 100000)", "ValueError", "output_size"),
    ("hang_memory", "roi_align output_size 1e5 x 1e5", "ops.roi_align(x, r, 100000)", "ValueError", "output_size"),
    ("hang_memory", "box_iou 1e6 x 1e6", "ops.box_iou(torch.rand(10**6, 4), torch.rand(10**6, 4))", "ValueError",
     "boxes1"),
    ("hang_memory", "grid_anchors feature_size 1e6 x 1e6",
     "ops.grid_anchors(torch.rand(3, 4), (10**6, 10**6), (16, 16))", "ValueError", "feature_size"),
    ("hang_memory", "conv_transpose2d stride 1e5 x 1e5",
     "ops.conv_transpose2d(torch.randn(1, 8, 16, 16), torch.randn(8, 8, 3, 3), stride=100000)", "ValueError",
     "stride"),
    ("hang_memory", "nearest_unpool2d scale 1e6",
     "ops.nearest_unpool2d(torch.randn(1, 4, 8, 8), 10**6)", "ValueError", "scale_factor"),
    # clear errors: the exception type and the argument's name
    ("clear_error", "roi_align empty box list", "ops.roi_align(x, [], 3)", "ValueError", "boxes"),
    ("clear_error", "roi_pool empty box list", "ops.roi_pool(x, [], 3)", "ValueError", "boxes"),
    ("clear_error", "ps_roi_align empty box list", "ops.ps_roi_align(x, [], 2)", "ValueError", "boxes"),
    ("clear_error", "ps_roi_pool empty box list", "ops.ps_roi_pool(x, [], 2)", "ValueError", "boxes"),
    ("clear_error", "spp_pool empty box list", "ops.spp_pool(x, [], [2])", "ValueError", "boxes"),
    ("clear_error", "MultiScaleRoIAlign empty box list",
     "ops.MultiScaleRoIAlign(['a'], 2, 2)({'a': x}, [], [(32, 32)])", "ValueError", "boxes"),
    ("clear_error", "BoxCoder.decode empty box list", "ops.BoxCoder((1., 1., 1., 1.)).decode(torch.rand(3, 4), [])",
     "ValueError", "boxes"),
    ("clear_error", "roi_align output_size 2.5", "ops.roi_align(x, r, 2.5)", "TypeError", "output_size"),
    ("clear_error", "roi_pool output_size 2.5", "ops.roi_pool(x, r, 2.5)", "TypeError", "output_size"),
    ("clear_error", "ps_roi_align output_size 2.5", "ops.ps_roi_align(x, r, 2.5)", "TypeError", "output_size"),
    ("clear_error", "roi_align output_size (2**31, 2**31)", "ops.roi_align(x, r, (2**31, 2**31))", "ValueError",
     "output_size"),
    ("clear_error", "roi_align output_size (2**63, 1)", "ops.roi_align(x, r, (2**63, 1))", "ValueError",
     "output_size"),
    ("clear_error", "roi_align sampling_ratio 2.7", "ops.roi_align(x, r, 2, 1.0, 2.7)", "TypeError",
     "sampling_ratio"),
    ("clear_error", "ps_roi_align sampling_ratio 2.7", "ops.ps_roi_align(x, r, 2, 1.0, 2.7)", "TypeError",
     "sampling_ratio"),
    ("clear_error", "spp_pool levels [2.9]", "ops.spp_pool(x, r, [2.9])", "TypeError", "levels"),
    ("clear_error", "SpatialPyramidPooling levels [2.9]", "ops.SpatialPyramidPooling([2.9])", "TypeError", "levels"),
    ("clear_error", "grid_anchors feature_size floats", "ops.grid_anchors(torch.rand(3, 4), (2.5, 3.0), (16, 16))",
     "TypeError", "feature_size"),
    ("clear_error", "grid_anchors stride floats", "ops.grid_anchors(torch.rand(3, 4), (2, 3), (16.5, 16))",
     "TypeError", "stride"),
    ("clear_error", "nearest_unpool2d scale 1.5", "ops.nearest_unpool2d(torch.randn(1, 1, 4, 4), 1.5)", "TypeError",
     "scale_factor"),
    ("clear_error", "conv_transpose2d stride 1.5",
     "ops.conv_transpose2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3), stride=1.5)", "TypeError", "stride"),
    ("clear_error", "max_unpool2d kernel_size 2.5",
     "ops.max_unpool2d(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), 2.5)", "TypeError",
     "kernel_size"),
    ("clear_error", "box_iou bool boxes", "ops.box_iou(b > 0, b > 0)", "TypeError", "boxes1"),
    ("clear_error", "box_area bool boxes", "ops.box_area(b > 0)", "TypeError", "boxes"),
    ("clear_error", "box_convert bool boxes", "ops.box_convert(b > 0, 'xyxy', 'cxcywh')", "TypeError", "boxes"),
    ("clear_error", "clip_boxes_to_image bool boxes", "ops.clip_boxes_to_image(b > 0, (10, 20))", "TypeError",
     "boxes"),
    ("clear_error", "remove_small_boxes bool boxes", "ops.remove_small_boxes(b > 0, 1.0)", "TypeError", "boxes"),
    ("clear_error", "clip_boxes_to_image size (10,)", "ops.clip_boxes_to_image(b, (10,))", "ValueError", "size"),
    ("clear_error", "clip_boxes_to_image size (10, 20, 30)", "ops.clip_boxes_to_image(b, (10, 20, 30))",
     "ValueError", "size"),
    ("clear_error", "clip_boxes_to_image size inf", "ops.clip_boxes_to_image(b, (10, float('inf')))", "ValueError",
     "size"),
    ("clear_error", "MultiScaleRoIAlign image size (0, 0)",
     "ops.MultiScaleRoIAlign(['a'], 2, 2)({'a': x}, [b], [(0, 0)])", "ValueError", "image_shapes"),
    ("clear_error", "DefaultBoxGenerator ratio 0", "ops.DefaultBoxGenerator([[0]])", "ValueError", "aspect_ratios"),
    ("clear_error", "DefaultBoxGenerator ratio -2", "ops.DefaultBoxGenerator([[-2]])", "ValueError",
     "aspect_ratios"),
    ("clear_error", "BoxCoder.decode mismatched codes",
     "ops.BoxCoder((1., 1., 1., 1.)).decode(torch.rand(5, 3), [b])", "ValueError", "rel_codes"),
]

_CHILD = r"""
import json, os, sys
if os.environ.get("PYDETOPS_BATTERY_MEMORY_LIMIT"):  # script mode: keep a "before" run from eating the machine
    import resource
    lim = int(os.environ["PYDETOPS_BATTERY_MEMORY_LIMIT"])
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
import torch
from pydetops import ops
torch.manual_seed(0)
cases = json.loads(sys.stdin.read())
x = torch.randn(1, 4, 8, 8)
r = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
b = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 6.0], [2.0, 0.0, 3.0, 9.0]])
for cid, code in cases:
    print(json.dumps(["start", cid]), flush=True)
    try:
        eval(code)
        res = ["none", ""]
    except BaseException as e:  # noqa: BLE001 - the type is the result
        res = [type(e).__name__, str(e)[:400]]
    print(json.dumps(["done", cid] + res), flush=True)
"""


def run_battery(cases, package_root, timeout=120, memory_limit=None):
    """{case id: (exception type name | 'none' | 'crash: ...' | 'timeout', message)}.

    A batch that outlives ``timeout`` seconds counts its running case as a hang."""
    env = dict(os.environ, PYTHONPATH=package_root, OMP_NUM_THREADS="1")
    if memory_limit:
        env["PYDETOPS_BATTERY_MEMORY_LIMIT"] = str(memory_limit)
    results = {}
    todo = [(c[1], c[2]) for c in cases]
    while todo:
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(todo), capture_output=True,
                                  text=True, timeout=timeout, env=env, cwd=package_root)
            out, code, err = proc.stdout, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            code, err = "timeout", ""
        running = None
        for line in out.splitlines():
            msg = json.loads(line)
            if msg[0] == "start":
                running = msg[1]
            else:
                results[msg[1]] = (msg[2], msg[3])
                running = None
        if running is None and code != 0:
            raise RuntimeError(f"battery child failed outside a case: {err[-2000:]}")
        if running is not None:  # the child died (or hung) in this case: record it, rerun the rest
            results[running] = ("timeout" if code == "timeout" else f"crash: returncode {code}", err[-300:])
        todo = [t for t in todo if t[0] not in results]
    return results


def _package_root():
    import pydetops

    return os.path.dirname(os.path.dirname(os.path.abspath(pydetops.__file__)))


@pytest.fixture(scope="module")
def battery():
    return run_battery(CASES, _package_root())


@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_bad_input_battery(battery, case):
    _, cid, code, exc, word = case
    got, message = battery[cid]
    assert got == exc, f"{code}: expected {exc} naming {word!r}, got {got}: {message}"
    assert word in message, f"{code}: the message does not name {word!r}: {message}"


# ---------------------------------------------------------------- silently wrong, by value
from pydetops import ops  # noqa: E402

NONFINITE = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("col", [1, 2, 3, 4])
def test_roi_align_nonfinite_coordinate_pools_zeros(device, aligned, sampling_ratio, bad, col):
    x = torch.arange(72.0, device=device).reshape(1, 2, 6, 6)
    roi = [0.0, 1.0, 1.0, 4.0, 4.0]
    roi[col] = bad
    rois = torch.tensor([roi, [0.0, 1.0, 1.0, 4.0, 4.0]], device=device)
    out = ops.roi_align(x, rois, 2, 1.0, sampling_ratio, aligned)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert out[1].abs().sum() > 0  # the finite RoI beside it is pooled
    ml = ops.multi_level_roi_align([x, x[..., ::2, ::2].contiguous()], rois, torch.tensor([0, 1], device=device),
                                   [1.0, 0.5], 2, sampling_ratio, aligned)
    assert torch.equal(ml[0], torch.zeros_like(ml[0]))


def test_roi_align_issue_example_nan_x2():
    out = ops.roi_align(torch.arange(36.).reshape(1, 1, 6, 6), torch.tensor([[0., 1, 1, float("nan"), 4]]), 2, 1.0,
                        2, False)
    assert out.flatten().tolist() == [0.0, 0.0, 0.0, 0.0]


def test_box_iou_int64_beyond_float32_is_exact():
    base = 2 ** 30
    b1 = torch.tensor([[base, base, base + 4, base + 4]], dtype=torch.int64)
    b2 = torch.tensor([[base, base, base + 4, base + 4], [base, base, base + 4, base + 2]], dtype=torch.int64)
    iou = ops.box_iou(b1, b2)
    assert iou.dtype == torch.float32
    assert iou.tolist() == [[1.0, 0.5]]
    # the float64 reference of the same integers
    ref = ops.box_iou(b1.double(), b2.double()).float()
    assert torch.equal(iou, ref)
    g = ops.generalized_box_iou(b1, b2)
    assert torch.equal(g, ops.generalized_box_iou(b1.double(), b2.double()).float())
    assert torch.equal(ops.box_iou(b1.int(), b2.int()), iou)


def test_clip_boxes_to_image_float_and_int_sizes():
    b = torch.tensor([[-3.0, -1.0, 30.0, 40.0]])
    assert ops.clip_boxes_to_image(b, (10.5, 20.7)).tolist() == [[0.0, 0.0, pytest.approx(20.7), 10.5]]
    bi = torch.tensor([[-3, -1, 30, 40]])
    out = ops.clip_boxes_to_image(bi, (10, 20))
    assert out.dtype == torch.int64 and out.tolist() == [[0, 0, 20, 10]]
    assert ops.clip_boxes_to_image(bi, (10.5, 20.5)).dtype == torch.float32  # as torch.clamp with a float bound


def test_sampling_ratio_cap_is_inclusive():
    x = torch.randn(1, 4, 8, 8)
    r = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    assert ops.roi_align(x, r, 1, 1.0, 64).shape == (1, 4, 1, 1)
    assert ops.ps_roi_align(x, r, 1, 1.0, 64).shape == (1, 4, 1, 1)
    with pytest.raises(ValueError, match="sampling_ratio"):
        ops.roi_align(x, r, 1, 1.0, 65)


def _roi_pool_reference(x, rois, ph, pw):
    # Fast R-CNN RoIPool in float64 (integer box corners: no rounding question).
    K, (C, H, W) = rois.shape[0], x.shape[1:]
    out = torch.zeros(K, C, ph, pw, dtype=x.dtype)
    for k in range(K):
        n, x1, y1, x2, y2 = [int(v) for v in rois[k].tolist()]
        bh, bw = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
        for i in range(ph):
            hs = min(max(math.floor(i * bh) + y1, 0), H)
            he = min(max(math.ceil((i + 1) * bh) + y1, 0), H)
            for j in range(pw):
                ws = min(max(math.floor(j * bw) + x1, 0), W)
                we = min(max(math.ceil((j + 1) * bw) + x1, 0), W)
                if he > hs and we > ws:
                    out[k, :, i, j] = x[n, :, hs:he, ws:we].amax((-1, -2))
    return out


def test_roi_pool_and_spp_grids_larger_than_one_chunk():
    # More bins than one chunk of the kernels (1024): the chunked result is the plain one.
    x = torch.randn(2, 3, 40, 50, dtype=torch.float64)
    r = torch.tensor([[0, 1.0, 2.0, 45.0, 37.0], [1, 0.0, 0.0, 20.0, 30.0]], dtype=torch.float64)
    assert torch.equal(ops.roi_pool(x, r, (40, 33)), _roi_pool_reference(x, r, 40, 33))
    levels = [30, 20, 1]  # 1301 cells together, each level alone within one chunk
    out = ops.spp_pool(x, r, levels)
    assert torch.equal(out, torch.cat([ops.spp_pool(x, r, [lv]) for lv in levels], 1))


# ---------------------------------------------------------------- double backward

def _boxes(n, dtype=torch.float64):
    xy = torch.rand(n, 2, dtype=dtype) * 10
    wh = torch.rand(n, 2, dtype=dtype) * 5 + 1
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("fn", ["box_iou", "box_iof", "generalized_box_iou", "distance_box_iou",
                                "complete_box_iou"])
def test_overlap_matrix_gradgradcheck(fn):
    f = getattr(ops, fn)
    b1 = _boxes(3).requires_grad_()
    b2 = _boxes(4).requires_grad_()
    assert torch.autograd.gradgradcheck(f, (b1, b2))


@pytest.mark.parametrize("fn", ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"])
def test_losses_gradgradcheck_and_gradient_penalty(fn):
    f = getattr(ops, fn)
    b1 = _boxes(5).requires_grad_()
    b2 = _boxes(5).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: f(a, b, reduction="sum"), (b1, b2))


def test_giou_loss_gradient_penalty_matches_formula():
    # The issue's case: a gradient penalty through generalized_box_iou_loss, against the
    # plain float64 formula differentiated by autograd.
    def formula(a, b):
        iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]))
        ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]))
        inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
        area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
        uni = area(a) + area(b) - inter
        iou = inter / (uni + 1e-7)
        cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
        ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
        c = cw * ch
        return (1 - (iou - (c - uni) / (c + 1e-7))).sum()

    a0, b0 = _boxes(6), _boxes(6)
    grads = []
    for loss_fn in (lambda a, b: ops.generalized_box_iou_loss(a, b, reduction="sum"), formula):
        a = a0.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_fn(a, b0), a, create_graph=True)
        (g.pow(2).sum()).backward()
        grads.append(a.grad)
    torch.testing.assert_close(grads[0], grads[1])


def _double_backward(fn, *inputs):
    out = fn(*inputs)
    grads = torch.autograd.grad(out.pow(2).sum(), [t for t in inputs if t.requires_grad], create_graph=True)
    sum(g.sum() for g in grads).backward()


DOUBLE_BACKWARD_UNSUPPORTED = [
    ("roi_align", lambda x: ops.roi_align(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), 2, 1.0, 2)),
    ("roi_pool", lambda x: ops.roi_pool(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), 2)),
    ("ps_roi_align", lambda x: ops.ps_roi_align(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), 2)),
    ("ps_roi_pool", lambda x: ops.ps_roi_pool(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), 2)),
    ("spp_pool", lambda x: ops.spp_pool(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), [2, 1])),
    ("multi_level_roi_align", lambda x: ops.multi_level_roi_align(
        [x, x], torch.tensor([[0.0, 0, 0, 4, 4]], dtype=x.dtype), torch.tensor([1]), [1.0, 1.0], 2, 2)),
    ("nearest_unpool2d", lambda x: ops.nearest_unpool2d(x, 2)),
    ("bed_of_nails_unpool2d", lambda x: ops.bed_of_nails_unpool2d(x, 2)),
    ("max_unpool2d", lambda x: ops.max_unpool2d(x, torch.arange(64).reshape(1, 1, 8, 8).expand(1, 4, 8, 8)
                                                .contiguous(), 2)),
    ("conv_transpose2d", lambda x: ops.conv_transpose2d(x, torch.randn(4, 2, 3, 3, dtype=x.dtype))),
    ("sigmoid_focal_loss", lambda x: ops.sigmoid_focal_loss(x, (x.detach() > 0).to(x.dtype), reduction="sum")),
]


@pytest.mark.parametrize("name,fn", DOUBLE_BACKWARD_UNSUPPORTED, ids=[n for n, _ in DOUBLE_BACKWARD_UNSUPPORTED])
def test_double_backward_raises_clearly(name, fn):
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    # first derivatives (also with create_graph=True) are unaffected
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    assert g.shape == x.shape
    with pytest.raises(RuntimeError, match=f"double backward of pydetops.{name} is not supported"):
        _double_backward(fn, x)


@pytest.mark.parametrize("name", ["encode_boxes", "decode_boxes"])
def test_box_coding_double_backward_raises_clearly(name):
    a, b = _boxes(4).requires_grad_(), _boxes(4)
    if name == "encode_boxes":
        fn = lambda t: ops.encode_boxes(t, b, torch.ones(4, dtype=t.dtype))  # noqa: E731
    else:
        fn = lambda t: ops.decode_boxes(t * 0.1, b)  # noqa: E731
    with pytest.raises(RuntimeError, match=f"double backward of pydetops.{name} is not supported"):
        _double_backward(fn, a)


if __name__ == "__main__":  # counts per class, for benchmarks/NOTES.md
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = run_battery(CASES, root, timeout=30, memory_limit=8 << 30)
    counts = {}
    for cls, cid, code, exc, word in CASES:
        got, msg = res[cid]
        ok = got == exc and word in msg
        kind = "ok" if ok else ("crash" if got.startswith("crash") else
                                ("no error" if got == "none" else ("hang" if got == "timeout" else "other")))
        counts.setdefault(cls, {}).setdefault(kind, 0)
        counts[cls][kind] += 1
        if not ok:
            print(f"  {cls:12s} {cid:45s} -> {got}: {msg[:100]!r}")
    print(json.dumps(counts, indent=1))
