"""pydetops against the real torchvision, side by side in one process.

Every op that torchvision has is run on the same random and adversarial inputs by
both; results (and gradients) must agree. Where pydetops documents a difference
(NaN score order, inputs it rejects, zeros where torchvision gives NaN), the test
asserts that difference rather than skipping the case.

The module skips as a whole where torchvision does not import or its compiled ops
do not load (e.g. PyPI's torchvision beside a ``+cpu`` torch). CI runs it in its
second stage, a venv with torch 2.14.1 and torchvision 0.29.1.
"""
import math

import pytest
import torch

from pydetops import ops


def _load_torchvision():
    try:
        import torchvision
        from torchvision import ops as tv_ops

        tv_ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)  # its C++ ops must load
        return torchvision
    except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}", allow_module_level=True)


torchvision = _load_torchvision()
tv = torchvision.ops
from torchvision.models.detection import _utils as tv_det_utils  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator  # noqa: E402
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TVDefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList as TVImageList  # noqa: E402


# ---------------------------------------------------------------- inputs

def random_boxes(n, scale=100.0, dtype=torch.float32, min_size=0.5):
    xy = torch.rand(n, 2, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, dtype=torch.float64) * scale / 2 + min_size
    return torch.cat([xy, xy + wh], 1).to(dtype)


def adversarial_boxes(dtype=torch.float32):
    """Identical, nested, touching, disjoint, zero-area and far-away boxes."""
    b = torch.tensor(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 10],        # identical to the first
            [2, 2, 8, 8],          # inside the first
            [10, 0, 20, 10],       # touches the first on an edge
            [10, 10, 20, 20],      # touches the first at a corner
            [30, 30, 40, 40],      # disjoint
            [5, 5, 5, 15],         # zero width
            [5, 5, 15, 5],         # zero height
            [0, 0, 1e4, 1e4],      # contains everything
            [9999, 9999, 10000, 10000],
            [-20, -20, -10, -10],  # negative coordinates
            [0.25, 0.5, 0.75, 1.0],  # sub-pixel
        ],
        dtype=torch.float64,
    )
    return b.to(dtype)


def all_boxes(dtype=torch.float32):
    return torch.cat([adversarial_boxes(dtype), random_boxes(40, dtype=dtype)])


def _close(ours, theirs, dtype):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.float16, torch.bfloat16) else dict(
        rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tol)


# ---------------------------------------------------------------- box utilities

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_utilities(dtype):
    b = all_boxes(dtype)
    _close(ops.box_area(b), tv.box_area(b), dtype)
    for fin in ("xyxy", "xywh", "cxcywh"):
        for fout in ("xyxy", "xywh", "cxcywh"):
            _close(ops.box_convert(b, fin, fout), tv.box_convert(b, fin, fout), dtype)
    for size in [(15, 25), (1, 1), (10000, 3)]:
        _close(ops.clip_boxes_to_image(b, size), tv.clip_boxes_to_image(b, size), dtype)
    for min_size in [0.0, 0.5, 1.0, 9.0, 1e5]:
        assert torch.equal(ops.remove_small_boxes(b, min_size), tv.remove_small_boxes(b, min_size))


def test_box_area_integer_and_half_dtypes():
    b = adversarial_boxes(torch.float64)[:10].round()
    for dtype in (torch.int64, torch.int32, torch.float16, torch.bfloat16):
        x = b.to(dtype)
        ours, theirs = ops.box_area(x), tv.box_area(x)
        assert ours.dtype == theirs.dtype, dtype
        torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- the IoU family

MATRIX_FNS = [
    ("box_iou", ops.box_iou, tv.box_iou),
    ("generalized_box_iou", ops.generalized_box_iou, tv.generalized_box_iou),
    ("distance_box_iou", ops.distance_box_iou, tv.distance_box_iou),
    ("complete_box_iou", ops.complete_box_iou, tv.complete_box_iou),
]


