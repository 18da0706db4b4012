"""conv_transpose2d / ConvTranspose2d against torch.nn.functional.conv_transpose2d
computed in float64 (the reference), over every argument combination torch accepts."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import pydetops  # noqa: F401  (loads the ops)
from pydetops import ops
from pydetops.ops import ConvTranspose2d, bilinear_upsampling_weight_, conv_transpose2d


@pytest.fixture
def single_thread():
    """For tests made of many tiny calls: one thread (threads only add start-up cost there, and a lot
    of it on a loaded machine). The parallel paths are covered by the other tests."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _valid(k, stride, padding, output_padding, dilation, hw):
    s, p, op, d = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    for a in range(2):
        if op[a] >= max(s[a], d[a]):
            return False
        if (hw[a] - 1) * s[a] - 2 * p[a] + d[a] * (k[a] - 1) + op[a] + 1 <= 0:
            return False
    return True


def _check_against_torch(x, w, b, kwargs, grad_tol=1e-10, fwd_tol=1e-10, check_grad=True):
    """Forward and all three gradients of ours against F.conv_transpose2d in float64."""
    xs = [x.detach().clone().requires_grad_(True) for _ in range(2)]
    ws = [w.detach().clone().requires_grad_(True) for _ in range(2)]
    bs = [None if b is None else b.detach().clone().requires_grad_(True) for _ in range(2)]
    ours = conv_transpose2d(xs[0], ws[0], bs[0], **kwargs)
    ref = F.conv_transpose2d(xs[1].double(), ws[1].double(), None if bs[1] is None else bs[1].double(), **kwargs)
    assert ours.shape == ref.shape and ours.dtype == x.dtype
    torch.testing.assert_close(ours.double(), ref, rtol=fwd_tol, atol=fwd_tol)
    if check_grad:
        g = torch.randn_like(ref)
        ours.backward(g.to(ours.dtype))
        ref.backward(g)
        torch.testing.assert_close(xs[0].grad.double(), xs[1].grad.double(), rtol=grad_tol, atol=grad_tol)
        torch.testing.assert_close(ws[0].grad.double(), ws[1].grad.double(), rtol=grad_tol, atol=grad_tol)
        if b is not None:
            torch.testing.assert_close(bs[0].grad.double(), bs[1].grad.double(), rtol=grad_tol, atol=grad_tol)


KERNELS = [(3, 3), (1, 1), (2, 4)]
STRIDES = [1, 2, (2, 3)]
PADDINGS = [0, 1, (2, 0)]
OUTPUT_PADDINGS = [0, 1, (1, 0)]
DILATIONS = [1, 2, (1, 3)]
GROUPS = [1, 2]


def test_sweep_all_arguments_float64(device, single_thread):
    """Every combination of kernel, stride, padding, output_padding, dilation and groups that
    torch accepts; batch cycles through unbatched, 1 and 3; bias on every other case."""
    n_checked = 0
    combos = itertools.product(KERNELS, STRIDES, PADDINGS, OUTPUT_PADDINGS, DILATIONS, GROUPS)
    for i, (k, s, p, op, d, g) in enumerate(combos):
        hw = (4, 5)
        if not _valid(k, s, p, op, d, hw):
            continue
        batch = [None, 1, 3][i % 3]
        cin, cout_g = 2 * g, 3 if g == 1 else 2
        shape = (cin,) + hw if batch is None else (batch, cin) + hw
        x = torch.randn(shape, dtype=torch.float64, device=device)
        w = torch.randn(cin, cout_g, *k, dtype=torch.float64, device=device)
        b = torch.randn(cout_g * g, dtype=torch.float64, device=device) if i % 2 else None
        _check_against_torch(x, w, b, dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d))
        n_checked += 1
    assert n_checked > 300


