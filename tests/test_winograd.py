"""conv3x3_winograd: a 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) (CPU, inference).

Against a float64 reference written plainly (nine shifted products, summed), on random and
adversarial shapes (odd / one-pixel images, channel counts off the vector width, an empty batch,
no input channels, large magnitudes, inf and NaN), with bias / residual / ReLU fused; its error
against float64 is no larger than torch.conv2d's; results do not depend on the thread count;
opcheck (schema, fake kernel); bad input raises naming the argument.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pydetops.ops as P


def reference(x, w, bias=None, residual=None, activation="none"):
    """activation(conv2d(x, w, bias, padding=1) + residual) in float64: the sum over the nine taps
    (i, j) of the input shifted by (i - 1, j - 1) times w[:, :, i, j]."""
    x, w = x.double(), w.double()
    n, c, h, wd = x.shape
    padded = torch.zeros(n, c, h + 2, wd + 2, dtype=torch.float64)
    padded[:, :, 1:h + 1, 1:wd + 1] = x
    out = torch.zeros(n, w.shape[0], h, wd, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            out += torch.einsum("nchw,kc->nkhw", padded[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    if residual is not None:
        out += residual.double()
    return out.clamp_min(0) if activation == "relu" else out


def run(x, w, bias=None, residual=None, activation="none"):
    return P.conv3x3_winograd(x, P.winograd_weight(w), bias, residual, activation)


SHAPES = [  # N, C, H, W, K
    (1, 1, 1, 1, 1), (2, 3, 5, 7, 4), (1, 17, 1, 9, 33), (3, 16, 8, 9, 16), (1, 40, 6, 2, 20),
    (2, 8, 2, 2, 3), (1, 65, 11, 4, 7), (1, 5, 3, 3, 130),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fused", ["none", "bias", "bias+relu", "bias+residual+relu", "residual"])
def test_matches_float64_reference(shape, fused):
    n, c, h, wd, k = shape
    g = torch.Generator().manual_seed(hash((shape, fused)) % 2 ** 31)
    x = torch.randn(n, c, h, wd, generator=g, dtype=torch.float64)
    w = torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(k, generator=g, dtype=torch.float64) if "bias" in fused else None
    res = torch.randn(n, k, h, wd, generator=g, dtype=torch.float64) if "residual" in fused else None
    act = "relu" if "relu" in fused else "none"
    got = run(x, w, bias, res, act)
    assert got.shape == (n, k, h, wd) and got.dtype == torch.float64
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, reference(x, w, bias, res, act), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 24, 9, 13, 40), (1, 130, 7, 6, 129), (4, 32, 4, 5, 16)])
def test_float32_error_no_larger_than_conv2d(shape):
    # The F(2x2, 3x3) transforms add only (B, A) or halve (G, done in float64): its float32 error
    # against float64 stays within a small factor of the direct convolution's own error.
    n, c, h, wd, k = shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, wd, generator=g)
    w = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    b = torch.randn(k, generator=g)
    want = reference(x, w, b)
    scale = want.abs().max()
    err_wino = ((run(x, w, b).double() - want).abs().max() / scale).item()
    err_direct = ((F.conv2d(x, w, b, padding=1).double() - want).abs().max() / scale).item()
    assert err_wino < max(4 * err_direct, 1e-6), (err_wino, err_direct)


def test_layouts_and_noncontiguous_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 20, 10, 12, generator=g, dtype=torch.float64)
    w = torch.randn(18, 20, 3, 3, generator=g, dtype=torch.float64)
    r = torch.randn(2, 18, 10, 12, generator=g, dtype=torch.float64)
    want = reference(x, w, None, r, "relu")
    for xx in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3),
               torch.randn(2, 40, 10, 12, dtype=torch.float64)[:, ::2].copy_(x)):
        for rr in (r, r.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(run(xx, w, None, rr, "relu"), want, rtol=1e-12, atol=1e-12)


def test_empty_and_degenerate_sizes():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    assert run(torch.zeros(0, 4, 5, 5, dtype=torch.float64), w).shape == (0, 6, 5, 5)
    assert run(torch.zeros(2, 4, 0, 5, dtype=torch.float64), w).shape == (2, 6, 0, 5)
    # no input channels: bias (+ residual), then the activation
    w0 = torch.zeros(3, 0, 3, 3, dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    r = torch.randn(1, 3, 2, 3, dtype=torch.float64)
    got = run(torch.zeros(1, 0, 2, 3, dtype=torch.float64), w0, b, r, "relu")
    torch.testing.assert_close(got, (b.view(1, 3, 1, 1) + r).clamp_min(0))


def test_large_values_and_non_finite_inputs():
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64) * 1e30
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64) * 1e-20
    torch.testing.assert_close(run(x, w), reference(x, w), rtol=1e-10, atol=0)
    x = torch.randn(1, 3, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 5, 5] = float("inf")
    got = run(x, torch.randn(2, 3, 3, 3))
    want = F.conv2d(x, torch.ones(2, 3, 3, 3), padding=1)  # the outputs that see a non-finite input
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    # ReLU of -inf is 0, of +inf is +inf, of NaN is NaN (torch.relu)
    w = torch.zeros(3, 1, 3, 3)
    w[:, 0, 1, 1] = torch.tensor([1.0, -1.0, 1.0])
    x = torch.tensor([float("inf"), 2.0, float("nan")]).view(1, 1, 1, 3)
    got = P.conv3x3_winograd(x, P.winograd_weight(w), None, None, "relu")
    torch.testing.assert_close(got, torch.relu(F.conv2d(x, w, padding=1)), equal_nan=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_same_result_for_any_thread_count(threads):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 160, 18, 22, generator=g).contiguous(memory_format=torch.channels_last)
    u = P.winograd_weight(torch.randn(144, 160, 3, 3, generator=g) * 0.05)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = P.conv3x3_winograd(x, u, None, None, "relu")
        torch.set_num_threads(threads)
        got = P.conv3x3_winograd(x, u, None, None, "relu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)


def test_winograd_weight_is_g_g_gt():
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    u = P.winograd_weight(w)
    G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    for k in range(3):
        for c in range(2):
            torch.testing.assert_close(u[:, c, k].reshape(4, 4), G @ w[k, c] @ G.T)
    assert P.winograd_weight(w.float()).dtype == torch.float32


def test_winograd_applies():
    assert P.winograd_applies(nn.Conv2d(256, 256, 3, padding=1))
    assert P.winograd_applies(nn.Conv2d(64, 128, 3, padding=1))
    assert not P.winograd_applies(nn.Conv2d(32, 64, 3, padding=1))          # too few channels to pay
    assert P.winograd_applies(nn.Conv2d(32, 32, 3, padding=1), min_channels=1)
    assert not P.winograd_applies(nn.Conv2d(256, 256, 3, padding=1, stride=2))
    assert not P.winograd_applies(nn.Conv2d(256, 256, 3, padding=2, dilation=2))
    assert not P.winograd_applies(nn.Conv2d(256, 256, 3, padding=1, groups=2))
    assert not P.winograd_applies(nn.Conv2d(256, 256, 1))
    assert not P.winograd_applies(nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"))


def test_opcheck_and_compile():
    x = torch.randn(2, 5, 7, 6)
    u = P.winograd_weight(torch.randn(4, 5, 3, 3))
    b, r = torch.randn(4), torch.randn(2, 4, 7, 6)
    torch.library.opcheck(torch.ops.pydetops.conv3x3_winograd.default, (x, u, b, r, "relu"),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.pydetops.conv3x3_winograd.default, (x.double(), u.double(), None, None, "none"),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda a: P.conv3x3_winograd(a, u, b, None, "relu"), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), P.conv3x3_winograd(x, u, b, None, "relu"))


def test_bad_input_names_the_argument():
    x = torch.randn(1, 4, 5, 5)
    u = P.winograd_weight(torch.randn(6, 4, 3, 3))
    op = torch.ops.pydetops.conv3x3_winograd
    with pytest.raises(ValueError, match="input must be a Tensor"):
        op(x[0], u)
    with pytest.raises(ValueError, match="weight must be the Winograd-transformed"):
        op(x, torch.randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match="input channels"):
        op(torch.randn(1, 5, 5, 5), u)
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        op(x.half(), u.half())
    with pytest.raises(TypeError, match="weight must have input's dtype"):
        op(x, u.double())
    with pytest.raises(ValueError, match="bias must be a Tensor\\[6\\]"):
        op(x, u, torch.randn(5))
    with pytest.raises(ValueError, match="residual must be a Tensor\\[1, 6, 5, 5\\]"):
        op(x, u, None, torch.randn(1, 6, 5, 4))
    with pytest.raises(ValueError, match="activation must be 'none' or 'relu'"):
        op(x, u, None, None, "gelu")
    with pytest.raises(ValueError, match="weight must be a Tensor\\[K, C, 3, 3\\]"):
        P.winograd_weight(torch.randn(6, 4, 5, 5))
    with pytest.raises(RuntimeError, match="inference-only: input requires grad"):
        P.conv3x3_winograd(x.requires_grad_(), u)
    with torch.no_grad():  # fine without grad mode
        assert P.conv3x3_winograd(x, u).shape == (1, 6, 5, 5)


# ------------------------------------------------------------ winograd_conv2d (differentiable)

@pytest.mark.parametrize("shape", SHAPES[:6])
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_conv2d_matches_reference_and_its_gradients(shape, with_bias):
    n, c, h, wd, k = shape
    g = torch.Generator().manual_seed(hash((shape, with_bias)) % 2 ** 31)
    x = torch.randn(n, c, h, wd, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, c, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    got = P.winograd_conv2d(x, w, b)
    torch.testing.assert_close(got, reference(x.detach(), w.detach(), None if b is None else b.detach()),
                               rtol=1e-12, atol=1e-12)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    params = [t for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad(got, params, grad)
    theirs = torch.autograd.grad(F.conv2d(x, w, b, padding=1), params, grad)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_winograd_conv2d_gradcheck_and_partial_grads():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.winograd_conv2d, (x, w, b))
    assert torch.autograd.gradcheck(P.winograd_conv2d, (x, w.detach(), None))       # input only
    assert torch.autograd.gradcheck(P.winograd_conv2d, (x.detach(), w, b))          # filters and bias only
    y = P.winograd_conv2d(x, w, b)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="winograd_conv2d"):
        gx.sum().backward()  # double backward is not supported, and says so


def test_winograd_conv2d_float32_and_layouts():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 70, 21, 17, generator=g)
    w = torch.randn(66, 70, 3, 3, generator=g) / 25
    want = reference(x, w)
    scale = want.abs().max()
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        got = P.winograd_conv2d(xx, w)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert float((got.double() - want).abs().max() / scale) < 2e-6


def test_winograd_conv2d_opcheck_and_bad_input():
    x = torch.randn(2, 5, 7, 6, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.pydetops.winograd_conv2d.default, (x, w, b))
    torch.library.opcheck(torch.ops.pydetops.winograd_conv2d.default, (x.detach().double(), w.detach().double(), None))
    g = torch.randn(2, 4, 7, 6)
    torch.library.opcheck(torch.ops.pydetops._winograd_conv2d_backward.default,
                          (g, x.detach(), w.detach(), [True, True, True]), test_utils=("test_schema", "test_faketensor"))
    op = torch.ops.pydetops.winograd_conv2d
    with pytest.raises(ValueError, match="weight must be a Tensor\\[K, C, 3, 3\\]"):
        op(x, torch.randn(4, 5, 5, 5))
    with pytest.raises(ValueError, match="input channels"):
        op(torch.randn(1, 6, 5, 5), w)
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        op(x.detach().half(), w.detach().half())
    with pytest.raises(ValueError, match="bias must be a Tensor\\[4\\]"):
        op(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="grad_output must be a Tensor\\[2, 4, 7, 6\\]"):
        torch.ops.pydetops._winograd_conv2d_backward(torch.randn(2, 4, 7, 5), x.detach(), w.detach(),
                                                     [True, True, True])