@pytest.mark.parametrize("name,ours,theirs", MATRIX_FNS, ids=[m[0] for m in MATRIX_FNS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_matrices(name, ours, theirs, dtype):
    # torchvision's formulas assume x2 >= x1 (its GIoU/DIoU/CIoU divide by hull sizes),
    # so the zero-area rows are kept but no inverted box is given.
    a, b = all_boxes(dtype), torch.cat([adversarial_boxes(dtype), random_boxes(25, dtype=dtype)])
    _close(ours(a, b), theirs(a, b), dtype)
    _close(ours(b, b), theirs(b, b), dtype)
    assert ours(a[:0], b).shape == theirs(a[:0], b).shape == (0, len(b))


@pytest.mark.parametrize("name,ours,theirs", MATRIX_FNS, ids=[m[0] for m in MATRIX_FNS])
def test_iou_matrices_half_and_integer_inputs(name, ours, theirs):
    a, b = random_boxes(20, dtype=torch.float64).round(), random_boxes(15, dtype=torch.float64).round()
    for dtype in (torch.float16, torch.int64):
        o, t = ours(a.to(dtype), b.to(dtype)), theirs(a.to(dtype), b.to(dtype))
        assert o.dtype == t.dtype == torch.float32
        torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-5)


LOSS_FNS = [
    ("giou", ops.generalized_box_iou_loss, tv.generalized_box_iou_loss),
    ("diou", ops.distance_box_iou_loss, tv.distance_box_iou_loss),
    ("ciou", ops.complete_box_iou_loss, tv.complete_box_iou_loss),
]


@pytest.mark.parametrize("name,ours,theirs", LOSS_FNS, ids=[m[0] for m in LOSS_FNS])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_and_gradients(name, ours, theirs, reduction):
    a = torch.cat([adversarial_boxes(torch.float64)[:6], random_boxes(30, dtype=torch.float64)])
    b = torch.cat([adversarial_boxes(torch.float64)[1:7], random_boxes(30, dtype=torch.float64)])
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    lo, lt = ours(a1, b1, reduction=reduction), theirs(a2, b2, reduction=reduction)
    _close(lo, lt, torch.float64)
    w = torch.randn_like(lo)
    (lo * w).sum().backward()
    (lt * w).sum().backward()
    _close(a1.grad, a2.grad, torch.float64)
    _close(b1.grad, b2.grad, torch.float64)


@pytest.mark.parametrize("name,ours,theirs", LOSS_FNS, ids=[m[0] for m in LOSS_FNS])
def test_iou_losses_empty_input(name, ours, theirs):
    e = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        o, t = ours(e, e, reduction=reduction), theirs(e, e, reduction=reduction)
        assert o.shape == t.shape and torch.equal(o.detach(), t.detach())


# ---------------------------------------------------------------- NMS

def _distinct_scores(n):
    return torch.randperm(n).float() / n + 0.01


@pytest.mark.parametrize("n,threshold", [(50, 0.5), (500, 0.3), (500, 0.7), (2000, 0.5), (300, 0.0), (300, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_random(n, threshold, dtype):
    boxes = random_boxes(n, scale=300, dtype=dtype)
    scores = _distinct_scores(n).to(dtype)
    assert torch.equal(ops.nms(boxes, scores, threshold), tv.nms(boxes, scores, threshold))


def test_nms_adversarial_clusters():
    # many near-duplicates of a few boxes: long suppression chains
    centres = random_boxes(5, scale=200)
    boxes = (centres.repeat(100, 1) + torch.randn(500, 4) * 0.5)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.1)
    scores = _distinct_scores(500)
    for t in (0.1, 0.5, 0.9):
        assert torch.equal(ops.nms(boxes, scores, t), tv.nms(boxes, scores, t))
    adv = adversarial_boxes()
    s = _distinct_scores(len(adv))
    for t in (0.0, 0.25, 0.5, 1.0):
        assert torch.equal(ops.nms(adv, s, t), tv.nms(adv, s, t))


def test_nms_equal_scores_documented_order():
    # Documented: equal scores are visited in increasing index. With the tied boxes
    # disjoint, the kept set is the same as torchvision's whatever its tie order; ours
    # lists the tied indices in increasing order.
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [1, 1, 11, 11.]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.4])
    ours, theirs = ops.nms(boxes, scores, 0.5), tv.nms(boxes, scores, 0.5)
    assert sorted(ours.tolist()) == sorted(theirs.tolist())
    assert ours.tolist() == [1, 0, 2]


def test_nms_nan_scores_documented_difference():
    # Documented: NaN scores come last in ours; torchvision's descending sort puts them first.
    boxes = random_boxes(6, scale=1000)
    scores = torch.tensor([0.9, float("nan"), 0.5, 0.7, float("nan"), 0.1])
    ours, theirs = ops.nms(boxes, scores, 0.5), tv.nms(boxes, scores, 0.5)
    assert sorted(ours.tolist()) == sorted(theirs.tolist())
    assert ours.tolist()[-2:] == [1, 4]
    assert set(theirs.tolist()[:2]) == {1, 4}


def test_nms_negative_threshold_documented_difference():
    boxes, scores = random_boxes(5), _distinct_scores(5)
    tv.nms(boxes, scores, -0.5)  # torchvision accepts it (and suppresses every overlap)
    with pytest.raises(ValueError, match="iou_threshold"):
        ops.nms(boxes, scores, -0.5)


@pytest.mark.parametrize("n,classes", [(200, 3), (2000, 20), (1000, 1)])
def test_batched_nms_random(n, classes):
    boxes = random_boxes(n, scale=300)
    scores = _distinct_scores(n)
    idxs = torch.randint(0, classes, (n,))
    for t in (0.3, 0.5, 0.8):
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, t), tv.batched_nms(boxes, scores, idxs, t))


