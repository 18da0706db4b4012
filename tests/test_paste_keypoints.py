"""paste_masks and heatmaps_to_keypoints: float64 references written plainly,
adversarial inputs, opcheck, bad input, and parity with torchvision's
roi_heads.paste_masks_in_image / heatmaps_to_keypoints (skipped without torchvision)."""
import math

import pytest
import torch
import torch.nn.functional as F

import pydetops.ops as P


# ----------------------------------------------------------------- references

def _expand_round(box, scale):
    """torchvision's expand_boxes + int64 cast, in the box's dtype, one rounding per op."""
    b = box.clone()
    w_half = (b[2] - b[0]) * 0.5
    h_half = (b[3] - b[1]) * 0.5
    x_c = (b[2] + b[0]) * 0.5
    y_c = (b[3] + b[1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    e = [float(x_c - w_half), float(y_c - h_half), float(x_c + w_half), float(y_c + h_half)]
    if not all(math.isfinite(v) and abs(v) < 2.0 ** 62 for v in e):
        return None
    return [math.trunc(v) for v in e]


def _linear_axis(dst, n_in, n_out):
    """Bilinear taps (align_corners=False) of positions dst (float64 tensor) on an axis of n_in -> n_out."""
    src = (n_in / n_out) * (dst.double() + 0.5) - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = src - i0.double()
    return i0, i1, 1.0 - l1, l1


def ref_paste_masks(masks, boxes, image_size, padding=1):
    """Plain float64 paste: each pixel of the clipped integer box sampled from the padded mask."""
    H, W = image_size
    if masks.dim() == 3:
        masks = masks[:, None]
    N = masks.shape[0]
    out = torch.zeros(N, 1, H, W, dtype=torch.float64)
    for n in range(N):
        M = masks.shape[-1]
        scale = (M + 2 * padding) / M
        ib = _expand_round(boxes[n], scale)
        if ib is None:
            continue
        x0, y0, x1, y1 = ib
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        pm = F.pad(masks[n, 0].double(), (padding,) * 4)
        if max(y0, 0) >= min(y1 + 1, H) or max(x0, 0) >= min(x1 + 1, W):
            continue
        ys = torch.arange(max(y0, 0), min(y1 + 1, H))
        xs = torch.arange(max(x0, 0), min(x1 + 1, W))
        r0, r1, a0, a1 = _linear_axis(ys - y0, pm.shape[0], h)
        c0, c1, b0, b1 = _linear_axis(xs - x0, pm.shape[1], w)
        v = (a0[:, None] * (b0[None] * pm[r0][:, c0] + b1[None] * pm[r0][:, c1])
             + a1[:, None] * (b0[None] * pm[r1][:, c0] + b1[None] * pm[r1][:, c1]))
        out[n, 0, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] = v
    return out


def _cubic_matrix(n_in, n_out, taps=False):
    """[n_out, n_in] float64 matrix of F.interpolate's bicubic (A=-0.75, align_corners=False);
    with taps=True, the [n_out, n_in] bool matrix of the source pixels each output reads."""
    A = -0.75

    def near(x):
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    used = torch.zeros(n_out, n_in, dtype=torch.bool)
    scale = n_in / n_out
    for i in range(n_out):
        real = scale * (i + 0.5) - 0.5
        i0 = min(math.floor(real), n_in - 1)
        t = min(max(real - i0, 0.0), 1.0)
        ws = [far(t + 1), near(t), near(1 - t), far(2 - t)]
        for j in range(4):
            m[i, min(max(i0 - 1 + j, 0), n_in - 1)] += ws[j]
            used[i, min(max(i0 - 1 + j, 0), n_in - 1)] = True
    return used if taps else m


def ref_resampled(heatmaps, rois, r):
    """The float64 resampled maps [K, h, w] of RoI r, and its geometry (w, h, corr_x, corr_y)."""
    roi = rois[r]
    width = (roi[2] - roi[0]).clamp(min=1)
    height = (roi[3] - roi[1]).clamp(min=1)
    wc, hc = int(width.ceil()), int(height.ceil())
    cx = float(width / wc)
    cy = float(height / hc)
    my = _cubic_matrix(heatmaps.shape[2], hc)
    mx = _cubic_matrix(heatmaps.shape[3], wc)
    maps = my @ heatmaps[r].double() @ mx.T
    return maps, (wc, hc, cx, cy)


def ref_heatmaps_to_keypoints(heatmaps, rois):
    R, K = heatmaps.shape[:2]
    xy = torch.zeros(R, K, 3, dtype=torch.float64)
    sc = torch.zeros(R, K, dtype=torch.float64)
    for r in range(R):
        maps, (wc, hc, cx, cy) = ref_resampled(heatmaps, rois, r)
        maps = maps.to(heatmaps.dtype).double()  # the resized map has the heatmaps' dtype
        for k in range(K):
            flat = maps[k].reshape(-1)
            pos = int(flat.argmax())
            yi, xi = divmod(pos, wc)
            xy[r, k] = torch.tensor([(xi + 0.5) * cx + float(rois[r, 0]), (yi + 0.5) * cy + float(rois[r, 1]), 1.0])
            sc[r, k] = flat[pos]
    return xy, sc


def random_boxes(n, H, W, gen, min_size=1.0, max_size=None):
    max_size = max_size or max(H, W)
    x1 = torch.rand(n, generator=gen, dtype=torch.float64) * W
    y1 = torch.rand(n, generator=gen, dtype=torch.float64) * H
    w = min_size + torch.rand(n, generator=gen, dtype=torch.float64) * (max_size - min_size)
    h = min_size + torch.rand(n, generator=gen, dtype=torch.float64) * (max_size - min_size)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def peaked_heatmaps(R, K, S, gen, dtype=torch.float32):
    """Logit-like maps: noise plus one Gaussian peak per map (unique maxima)."""
    ys = torch.arange(S, dtype=torch.float64)
    cy = torch.rand(R, K, 1, 1, generator=gen, dtype=torch.float64) * (S - 1)
    cx = torch.rand(R, K, 1, 1, generator=gen, dtype=torch.float64) * (S - 1)
    peak = 8 * torch.exp(-((ys[:, None] - cy) ** 2 + (ys[None, :] - cx) ** 2) / 8)
    return (peak + torch.randn(R, K, S, S, generator=gen, dtype=torch.float64)).to(dtype)


# --------------------------------------------------------------- paste_masks

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", [0, 1, 3])
def test_paste_masks_matches_reference(device, dtype, padding):
    gen = torch.Generator().manual_seed(1 + padding)
    H, W = 47, 61
    masks = torch.rand(12, 1, 14, 14, generator=gen, dtype=torch.float64).to(dtype)
    boxes = random_boxes(12, H, W, gen, max_size=40).to(dtype)
    boxes[:3] -= 15  # partly above / left of the image
    boxes[3] += 30   # partly below / right
    out = P.paste_masks(masks.to(device), boxes.to(device), (H, W), padding)
    assert out.shape == (12, 1, H, W) and out.dtype == dtype
    ref = ref_paste_masks(masks, boxes, (H, W), padding)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=0)
    assert (ref > 0).any(1).sum() > 0  # the boxes do paste something


def test_paste_masks_adversarial_boxes(device):
    H, W = 30, 40
    gen = torch.Generator().manual_seed(3)
    nan = float("nan")
    inf = float("inf")
    boxes = torch.tensor([
        [-50, -50, -20, -20],     # entirely above-left (torchvision raises here)
        [100, 100, 140, 130],     # entirely below-right
        [10, 10, 10, 10],         # zero size
        [20, 20, 5, 8],           # negative size
        [-1e7, -1e7, 1e7, 1e7],   # huge: covers the image with the mask's centre
        [5, 5, nan, 20],          # NaN coordinate -> all zero
        [0, 0, inf, 10],          # infinite -> all zero
        [-1e30, 0, 1e30, 10],     # beyond 2^62 -> all zero
        [0.4, 0.6, 38.7, 28.2],   # nearly the whole image
        [-0.9, -0.9, 0.9, 0.9],   # around the origin
    ], dtype=torch.float32)
    masks = torch.rand(len(boxes), 1, 7, 7, generator=gen)
    out = P.paste_masks(masks.to(device), boxes.to(device), (H, W)).cpu()
    ref = ref_paste_masks(masks, boxes, (H, W))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    assert out[0].abs().sum() == 0 and out[1].abs().sum() == 0
    assert out[5].abs().sum() == 0 and out[6].abs().sum() == 0 and out[7].abs().sum() == 0
    assert out[4].abs().sum() > 0 and out[8].abs().sum() > 0


def test_paste_masks_shapes_and_layouts(device):
    gen = torch.Generator().manual_seed(4)
    H, W = 25, 33
    # N = 0
    out = P.paste_masks(torch.zeros(0, 1, 28, 28, device=device), torch.zeros(0, 4, device=device), (H, W))
    assert out.shape == (0, 1, H, W)
    # image with a zero side
    m = torch.rand(3, 1, 5, 5, generator=gen)
    b = random_boxes(3, H, W, gen)
    assert P.paste_masks(m.to(device), b.float().to(device), (0, W)).shape == (3, 1, 0, W)
    assert P.paste_masks(m.to(device), b.float().to(device), (H, 0)).shape == (3, 1, H, 0)
    # M = 1, [N, M, M] input
    m1 = torch.rand(4, 1, 1, generator=gen)
    b1 = random_boxes(4, H, W, gen, max_size=12).float()
    torch.testing.assert_close(P.paste_masks(m1.to(device), b1.to(device), (H, W)).cpu().double(),
                               ref_paste_masks(m1, b1, (H, W)), atol=1e-6, rtol=0)
    # non-contiguous masks and boxes
    big = torch.rand(6, 1, 20, 40, generator=gen)
    mnc = big[:, :, :, ::2]
    bnc = random_boxes(6, H, W, gen, max_size=20).float().t().contiguous().t()
    assert not mnc.is_contiguous() and not bnc.is_contiguous()
    torch.testing.assert_close(P.paste_masks(mnc.to(device), bnc.to(device), (H, W)).cpu(),
                               P.paste_masks(mnc.contiguous().to(device), bnc.contiguous().to(device), (H, W)).cpu(),
                               atol=0, rtol=0)


def test_paste_masks_half(device):
    gen = torch.Generator().manual_seed(5)
    m = torch.rand(5, 1, 9, 9, generator=gen)
    b = random_boxes(5, 30, 30, gen, max_size=25).float()
    out = P.paste_masks(m.half().to(device), b.to(device), (30, 30))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.cpu().double(), ref_paste_masks(m.half(), b, (30, 30)), atol=2e-3, rtol=0)


