"""optimize_for_inference(winograd=True): the detectors' 3x3 stride-1 convolutions of >= 64 channels
run pydetops' Winograd kernel (fused with bias / residual / ReLU), everything else as with
winograd=False; features equal within float rounding; the transformed weights follow the weights.
"""
import copy

import pytest
import torch
from torch import nn

from pydetops import ops
from pydetops.models import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn, mask_rcnn, retinanet
from pydetops.models.fast_paths import FusedConv2d, use_winograd_

CL = torch.channels_last
SMALL = dict(min_size=96, max_size=128)
R18 = dict(backbone="resnet18", norm="frozen", **SMALL)
MODELS = {  # name: (constructor, input size)
    "fasterrcnn_resnet50_fpn": (
        lambda: fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_detections_per_img=20, **SMALL),
        (96, 120)),
    "fasterrcnn_mobilenet_v3_large_fpn": (
        lambda: fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, box_detections_per_img=20,
                                                  **SMALL), (96, 120)),
    "mask_rcnn_r18": (lambda: mask_rcnn(num_classes=3, box_detections_per_img=10, **R18), (96, 120)),
    "retinanet_r18": (lambda: retinanet(num_classes=3, backbone="resnet18", norm="frozen", image_size=96,
                                        head_norm=None, score_thresh=0.0, detections_per_img=20), (96, 120)),
}


def _winograd_convs(model):
    return [m for m in model.modules() if isinstance(m, FusedConv2d) and m.winograd]


def _eligible_convs(model):
    """The 3x3 stride-1 >= 64-channel convolutions of the model (plain or fused), by parameter."""
    return {id(m.weight) for m in model.modules()
            if isinstance(m, (nn.Conv2d, FusedConv2d)) and ops.winograd_applies(m)}


@pytest.mark.parametrize("name", list(MODELS))
def test_detectors_with_winograd(name, monkeypatch):
    ctor, size = MODELS[name]
    torch.manual_seed(3)
    model = ctor().eval()
    direct = copy.deepcopy(model).optimize_for_inference(winograd=False)
    wino = model.optimize_for_inference()
    assert not _winograd_convs(direct)
    chosen = _winograd_convs(wino)
    # every eligible conv whose activation the kernel fuses ("none" / "relu") runs it
    assert {id(m.weight) for m in chosen} == {
        id(m.weight) for m in wino.modules()
        if isinstance(m, FusedConv2d) and m.activation in ("none", "relu") and ops.winograd_applies(m)}
    assert len(chosen) > 0 and len(chosen) >= len(_eligible_convs(direct)) // 2
    assert list(wino.state_dict()) == list(direct.state_dict())
    calls = []
    real = ops.winograd.conv3x3_winograd
    import pydetops.models.fast_paths as fp
    monkeypatch.setattr(fp, "conv3x3_winograd", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, *size, generator=g).contiguous(memory_format=CL)
    with torch.no_grad():
        fa, fb = wino.backbone(x), direct.backbone(x)
        images = [torch.rand(3, *size, generator=g)]
        got, want = wino(images), direct(images)
    assert calls, "the Winograd kernel did not run"
    for k in fb:  # float rounding only
        assert float((fa[k] - fb[k]).abs().max()) <= 2e-5 * float(fb[k].abs().max()) + 1e-6, k
    for a, b in zip(got, want):
        assert set(a) == set(b)
        assert a["boxes"].shape[1] == 4 and torch.isfinite(a["boxes"]).all()