def test_batched_nms_empty_and_large_coordinates():
    e = torch.zeros(0, 4)
    assert ops.batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).numel() == 0
    # torchvision offsets each class by (max coordinate + 1); in float32 at 1e7 that offset
    # rounds, ours never shifts. On coordinates float32 holds exactly both agree.
    boxes = random_boxes(300, scale=1e4).round()
    scores = _distinct_scores(300)
    idxs = torch.randint(0, 5, (300,))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))


# ---------------------------------------------------------------- RoI ops

def _rois(n_images, n, h, w, dtype, spread=1.3):
    """RoIs in image coordinates (feature size * 1/scale), some reaching outside the map."""
    boxes = random_boxes(n, scale=1.0, dtype=torch.float64, min_size=0.02)
    boxes = (boxes * torch.tensor([w, h, w, h], dtype=torch.float64) * spread - 2.0)
    idx = torch.randint(0, n_images, (n, 1)).to(torch.float64)
    return torch.cat([idx, boxes], 1).to(dtype)


def _compare_pool(ours_fn, theirs_fn, x, rois, tol_dtype, grad=True):
    x1, x2 = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
    o, t = ours_fn(x1, rois), theirs_fn(x2, rois)
    _close(o, t, tol_dtype)
    if grad:
        w = torch.randn_like(o)
        (o * w).sum().backward()
        (t * w).sum().backward()
        _close(x1.grad, x2.grad, tol_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.25), ((3, 5), 0.5), ((2, 2), 1.0)])
def test_roi_align(dtype, aligned, sampling_ratio, output_size, scale):
    x = torch.randn(2, 3, 12, 15, dtype=dtype)
    rois = _rois(2, 25, 12 / scale, 15 / scale, dtype)
    _compare_pool(
        lambda f, r: ops.roi_align(f, r, output_size, scale, sampling_ratio, aligned),
        lambda f, r: tv.roi_align(f, r, output_size, scale, sampling_ratio, aligned),
        x, rois, dtype)


