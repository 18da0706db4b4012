"""max_unpool2d, nearest_unpool2d, bed_of_nails_unpool2d against plain-loop references."""
import pytest
import torch
import torch.nn.functional as F

import pydetops  # noqa: F401  (loads the ops)
from pydetops import ops
from pydetops.ops import (
    BedOfNailsUnpool2d,
    MaxUnpool2d,
    NearestUnpool2d,
    bed_of_nails_unpool2d,
    max_unpool2d,
    nearest_unpool2d,
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---- plain references ----

def ref_max_unpool(x, idx, out_hw):
    """Loops: inputs of each plane in row-major order, a later duplicate overwrites."""
    lead = x.shape[:-2]
    xp = x.reshape(-1, x.shape[-2] * x.shape[-1]).tolist()
    ip = idx.reshape(-1, x.shape[-2] * x.shape[-1]).tolist()
    out = [[0.0] * (out_hw[0] * out_hw[1]) for _ in xp]
    for p in range(len(xp)):
        for v, j in zip(xp[p], ip[p]):
            out[p][j] = v
    return torch.tensor(out, dtype=torch.float64).reshape(*lead, *out_hw)


def ref_max_unpool_grad(go, idx):
    """Gradient of the loop above: each output position's gradient goes to its last writer."""
    hw_out = go.shape[-2] * go.shape[-1]
    gp = go.reshape(-1, hw_out).tolist()
    ip = idx.reshape(len(gp), -1).tolist()
    res = []
    for p in range(len(gp)):
        last = {}
        for i, j in enumerate(ip[p]):
            last[j] = i
        res.append([gp[p][j] if last[j] == i else 0.0 for i, j in enumerate(ip[p])])
    return torch.tensor(res, dtype=torch.float64).reshape(idx.shape)


def ref_nearest(x, sh, sw):
    H, W = x.shape[-2:]
    out = torch.empty(*x.shape[:-2], H * sh, W * sw, dtype=torch.float64)
    for y in range(H * sh):
        for xx in range(W * sw):
            out[..., y, xx] = x[..., y // sh, xx // sw].double()
    return out


def ref_bed_of_nails(x, sh, sw):
    H, W = x.shape[-2:]
    out = torch.zeros(*x.shape[:-2], H * sh, W * sw, dtype=torch.float64)
    for y in range(H):
        for xx in range(W):
            out[..., y * sh, xx * sw] = x[..., y, xx].double()
    return out


def ref_block_sum(g, sh, sw):
    H, W = g.shape[-2] // sh, g.shape[-1] // sw
    out = torch.zeros(*g.shape[:-2], H, W, dtype=torch.float64)
    for y in range(H * sh):
        for xx in range(W * sw):
            out[..., y // sh, xx // sw] += g[..., y, xx].double()
    return out


def _pool(shape, kernel, stride, padding, device, dtype=torch.float64):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    p, i = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    return p.to(dtype), i


# ---- max_unpool2d ----

POOLS = [
    # (input shape, kernel, stride, padding, output_size)
    ((2, 3, 8, 8), 2, None, 0, None),
    ((2, 3, 9, 7), 2, None, 0, [9, 7]),          # odd sizes need output_size
    ((1, 2, 10, 9), (3, 2), (2, 3), (1, 0), [10, 9]),
    ((2, 2, 7, 7), 3, 1, 1, None),                # overlapping windows: duplicate indices
    ((3, 6, 6), 2, 2, 0, None),                   # unbatched
    ((2, 3, 9, 9), 2, None, 0, [2, 3, 9, 9]),     # 4-element output_size
]


@pytest.mark.parametrize("shape,kernel,stride,padding,output_size", POOLS)
def test_max_unpool_matches_loops(device, shape, kernel, stride, padding, output_size):
    x, idx = _pool(shape, kernel, stride if stride is not None else kernel, padding, device)
    out = max_unpool2d(x, idx, kernel, stride, padding, output_size)
    ref_torch = F.max_unpool2d(x, idx, kernel, stride, padding, output_size)
    assert out.shape == ref_torch.shape
    ref = ref_max_unpool(x.cpu(), idx.cpu(), out.shape[-2:])
    assert torch.equal(out.cpu(), ref)
    # Module form
    m = MaxUnpool2d(kernel, stride, padding)
    assert torch.equal(m(x, idx, output_size), out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool_dtypes_channels_last_non_contiguous(device, dtype):
    x, idx = _pool((2, 4, 8, 10), 2, 2, 0, device, dtype)
    ref = ref_max_unpool(x.cpu(), idx.cpu(), (8, 10)).to(dtype)
    assert torch.equal(max_unpool2d(x, idx, 2).cpu(), ref)
    assert torch.equal(max_unpool2d(x.to(memory_format=torch.channels_last),
                                    idx.to(memory_format=torch.channels_last), 2).cpu(), ref)
    xb = torch.stack([x, -x], 2).flatten(1, 2)[:, ::2]  # channels x0, x1, ... with a stride of 2
    ib = torch.stack([idx, idx.flip(-1)], 2).flatten(1, 2)[:, ::2]
    assert not xb.is_contiguous()
    assert torch.equal(max_unpool2d(xb, ib, 2).cpu(), ref)


def test_max_unpool_duplicates_last_wins_and_backward_consistent(device):
    # Two inputs of one plane name output position 5; the later one (value 2.0) wins.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, device=device, requires_grad=True)
    idx = torch.tensor([[[[5, 5], [10, 15]]]], device=device)
    out = max_unpool2d(x, idx, 2)
    assert out.view(-1)[5].item() == 2.0
    g = torch.arange(16, dtype=torch.float64, device=device).view(1, 1, 4, 4) + 1
    out.backward(g)
    assert x.grad.view(-1).tolist() == [0.0, 6.0, 11.0, 16.0]
    # Overlapping pools produce duplicates: loops agree, and gradcheck confirms the backward.
    xp, ip = _pool((2, 2, 6, 6), 3, 1, 1, device)
    assert ip.view(2, 2, -1).sort(-1).values.diff(dim=-1).eq(0).any()  # there are duplicates
    go = torch.randn(2, 2, 6, 6, dtype=torch.float64, device=device)
    xr = xp.clone().requires_grad_(True)
    max_unpool2d(xr, ip, 3, 1, 1).backward(go)
    torch.testing.assert_close(xr.grad.cpu(), ref_max_unpool_grad(go.cpu(), ip.cpu()), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a: max_unpool2d(a, ip, 3, 1, 1), (xp.clone().requires_grad_(True),))


def test_max_unpool_gradcheck_and_half_backward(device):
    x, idx = _pool((2, 3, 6, 8), 2, 2, 0, device)
    assert torch.autograd.gradcheck(lambda a: max_unpool2d(a, idx, 2, output_size=[7, 9]),
                                    (x.clone().requires_grad_(True),))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        xr = x.to(dtype).requires_grad_(True)
        go = torch.randn(2, 3, 6, 8, device=device).to(dtype)
        max_unpool2d(xr, idx, 2).backward(go)
        assert xr.grad.dtype == dtype
        assert torch.equal(xr.grad.cpu(), ref_max_unpool_grad(go.cpu().double(), idx.cpu()).to(dtype))


@pytest.mark.parametrize("bad", [16 * 16, 64, -1, 2**40, -(2**62)])
def test_max_unpool_out_of_range_indices(device, bad):
    x, idx = _pool((2, 3, 8, 8), 2, 2, 0, device)
    idx = idx.clone()
    idx[1, 2, 3, 1] = bad
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d(x, idx, 2)
    with pytest.raises(ValueError, match="indices"):
        torch.ops.pydetops._max_unpool2d_backward(torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device), idx)


def test_max_unpool_empty(device):
    x = torch.randn(0, 3, 4, 4, device=device)
    idx = torch.zeros(0, 3, 4, 4, dtype=torch.long, device=device)
    assert max_unpool2d(x, idx, 2).shape == (0, 3, 8, 8)
    x = torch.randn(2, 0, 4, 4, device=device, requires_grad=True)
    out = max_unpool2d(x, torch.zeros(2, 0, 4, 4, dtype=torch.long, device=device), 2)
    assert out.shape == (2, 0, 8, 8)
    out.sum().backward()


def test_max_unpool_bad_input(device):
    x, idx = _pool((2, 3, 8, 8), 2, 2, 0, device)
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d(x, idx[:, :2], 2)
    with pytest.raises(TypeError, match="indices"):
        max_unpool2d(x, idx.int(), 2)
    with pytest.raises(ValueError, match="input"):
        max_unpool2d(x[0, 0], idx[0, 0], 2)
    with pytest.raises(TypeError, match="input"):
        max_unpool2d(x.long(), idx, 2)
    with pytest.raises(ValueError, match="output_size"):
        max_unpool2d(x, idx, 2, output_size=[10, 8])
    with pytest.raises(ValueError, match="output_size"):
        max_unpool2d(x, idx, 2, output_size=[3, 8, 8])
    with pytest.raises(ValueError, match="stride"):
        max_unpool2d(x, idx, 2, stride=0)
    with pytest.raises(ValueError, match="kernel_size"):
        max_unpool2d(x, idx, 0, stride=2)
    with pytest.raises(ValueError, match="padding"):
        max_unpool2d(x, idx, 2, padding=-1)
    with pytest.raises(ValueError, match="output_size"):
        max_unpool2d(x[..., :1, :], idx[..., :1, :], 1, 1, 1)  # (1-1)*1 + 1 - 2 = -1


@pytest.mark.torchscript
def test_max_unpool_opcheck_compile_script(device):
    x, idx = _pool((2, 3, 8, 6), 2, 2, 0, device, torch.float32)
    torch.library.opcheck(torch.ops.pydetops.max_unpool2d.default, (x, idx, [2, 2], [2, 2], [0, 0], None))
    torch.library.opcheck(torch.ops.pydetops.max_unpool2d.default,
                          (x.clone().requires_grad_(True), idx, [2, 2], [2, 2], [0, 0], [9, 7]))
    torch.library.opcheck(torch.ops.pydetops._max_unpool2d_backward.default,
                          (torch.randn(2, 3, 8, 6, device=device), idx))

    def f(a):
        return max_unpool2d(a, idx, 2, output_size=[9, 7]).pow(2).sum()

    xr = x.clone().requires_grad_(True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(xr)
    (g,) = torch.autograd.grad(out, xr)
    (g_ref,) = torch.autograd.grad(f(xr), xr)
    torch.testing.assert_close(g, g_ref)
    scripted = torch.jit.script(max_unpool2d)
    assert torch.equal(scripted(x, idx, [2, 2], None, [0, 0], [9, 7]), max_unpool2d(x, idx, 2, output_size=[9, 7]))

    @torch.jit.script
    def caller(a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return max_unpool2d(a, i, 2)

    assert torch.equal(caller(x, idx), max_unpool2d(x, idx, 2))
    sm = torch.jit.script(MaxUnpool2d(2))
    assert torch.equal(sm(x, idx), max_unpool2d(x, idx, 2))


# ---- nearest / bed of nails ----

SCALES = [2, 3, (1, 2), (3, 1), 1, (2, 5)]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_unpool_forward_backward(device, scale, dtype):
    sh, sw = (scale, scale) if isinstance(scale, int) else scale
    x = torch.randn(2, 3, 4, 5, device=device).to(dtype)
    out_n = nearest_unpool2d(x, scale)
    out_b = bed_of_nails_unpool2d(x, scale)
    assert out_n.dtype == dtype and out_b.dtype == dtype
    assert torch.equal(out_n.cpu(), ref_nearest(x.cpu(), sh, sw).to(dtype))
    assert torch.equal(out_b.cpu(), ref_bed_of_nails(x.cpu(), sh, sw).to(dtype))
    if isinstance(scale, int):
        assert torch.equal(out_n, F.interpolate(x, scale_factor=scale, mode="nearest"))
    g = torch.randn(out_n.shape, device=device).to(dtype)
    xr = x.clone().requires_grad_(True)
    nearest_unpool2d(xr, scale).backward(g)
    ref = ref_block_sum(g.cpu(), sh, sw)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(xr.grad.cpu().double(), ref.to(dtype).double(), rtol=tol, atol=tol)
    xr.grad = None
    bed_of_nails_unpool2d(xr, scale).backward(g)
    assert torch.equal(xr.grad.cpu(), g.cpu()[..., ::sh, ::sw])


def test_scale_unpool_layouts_unbatched_empty(device):
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device)
    for f, r in ((nearest_unpool2d, ref_nearest), (bed_of_nails_unpool2d, ref_bed_of_nails)):
        ref = r(x.cpu(), 2, 3)
        assert torch.equal(f(x.to(memory_format=torch.channels_last), (2, 3)).cpu(), ref)
        assert torch.equal(f(x.transpose(2, 3), (3, 2)).cpu(), r(x.cpu().transpose(2, 3), 3, 2))
        assert torch.equal(f(x[0], [2, 3]).cpu(), ref[0])
        assert f(x[:0], 2).shape == (0, 4, 10, 12)
        assert f(x[:, :, :0], 2).shape == (2, 4, 0, 12)
        go = torch.randn(2, 4, 10, 18, dtype=torch.float64, device=device).transpose(2, 3)  # non-contiguous grad
        xr = x.transpose(2, 3).clone().requires_grad_(True)
        f(xr, (3, 2)).backward(go)
        if f is nearest_unpool2d:
            torch.testing.assert_close(xr.grad.cpu(), ref_block_sum(go.cpu(), 3, 2))
        else:
            assert torch.equal(xr.grad.cpu(), go.cpu()[..., ::3, ::2])


@pytest.mark.torchscript
def test_scale_unpool_gradcheck_opcheck_compile_script(device):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    for f in (nearest_unpool2d, bed_of_nails_unpool2d):
        assert torch.autograd.gradcheck(lambda a: f(a, (2, 3)), (x,))
        assert torch.autograd.gradcheck(lambda a: f(a, 1), (x,))
    xf = torch.randn(2, 3, 4, 5, device=device)
    for name in ("nearest_unpool2d", "bed_of_nails_unpool2d"):
        op = getattr(torch.ops.pydetops, name).default
        torch.library.opcheck(op, (xf, [2, 3]))
        torch.library.opcheck(op, (xf.clone().requires_grad_(True), [2, 2]))
        torch.library.opcheck(getattr(torch.ops.pydetops, "_" + name + "_backward").default,
                              (torch.randn(2, 3, 8, 15, device=device), [2, 3]))

    def f(a):
        return (nearest_unpool2d(a, 2) * bed_of_nails_unpool2d(a, 2)).sum() + nearest_unpool2d(a, (1, 3)).sum()

    xr = xf.clone().requires_grad_(True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(xr)
    (g,) = torch.autograd.grad(out, xr)
    (g_ref,) = torch.autograd.grad(f(xr), xr)
    torch.testing.assert_close(g, g_ref)
    for fn in (nearest_unpool2d, bed_of_nails_unpool2d):
        assert torch.equal(torch.jit.script(fn)(xf, [2, 3]), fn(xf, (2, 3)))
    for M, fn in ((NearestUnpool2d, nearest_unpool2d), (BedOfNailsUnpool2d, bed_of_nails_unpool2d)):
        m = M((2, 3))
        assert torch.equal(torch.jit.script(m)(xf), fn(xf, (2, 3)))
        assert torch.equal(M(2)(xf), fn(xf, 2))


def test_scale_unpool_bad_input(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    for f in (nearest_unpool2d, bed_of_nails_unpool2d):
        with pytest.raises(ValueError, match="scale_factor"):
            f(x, 0)
        with pytest.raises(ValueError, match="scale_factor"):
            f(x, (2, -1))
        with pytest.raises(ValueError, match="scale_factor"):
            f(x, [2, 2, 2])
        with pytest.raises(ValueError, match="input"):
            f(x[0, 0], 2)
        with pytest.raises(ValueError, match="input"):
            f(x[None], 2)
        with pytest.raises(TypeError, match="input"):
            f(x.long(), 2)
    with pytest.raises(ValueError, match="grad_output"):
        torch.ops.pydetops._nearest_unpool2d_backward(torch.randn(2, 3, 5, 5, device=device), [2, 2])
    with pytest.raises(ValueError, match="scale_factor"):
        NearestUnpool2d((1, 2, 3))


def test_exported_names():
    for name in ("max_unpool2d", "nearest_unpool2d", "bed_of_nails_unpool2d", "MaxUnpool2d", "NearestUnpool2d",
                 "BedOfNailsUnpool2d"):
        assert name in ops.__all__
    names = set(ops.registered_op_names())
    for name in ("max_unpool2d", "nearest_unpool2d", "bed_of_nails_unpool2d"):
        assert name in names and "_" + name + "_backward" in names