@pytest.mark.parametrize(
    "cin,cout,groups,k,stride,padding,output_padding,dilation,hw,batch",
    [
        (64, 32, 1, (4, 4), 2, 1, 0, 1, (6, 6), 2),          # DCGAN-like
        (6, 6, 6, (4, 4), 2, 1, 0, 1, (5, 7), 2),            # depthwise
        (4, 8, 4, (3, 3), 3, 2, 2, 1, (5, 4), 1),            # output_padding = stride - 1
        (3, 5, 1, (5, 2), (1, 4), (2, 1), (0, 3), (3, 1), (7, 3), 2),  # everything non-square
        (2, 3, 1, (3, 3), 1, 0, 2, 3, (4, 4), 2),            # output_padding < dilation (stride 1)
        (5, 7, 1, (1, 1), 1, 0, 0, 1, (1, 1), 3),            # 1x1 everything
        (2, 2, 1, (7, 7), 5, 6, 0, 1, (3, 3), 1),            # large padding, sparse taps
        (4, 6, 2, (3, 3), 2, 1, 1, 2, (16, 20), 5),          # chunks of 2 images in parallel, last one short
        (3, 4, 1, (4, 4), 2, 1, 0, 1, (24, 24), 3),          # one image per chunk, 3 chunks
        # Images in parallel, GEMM + col2im by bands of input rows (an image's columns > 256 KiB):
        (8, 32, 1, (4, 4), 2, 1, 0, 1, (37, 32), 2),         # bands of 4 rows, a last band of 1
        (8, 32, 4, (3, 3), 2, 1, 1, 1, (33, 40), 2),         # groups, output_padding, bands of 5
        (4, 24, 2, (3, 5), (2, 1), (1, 2), (1, 0), (1, 2), (30, 36), 3),  # non-square, dilated, bands
    ],
)
def test_selected_shapes(device, cin, cout, groups, k, stride, padding, output_padding, dilation, hw, batch):
    x = torch.randn(batch, cin, *hw, dtype=torch.float64, device=device)
    w = torch.randn(cin, cout // groups, *k, dtype=torch.float64, device=device)
    b = torch.randn(cout, dtype=torch.float64, device=device)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    _check_against_torch(x, w, b, kw)
    _check_against_torch(x, w, None, kw)


def test_batch_chunked_columns(device):
    """FCN-style 32x up-sampling (kernel 64, stride 32): the columns of one image exceed the
    budget, so the batch is processed image by image (grad_weight accumulated in order)."""
    x = torch.randn(2, 2, 32, 33, dtype=torch.float64, device=device)
    w = torch.randn(2, 4, 64, 64, dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    _check_against_torch(x, w, b, dict(stride=32, padding=16), grad_tol=1e-9, fwd_tol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_dtypes(device, dtype):
    x = torch.randn(2, 4, 6, 5, device=device).to(dtype)
    w = (torch.randn(4, 3, 3, 3, device=device) / 3).to(dtype)
    b = torch.randn(6, device=device).to(dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    # Computed in float32, rounded once to dtype: within a few ulps of the float64 reference.
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _check_against_torch(x, w, b, kw, fwd_tol=tol, grad_tol=tol * 4)


def test_channels_last_and_non_contiguous(device):
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, device=device)
    b = torch.randn(3, dtype=torch.float64, device=device)
    kw = dict(stride=(2, 1), padding=(1, 0))
    ref = F.conv_transpose2d(x, w, b, **kw)
    torch.testing.assert_close(conv_transpose2d(x.to(memory_format=torch.channels_last), w, b, **kw), ref)
    x_nc = torch.randn(3, 8, 7, 18, dtype=torch.float64, device=device)[:, ::2, :, ::2]  # [3, 4, 7, 9]
    w_nc = torch.randn(4, 3, 2, 3, dtype=torch.float64, device=device).transpose(2, 3)  # [4, 3, 3, 2]
    assert not x_nc.is_contiguous() and not w_nc.is_contiguous()
    b_nc = torch.randn(6, dtype=torch.float64, device=device)[::2]
    _check_against_torch(x_nc, w_nc, b_nc, kw)
    _check_against_torch(x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last), b, kw)
    # Large enough planes for the banded path, which reads the channels-last input in place.
    x_big = torch.randn(2, 4, 34, 40, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    w_big = torch.randn(4, 40, 4, 4, dtype=torch.float64, device=device)
    _check_against_torch(x_big, w_big, torch.randn(40, dtype=torch.float64, device=device), dict(stride=2, padding=1))


def test_empty_batch_and_zero_out_channels(device):
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(0, 4, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    out = conv_transpose2d(x, w, b, stride=2)
    assert out.shape == (0, 3, 11, 11)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == x.shape
    out0 = conv_transpose2d(torch.randn(2, 4, 5, 5, device=device), torch.randn(4, 0, 3, 3, device=device))
    assert out0.shape == (2, 0, 7, 7)


def test_deterministic_across_thread_counts(device):
    # 9x9 planes: the whole batch in one GEMM; 16x20 planes: chunks of 2 images in parallel;
    # 40x40 planes: images in parallel, each by bands of input rows.
    for shape in ((4, 8, 9, 9), (5, 8, 16, 20), (3, 8, 40, 40)):
        _check_deterministic(device, shape)


def _check_deterministic(device, shape):
    x = torch.randn(shape, device=device)
    w = torch.randn(8, 3, 4, 4, device=device)
    b = torch.randn(6, device=device)
    kw = dict(stride=2, padding=1, groups=2)
    old = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            xs, ws, bs = (v.clone().requires_grad_(True) for v in (x, w, b))
            out = conv_transpose2d(xs, ws, bs, **kw)
            out.backward(torch.ones_like(out) * 0.5 + out.detach() * 0.1)
            results.append((out.detach(), xs.grad, ws.grad, bs.grad))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


def test_gradcheck(device, single_thread):
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    for kw in [dict(stride=2, padding=1, output_padding=1, groups=2), dict(stride=(1, 2), dilation=(2, 1), padding=(1, 0), groups=2)]:
        assert torch.autograd.gradcheck(lambda a, c, d: conv_transpose2d(a, c, d, **kw), (x, w, b))
    x3 = torch.randn(4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: conv_transpose2d(a, c, None, stride=3, groups=2), (x3, w))


def test_gradient_only_where_needed(device):
    x = torch.randn(2, 4, 3, 3, device=device)
    w = torch.randn(4, 2, 3, 3, device=device, requires_grad=True)
    out = conv_transpose2d(x, w, None, stride=2)
    out.sum().backward()
    ref_w = w.detach().clone().requires_grad_(True)
    F.conv_transpose2d(x, ref_w, None, stride=2).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)
    assert x.grad is None


def test_opcheck(device, single_thread):
    x = torch.randn(2, 4, 5, 6, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    b = torch.randn(6, device=device)
    cases = [
        (x, w, b, [2, 2], [1, 1], [1, 1], 2, [1, 1]),
        (x, w, None, [1, 2], [0, 1], [0, 1], 1, [2, 1]),
        (x[0], w, b, [2, 2], [0, 0], [0, 0], 2, [1, 1]),
    ]
    for i, args in enumerate(cases):
        if i == 0:  # with gradients: also checks the autograd registration
            args = tuple(a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.pydetops.conv_transpose2d.default, args)
    go = torch.randn(2, 6, 10, 12, device=device)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.pydetops._conv_transpose2d_backward.default,
                              (go, x, w, [2, 2], [1, 1], [1, 1], 2, [1, 1], mask))


def test_torch_compile_fullgraph(device, single_thread):
    x = torch.randn(2, 4, 5, 5, device=device, requires_grad=True)
    w = torch.randn(4, 3, 4, 4, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)

    def f(a, c, d):
        return conv_transpose2d(a, c, d, stride=2, padding=1).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b))
    ref = f(x, w, b)
    ref_grads = torch.autograd.grad(ref, (x, w, b))
    torch.testing.assert_close(out, ref)
    for a, c in zip(grads, ref_grads):
        torch.testing.assert_close(a, c)


@pytest.mark.torchscript
def test_torch_jit_script(device):
    scripted = torch.jit.script(conv_transpose2d)
    x = torch.randn(2, 4, 5, 5, device=device)
    w = torch.randn(4, 3, 4, 4, device=device)

    @torch.jit.script
    def caller(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(a, c, None, 2, 1, 1, 1, 1)  # ints broadcast to pairs at compile time

    torch.testing.assert_close(caller(x, w), F.conv_transpose2d(x, w, None, 2, 1, 1))
    # From Python, pass every pair argument: TorchScript keeps an omitted BroadcastingList2 default as a
    # plain int (a TorchScript limitation shared by torch's own functions); from script code ints broadcast.
    torch.testing.assert_close(scripted(x, w, None, [2, 1], [1, 0], [0, 0], 1, [1, 1]),
                               F.conv_transpose2d(x, w, None, (2, 1), (1, 0)))

    @torch.jit.script
    def caller_defaults(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(a, c)

    torch.testing.assert_close(caller_defaults(x, w), F.conv_transpose2d(x, w))
    m = ConvTranspose2d(4, 6, 3, stride=2, groups=2).to(device)
    sm = torch.jit.script(m)
    torch.testing.assert_close(sm(x), m(x))
    torch.testing.assert_close(sm(x, [12, 12]), m(x, output_size=[12, 12]))


def test_module_is_drop_in(device):
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(8, 6, (3, 4), stride=2, padding=(1, 2), output_padding=(1, 0), groups=2,
                                   dilation=(1, 2)).to(device)
    torch.manual_seed(0)
    ours = ConvTranspose2d(8, 6, (3, 4), stride=2, padding=(1, 2), output_padding=(1, 0), groups=2,
                           dilation=(1, 2)).to(device)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)  # same init
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 6, device=device)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    # output_size chooses output_padding as torch does
    m_ref = torch.nn.ConvTranspose2d(8, 6, 3, stride=3, bias=False).to(device)
    m = ConvTranspose2d(8, 6, 3, stride=3, bias=False).to(device)
    m.load_state_dict(m_ref.state_dict())
    for size in ([16, 19], [2, 6, 17, 18]):
        torch.testing.assert_close(m(x, output_size=size), m_ref(x, output_size=size), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        m(x, output_size=[25, 25])
    with pytest.raises(ValueError, match="padding_mode|zeros"):
        ConvTranspose2d(2, 2, 3, padding_mode="reflect")


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_init_matches_bilinear_interpolation(device, factor):
    k = 2 * factor - factor % 2
    pad = (factor - factor % 2) // 2
    m = ConvTranspose2d(3, 3, k, stride=factor, padding=pad, bias=True).to(device).double().init_bilinear_()
    assert torch.equal(m.bias, torch.zeros_like(m.bias))
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, device=device)
    out = m(x)
    assert out.shape == (1, 3, 6 * factor, 7 * factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # Away from the border (where the transposed conv sees zero padding) the two agree.
    torch.testing.assert_close(out[..., factor:-factor, factor:-factor], ref[..., factor:-factor, factor:-factor])
    # off-diagonal channel pairs are zero; FCN's filter on the diagonal
    w = m.weight.detach()
    assert torch.equal(w[0, 1], torch.zeros_like(w[0, 1]))
    if factor == 2:
        f = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64, device=device)
        torch.testing.assert_close(w[1, 1], f[:, None] * f[None, :])


def test_bilinear_init_groups_and_non_square(device):
    w = torch.empty(6, 1, 4, 3, device=device)
    bilinear_upsampling_weight_(w, groups=6)
    fh = torch.tensor([0.25, 0.75, 0.75, 0.25], device=device)
    fw = torch.tensor([0.5, 1.0, 0.5], device=device)
    for c in range(6):
        torch.testing.assert_close(w[c, 0], fh[:, None] * fw[None, :])
    w2 = torch.randn(4, 3, 4, 4, device=device)
    bilinear_upsampling_weight_(w2)
    assert torch.equal(w2[3], torch.zeros_like(w2[3]))  # C_in > C_out: extra inputs unused
    with pytest.raises(ValueError, match="groups"):
        bilinear_upsampling_weight_(w2, groups=3)
    with pytest.raises(ValueError, match="weight"):
        bilinear_upsampling_weight_(torch.empty(3, 3, 3))


BAD = [
    # (description, input shape, weight shape, bias shape, kwargs, exception, match)
    ("channel mismatch", (2, 5, 4, 4), (4, 3, 3, 3), None, {}, ValueError, "channels"),
    ("groups do not divide", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(groups=3), ValueError, "groups"),
    ("zero groups", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(groups=0), ValueError, "groups"),
    ("output_padding >= stride", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(stride=2, output_padding=2), ValueError,
     "output padding"),
    ("output_padding >= dilation", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(dilation=2, output_padding=(0, 2)),
     ValueError, "output padding"),
    ("negative output_padding", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(stride=2, output_padding=-1), ValueError,
     "output_padding"),
    ("zero stride", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(stride=0), ValueError, "stride"),
    ("negative stride", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(stride=(1, -2)), ValueError, "stride"),
    ("negative padding", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(padding=-1), ValueError, "padding"),
    ("zero dilation", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(dilation=0), ValueError, "dilation"),
    ("5-D input", (1, 2, 4, 4, 4), (4, 3, 3, 3), None, {}, ValueError, "input"),
    ("2-D input", (4, 4), (4, 3, 3, 3), None, {}, ValueError, "input"),
    ("3-D weight", (2, 4, 4, 4), (4, 3, 3), None, {}, ValueError, "weight"),
    ("empty kernel", (2, 4, 4, 4), (4, 3, 0, 3), None, {}, ValueError, "weight"),
    ("zero input channels", (2, 0, 4, 4), (0, 3, 3, 3), None, {}, ValueError, "weight"),
    ("empty plane", (2, 4, 0, 4), (4, 3, 3, 3), None, {}, ValueError, "input"),
    ("bias size", (2, 4, 4, 4), (4, 3, 3, 3), (4,), {}, ValueError, "bias"),
    ("bias dims", (2, 4, 4, 4), (4, 3, 3, 3), (3, 1), {}, ValueError, "bias"),
    ("output too small", (2, 4, 2, 2), (4, 3, 3, 3), None, dict(padding=3), ValueError, "padding"),
    ("three strides", (2, 4, 4, 4), (4, 3, 3, 3), None, dict(stride=(1, 2, 3)), ValueError, "stride"),
]


@pytest.mark.parametrize("desc,xs,ws,bs,kwargs,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(device, desc, xs, ws, bs, kwargs, exc, match):
    x = torch.randn(xs, device=device)
    w = torch.randn(ws, device=device)
    b = None if bs is None else torch.randn(bs, device=device)
    with pytest.raises(exc, match=match):
        conv_transpose2d(x, w, b, **kwargs)


def test_bad_dtypes(device):
    x = torch.randn(2, 4, 4, 4, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    with pytest.raises(TypeError, match="weight"):
        conv_transpose2d(x, w.double())
    with pytest.raises(TypeError, match="bias"):
        conv_transpose2d(x, w, torch.randn(3, device=device, dtype=torch.float64))
    with pytest.raises(TypeError, match="input"):
        conv_transpose2d(x.int(), w.int())
    with pytest.raises(ValueError, match="grad_output"):
        torch.ops.pydetops._conv_transpose2d_backward(torch.randn(2, 3, 5, 5, device=device), x, w, [1, 1], [0, 0],
                                                      [0, 0], 1, [1, 1], [True, True, True])


def test_exported_names():
    for name in ("conv_transpose2d", "ConvTranspose2d", "bilinear_upsampling_weight_"):
        assert name in ops.__all__
    assert {"conv_transpose2d", "_conv_transpose2d_backward"} <= set(ops.registered_op_names())