FINITE_ADVERSARIAL_ROIS = [
    [0, 5, 5, 2, 2],                     # inverted
    [0, 3, 3, 3, 3],                     # a point
    [0, -5, -5, -1, -1],                 # wholly outside, negative side
    [0, 7.5, 7.5, 20, 20],               # from the last pixel far out
    [0, -0.5, -0.5, 8.5, 8.5],           # the whole map and half a pixel more
    [0, 2.25, 1.75, 2.5, 6.0],           # thinner than a pixel
]
NONFINITE_ROIS = [
    [0, 1, 1, float("nan"), 4],
    [0, float("inf"), 1, 3, 4],
    [0, float("-inf"), 1, 3, 4],
    [0, 1, 1, 3, float("inf")],
    [0, 1, 1, 3, float("-inf")],
]


@pytest.mark.parametrize("roi", FINITE_ADVERSARIAL_ROIS, ids=[str(r) for r in FINITE_ADVERSARIAL_ROIS])
def test_roi_ops_adversarial_boxes(roi):
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([roi], dtype=torch.float32)
    for aligned in (False, True):
        for sampling_ratio in (-1, 2):
            _close(ops.roi_align(x, rois, 2, 1.0, sampling_ratio, aligned),
                   tv.roi_align(x, rois, 2, 1.0, sampling_ratio, aligned), torch.float32)
    _close(ops.roi_pool(x, rois, 2, 1.0), tv.roi_pool(x, rois, 2, 1.0), torch.float32)


_TV_NONFINITE = """
import sys, torch, torchvision.ops as tv
x = torch.arange(128.).reshape(1, 2, 8, 8)
rois = torch.tensor(eval(sys.argv[1]))
print(repr([[tv.roi_align(x, r[None], 2, 1.0, sr, al).flatten().tolist() for sr in (-1, 2) for al in (False, True)]
            for r in rois]))
"""


def test_roi_align_nonfinite_boxes_documented_difference():
    # Documented: a RoI with a NaN or infinite coordinate pools to zeros in ours, for every
    # sampling_ratio and alignment. torchvision 0.29 gives zeros too with adaptive sampling
    # but may crash (SIGSEGV) with a fixed sampling_ratio, so it runs in a child process.
    import subprocess
    import sys

    x = torch.arange(128.0).reshape(1, 2, 8, 8)
    ours = [[ops.roi_align(x, torch.tensor([r]), 2, 1.0, sr, al).flatten().tolist()
             for sr in (-1, 2) for al in (False, True)] for r in NONFINITE_ROIS]
    assert all(v == 0.0 for per_roi in ours for out in per_roi for v in out)
    proc = subprocess.run([sys.executable, "-c", _TV_NONFINITE, repr(NONFINITE_ROIS).replace("nan", "float('nan')")
                           .replace("inf", "float('inf')")], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        theirs = eval(proc.stdout, {"nan": float("nan"), "inf": float("inf")})
        for o, t in zip(ours, theirs):
            assert o[:2] == t[:2]  # adaptive sampling: both zeros
    else:
        assert proc.returncode < 0  # torchvision died of a signal, as documented above


def test_roi_align_list_boxes_and_channels_last():
    x = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    boxes = [random_boxes(5, scale=14), random_boxes(3, scale=14)]
    _close(ops.roi_align(x, boxes, 5, 1.0, 2, True), tv.roi_align(x, boxes, 5, 1.0, 2, True), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.25), ((3, 5), 0.5), ((4, 4), 1.0)])
