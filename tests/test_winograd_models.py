"""optimize_for_inference(winograd=True): the detectors' 3x3 stride-1 convolutions of >= 64 channels
run pydetops' Winograd kernel (fused with bias / residual / ReLU), everything else as with
winograd=False; features equal within float rounding; the transformed weights follow the weights.
"""
import copy

import pytest
import torch
from torch import nn

from pydetops import ops
from pydetops.models import (fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn, keypoint_rcnn, mask_rcnn,
                             retinanet)
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
    "keypoint_rcnn_r18": (lambda: keypoint_rcnn(num_classes=2, box_detections_per_img=10, **R18), (96, 120)),
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
