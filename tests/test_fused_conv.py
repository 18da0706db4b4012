"""Convolution fusion (issues 10-12): ``FusedConv2d`` computes ``act(conv2d(x) + residual)`` with
oneDNN's post-op kernel on the CPU (float32, channels-last, no autograd) and with the plain ops
otherwise; ``optimize_for_inference()`` swaps it into every detector's residual blocks, FPN, heads
and Sequentials. ReLU / ReLU6 / no activation and the residual addition must be bit-identical to the
plain ops (and so every ReLU detector's detections to the folded-but-unfused model's); Hardswish
(MobileNetV3) is within float rounding (<= 1e-6 of the output's magnitude per layer)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pydetops.models import (fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn, keypoint_rcnn, mask_rcnn,
                             retinanet, ssd300_vgg16)
from pydetops.models.backbones import (BasicBlock, Bottleneck, ConvNormAct, FeaturePyramidNetwork, FrozenBatchNorm2d,
                                       InvertedResidual, fold_frozen_batchnorm_)
from pydetops.models.fast_paths import MKLDNN_FUSION_AVAILABLE, FusedConv2d, fuse_conv_activations_

CL = torch.channels_last
needs_onednn = pytest.mark.skipif(not MKLDNN_FUSION_AVAILABLE, reason="torch built without mkldnn's fused conv ops")


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # ATen picks oneDNN for every shape below at 2 threads (see _eager_uses_onednn)
    yield
    torch.set_num_threads(threads)


def _reference(conv: nn.Conv2d, x, residual, activation):
    y = conv(x)
    if residual is not None:
        y = y + residual
    return {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}[activation](y)


def _spy(monkeypatch):
    """Counts the calls that took the oneDNN kernel."""
    calls = []
    original = FusedConv2d._cpu_kernel

    def counted(self, x, residual):
        calls.append(residual is not None)
        return original(self, x, residual)

    monkeypatch.setattr(FusedConv2d, "_cpu_kernel", counted)
    return calls


GEOMETRIES = [  # (c_in, c_out, kernel, stride, padding, dilation, groups, bias, input H, W)
    (8, 16, 3, 1, 1, 1, 1, True, 13, 17),      # plain 3x3
    (16, 32, 1, 1, 0, 1, 1, False, 12, 9),     # 1x1, no bias (ResNet's)
    (24, 24, 3, 2, 1, 1, 24, True, 15, 16),    # depthwise, stride 2 (MobileNet's)
    (16, 24, 5, 2, 2, 1, 1, True, 11, 14),     # 5x5 stride 2
    (16, 32, 3, 1, 2, 2, 1, True, 14, 10),     # dilation 2 (SSD's fc6 kind)
    (12, 18, 3, 1, 0, 1, 3, True, 9, 9),       # 3 groups, no padding
    (8, 8, (1, 3), (2, 1), (0, 1), 1, 1, True, 10, 12),  # non-square kernel / stride / padding
]


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "hardswish"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_conv_equals_conv_then_add_then_activation(geometry, activation, with_residual, monkeypatch):
    cin, cout, k, s, p, d, g, bias, h, w = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=bias).eval().to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, activation)
    x = torch.randn(2, cin, h, w).contiguous(memory_format=CL)
    with torch.no_grad():
        out_hw = fused.output_size(x)
        assert out_hw == list(conv(x).shape[-2:])
        residual = torch.randn(2, cout, *out_hw).contiguous(memory_format=CL) if with_residual else None
        calls = _spy(monkeypatch)
        got = fused(x, residual)
        want = _reference(conv, x, residual, activation)
    # oneDNN has no post-sum Hardswish / ReLU6: those run the plain ops (exactly the reference)
    fast = not with_residual or activation in ("none", "relu")
    assert calls == ([with_residual] if fast else [])
    assert got.shape == want.shape and got.dtype == torch.float32
    if fast:
        assert got.is_contiguous(memory_format=CL)
    if activation == "hardswish" and fast:
        # oneDNN rounds x * relu6(x + 3) / 6 differently: a float32 ulp or two of the output's scale
        assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))
    else:
        assert torch.equal(got, want)
    # and both are the float64 result (the fused kernel is not merely equal to a wrong reference)
    conv64 = copy.deepcopy(conv).double()
    want64 = _reference(conv64, x.double(), None if residual is None else residual.double(), activation)
    torch.testing.assert_close(got.double(), want64, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_fallbacks_run_the_plain_ops(monkeypatch):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, 1, 1).to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, "relu")
    x = torch.randn(2, 8, 10, 11)
    r = torch.randn(2, 16, 10, 11)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        # contiguous (NCHW) input and weight
        nchw = FusedConv2d.from_conv(copy.deepcopy(conv).to(memory_format=torch.contiguous_format), "relu")
        assert torch.equal(nchw(x, r), _reference(conv, x, r, "relu"))
        # float64
        f64 = FusedConv2d.from_conv(copy.deepcopy(conv).double(), "relu")
        assert torch.equal(f64(x.double().contiguous(memory_format=CL)), F.relu(f64.weight.new_tensor(0) + F.conv2d(
            x.double().contiguous(memory_format=CL), f64.weight, f64.bias, 1, 1)))
        # a residual that only broadcasts: the plain addition's broadcasting
        xc = x.contiguous(memory_format=CL)
        r1 = torch.randn(1, 16, 1, 1)
        assert torch.equal(fused(xc, r1), _reference(conv, xc, r1, "relu"))
        # one-pixel maps are also NCHW-contiguous: ambiguous, eager conv2d may run another kernel
        x1 = torch.randn(3, 8, 1, 1).contiguous(memory_format=CL)
        assert torch.equal(fused(x1), _reference(conv, x1, None, "relu"))
        # an empty batch
        assert fused(torch.zeros(0, 8, 5, 5).contiguous(memory_format=CL)).shape == (0, 16, 5, 5)
        # oneDNN switched off
        torch.backends.mkldnn.enabled = False
        try:
            assert torch.equal(fused(xc), _reference(conv, xc, None, "relu"))
        finally:
            torch.backends.mkldnn.enabled = True
    assert calls == []
    # NCHW input, channels-last weight: eager conv2d converts the input, and so does the kernel
    with torch.no_grad():
        assert torch.equal(fused(x, r), _reference(conv, x, r, "relu"))
    assert calls == [True]
    calls.clear()
    # ATen's own (gemm) kernel for a 1x1 stride-1 conv of a small batch on one thread: stay on it
    conv1 = nn.Conv2d(16, 16, 1).to(memory_format=CL)
    f1 = FusedConv2d.from_conv(conv1, "relu")
    x16 = torch.randn(2, 16, 8, 8).contiguous(memory_format=CL)
    torch.set_num_threads(1)
    with torch.no_grad():
        assert torch.equal(f1(x16), F.relu(conv1(x16)))
    assert calls == []
    torch.set_num_threads(2)
    with torch.no_grad():
        assert torch.equal(f1(x16), F.relu(conv1(x16)))
    assert calls == [False]


def test_grad_enabled_falls_back_and_backpropagates(monkeypatch):
    torch.manual_seed(2)
    conv = nn.Conv2d(6, 8, 3, 2, 1).to(memory_format=CL)
    fused = FusedConv2d.from_conv(copy.deepcopy(conv), "relu")
    calls = _spy(monkeypatch)
    x = torch.randn(2, 6, 9, 9).contiguous(memory_format=CL)
    r = torch.randn(2, 8, 5, 5, requires_grad=True)
    out = fused(x.clone().requires_grad_(), r)
    want = _reference(conv, x, r.detach(), "relu")
    assert torch.equal(out.detach(), want) and out.requires_grad and calls == []
    out.square().sum().backward()
    _reference(conv, x, r.detach(), "relu").square().sum().backward()
    assert torch.equal(fused.weight.grad, conv.weight.grad) and torch.equal(fused.bias.grad, conv.bias.grad)
    assert r.grad is not None and r.grad.abs().sum() > 0
    # the same module without autograd takes the kernel (parameters requiring grad or not)
    with torch.no_grad():
        fused(x, r)
    assert calls == ([True] if MKLDNN_FUSION_AVAILABLE else [])


def test_autocast_and_bad_input_behave_as_conv2d():
    conv = nn.Conv2d(4, 8, 3, 1, 1).to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, "relu")
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=CL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(x), F.relu(conv(x))
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    valid = FusedConv2d.from_conv(nn.Conv2d(4, 8, 3), "relu")  # no padding
    for module, bad in ((fused, torch.randn(2, 5, 6, 6).contiguous(memory_format=CL)),   # channels
                        (fused, torch.randn(1, 2, 4, 6, 6)),                               # 5-D
                        (valid, torch.randn(2, 4, 2, 6).contiguous(memory_format=CL))):     # smaller than the kernel
        with pytest.raises(RuntimeError) as plain_error:
            F.relu(F.conv2d(bad, module.weight, module.bias, module.stride, module.padding))
        with torch.no_grad(), pytest.raises(RuntimeError) as fused_error:
            module(bad)
        assert str(fused_error.value) == str(plain_error.value)
    with pytest.raises(ValueError, match="activation"):
        FusedConv2d.from_conv(conv, "gelu")
    with pytest.raises(ValueError, match="conv"):
        FusedConv2d.from_conv(nn.Conv2d(4, 8, 3, padding="same"))
    with pytest.raises(ValueError, match="conv"):
        FusedConv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"))


@pytest.mark.torchscript
def test_torchscript_runs_the_plain_ops():
    conv = nn.Conv2d(4, 8, 3, 1, 1).to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, "relu")
    scripted = torch.jit.script(fused)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=CL)
    r = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(scripted(x, r), fused(x, r)) and torch.equal(scripted(x), fused(x))


def test_fusion_pass_on_sequentials_keeps_keys_and_skips_norms():
    torch.manual_seed(3)
    net = nn.Sequential(ConvNormAct(3, 8, 3, norm_layer=FrozenBatchNorm2d),                   # conv, bn, relu
                        ConvNormAct(8, 8, 3, groups=8, norm_layer=FrozenBatchNorm2d, activation_layer=nn.Hardswish),
                        ConvNormAct(8, 8, 3, norm_layer=lambda c: nn.GroupNorm(2, c)),       # norm stays: no fusion
                        nn.Conv2d(8, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1)).eval()
    fold_frozen_batchnorm_(net)
    keys = list(net.state_dict())
    plain = copy.deepcopy(net).to(memory_format=CL)
    fuse_conv_activations_(net).to(memory_format=CL)
    kinds = [type(m).__name__ for m in (net[0][0], net[1][0], net[2][0], net[3], net[4], net[5])]
    assert kinds == ["FusedConv2d", "FusedConv2d", "Conv2d", "FusedConv2d", "Identity", "Conv2d"]
    assert [net[0][0].activation, net[1][0].activation, net[3].activation] == ["relu", "hardswish", "relu"]
    assert list(net.state_dict()) == keys  # same keys: a folded checkpoint loads either way
    assert len([m for m in fuse_conv_activations_(net).modules() if isinstance(m, FusedConv2d)]) == 3  # idempotent
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        got, want = net(x), plain(x)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())  # Hardswish: rounding only


def _folded_pair(module):
    """(folded unfused, folded fused) channels-last copies of ``module`` with random BatchNorm statistics."""
    g = torch.Generator().manual_seed(4)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    plain = fold_frozen_batchnorm_(module.eval()).to(memory_format=CL)
    return plain, fuse_conv_activations_(copy.deepcopy(plain))


@needs_onednn
def test_blocks_fuse_their_residual_additions(monkeypatch):
    torch.manual_seed(5)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
    cases = [  # block, its input channels, FusedConv2d modules, the last conv adds the residual in the kernel
        (Bottleneck(16, 8, 2, down, nn.BatchNorm2d), 16, 3, True),
        (Bottleneck(32, 8, 1, None, FrozenBatchNorm2d), 32, 3, True),
        (BasicBlock(16, 16, 1, None, nn.BatchNorm2d), 16, 2, True),
        (InvertedResidual(16, 3, 48, 16, True, "RE", 1, nn.BatchNorm2d), 16, 3, True),   # SE, residual
        (InvertedResidual(16, 5, 48, 24, False, "RE", 2, nn.BatchNorm2d), 16, 2, False),  # no residual
    ]
    for block, cin, n_fused, residual_fused in cases:
        name = type(block).__name__
        plain, fused = _folded_pair(block)
        assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == n_fused, name
        x = torch.randn(2, cin, 12, 12).contiguous(memory_format=CL)
        calls = _spy(monkeypatch)
        with torch.no_grad():
            got, want = fused(x), plain(x)
        assert len(calls) == n_fused and calls[-1] is residual_fused, name
        assert torch.equal(got, want), name
        monkeypatch.undo()
    # a block whose norm was not folded (GroupNorm) is left alone
    gn = Bottleneck(32, 8, 1, None, lambda c: nn.GroupNorm(4, c))
    fuse_conv_activations_(gn)
    assert not any(isinstance(m, FusedConv2d) for m in gn.modules())


@needs_onednn
def test_fpn_fuses_lateral_and_top_down(monkeypatch):
    torch.manual_seed(6)
    fpn = FeaturePyramidNetwork([16, 32, 64], 24)
    plain, fused = copy.deepcopy(fpn).to(memory_format=CL), fuse_conv_activations_(copy.deepcopy(fpn)).to(
        memory_format=CL)
    assert all(isinstance(b[0], FusedConv2d) for b in fused.inner_blocks)
    feats = {"a": torch.randn(2, 16, 20, 23), "b": torch.randn(2, 32, 10, 12), "c": torch.randn(2, 64, 5, 6)}
    feats = {k: v.contiguous(memory_format=CL) for k, v in feats.items()}
    calls = _spy(monkeypatch)
    with torch.no_grad():
        got, want = fused(feats), plain(feats)
    assert calls == [False, True, True]  # the coarsest lateral has no top-down input
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


# -- whole detectors: optimize_for_inference(fuse=True) vs (fuse=False) -------------------------------------------

SMALL = dict(min_size=96, max_size=128)
R18 = dict(backbone="resnet18", norm="frozen", **SMALL)  # FrozenBatchNorm2d: folded, then fused
MODELS = {  # name: (constructor, FusedConv2d modules expected, bit-exact)
    # stem + 16 Bottlenecks x 3 convs + 4 FPN laterals + the RPN conv
    "fasterrcnn_resnet50_fpn": (
        lambda: fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_detections_per_img=20, **SMALL),
        1 + 16 * 3 + 4 + 1, True),
    # stem + 14 expand + 15 depthwise convs + 10 residual projections + last conv + 2 laterals + the RPN conv
    "fasterrcnn_mobilenet_v3_large_fpn": (
        lambda: fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, box_detections_per_img=20,
                                                  **SMALL),
        1 + 14 + 15 + 10 + 1 + 2 + 1, False),
    # 13 VGG convs + fc6 + fc7 + 4 extra blocks x 2
    "ssd300_vgg16": (lambda: ssd300_vgg16(weights=None, weights_backbone=None, detections_per_img=20), 13 + 2 + 8, True),
    # ResNet-18 stem + 8 BasicBlocks x 2 + 4 laterals + RPN conv (+ the 4 mask / 8 keypoint FCN convs)
    "mask_rcnn_r18": (lambda: mask_rcnn(num_classes=3, box_detections_per_img=10, **R18), 1 + 16 + 4 + 1 + 4, True),
    "keypoint_rcnn_r18": (lambda: keypoint_rcnn(num_classes=2, box_detections_per_img=10, **R18),
                          1 + 16 + 4 + 1 + 8, True),
    # stem + 16 + 3 laterals (P3..P5) + 2 subnets x 4 convs
    "retinanet_r18_plain_head": (lambda: retinanet(num_classes=3, backbone="resnet18", norm="frozen", image_size=96,
                                                   head_norm=None, score_thresh=0.0, detections_per_img=20),
                                 1 + 16 + 3 + 8, True),
}


@needs_onednn
@pytest.mark.parametrize("name", list(MODELS))
def test_detectors_give_the_same_outputs_fused(name, monkeypatch):
    ctor, expected, exact = MODELS[name]
    torch.manual_seed(7)
    model = ctor().eval()
    plain = copy.deepcopy(model).optimize_for_inference(fuse=False)
    fused = model.optimize_for_inference(winograd=False)  # Winograd rounds differently: test_winograd_models.py
    assert fused.channels_last and not fused.training
    assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == expected
    assert not any(isinstance(m, FusedConv2d) for m in plain.modules())
    assert list(fused.state_dict()) == list(plain.state_dict())
    g = torch.Generator().manual_seed(8)
    size = (300, 300) if "ssd300" in name else (96, 120)
    images = [torch.rand(3, *size, generator=g)]
    if "ssd300" not in name:  # (VGG-16 at 300 x 300: one image is enough)
        images.append(torch.rand(3, size[0] - 10, size[1] - 20, generator=g))
    calls = _spy(monkeypatch)
    with torch.no_grad():
        got = fused(images)
        n_calls = len(calls)
        want = plain(images)
    assert n_calls >= expected // 2  # the kernel ran (small maps of one image take ATen's kernel, as eager)
    for a, b in zip(got, want):
        assert set(a) == set(b)
    if exact:
        assert sum(len(d["boxes"]) for d in want) > 0
        for a, b in zip(got, want):
            for k in b:
                assert torch.equal(a[k], b[k]), (name, k)
    else:  # Hardswish: compare the features (random weights: the detections are near-ties)
        x = torch.rand(2, 3, 96, 128, generator=g).contiguous(memory_format=CL)
        with torch.no_grad():
            fa, fb = fused.backbone(x), plain.backbone(x)
        for k in fb:
            assert float((fa[k] - fb[k]).abs().max()) <= 1e-4 * float(fb[k].abs().max()), k
    # bad input: the same errors as before
    for bad in ([torch.rand(2, 32, 32)], [torch.rand(3, 32, 32, dtype=torch.float64).int()]):
        errors = []
        for model in (plain, fused):
            with pytest.raises((ValueError, TypeError, RuntimeError)) as e:
                model(bad)
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1]