def test_roi_pool(dtype, output_size, scale):
    x = torch.randn(2, 3, 12, 15, dtype=dtype)  # continuous values: no ties for the argmax
    rois = _rois(2, 25, 12 / scale, 15 / scale, dtype)
    _compare_pool(lambda f, r: ops.roi_pool(f, r, output_size, scale),
                  lambda f, r: tv.roi_pool(f, r, output_size, scale), x, rois, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("output_size", [(3, 3), (2, 4)])
def test_ps_roi_align(dtype, sampling_ratio, output_size):
    ph, pw = output_size
    x = torch.randn(2, 2 * ph * pw, 10, 12, dtype=dtype)
    rois = _rois(2, 15, 10 / 0.5, 12 / 0.5, dtype, spread=1.0)
    _compare_pool(lambda f, r: ops.ps_roi_align(f, r, output_size, 0.5, sampling_ratio),
                  lambda f, r: tv.ps_roi_align(f, r, output_size, 0.5, sampling_ratio), x, rois, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output_size", [(3, 3), (2, 4)])
def test_ps_roi_pool(dtype, output_size):
    ph, pw = output_size
    x = torch.randn(2, 2 * ph * pw, 10, 12, dtype=dtype)
    rois = _rois(2, 15, 10 / 0.5, 12 / 0.5, dtype, spread=1.0)
    # Forward only: torchvision's backward is not the gradient of its forward (below).
    _compare_pool(lambda f, r: ops.ps_roi_pool(f, r, output_size, 0.5),
                  lambda f, r: tv.ps_roi_pool(f, r, output_size, 0.5), x, rois, dtype, grad=False)


def test_ps_roi_pool_backward_documented_difference():
    # Documented: torchvision's ps_roi_pool forward clips bins to [0, H-1] x [0, W-1] but its
    # backward spreads gradient over bins clipped to [0, H] x [0, W], so its gradient fails
    # gradcheck. Ours is the gradient of the forward both share.
    x = torch.randn(2, 18, 10, 12, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 30, 30.0], [1, 2, 3, 25, 19], [0, 4, 4, 12, 12]], dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ops.ps_roi_pool(x1, rois, 3, 0.5).sum().backward()
    tv.ps_roi_pool(x2, rois, 3, 0.5).sum().backward()
    assert torch.autograd.gradcheck(lambda a: ops.ps_roi_pool(a, rois, 3, 0.5), (x.clone().requires_grad_(),))
    if not torch.allclose(x1.grad, x2.grad):
        assert not torch.autograd.gradcheck(lambda a: tv.ps_roi_pool(a, rois, 3, 0.5), (x.clone().requires_grad_(),),
                                            raise_exception=False)


def test_ps_roi_align_zero_size_box_documented_difference():
    # Documented: a zero-size box pools to 0 in ours where torchvision divides by zero.
    x = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0, 3.0, 3.0, 3.0, 3.0]])
    ours = ops.ps_roi_align(x, rois, 2, 1.0, -1)
    theirs = tv.ps_roi_align(x, rois, 2, 1.0, -1)
    assert torch.equal(ours, torch.zeros_like(ours))
    assert not torch.isfinite(theirs).all()


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multiscale_roi_align(sampling_ratio):
    names = ["p2", "p3", "p4", "p5"]
    image_sizes = [(256, 320), (240, 300)]
    feats = {n: torch.randn(2, 4, 256 // 2 ** (i + 2), 320 // 2 ** (i + 2)) for i, n in enumerate(names)}
    feats["pool"] = torch.randn(2, 4, 4, 5)  # not named: ignored by both
    boxes = [random_boxes(40, scale=230, min_size=2.0), random_boxes(30, scale=230, min_size=2.0)]
    boxes[0][:5] *= 0.05   # tiny boxes: lowest level
    ours = ops.MultiScaleRoIAlign(names, 7, sampling_ratio)
    theirs = tv.MultiScaleRoIAlign(names, 7, sampling_ratio)
    o = ours(feats, boxes, image_sizes)
    t = theirs(feats, boxes, image_sizes)
    _close(o, t, torch.float32)
    assert ours.scales == theirs.scales


# ---------------------------------------------------------------- anchors and box coding

@pytest.mark.parametrize(
    "sizes,ratios",
    [
        (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),  # Faster R-CNN FPN
        (((128, 256, 512),), ((0.5, 1.0, 2.0),)),                           # single map
        (tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128]),
         ((0.5, 1.0, 2.0),) * 3),                                           # RetinaNet style
    ],
)
def test_anchor_generator(sizes, ratios):
    images = torch.zeros(2, 3, 224, 288)
    n = len(sizes)
    feats = [torch.zeros(2, 8, 56 // 2 ** i, 72 // 2 ** i) for i in range(n)]
    image_list = TVImageList(images, [(224, 288), (200, 250)])
    ours = ops.AnchorGenerator(sizes, ratios)(image_list, feats)
    theirs = TVAnchorGenerator(sizes, ratios)(image_list, feats)
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=0, atol=0)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [None, [8, 16, 32]])
def test_default_box_generator(clip, steps):
    ratios = [[2], [2, 3], [2, 3]]
    images = torch.zeros(1, 3, 300, 300)
    feats = [torch.zeros(1, 8, s, s) for s in (38, 19, 10)]
    image_list = TVImageList(images, [(300, 300)])
    ours = ops.DefaultBoxGenerator(ratios, steps=steps, clip=clip)(image_list, feats)
    theirs = TVDefaultBoxGenerator(ratios, steps=steps, clip=clip)(image_list, feats)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_coder(weights, dtype):
    ours, theirs = ops.BoxCoder(weights), tv_det_utils.BoxCoder(weights)
    ref = [random_boxes(50, dtype=dtype), random_boxes(20, dtype=dtype)]
    props = [random_boxes(50, dtype=dtype), random_boxes(20, dtype=dtype)]
    for o, t in zip(ours.encode(ref, props), theirs.encode(ref, props)):
        _close(o, t, dtype)
    codes = torch.randn(70, 3 * 4, dtype=dtype) * 2
    codes[0, 2:4] = 50.0  # past the exp clamp
    _close(ours.decode(codes, props), theirs.decode(codes, props), dtype)
    _close(ours.decode_single(codes, torch.cat(props)), theirs.decode_single(codes, torch.cat(props)), dtype)


