"""Faster R-CNN's opt-in fast paths (issue 10): ``optimize_for_inference()`` (FrozenBatchNorm2d
folded into the convolutions, channels-last backbone and RPN head) and ``use_channels_last()``
for training. Both change only the order of float operations: the features and the RPN's
outputs and losses must equal the plain model's up to float rounding, and the plain model's
parameters must be untouched by the switch."""
import copy

import pytest
import torch

from pydetops.models import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from pydetops.models.backbones import FrozenBatchNorm2d


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(ctor, size, tmp_path):
    """Built as the pretrained detectors are (weights given -> FrozenBatchNorm2d, 3 trainable
    stages), with random weights and random BatchNorm statistics. (Train-mode BatchNorm2d on one
    small image normalises a few values per channel: its float32 rounding is amplified far beyond
    what these comparisons could tell from a bug.)"""
    torch.manual_seed(0)
    donor = ctor(weights=None, weights_backbone=None, min_size=size, max_size=size)
    g = torch.Generator().manual_seed(1)
    state = {k: v for k, v in donor.state_dict().items() if not k.endswith("num_batches_tracked")}
    for name, buf in state.items():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return ctor(weights=str(path), min_size=size, max_size=size)


def _close(a, b, rel):
    scale = b.abs().max().clamp_min(1e-12)
    return float((a - b).abs().max() / scale) <= rel


@pytest.mark.parametrize("ctor", [fasterrcnn_resnet50_fpn, fasterrcnn_mobilenet_v3_large_fpn])
def test_optimize_for_inference_keeps_features_and_rpn_outputs(ctor, tmp_path):
    plain = _model(ctor, 96, tmp_path).eval()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    fast = copy.deepcopy(plain).optimize_for_inference()
    assert not fast.training and fast.channels_last
    assert any(isinstance(m, FrozenBatchNorm2d) for m in plain.backbone.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.backbone.modules())  # all folded
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_plain = plain.backbone(x)
        f_fast = fast.backbone(x.contiguous(memory_format=torch.channels_last))
        assert list(f_plain) == list(f_fast)
        for k in f_plain:
            assert f_fast[k].is_contiguous(memory_format=torch.channels_last)
            assert _close(f_fast[k], f_plain[k], 1e-4), k
        obj_plain, reg_plain = plain.rpn.head(list(f_plain.values()))
        obj_fast, reg_fast = fast.rpn.head(list(f_fast.values()))
        for a, b in zip(obj_fast + reg_fast, obj_plain + reg_plain):
            assert _close(a, b, 1e-4)
        out = fast([x[0]])[0]
    assert set(out) == {"boxes", "labels", "scores"} and out["boxes"].shape[1] == 4
    for k, v in plain.state_dict().items():  # the copy was optimized, not the original
        assert torch.equal(v, before[k]), k


def test_use_channels_last_training_gives_the_same_rpn_losses_and_gradients(tmp_path):
    plain = _model(fasterrcnn_mobilenet_v3_large_fpn, 96, tmp_path).train()
    fast = copy.deepcopy(plain).use_channels_last(True)
    x = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]),
                "labels": torch.tensor([1, 2])}]
    losses = []
    for model in (plain, fast):
        torch.manual_seed(5)  # the same anchor and RoI samples (they depend on IoUs, not on features)
        out = model([x], targets)
        out["loss_objectness"].add(out["loss_rpn_box_reg"]).backward()
        losses.append(out)
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-4, atol=1e-6)
    grads = [(n, p.grad) for n, p in plain.rpn.named_parameters() if p.grad is not None]
    assert grads
    fast_params = dict(fast.rpn.named_parameters())
    for name, g in grads:
        assert _close(fast_params[name].grad, g, 1e-3), name
    # switching back restores the contiguous format
    fast.use_channels_last(False)
    assert not fast.channels_last
    assert all(p.is_contiguous() for p in fast.backbone.parameters())
