"""Backbones of pydetops.models: ResNet-18/50, MobileNetV3-Large, the tiny CNN, FPN, frozen BN.

The torchvision parts (same ``state_dict`` keys and shapes, same outputs after loading
torchvision's weights) skip where torchvision does not import.
"""
import pytest
import torch
from torch import nn

from pydetops.models import backbones as B


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are small: one thread is as fast, and on a shared, loaded CPU two
    # spinning OpenMP threads were measured 10x slower per training step.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_bn_stats(module):
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, B.FrozenBatchNorm2d)):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


# ---------------------------------------------------------------- frozen batch norm

def test_frozen_batchnorm_matches_float64_formula_and_loads_batchnorm_checkpoints():
    bn = nn.BatchNorm2d(5)
    _randomize_bn_stats(bn)
    frozen = B.FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked is dropped
    x = torch.randn(2, 5, 3, 4)
    xd = x.double()
    ref = (xd - bn.running_mean.double()[:, None, None]) / torch.sqrt(bn.running_var.double()[:, None, None] + 1e-5)
    ref = ref * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
    torch.testing.assert_close(frozen(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert list(frozen.parameters()) == []  # nothing trains
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


@pytest.mark.parametrize("depth", [18, 50])
def test_fold_frozen_batchnorm_keeps_outputs(depth):
    net = B.resnet_fpn_backbone(depth, B.FrozenBatchNorm2d, trainable_layers=3, out_channels=32)
    _randomize_bn_stats(net)
    net = net.double().eval()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        B.fold_frozen_batchnorm_(net)
        after = net(x)
    assert not any(isinstance(m, B.FrozenBatchNorm2d) for m in net.modules())
    assert list(before) == list(after)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-9, atol=1e-9)


def test_fold_batchnorm_eval_mobilenet():
    # float32 (depthwise convs in float64 are slow): tolerance relative to the maps' scale
    net = B.mobilenet_v3_fpn_backbone(nn.BatchNorm2d, trainable_layers=3, out_channels=32)
    _randomize_bn_stats(net)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        B.fold_frozen_batchnorm_(net)
        after = net(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for k in before:
        scale = float(before[k].abs().max())
        torch.testing.assert_close(after[k], before[k], rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- shapes, names, freezing

@pytest.mark.parametrize("depth,channels", [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
def test_resnet_strides_and_channels(depth, channels):
    net = B.resnet18() if depth == 18 else B.resnet50()
    out = net(torch.randn(1, 3, 64, 128))
    assert list(out) == ["layer1", "layer2", "layer3", "layer4"]
    for (name, f), c, s in zip(out.items(), channels, (4, 8, 16, 32)):
        assert f.shape == (1, c, 64 // s, 128 // s), name


def test_fpn_names_shapes_and_top_down_sum():
    net = B.resnet_fpn_backbone(18, nn.BatchNorm2d, trainable_layers=5, out_channels=16).eval()
    out = net(torch.randn(1, 3, 96, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(24, 16), (12, 8), (6, 4), (3, 2), (2, 1)]
    assert all(f.shape[1] == 16 for f in out.values())
    # "pool" is the coarsest level subsampled by two
    torch.testing.assert_close(out["pool"], out["3"][:, :, ::2, ::2])


def test_fpn_matches_a_plain_reference():
    fpn = B.FeaturePyramidNetwork([4, 6], 5)
    c = {"a": torch.randn(1, 4, 6, 8, dtype=torch.float64), "b": torch.randn(1, 6, 3, 4, dtype=torch.float64)}
    fpn = fpn.double()
    out = fpn(c)
    conv = nn.functional.conv2d
    ib, lb = fpn.inner_blocks, fpn.layer_blocks
    top = conv(c["b"], ib[1][0].weight, ib[1][0].bias)
    p_b = conv(top, lb[1][0].weight, lb[1][0].bias, padding=1)
    up = top.repeat_interleave(2, 2).repeat_interleave(2, 3)
    p_a = conv(conv(c["a"], ib[0][0].weight, ib[0][0].bias) + up, lb[0][0].weight, lb[0][0].bias, padding=1)
    assert list(out) == ["a", "b"]
    torch.testing.assert_close(out["a"], p_a)
    torch.testing.assert_close(out["b"], p_b)


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_resnet_trainable_layers(trainable):
    net = B.resnet_fpn_backbone(18, B.FrozenBatchNorm2d, trainable_layers=trainable, out_channels=8)
    train_names = {n.split(".")[1] for n, p in net.body.named_parameters(prefix="body") if p.requires_grad}
    expected = set(["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable])
    assert train_names == expected
    assert all(p.requires_grad for p in net.fpn.parameters())


def test_mobilenet_v3_shapes_and_freezing():
    net = B.mobilenet_v3_fpn_backbone(nn.BatchNorm2d, trainable_layers=3, out_channels=8).eval()
    out = net(torch.randn(1, 3, 128, 96))
    assert list(out) == ["0", "1", "pool"]
    # block 13 (stride 2) and the last conv both give stride 32, as torchvision
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(4, 3), (4, 3), (2, 2)]
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if n.startswith("body.") and not p.requires_grad}
    assert frozen == {str(i) for i in range(7)}  # stages before block 7 (the 3 top stages train)


def test_tiny_cnn_and_bad_arguments():
    net = B.TinyCNN()
    out = net(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in out.values()] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="widths"):
        B.TinyCNN(widths=(8, 8))
    with pytest.raises(ValueError, match="norm"):
        B.norm_layer_by_name("instance")
    with pytest.raises(ValueError, match="depth"):
        B.resnet_fpn_backbone(34)
    with pytest.raises(ValueError, match="trainable_layers"):
        B.resnet_fpn_backbone(18, trainable_layers=6)
    with pytest.raises(ValueError, match="trainable_layers"):
        B.mobilenet_v3_fpn_backbone(trainable_layers=7)


def test_group_norm_option_has_no_batch_statistics():
    net = B.resnet_fpn_backbone(18, B.norm_layer_by_name("group"), trainable_layers=5, out_channels=8)
    assert not any("running" in k for k in net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    net.train()
    both = net(x)["0"]
    one = net(x[:1])["0"]
    torch.testing.assert_close(one, both[:1], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- torchvision: names, shapes, outputs

def _torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision.models import mobilenet_v3_large, resnet18, resnet50  # noqa: F401
        return torchvision
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")


def _same_keys_and_shapes(ours, theirs):
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sorted(a) == sorted(b)
    assert a == b


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_fpn_backbone_equals_torchvision(depth):
    tv = _torchvision()
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozen
    torch.manual_seed(0)
    theirs = tv_fpn(backbone_name=f"resnet{depth}", weights=None, norm_layer=TVFrozen, trainable_layers=3).eval()
    ours = B.resnet_fpn_backbone(depth, B.FrozenBatchNorm2d, trainable_layers=3).eval()
    _same_keys_and_shapes(ours, theirs)
    _randomize_bn_stats(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    del tv


def test_mobilenet_fpn_backbone_equals_torchvision():
    _torchvision()
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    torch.manual_seed(0)
    theirs = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d), True, 3).eval()
    ours = B.mobilenet_v3_fpn_backbone(nn.BatchNorm2d, trainable_layers=3).eval()
    _same_keys_and_shapes(ours, theirs)
    _randomize_bn_stats(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