def test_paste_masks_not_differentiable(device):
    m = torch.rand(2, 1, 5, 5, device=device, requires_grad=True)
    b = torch.tensor([[1.0, 1, 8, 8], [2, 3, 9, 7]], device=device)
    out = P.paste_masks(m, b, (10, 10))
    assert not out.requires_grad


def test_paste_masks_bad_input():
    m = torch.rand(3, 1, 5, 5)
    b = torch.rand(3, 4) * 10
    with pytest.raises(ValueError, match="masks"):
        P.paste_masks(torch.rand(3, 2, 5, 5), b, (10, 10))
    with pytest.raises(ValueError, match="masks"):
        P.paste_masks(torch.rand(3, 5), b, (10, 10))
    with pytest.raises(TypeError, match="masks"):
        P.paste_masks(torch.ones(3, 1, 5, 5, dtype=torch.int64), b, (10, 10))
    with pytest.raises(TypeError, match="masks"):
        P.paste_masks([[1.0]], b, (10, 10))
    with pytest.raises(ValueError, match="boxes"):
        P.paste_masks(m, torch.rand(3, 5), (10, 10))
    with pytest.raises(TypeError, match="boxes"):
        P.paste_masks(m, torch.ones(3, 4, dtype=torch.int32), (10, 10))
    with pytest.raises(ValueError, match="same length"):
        P.paste_masks(m, torch.rand(4, 4), (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        P.paste_masks(m, b, (-1, 10))
    with pytest.raises(ValueError, match="image_size"):
        P.paste_masks(m, b, (10,))
    with pytest.raises(TypeError, match="image_size"):
        P.paste_masks(m, b, (10.5, 10))
    with pytest.raises(ValueError, match="padding"):
        P.paste_masks(m, b, (10, 10), padding=-1)
    with pytest.raises(ValueError, match="masks"):
        P.paste_masks(torch.rand(3, 1, 0, 0), b, (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        P.paste_masks(m, b, (2 ** 40, 2 ** 40))


# ---------------------------------------------------- heatmaps_to_keypoints

def _check_keypoints(xy, sc, heatmaps, rois, tol):
    """xy/sc against the float64 reference: the chosen pixel is a maximum of the reference map
    within tol, the score is the map's value there, and the position follows from the pixel."""
    R, K = heatmaps.shape[:2]
    assert xy.shape == (R, K, 3) and sc.shape == (R, K)
    assert (xy[..., 2] == 1).all()
    for r in range(R):
        maps, (wc, hc, cx, cy) = ref_resampled(heatmaps, rois, r)
        for k in range(K):
            xi = round((float(xy[r, k, 0]) - float(rois[r, 0])) / cx - 0.5)
            yi = round((float(xy[r, k, 1]) - float(rois[r, 1])) / cy - 0.5)
            assert 0 <= xi < wc and 0 <= yi < hc
            mx = float(maps[k].max())
            assert float(maps[k, yi, xi]) >= mx - tol
            assert abs(float(sc[r, k]) - float(maps[k, yi, xi])) <= tol
            assert abs(float(xy[r, k, 0]) - ((xi + 0.5) * cx + float(rois[r, 0]))) <= 1e-4 * (1 + abs(float(xy[r, k, 0])))
            assert abs(float(xy[r, k, 1]) - ((yi + 0.5) * cy + float(rois[r, 1]))) <= 1e-4 * (1 + abs(float(xy[r, k, 1])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keypoints_match_reference(device, dtype):
    gen = torch.Generator().manual_seed(11)
    R, K, S = 6, 5, 16
    hm = peaked_heatmaps(R, K, S, gen, dtype)
    rois = random_boxes(R, 200, 200, gen, min_size=0.2, max_size=90).to(dtype)
    rois[0, 2:] = rois[0, :2] + 0.3  # smaller than a pixel
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    assert xy.dtype == dtype and sc.dtype == dtype
    _check_keypoints(xy.cpu(), sc.cpu(), hm, rois, 1e-5 if dtype == torch.float32 else 1e-10)
    # unique peaks: same pixel as the reference
    rxy, rsc = ref_heatmaps_to_keypoints(hm, rois)
    torch.testing.assert_close(xy.cpu().double(), rxy, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(sc.cpu().double(), rsc, atol=1e-5, rtol=1e-6)


def test_keypoints_random_noise_and_layouts(device):
    """Pure noise (little to prune: many rows near the maximum), non-square and non-contiguous maps."""
    gen = torch.Generator().manual_seed(12)
    hm = torch.randn(4, 3, 12, 20, generator=gen).transpose(2, 3)  # [4, 3, 20, 12] non-contiguous
    rois = random_boxes(4, 100, 100, gen, min_size=3, max_size=70).float()
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    _check_keypoints(xy.cpu(), sc.cpu(), hm, rois, 1e-5)
    xy2, sc2 = P.heatmaps_to_keypoints(hm.contiguous().to(device), rois.to(device))
    assert torch.equal(xy.cpu(), xy2.cpu()) and torch.equal(sc.cpu(), sc2.cpu())


def test_keypoints_exact_ties_first_in_row_major_order(device):
    """Twin peaks an exact 2x upscale apart resample to exactly equal values: the first wins."""
    S = 16
    hm = torch.full((1, 3, S, S), -2.0)
    hm[0, 0, 4, 3] = hm[0, 0, 4, 11] = 5.0   # same row: the left one
    hm[0, 1, 10, 6] = hm[0, 1, 2, 6] = 5.0   # same column: the upper one
    hm[0, 2, 9, 12] = hm[0, 2, 3, 2] = 5.0   # the upper-left one
    rois = torch.tensor([[0.0, 0.0, 2.0 * S, 2.0 * S]])
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    maps, _ = ref_resampled(hm, rois, 0)
    for k, (py, px) in enumerate([(4, 3), (2, 6), (3, 2)]):
        flat = maps[k].float().reshape(-1)
        pos = int(flat.argmax())  # torch.argmax: the first maximum
        assert abs(pos // (2 * S) - 2 * py) <= 2 and abs(pos % (2 * S) - 2 * px) <= 2
        assert float(xy[0, k, 0]) == pos % (2 * S) + 0.5 and float(xy[0, k, 1]) == pos // (2 * S) + 0.5


def test_keypoints_constant_maps(device):
    hm = torch.full((2, 2, 8, 8), 0.3)
    rois = torch.tensor([[0.0, 0, 20, 10], [5, 5, 6, 6]])
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    torch.testing.assert_close(sc.cpu(), torch.full((2, 2), 0.3), atol=1e-6, rtol=0)
    _check_keypoints(xy.cpu(), sc.cpu(), hm, rois, 1e-6)


def test_keypoints_adversarial(device):
    nan, inf = float("nan"), float("inf")
    gen = torch.Generator().manual_seed(13)
    hm = torch.randn(6, 2, 8, 8, generator=gen)
    hm[1, 0, 3, 5] = nan          # NaN in a map: the first NaN of the resampled map wins
    hm[2, 1, :, :] = -inf         # all -inf
    rois = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10],
                         [nan, 0, 10, 10], [0, 0, inf, 10], [0, 0, 3e7, 10]])
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    xy, sc = xy.cpu(), sc.cpu()
    assert torch.isnan(sc[1, 0]) and torch.isfinite(xy[1, 0]).all()
    # the resampled pixels that read the NaN (even with weight 0) are NaN
    reads = _cubic_matrix(8, 10, taps=True)
    first_nan = int((reads[:, 3][:, None] & reads[:, 5][None, :]).reshape(-1).nonzero()[0])
    assert float(xy[1, 0, 0]) == first_nan % 10 + 0.5 and float(xy[1, 0, 1]) == first_nan // 10 + 0.5
    assert torch.isfinite(sc[1, 1])
    # every value of an all -inf map is -inf (or NaN from inf - inf): torch.argmax's rule applies
    assert torch.isnan(sc[2, 1]) or sc[2, 1] == -inf
    for r in (3, 4, 5):  # invalid RoIs: NaN keypoints and scores, v = 1
        assert torch.isnan(xy[r, :, :2]).all() and torch.isnan(sc[r]).all() and (xy[r, :, 2] == 1).all()
    # R = 0, K = 0
    xy0, sc0 = P.heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56, device=device), torch.zeros(0, 4, device=device))
    assert xy0.shape == (0, 17, 3) and sc0.shape == (0, 17)
    xy0, sc0 = P.heatmaps_to_keypoints(torch.zeros(2, 0, 56, 56, device=device), torch.ones(2, 4, device=device))
    assert xy0.shape == (2, 0, 3) and sc0.shape == (2, 0)


def test_keypoints_huge_roi(device):
    gen = torch.Generator().manual_seed(14)
    hm = peaked_heatmaps(1, 2, 56, gen)
    rois = torch.tensor([[-30.0, 12.0, 1470.0, 1612.0]])
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    rxy, rsc = ref_heatmaps_to_keypoints(hm, rois)
    torch.testing.assert_close(xy.cpu().double(), rxy, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(sc.cpu().double(), rsc, atol=1e-5, rtol=1e-6)


def test_keypoints_half_heatmaps(device):
    gen = torch.Generator().manual_seed(15)
    hm = peaked_heatmaps(3, 4, 16, gen, torch.float16)
    rois = random_boxes(3, 100, 100, gen, min_size=5, max_size=60).float()
    xy, sc = P.heatmaps_to_keypoints(hm.to(device), rois.to(device))
    assert xy.dtype == torch.float32
    _check_keypoints(xy.cpu(), sc.cpu(), hm, rois, 2e-2)


def test_keypoints_bad_input():
    hm = torch.randn(2, 3, 8, 8)
    rois = torch.rand(2, 4) * 10
    with pytest.raises(ValueError, match="heatmaps"):
        P.heatmaps_to_keypoints(torch.randn(2, 8, 8), rois)
    with pytest.raises(TypeError, match="heatmaps"):
        P.heatmaps_to_keypoints(hm.long(), rois)
    with pytest.raises(TypeError, match="heatmaps"):
        P.heatmaps_to_keypoints(None, rois)
    with pytest.raises(ValueError, match="rois"):
        P.heatmaps_to_keypoints(hm, torch.rand(2, 5))
    with pytest.raises(TypeError, match="rois"):
        P.heatmaps_to_keypoints(hm, rois.int())
    with pytest.raises(ValueError, match="same length"):
        P.heatmaps_to_keypoints(hm, torch.rand(3, 4))
    with pytest.raises(ValueError, match="heatmaps"):
        P.heatmaps_to_keypoints(torch.randn(2, 3, 0, 0), rois)


def test_keypoints_not_differentiable(device):
    hm = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    xy, sc = P.heatmaps_to_keypoints(hm, torch.tensor([[0.0, 0, 10, 10], [1, 1, 5, 9]], device=device))
    assert not xy.requires_grad and not sc.requires_grad


# ------------------------------------------------------------ opcheck / compile

def test_opcheck(device):
    gen = torch.Generator().manual_seed(21)
    m = torch.rand(4, 1, 7, 7, generator=gen).to(device)
    b = random_boxes(4, 20, 24, gen, max_size=15).float().to(device)
    torch.library.opcheck(torch.ops.pydetops.paste_masks.default, (m, b, 20, 24, 1))
    torch.library.opcheck(torch.ops.pydetops.paste_masks.default, (m.double().requires_grad_(), b.double(), 20, 24, 0))
    hm = torch.randn(3, 2, 8, 8, generator=gen).to(device)
    r = random_boxes(3, 30, 30, gen, max_size=20).float().to(device)
    torch.library.opcheck(torch.ops.pydetops.heatmaps_to_keypoints.default, (hm, r))
    torch.library.opcheck(torch.ops.pydetops.heatmaps_to_keypoints.default, (hm.double().requires_grad_(), r))


def test_torch_compile_fullgraph(device):
    gen = torch.Generator().manual_seed(22)
    m = torch.rand(3, 1, 6, 6, generator=gen).to(device)
    b = random_boxes(3, 16, 18, gen, max_size=12).float().to(device)
    hm = torch.randn(3, 2, 8, 8, generator=gen).to(device)

    def f(m, b, hm):
        return P.paste_masks(m, b, (16, 18)), P.heatmaps_to_keypoints(hm, b)

    eager = f(m, b, hm)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(m, b, hm)
    assert torch.equal(eager[0], compiled[0])
    assert torch.equal(eager[1][0], compiled[1][0]) and torch.equal(eager[1][1], compiled[1][1])


@pytest.mark.torchscript
def test_torchscript():
    scripted_paste = torch.jit.script(P.paste_masks)
    scripted_kp = torch.jit.script(P.heatmaps_to_keypoints)
    m = torch.rand(2, 1, 5, 5)
    b = torch.tensor([[1.0, 1, 8, 8], [2, 3, 9, 7]])
    assert torch.equal(scripted_paste(m, b, (10, 12), 1), P.paste_masks(m, b, (10, 12)))
    hm = torch.randn(2, 3, 6, 6)
    assert all(torch.equal(a, c) for a, c in zip(scripted_kp(hm, b), P.heatmaps_to_keypoints(hm, b)))


# ------------------------------------------------------- torchvision parity

def _tv_roi_heads():
    pytest.importorskip("torchvision")
    from torchvision.models.detection import roi_heads
    return roi_heads


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_paste_masks_torchvision_parity(padding):
    roi_heads = _tv_roi_heads()
    gen = torch.Generator().manual_seed(31 + padding)
    H, W = 90, 120
    masks = torch.rand(40, 1, 28, 28, generator=gen)
    boxes = random_boxes(40, H, W, gen, min_size=0, max_size=100).float()
    boxes[:5] -= 10  # partly outside above/left (not by more than their size: torchvision fails there)
    boxes[5] = torch.tensor([3.0, 3.0, 3.0, 3.0])
    boxes[6] = torch.tensor([10.0, 12.0, 4.0, 6.0])
    ours = P.paste_masks(masks, boxes, (H, W), padding)
    tv = roi_heads.paste_masks_in_image(masks, boxes, (H, W), padding)
    assert ours.shape == tv.shape and ours.dtype == tv.dtype
    torch.testing.assert_close(ours, tv, atol=1e-5, rtol=0)  # float32 sampling positions in torch
    assert torch.equal(ours > 0, tv > 0)
    tv64 = roi_heads.paste_masks_in_image(masks.double(), boxes.double(), (H, W), padding)
    torch.testing.assert_close(P.paste_masks(masks.double(), boxes.double(), (H, W), padding), tv64,
                               atol=1e-12, rtol=0)
    empty = roi_heads.paste_masks_in_image(masks[:0], boxes[:0], (H, W), padding)
    assert P.paste_masks(masks[:0], boxes[:0], (H, W), padding).shape == empty.shape


def test_heatmaps_to_keypoints_torchvision_parity():
    roi_heads = _tv_roi_heads()
    gen = torch.Generator().manual_seed(41)
    R, K, S = 12, 17, 56
    hm = peaked_heatmaps(R, K, S, gen)
    rois = random_boxes(R, 400, 400, gen, min_size=0.3, max_size=300).float()
    rois[0, 2:] = rois[0, :2] + 0.5
    xy, sc = P.heatmaps_to_keypoints(hm, rois)
    txy, tsc = roi_heads.heatmaps_to_keypoints(hm, rois)
    assert xy.shape == txy.shape and sc.shape == tsc.shape and xy.dtype == txy.dtype
    torch.testing.assert_close(xy, txy, atol=0, rtol=1e-6)  # unique peaks: the same pixel
    torch.testing.assert_close(sc, tsc, atol=2e-5, rtol=0)
    # pure noise and constant maps: near-ties may round differently, so the chosen pixel must be a
    # maximum of torchvision's map up to rounding, with its score
    for maps in (torch.randn(R, 4, S, S, generator=gen), torch.full((R, 4, S, S), 0.7)):
        xy, sc = P.heatmaps_to_keypoints(maps, rois)
        txy, tsc = roi_heads.heatmaps_to_keypoints(maps, rois)
        torch.testing.assert_close(sc, tsc, atol=2e-5, rtol=0)
        for r in range(R):
            w = max(float(rois[r, 2] - rois[r, 0]), 1.0)
            h = max(float(rois[r, 3] - rois[r, 1]), 1.0)
            resized = F.interpolate(maps[r][:, None], size=(math.ceil(h), math.ceil(w)), mode="bicubic",
                                    align_corners=False)[:, 0]
            for k in range(maps.shape[1]):
                xi = round((float(xy[r, k, 0]) - float(rois[r, 0])) / (w / math.ceil(w)) - 0.5)
                yi = round((float(xy[r, k, 1]) - float(rois[r, 1])) / (h / math.ceil(h)) - 0.5)
                assert float(resized[k, yi, xi]) >= float(resized[k].max()) - 2e-5


# ------------------------------------------------------------------ bench

def test_bench_cases_agree_with_their_baselines():
    """The bench's cases (quick) compute the same as their baselines (torchvision or the plain-torch loops)."""
    from pydetops.bench import paste_keypoints as bench
    cases = bench.cases("cpu", quick=True)
    assert [c.op for c in cases] == ["paste_masks", "heatmaps_to_keypoints", "heatmaps_to_keypoints"]
    for c in cases:
        ours, base = c.ours(), c.baseline()
        if c.op == "paste_masks":
            torch.testing.assert_close(ours, base, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(ours[1], base[1], atol=2e-5, rtol=0)
            if "peaked" in c.config:
                torch.testing.assert_close(ours[0], base[0], atol=0, rtol=1e-6)


def test_plain_torch_baselines_match_the_ops():
    from pydetops.bench import paste_keypoints as bench
    gen = torch.Generator().manual_seed(51)
    m = torch.rand(10, 1, 14, 14, generator=gen)
    b = random_boxes(10, 60, 80, gen, max_size=50).float()
    torch.testing.assert_close(bench.torch_paste_masks_loop(m, b, (60, 80)), P.paste_masks(m, b, (60, 80)),
                               atol=2e-6, rtol=0)
    hm = peaked_heatmaps(5, 3, 16, gen)
    r = random_boxes(5, 100, 100, gen, min_size=2, max_size=60).float()
    bxy, bsc = bench.torch_heatmaps_to_keypoints_loop(hm, r)
    xy, sc = P.heatmaps_to_keypoints(hm, r)
    torch.testing.assert_close(xy, bxy, atol=0, rtol=1e-6)
    torch.testing.assert_close(sc, bsc, atol=2e-5, rtol=0)


def test_paste_masks_torchvision_parity_non_square_and_float64_boxes():
    """Non-square masks (torchvision scales the box by the mask WIDTH in both directions) and
    float64 boxes with float32 masks."""
    roi_heads = _tv_roi_heads()
    gen = torch.Generator().manual_seed(61)
    H, W = 70, 90
    masks = torch.rand(15, 1, 10, 17, generator=gen)
    boxes = random_boxes(15, H, W, gen, min_size=1, max_size=60)
    ours = P.paste_masks(masks, boxes, (H, W), 1)
    tv = roi_heads.paste_masks_in_image(masks, boxes, (H, W), 1)
    torch.testing.assert_close(ours, tv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.double(), ref_paste_masks(masks, boxes, (H, W), 1), atol=1e-5, rtol=0)


def test_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(71)
    m = torch.rand(40, 1, 28, 28, generator=gen)
    b = random_boxes(40, 300, 400, gen, max_size=300).float()
    hm = torch.randn(20, 17, 56, 56, generator=gen)
    r = random_boxes(20, 300, 400, gen, min_size=20, max_size=200).float()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (P.paste_masks(m, b, (300, 400)),) + P.heatmaps_to_keypoints(hm, r)
        torch.set_num_threads(2)
        two = (P.paste_masks(m, b, (300, 400)),) + P.heatmaps_to_keypoints(hm, r)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, c) for a, c in zip(one, two))


# ------------------------------------------ large results: lazily zeroed memory
# Results of 1 MiB and more are backed by fresh anonymous memory that the OS zero-fills on
# demand; the kernel then writes only the pixels inside the boxes (csrc/cpu/lazy_zeros_cpu.h).
# One plane of 300 x 400 float32/float64 is below the threshold, several planes are above it.

def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        pytest.skip("needs /proc/self/statm (Linux)")


def _awkward_boxes(n, H, W, gen):
    b = random_boxes(n, H, W, gen, max_size=250)
    b[0] = torch.tensor([-50.0, -50, -20, -20])   # outside: an all-zero plane
    b[1] = torch.tensor([-1e7, -1e7, 1e7, 1e7])   # covers the whole image
    b[2] = torch.tensor([5.0, 5, float("nan"), 20])
    b[3] = torch.tensor([W - 3.5, H - 2.5, W + 40.0, H + 30.0])  # the last rows / columns only
    return b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_paste_masks_large_result_equals_small_results(dtype):
    gen = torch.Generator().manual_seed(81)
    N, H, W = 8, 300, 400
    masks = torch.rand(N, 1, 28, 28, generator=gen).to(dtype)
    boxes = _awkward_boxes(N, H, W, gen).float()
    big = P.paste_masks(masks, boxes, (H, W))                                  # 3.8 MB (f32): lazy
    small = torch.cat([P.paste_masks(masks[i:i + 1], boxes[i:i + 1], (H, W))   # 480 KB each: filled
                       for i in range(N)])
    assert big.is_contiguous() and big.shape == (N, 1, H, W) and big.dtype == dtype
    assert torch.equal(big, small)
    assert big[0].count_nonzero() == 0 and big[2].count_nonzero() == 0 and big[1].count_nonzero() > H * W // 2
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(big.double(), ref_paste_masks(masks, boxes, (H, W)), atol=1e-5, rtol=0)
    torch.library.opcheck(torch.ops.pydetops.paste_masks.default, (masks[:1], boxes[1:2], 700, 800, 1))


def test_paste_masks_large_result_does_not_touch_the_zeros():
    # 40 planes of 800 x 1088 float32 = 139 MB, boxes of a few pixels: only the pages the boxes
    # write become resident (a filled result would add the whole 139 MB to the RSS).
    gen = torch.Generator().manual_seed(82)
    N, H, W = 40, 800, 1088
    masks = torch.rand(N, 1, 28, 28, generator=gen)
    boxes = random_boxes(N, H - 10, W - 10, gen, min_size=2, max_size=6).float()
    before = _rss_bytes()
    out = P.paste_masks(masks, boxes, (H, W))
    grown = _rss_bytes() - before
    assert grown < 16 * 2 ** 20, f"RSS grew by {grown / 2 ** 20:.1f} MiB for a 139 MB mostly-zero result"
    nz = out.count_nonzero()  # reading the untouched pages reads zeros
    assert 0 < nz < N * 100
    torch.testing.assert_close(out[:2].double(), ref_paste_masks(masks[:2], boxes[:2], (H, W)), atol=1e-5, rtol=0)


def test_paste_masks_large_result_behaves_like_a_tensor(tmp_path):
    import io
    import numpy as np
    gen = torch.Generator().manual_seed(83)
    N, H, W = 6, 300, 400
    masks = torch.rand(N, 1, 28, 28, generator=gen)
    boxes = _awkward_boxes(N, H, W, gen).float()
    out = P.paste_masks(masks, boxes, (H, W))
    want = out.clone()
    assert want.data_ptr() != out.data_ptr() and torch.equal(want, out)
    # threshold, numpy view (shares the memory), in-place writes
    torch.testing.assert_close(out > 0.5, want > 0.5, atol=0, rtol=0)
    a = out.numpy()
    a[0, 0, 10, 20] = 7.0
    assert out[0, 0, 10, 20] == 7.0
    np.testing.assert_array_equal(a[1:], want[1:].numpy())
    out[0, 0, 10, 20] = 0.0
    out.add_(1)
    assert torch.equal(out, want + 1)
    out.copy_(want).mul_(2)
    assert torch.equal(out, want * 2)
    out.div_(2)
    assert torch.equal(out, want)
    # save / load round trip (file and buffer), pickling via torch.save of a view
    buf = io.BytesIO()
    torch.save({"masks": out, "view": out[3:5, :, 100:]}, buf)
    buf.seek(0)
    back = torch.load(buf)
    assert torch.equal(back["masks"], want) and torch.equal(back["view"], want[3:5, :, 100:])
    torch.save(out, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt"), want)
    # the storage is resizable like any CPU tensor's (reallocates and keeps the data)
    r = P.paste_masks(masks, boxes, (H, W))
    r.resize_(N + 2, 1, H, W)
    assert torch.equal(r[:N], want)
    # moving to shared memory (what DataLoader workers / torch.multiprocessing do) keeps the data
    s = P.paste_masks(masks, boxes, (H, W)).share_memory_()
    assert s.is_shared() and torch.equal(s, want)


def test_paste_masks_large_results_are_freed():
    # Make 12 results of 56 MB, write every page of each, drop them: a leaked mapping would
    # keep ~670 MB resident.
    gen = torch.Generator().manual_seed(84)
    N, H, W = 16, 800, 1088
    masks = torch.rand(N, 1, 28, 28, generator=gen)
    boxes = random_boxes(N, H, W, gen, max_size=300).float()
    out = P.paste_masks(masks, boxes, (H, W)).fill_(1)
    del out
    before = _rss_bytes()
    for _ in range(12):
        out = P.paste_masks(masks, boxes, (H, W))
        out.fill_(1)
        del out
    grown = _rss_bytes() - before
    assert grown < 64 * 2 ** 20, f"RSS grew by {grown / 2 ** 20:.1f} MiB over 12 dropped 56 MB results"