def test_transformed_weight_follows_the_weight():
    conv = nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, "relu", winograd=True)
    assert fused.winograd
    x = torch.randn(1, 64, 40, 48).contiguous(memory_format=CL)
    with torch.no_grad():
        first = fused(x)
        torch.testing.assert_close(first, torch.relu(conv(x)), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(-1.0)  # in place: the cached transform must be remade
        torch.testing.assert_close(fused(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-5)
        conv.weight = nn.Parameter(0.05 * torch.randn_like(conv.weight))  # a new Parameter: the module's own is the old
        fused.weight = conv.weight
        torch.testing.assert_close(fused(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-5)


def test_winograd_only_where_it_applies():
    assert not FusedConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1, stride=2), "relu", winograd=True).winograd
    assert not FusedConv2d.from_conv(nn.Conv2d(32, 32, 3, padding=1), "relu", winograd=True).winograd
    assert not FusedConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1), "hardswish", winograd=True).winograd
    assert not FusedConv2d.from_conv(nn.Conv2d(64, 64, 1), "relu", winograd=True).winograd
    block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1, stride=2))
    use_winograd_(block)
    assert isinstance(block[0], FusedConv2d) and block[0].winograd and block[0].activation == "none"
    assert type(block[1]) is nn.Conv2d
    use_winograd_(block, False)
    assert not block[0].winograd


def test_training_and_grad_take_the_plain_path():
    conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=CL)
    fused = FusedConv2d.from_conv(conv, "relu", winograd=True)
    x = torch.randn(1, 64, 40, 48).contiguous(memory_format=CL).requires_grad_()
    y = fused(x)  # grad mode on, weight requires grad: F.conv2d, differentiable
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_use_winograd_trains_like_the_plain_model(monkeypatch):
    # The same training step with and without Winograd, both against the float64 model: the losses
    # agree, and each parameter's gradient is as close to float64's as the direct convolution's is.
    from pydetops.models.fast_paths import WinogradConv2d
    import pydetops.models.fast_paths as fp
    torch.manual_seed(5)
    model = retinanet(num_classes=3, backbone="resnet18", norm="frozen", image_size=64, head_norm=None).train()
    exact = copy.deepcopy(model).double()
    plain = copy.deepcopy(model).use_channels_last(True)
    wino = model.use_channels_last(True).use_winograd(True)
    convs = [m for m in wino.modules() if type(m) is WinogradConv2d]
    assert len(convs) >= 8 and list(wino.state_dict()) == list(plain.state_dict())
    monkeypatch.setattr(WinogradConv2d, "MIN_PIXELS", 16)  # the kernel on this small image's maps too
    calls = []
    real = ops.winograd_conv2d
    monkeypatch.setattr(fp, "winograd_conv2d", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(6)
    image = torch.rand(3, 64, 64, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[10.0, 12.0, 45.0, 55.0]], dtype=torch.float64)
    losses = []
    for m, dtype in ((exact, torch.float64), (plain, torch.float32), (wino, torch.float32)):
        loss = sum(m([image.to(dtype)], [{"boxes": boxes.to(dtype), "labels": torch.tensor([1])}]).values())
        loss.backward()
        losses.append(float(loss.detach()))
    assert calls
    assert abs(losses[2] - losses[0]) <= 1e-4 * abs(losses[0]) + 1e-5
    for (name, p64), p32, pw in zip(exact.named_parameters(), plain.parameters(), wino.parameters()):
        if p64.grad is None:
            continue
        err_direct = float((p32.grad.double() - p64.grad).abs().max())
        err_wino = float((pw.grad.double() - p64.grad).abs().max())
        assert err_wino <= 4 * err_direct + 1e-6 * float(p64.grad.abs().max()), name
    wino.use_winograd(False)
    assert not any(type(m) is WinogradConv2d for m in wino.modules())


@pytest.mark.torchscript
def test_winograd_conv2d_module_falls_back_and_scripts():
    from pydetops.models.fast_paths import WinogradConv2d
    conv = nn.Conv2d(64, 64, 3, padding=1)
    conv.__class__ = WinogradConv2d
    x = torch.randn(1, 64, 48, 48)
    torch.testing.assert_close(conv(x), F_conv(x, conv))                      # NCHW: the plain conv
    xc = x.contiguous(memory_format=CL)
    torch.testing.assert_close(conv(xc), F_conv(x, conv), rtol=1e-5, atol=1e-5)  # the kernel
    scripted = torch.jit.script(conv)
    torch.testing.assert_close(scripted(x), F_conv(x, conv))


def F_conv(x, conv):
    return torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
