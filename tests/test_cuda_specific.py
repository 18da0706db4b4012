"""CUDA-only checks: CPU-vs-CUDA agreement, determinism of the CUDA backward
kernels, memory of nms on many boxes. Skipped entirely without a GPU (the
family test files already run every op on CUDA through the ``device`` fixture).

Ops that are not built into this _C yet are skipped one by one."""
import pytest
import torch

import pydetops  # noqa: F401  (loads the ops)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _op(name):
    try:
        return getattr(torch.ops.pydetops, name)
    except (AttributeError, RuntimeError):
        pytest.skip(f"pydetops::{name} is not built")


def _has_cuda_kernel(name):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pydetops::{name}", "CUDA")


def _needs(name):
    op = _op(name)
    if not _has_cuda_kernel(name):
        pytest.skip(f"pydetops::{name} has no CUDA kernel")
    return op


def random_boxes(n, scale=100.0, dtype=torch.float32, device="cpu"):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * scale / 4
    return torch.cat([xy, xy + wh], 1).to(dtype=dtype, device=device)


def adversarial_boxes(dtype=torch.float32):
    b = torch.tensor(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 10],  # duplicate
            [5, 5, 5, 5],  # zero area
            [10, 10, 0, 0],  # inverted
            [-20, -20, -10, -10],
            [0, 0, 1e6, 1e6],  # huge
            [1e-6, 1e-6, 2e-6, 2e-6],  # tiny
            [2, 2, 12, 12],
            [float("nan"), 0, 1, 1],
            [0, 0, float("inf"), 1],
        ],
        dtype=torch.float64,
    )
    return b.to(dtype)


# ------------------------------------------------------------- box_overlaps