def test_sigmoid_focal_loss():
    if not hasattr(ops, "sigmoid_focal_loss"):
        pytest.skip("pydetops.ops.sigmoid_focal_loss is not part of this build")
    logits = torch.randn(64, 7, dtype=torch.float64) * 4
    logits[0, :3] = torch.tensor([60.0, -60.0, 0.0])
    targets = (torch.rand(64, 7) > 0.8).to(torch.float64)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)]:
        for reduction in ("none", "mean", "sum"):
            x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            o = ops.sigmoid_focal_loss(x1, targets, alpha, gamma, reduction)
            t = tv.sigmoid_focal_loss(x2, targets, alpha, gamma, reduction)
            _close(o, t, torch.float64)
            w = torch.randn_like(o)
            (o * w).sum().backward()
            (t * w).sum().backward()
            _close(x1.grad, x2.grad, torch.float64)


def test_rejected_inputs_documented():
    # Inputs torchvision lets through where pydetops raises a named error (documented in
    # the ops' docstrings): integer boxes for nms, a negative RoI batch index.
    boxes = random_boxes(4).round().to(torch.int64)
    with pytest.raises(TypeError, match="boxes"):
        ops.nms(boxes, torch.rand(4), 0.5)
    x = torch.randn(1, 2, 8, 8)
    bad = torch.tensor([[-1.0, 0, 0, 4, 4]])
    with pytest.raises(ValueError, match="boxes|rois"):
        ops.roi_align(x, bad, 2)
    assert math.isfinite(float(tv.roi_align(x, torch.tensor([[0.0, 0, 0, 4, 4]]), 2).sum()))