MODES = ["iou", "iof", "giou", "diou", "ciou"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
def test_box_overlaps_cpu_cuda_agree(mode, dtype, aligned):
    op = _needs("box_overlaps")
    a = torch.cat([random_boxes(300, dtype=dtype), adversarial_boxes(dtype)])
    b = torch.cat([random_boxes(300 if aligned else 257, dtype=dtype), adversarial_boxes(dtype)])
    eps = 1e-7
    cpu = op(a, b, mode, aligned, eps)
    cuda = op(a.cuda(), b.cuda(), mode, aligned, eps)
    assert cuda.dtype == cpu.dtype and cuda.shape == cpu.shape
    tol = TOL[dtype] if dtype not in (torch.float16, torch.bfloat16) or aligned else 1e-5
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
def test_box_overlaps_backward_cpu_cuda_agree_and_deterministic(mode, aligned):
    op = _needs("_box_overlaps_backward")
    # More rows/columns than one reduction chunk (2048), so the chunked sums run.
    n, m = (3000, 3000) if aligned else (2500, 70)
    a = random_boxes(n, dtype=torch.float64)
    b = random_boxes(m, dtype=torch.float64)
    g = torch.randn(n if aligned else (n, m), dtype=torch.float64)
    ga, gb = op(g, a, b, mode, aligned, 1e-7)
    ga_c, gb_c = op(g.cuda(), a.cuda(), b.cuda(), mode, aligned, 1e-7)
    torch.testing.assert_close(ga_c.cpu(), ga, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb_c.cpu(), gb, rtol=1e-9, atol=1e-9)
    for _ in range(3):
        ga2, gb2 = op(g.cuda(), a.cuda(), b.cuda(), mode, aligned, 1e-7)
        assert torch.equal(ga2, ga_c) and torch.equal(gb2, gb_c)


def test_box_overlaps_large_matrix_64bit_index():
    op = _needs("box_overlaps")
    # N * M > 2^31 only where the GPU has the memory for it (8.6 GB of float32).
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("not enough GPU memory")
    n, m = 2**16 + 3, 2**15 + 1
    a = random_boxes(n, device="cuda")
    b = random_boxes(m, device="cuda")
    out = op(a, b, "iou", False, 0.0)
    rows = torch.tensor([0, n // 2, n - 1], device="cuda")
    ref = op(a[rows], b, "iou", False, 0.0)
    torch.testing.assert_close(out[rows], ref, rtol=0, atol=0)
    del out


# ---------------------------------------------------------------------- nms


def _nms_inputs(n, dtype, seed=0, classes=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1000
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100 + 1
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    scores = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    if classes:
        idxs = torch.randint(0, classes, (n,), generator=gen)
        return boxes, scores, idxs
    return boxes, scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 3000, 20000])
def test_nms_cpu_cuda_identical(dtype, n):
    op = _needs("nms")
    boxes, scores = _nms_inputs(n, dtype, seed=n)
    if n >= 64:  # ties, duplicates and non-finite boxes
        scores[10:20] = scores[0]
        boxes[20:30] = boxes[0]
        boxes[30, 0] = float("nan")
        boxes[31, 2] = float("inf")
        scores[32] = float("nan")
    for thr in [0.0, 0.3, 0.7, 1.0]:
        cpu = op(boxes, scores, thr)
        cuda = op(boxes.cuda(), scores.cuda(), thr)
        assert cuda.dtype == torch.int64
        assert torch.equal(cuda.cpu(), cpu), (dtype, n, thr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_cpu_cuda_identical(dtype):
    op = _needs("batched_nms")
    boxes, scores, idxs = _nms_inputs(20000, dtype, seed=1, classes=7)
    idxs[::97] = -3  # negative class ids are classes too
    for thr in [0.2, 0.5]:
        cpu = op(boxes, scores, idxs, thr)
        cuda = op(boxes.cuda(), scores.cuda(), idxs.cuda(), thr)
        assert torch.equal(cuda.cpu(), cpu)


def test_batched_nms_many_classes_spanning_tiles():
    op = _needs("batched_nms")
    # > 16384 boxes: several column tiles, classes straddling tile borders.
    boxes, scores, idxs = _nms_inputs(40000, torch.float32, seed=2, classes=3)
    cpu = op(boxes, scores, idxs, 0.5)
    cuda = op(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(cuda.cpu(), cpu)


def test_nms_100k_boxes_memory_and_agreement():
    op = _needs("nms")
    n = 100_000
    boxes, scores = _nms_inputs(n, torch.float32, seed=3)
    boxes_c, scores_c = boxes.cuda(), scores.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    keep = op(boxes_c, scores_c, 0.5)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    # torchvision's full mask alone is n^2 / 8 bytes = 1.25 GB here.
    assert peak < 128 * 2**20, f"nms used {peak / 2**20:.1f} MiB at {n} boxes"
    assert torch.equal(keep.cpu(), op(boxes, scores, 0.5))


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_nms_cpu_cuda_agree(method, dtype):
    op = _needs("soft_nms")
    boxes, scores = _nms_inputs(2000, dtype, seed=4)
    boxes = boxes / 4  # crowd them
    cpu_i, cpu_s = op(boxes, scores, 0.3, 0.5, 0.001, method)
    cuda_i, cuda_s = op(boxes.cuda(), scores.cuda(), 0.3, 0.5, 0.001, method)
    assert cuda_s.dtype == scores.dtype
    if method == "hard":
        assert torch.equal(cuda_i.cpu(), cpu_i)
        assert torch.equal(cuda_s.cpu(), cpu_s)
    else:
        # exp() may differ by an ulp between the CPU and the GPU, which can
        # swap near-ties: compare the selected sets and the score values.
        assert cuda_i.numel() == cpu_i.numel() or abs(cuda_i.numel() - cpu_i.numel()) <= 2
        common = min(cuda_i.numel(), cpu_i.numel())
        torch.testing.assert_close(cuda_s.cpu()[:common], cpu_s[:common], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- roi_align


def _roi_inputs(dtype, channels_last=False, n=2, c=70, h=23, w=37, k=40, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([w * 8.0, h * 8.0])
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * 150
    bi = torch.randint(0, n, (k, 1), generator=gen).to(torch.float64)
    rois = torch.cat([bi, xy - 20, xy + wh], 1)
    rois[0] = torch.tensor([0, 10, 10, 10, 10])  # degenerate
    rois[1] = torch.tensor([1, -500, -500, 2000, 2000])  # huge, beyond the map
    rois[2] = torch.tensor([0, 50, 50, 20, 20])  # inverted
    return x, rois.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_forward_cpu_cuda_agree(dtype, channels_last, aligned, sampling_ratio):
    op = _needs("roi_align")
    x, rois = _roi_inputs(dtype, channels_last)
    cpu = op(x, rois, 0.125, 7, 5, sampling_ratio, aligned)
    cuda = op(x.cuda(), rois.cuda(), 0.125, 7, 5, sampling_ratio, aligned)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_roi_align_backward_cpu_cuda_agree(dtype, deterministic):
    op = _needs("_roi_align_backward")
    x, rois = _roi_inputs(dtype)
    n, c, h, w = x.shape
    g = torch.randn(rois.shape[0], c, 7, 5, dtype=torch.float64).to(dtype)
    cpu = op(g, rois, 0.125, 7, 5, n, c, h, w, 2, True)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        cuda = op(g.cuda(), rois.cuda(), 0.125, 7, 5, n, c, h, w, 2, True)
    finally:
        torch.use_deterministic_algorithms(prev)
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float64: 1e-10}.get(dtype, 1e-4)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_roi_align_deterministic_backward_bit_identical(dtype):
    op = _needs("_roi_align_backward")
    # Many overlapping RoIs on one image: where atomics would race.
    x, rois = _roi_inputs(dtype, n=1, c=130, h=50, w=60, k=300)
    rois[:, 0] = 0
    n, c, h, w = x.shape
    g = torch.randn(rois.shape[0], c, 7, 7, dtype=torch.float64).to(dtype).cuda()
    rois = rois.cuda()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = op(g, rois, 0.25, 7, 7, n, c, h, w, 0, False)
        for _ in range(5):
            again = op(g, rois, 0.25, 7, 7, n, c, h, w, 0, False)
            assert torch.equal(again, first)
    finally:
        torch.use_deterministic_algorithms(prev)
    fast = op(g, rois, 0.25, 7, 7, n, c, h, w, 0, False)
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    torch.testing.assert_close(fast, first, rtol=tol, atol=tol)


def test_roi_align_deterministic_through_autograd():
    _needs("_roi_align_backward")
    x, rois = _roi_inputs(torch.float32, channels_last=True)
    x = x.cuda().requires_grad_()
    rois = rois.cuda()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(3):
            x.grad = None
            torch.ops.pydetops.roi_align(x, rois, 0.125, 7, 7, 2, True).square().sum().backward()
            grads.append(x.grad.clone())
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(g, grads[0]) for g in grads)


@pytest.mark.parametrize("bad", [7.0, -1.0, 0.5, float("nan")])
def test_roi_align_bad_batch_index_raises_on_cuda(bad):
    # Same contract as on the CPU: a clear ValueError naming boxes, never a bad read.
    op = _needs("roi_align")
    x, rois = _roi_inputs(torch.float32)
    rois[3, 0] = bad
    with pytest.raises(ValueError, match="batch index"):
        op(x.cuda(), rois.cuda(), 0.125, 7, 7, 2, False)
    n, c, h, w = x.shape
    g = torch.ones(rois.shape[0], c, 7, 7, device="cuda")
    with pytest.raises(ValueError, match="batch index"):
        torch.ops.pydetops._roi_align_backward(g, rois.cuda(), 0.125, 7, 7, n, c, h, w, 2, False)


# ----------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_forward_cpu_cuda_identical(dtype, channels_last):
    op = _needs("roi_pool")
    x, rois = _roi_inputs(dtype, channels_last)
    out, am = op(x, rois, 0.125, 7, 5)
    out_c, am_c = op(x.cuda(), rois.cuda(), 0.125, 7, 5)
    # A max is exact: identical values and positions.
    assert torch.equal(out_c.cpu(), out)
    assert torch.equal(am_c.cpu(), am)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_roi_pool_backward_deterministic_matches_cpu_bitwise(dtype):
    op = _needs("_roi_pool_backward")
    x, rois = _roi_inputs(dtype, n=1, k=200)
    rois[:, 0] = 0
    n, c, h, w = x.shape
    _, am = torch.ops.pydetops.roi_pool(x, rois, 0.125, 7, 7)
    g = torch.randn(rois.shape[0], c, 7, 7, dtype=torch.float64).to(dtype)
    cpu = op(g, rois, am, 0.125, 7, 7, n, c, h, w)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = [op(g.cuda(), rois.cuda(), am.cuda(), 0.125, 7, 7, n, c, h, w) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(prev)
    # Same RoI order and bin order as the CPU kernel: the same additions.
    assert all(torch.equal(d.cpu(), cpu) for d in det)
    fast = op(g.cuda(), rois.cuda(), am.cuda(), 0.125, 7, 7, n, c, h, w)
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(fast.cpu(), cpu, rtol=tol, atol=tol)


# ------------------------------------------------------- ps_roi_align / pool


def _ps_inputs(dtype, channels_last=False, k=60, seed=6):
    x, rois = _roi_inputs(dtype, channels_last, n=2, c=3 * 7 * 7, h=21, w=29, k=k, seed=seed)
    return x, rois


@pytest.mark.parametrize("name,extra", [("ps_roi_align", (2,)), ("ps_roi_align", (0,)), ("ps_roi_pool", ())])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ps_roi_forward_cpu_cuda_agree(name, extra, dtype, channels_last):
    op = _needs(name)
    x, rois = _ps_inputs(dtype, channels_last)
    cpu = op(x, rois, 0.125, 7, 7, *extra)
    cuda = op(x.cuda(), rois.cuda(), 0.125, 7, 7, *extra)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,extra", [("ps_roi_align", (2,)), ("ps_roi_pool", ())])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ps_roi_backward_deterministic_matches_cpu_bitwise(name, extra, dtype):
    op = _needs("_" + name + "_backward")
    x, rois = _ps_inputs(dtype)
    n, c, h, w = x.shape
    g = torch.randn(rois.shape[0], c // 49, 7, 7, dtype=torch.float64).to(dtype)
    args = (0.125, 7, 7) + extra + (n, c, h, w)
    cpu = op(g, rois, *args)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = [op(g.cuda(), rois.cuda(), *args) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(d.cpu(), cpu) for d in det)
    fast = op(g.cuda(), rois.cuda(), *args)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(fast.cpu(), cpu, rtol=tol, atol=tol)


# ------------------------------------------------------- anchors / box coding


def _with_determinism(flag, fn):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(flag)
    try:
        return fn()
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_anchors_cpu_cuda_identical(dtype):
    op = _needs("grid_anchors")
    base = torch.tensor([[-22.6, -11.3, 22.6, 11.3], [-16.0, -16.0, 16.0, 16.0], [-8.1, -32.4, 8.1, 32.4]],
                        dtype=torch.float64).to(dtype)
    for size, stride in [((25, 38), (16, 16)), ((7, 3), (64, 32)), ((0, 5), (8, 8)), ((300, 301), (4, 4))]:
        cpu = op(base, size, stride)
        cuda = op(base.cuda(), size, stride)
        assert cuda.dtype == cpu.dtype and cuda.shape == cpu.shape
        assert torch.equal(cuda.cpu(), cpu), (dtype, size, stride)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights_on_cuda", [False, True])
def test_encode_boxes_cpu_cuda_agree(dtype, weights_on_cuda):
    op = _needs("encode_boxes")
    r = torch.cat([random_boxes(500, dtype=dtype), adversarial_boxes(dtype)])
    q = torch.cat([random_boxes(500, dtype=dtype), adversarial_boxes(dtype).flip(0)])
    w = torch.tensor([10.0, 10.0, 5.0, 5.0])
    cpu = op(r, q, w)
    cuda = op(r.cuda(), q.cuda(), w.cuda() if weights_on_cuda else w)
    assert cuda.dtype == cpu.dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}.get(dtype, 2e-5)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)
    g = torch.randn(r.shape[0], 4, dtype=torch.float64).to(dtype)
    gr, gq = torch.ops.pydetops._encode_boxes_backward(g, r, q, w)
    gr_c, gq_c = torch.ops.pydetops._encode_boxes_backward(g.cuda(), r.cuda(), q.cuda(), w.cuda())
    torch.testing.assert_close(gr_c.cpu(), gr, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(gq_c.cpu(), gq, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("image_size", [None, [600, 800]])
def test_decode_boxes_cpu_cuda_agree_and_deterministic(dtype, k, image_size):
    op = _needs("decode_boxes")
    b = torch.cat([random_boxes(400, dtype=dtype), adversarial_boxes(dtype)])
    d = (torch.randn(b.shape[0], 4 * k, dtype=torch.float64) * 2).to(dtype)
    d[0, 2] = 50.0  # clamped
    d[1, 0] = float("nan")
    wts = [10.0, 10.0, 5.0, 5.0]
    clamp = 4.135166556742356
    cpu = op(d, b, wts, clamp, image_size)
    cuda = op(d.cuda(), b.cuda(), wts, clamp, image_size)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-12}.get(dtype, 1e-4)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)
    g = torch.randn_like(d, dtype=torch.float64).to(dtype)
    bw = torch.ops.pydetops._decode_boxes_backward
    gd, gb = bw(g, d, b, wts, clamp, image_size)
    runs = [bw(g.cuda(), d.cuda(), b.cuda(), wts, clamp, image_size) for _ in range(3)]
    for gd_c, gb_c in runs:  # no atomics: the same bits every run
        assert torch.equal(gd_c, runs[0][0]) and torch.equal(gb_c, runs[0][1])
    torch.testing.assert_close(runs[0][0].cpu(), gd, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(runs[0][1].cpu(), gb, rtol=tol, atol=tol, equal_nan=True)


# ------------------------------------------------------------------ spp_pool

SPP_LEVELS = [1, 2, 4]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_spp_pool_forward_cpu_cuda_identical(dtype, channels_last):
    op = _needs("spp_pool")
    x, rois = _roi_inputs(dtype, channels_last)
    x[0, 3, 5, 5] = float("nan")
    out, am = op(x, rois, SPP_LEVELS, 0.125)
    out_c, am_c = op(x.cuda(), rois.cuda(), SPP_LEVELS, 0.125)
    assert torch.equal(am_c.cpu(), am)
    torch.testing.assert_close(out_c.cpu(), out, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_spp_pool_backward_deterministic_matches_cpu_bitwise(dtype):
    op = _needs("_spp_pool_backward")
    x, rois = _roi_inputs(dtype, n=2, k=200)
    n, c, h, w = x.shape
    _, am = torch.ops.pydetops.spp_pool(x, rois, SPP_LEVELS, 0.125)
    g = torch.randn(am.shape, dtype=torch.float64).to(dtype)
    cpu = op(g, rois, am, SPP_LEVELS, n, c, h, w)
    det = _with_determinism(True, lambda: [op(g.cuda(), rois.cuda(), am.cuda(), SPP_LEVELS, n, c, h, w)
                                           for _ in range(3)])
    assert all(torch.equal(d.cpu(), cpu) for d in det)
    fast = op(g.cuda(), rois.cuda(), am.cuda(), SPP_LEVELS, n, c, h, w)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(fast.cpu(), cpu, rtol=tol, atol=tol)


# ----------------------------------------------------- multi_level_roi_align


def _ml_inputs(dtype, channels_last=False, k=80, seed=9):
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for h, w in [(40, 56), (20, 28), (10, 14), (5, 7)]:
        f = torch.randn(2, 24, h, w, generator=gen, dtype=torch.float64).to(dtype)
        feats.append(f.to(memory_format=torch.channels_last) if channels_last else f)
    _, rois = _roi_inputs(dtype, k=k, seed=seed)
    levels = torch.randint(0, 4, (k,), generator=gen)
    levels[5] = 7  # out of range: zeros, no gradient
    levels[6] = -1
    return feats, rois, levels, [1 / 4, 1 / 8, 1 / 16, 1 / 32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned", [False, True])
def test_multi_level_roi_align_forward_cpu_cuda_agree(dtype, channels_last, aligned):
    op = _needs("multi_level_roi_align")
    feats, rois, levels, scales = _ml_inputs(dtype, channels_last)
    cpu = op(feats, rois, levels, scales, 7, 7, 2, aligned)
    cuda = op([f.cuda() for f in feats], rois.cuda(), levels.cuda(), scales, 7, 7, 2, aligned)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)
    assert torch.all(cuda[5:7] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_multi_level_roi_align_backward_deterministic_matches_cpu(dtype):
    op = _needs("_multi_level_roi_align_backward")
    feats, rois, levels, scales = _ml_inputs(dtype)
    n, c = feats[0].shape[:2]
    hs, ws = [f.shape[2] for f in feats], [f.shape[3] for f in feats]
    g = torch.randn(rois.shape[0], c, 7, 7, dtype=torch.float64).to(dtype)
    args = (scales, 7, 7, 0, True, n, c, hs, ws)
    cpu = op(g, rois, levels, *args)
    det = _with_determinism(True, lambda: [op(g.cuda(), rois.cuda(), levels.cuda(), *args) for _ in range(3)])
    for d in det:
        assert all(torch.equal(a, b) for a, b in zip(d, det[0]))
    # The CPU's additions in the CPU's order; the RoI geometry may round differently
    # (nvcc contracts a*b+c in the shared header), so close rather than equal.
    ctol = 2e-3 if dtype == torch.float16 else (1e-10 if dtype == torch.float64 else 1e-5)
    for d, cp in zip(det[0], cpu):
        torch.testing.assert_close(d.cpu(), cp, rtol=ctol, atol=ctol)
    fast = op(g.cuda(), rois.cuda(), levels.cuda(), *args)
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    for f, cp in zip(fast, cpu):
        torch.testing.assert_close(f.cpu(), cp, rtol=tol, atol=tol)


# ------------------------------------------------ conv_transpose2d / unpooling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cfg",
    [
        dict(stride=(2, 2), padding=(1, 1), output_padding=(1, 1), groups=1, dilation=(1, 1), k=(4, 4)),
        dict(stride=(1, 2), padding=(0, 1), output_padding=(0, 0), groups=2, dilation=(2, 1), k=(3, 2)),
        dict(stride=(3, 3), padding=(2, 0), output_padding=(2, 1), groups=1, dilation=(1, 1), k=(5, 3)),
    ],
)
def test_conv_transpose2d_cpu_cuda_agree(dtype, cfg):
    op = _needs("conv_transpose2d")
    gen = torch.Generator().manual_seed(3)
    cin, cout_g, g = 6, 4, cfg["groups"]
    x = torch.randn(3, cin, 9, 11, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(cin, cout_g, *cfg["k"], generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(cout_g * g, generator=gen, dtype=torch.float64).to(dtype)
    a = (cfg["stride"], cfg["padding"], cfg["output_padding"], g, cfg["dilation"])
    cpu = op(x, w, b, *a)
    cuda = op(x.cuda(), w.cuda(), b.cuda(), *a)
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2, torch.float64: 1e-10}.get(dtype, 1e-4)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=tol, atol=tol)
    go = torch.randn(cpu.shape, generator=gen, dtype=torch.float64).to(dtype)
    bw = torch.ops.pydetops._conv_transpose2d_backward
    ref = bw(go, x, w, *a, [True, True, True])
    got = bw(go.cuda(), x.cuda(), w.cuda(), *a, [True, True, True])
    for r, t in zip(ref, got):
        torch.testing.assert_close(t.cpu(), r, rtol=tol * 10, atol=tol * 10)
    # unbatched input
    cpu1 = op(x[0], w, None, *a)
    torch.testing.assert_close(op(x[0].cuda(), w.cuda(), None, *a).cpu(), cpu1, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool2d_cpu_cuda_identical_with_duplicates(dtype):
    op = _needs("max_unpool2d")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64).to(dtype)
    idx = torch.randint(0, 10 * 12, (2, 3, 5, 6), generator=gen)
    idx[0, 0, 0, :] = 7  # duplicates: the last one wins
    cpu = op(x, idx, [2, 2], [2, 2], [0, 0], None)
    cuda = op(x.cuda(), idx.cuda(), [2, 2], [2, 2], [0, 0], None)
    assert torch.equal(cuda.cpu(), cpu)
    go = torch.randn(cpu.shape, generator=gen, dtype=torch.float64).to(dtype)
    bw = torch.ops.pydetops._max_unpool2d_backward
    assert torch.equal(bw(go.cuda(), idx.cuda()).cpu(), bw(go, idx))
    bad = idx.clone()
    bad[1, 2, 3, 4] = 10 * 12
    with pytest.raises(ValueError, match="indices"):
        op(x.cuda(), bad.cuda(), [2, 2], [2, 2], [0, 0], None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [(2, 2), (3, 1), (1, 4)])
@pytest.mark.parametrize("name", ["nearest_unpool2d", "bed_of_nails_unpool2d"])
def test_scale_unpool2d_cpu_cuda_identical(dtype, scale, name):
    op = _needs(name)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64).to(dtype)
    cpu = op(x, scale)
    assert torch.equal(op(x.cuda(), scale).cpu(), cpu)
    assert torch.equal(op(x[0].cuda(), scale).cpu(), op(x[0], scale))
    go = torch.randn(cpu.shape, dtype=torch.float64).to(dtype)
    bw = getattr(torch.ops.pydetops, "_" + name + "_backward")
    assert torch.equal(bw(go.cuda(), scale).cpu(), bw(go, scale))
