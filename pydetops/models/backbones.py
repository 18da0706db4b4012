"""Backbones and the feature pyramid: ResNet-18/50, MobileNetV3-Large, a tiny CNN, FPN.

Every module here has torchvision's parameter names, so a detector built from them has the
``state_dict`` keys of torchvision's (``backbone.body.layer1.0.conv1.weight``,
``backbone.fpn.inner_blocks.0.0.weight``, ...) without importing torchvision.

Feature maps are ``Tensor[N, C, H, W]``; a backbone's ``forward`` returns an ordered dict
``name -> feature map`` (finest first), and ``out_channels`` is the channels of every map.
"""
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_paths import FusedConv2d, WinogradConv2d

__all__ = [
    "FrozenBatchNorm2d",
    "ConvNormAct",
    "ResNet",
    "resnet18",
    "resnet50",
    "MobileNetV3Large",
    "TinyCNN",
    "vgg16_features",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "BackboneWithFPN",
    "resnet_fpn_backbone",
    "mobilenet_v3_fpn_backbone",
    "fold_frozen_batchnorm_",
    "conv_norm",
    "conv_relu",
    "norm_layer_by_name",
    "single_map_backbone",
]


# ---------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (torchvision's semantics).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel; all four
    are buffers (never trained). A BatchNorm2d checkpoint loads into it (its
    ``num_batches_tracked`` is dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def scale_shift(self):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_norm(conv: nn.Module, norm: Optional[nn.Module], x: Tensor, fold: bool = True, relu: bool = False,
              residual: Optional[Tensor] = None) -> Tensor:
    """``norm(conv(x))``, then ``+ residual`` and ReLU if asked (``relu(norm(conv(x)) + residual)``).

    With ``fold`` and a FrozenBatchNorm2d (or an Identity, or None: no norm) ``norm`` after an
    ``nn.Conv2d``, the norm is folded into the convolution ON THE FLY: one convolution with weight
    ``conv.weight * scale`` and bias ``shift (+ conv.bias * scale)``, no elementwise passes over the
    map. With ``relu`` the ReLU (and the residual sum) then run inside the convolution where oneDNN
    can (float32 CPU tensors: :func:`conv_relu`), else as separate ops.

    Differentiable in ``conv.weight`` / ``conv.bias`` (their gradients are the folded ones times
    ``scale``), in ``x`` and in ``residual``; the module's parameters and ``state_dict`` are untouched.
    Equal to the unfolded composition up to float rounding (the product is rounded in a different
    order). Without ``fold``, or for any other pair (a trainable BatchNorm2d, a fused conv module),
    the plain layer graph runs. ``x``: Tensor[N, C_in, H, W]; ``residual``: the output's shape
    Tensor[N, C_out, H', W'] (needs ``relu``).
    """
    if residual is not None and not relu:
        raise ValueError("conv_norm: residual needs relu=True")
    folded = _fold_on_the_fly(conv, norm) if fold else None
    if folded is None:
        out = conv(x) if norm is None else norm(conv(x))
        if residual is not None:
            out = out + residual
        return torch.relu_(out) if relu else out
    weight, bias = folded
    if isinstance(conv, WinogradConv2d) and conv.runs_winograd(x, weight):
        # Winograd's convolution (use_winograd): ReLU and the residual sum as separate ops
        out = conv._conv_forward(x, weight, bias)
        if residual is not None:
            out = out + residual
        return torch.relu_(out) if relu else out
    if relu:
        return conv_relu(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, residual)
    return conv._conv_forward(x, weight, bias)


def _fold_on_the_fly(conv: nn.Module, norm: Optional[nn.Module]) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """(weight, bias) of ``conv`` with ``norm`` (None: none) folded in (differentiable), or None if not
    foldable."""
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None  # (nn.Conv2d or its Winograd form, WinogradConv2d)
    if norm is None or isinstance(norm, nn.Identity):
        return conv.weight, conv.bias
    if not isinstance(norm, FrozenBatchNorm2d):
        return None
    scale, shift = norm.scale_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return weight, (shift if conv.bias is None else conv.bias * scale + shift)


def _pointwise_conv_usable(x: Tensor, weight: Tensor, residual: Optional[Tensor]) -> bool:
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 4 and torch.backends.mkldnn.is_available() and _HAS_POINTWISE_CONV):
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if residual is None:
        return True
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return (residual.dtype == torch.float32 and residual.device.type == "cpu"
            and residual.is_contiguous(memory_format=fmt))  # the post-op reads it in the output's layout


_HAS_POINTWISE_CONV = hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class _ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, weight, bias) [+ residual]) as ONE oneDNN convolution with post-ops (forward);
    backward: ReLU's mask, then ``aten.convolution_backward`` (the gradients torch's own autograd
    computes for the unfused ops; the residual's is the masked gradient itself)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, padding, dilation, groups):
        ops = torch.ops.mkldnn._convolution_pointwise
        if residual is None:
            y = ops(x, weight, bias, padding, stride, dilation, groups, "relu", [], "")
        else:
            y = ops.binary(x, residual, weight, bias, padding, stride, dilation, groups, "add", None, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.conf = (stride, padding, dilation, groups, bias is not None, residual is not None)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias, has_residual = ctx.conf
        need = ctx.needs_input_grad
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        gx = gw = gb = None
        mask = [need[0], need[1], has_bias and need[2]]
        if any(mask):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, mask)
        return gx, gw, gb, (grad if has_residual and need[3] else None), None, None, None, None


def conv_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride=(1, 1), padding=(0, 0), dilation=(1, 1),
              groups: int = 1, residual: Optional[Tensor] = None) -> Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding, dilation, groups) [+ residual])``.

    On float32 CPU tensors one oneDNN convolution with the sum and the ReLU as post-ops (the same
    values as the separate ops: the sum and max run in float32 on the accumulated result), with its
    own backward (:class:`_ConvReLU`); elsewhere the separate ops. ``x``: Tensor[N, C_in, H, W],
    ``weight``: Tensor[C_out, C_in / groups, kh, kw], ``residual``: Tensor[N, C_out, H', W'].
    """
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if _pointwise_conv_usable(x, weight, residual):
        if residual is not None and residual.shape[1:] != (weight.shape[0],) + tuple(residual.shape[2:]):
            raise ValueError(f"residual: expected {weight.shape[0]} channels, got shape {list(residual.shape)}")
        return _ConvReLU.apply(x, weight, bias, residual, stride, padding, dilation, groups)
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    return torch.relu_(out)


def _group_norm(num_features: int) -> nn.GroupNorm:
    groups = 32
    while num_features % groups:
        groups //= 2
    return nn.GroupNorm(groups, num_features)


def norm_layer_by_name(name: str) -> Callable[[int], nn.Module]:
    """'frozen' (FrozenBatchNorm2d), 'batch' (BatchNorm2d) or 'group' (GroupNorm, up to 32 groups:
    no batch statistics, so it trains the same with any batch split)."""
    table = {"frozen": FrozenBatchNorm2d, "batch": nn.BatchNorm2d, "group": _group_norm}
    if name not in table:
        raise ValueError(f"norm must be one of {sorted(table)}, got {name!r}")
    return table[name]


class ConvNormAct(nn.Sequential):
    """conv (index 0) -> norm (1) -> activation, torchvision's ``Conv2dNormActivation`` layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU, bias: Optional[bool] = None):
        padding = (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        layers: List[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                             groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels

    # True (and training): a FrozenBatchNorm2d at index 1 is folded into the conv on the fly and a ReLU
    # runs inside the conv (``conv_norm``); set by the detectors' ``use_channels_last()`` fast path.
    # False, or eval mode: nn.Sequential's plain layer graph.
    fold_frozen_bn = False
    # Its forward computes its children in order (folded on the fly or not): the inference fusion pass
    # (fast_paths.fuse_conv_activations_) may fuse them like a plain nn.Sequential's.
    runs_children_in_order = True

    def forward(self, x: Tensor) -> Tensor:
        if not (self.fold_frozen_bn and self.training):
            return super().forward(x)
        if len(self) == 2 and type(self[1]) is nn.ReLU:  # no norm: conv + ReLU (e.g. the RPN head's)
            return conv_norm(self[0], None, x, relu=True)
        if len(self) < 2:
            return super().forward(x)
        layers = list(self)
        if len(layers) == 3 and type(layers[2]) is nn.ReLU:
            return conv_norm(layers[0], layers[1], x, relu=True)
        x = conv_norm(layers[0], layers[1], x)
        for layer in layers[2:]:
            x = layer(x)
        return x


# ---------------------------------------------------------------------------
# ResNet (He et al. 2016), torchvision's v1.5 (stride in the 3x3 conv)
# ---------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def _folded(*norms: nn.Module) -> bool:
    """True when the norms were folded into their convs (fold_frozen_batchnorm_ left Identities)."""
    return all(type(n) is nn.Identity for n in norms)


def _fuse_stem_(trunk: nn.Module) -> None:
    """conv1 (+ folded bn1) + relu of a ResNet stem -> one FusedConv2d (relu becomes Identity)."""
    if isinstance(trunk.conv1, nn.Conv2d) and _folded(trunk.bn1) and type(trunk.relu) is nn.ReLU:
        trunk.conv1 = FusedConv2d.from_conv(trunk.conv1, "relu")
        trunk.relu = nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, downsample: Optional[nn.Module], norm_layer):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = norm_layer(width)
        self.downsample = downsample

    def fuse_(self) -> None:
        """After folding: conv1 + relu and conv2 + identity + relu as FusedConv2d (inference)."""
        if isinstance(self.conv2, nn.Conv2d) and _folded(self.bn1, self.bn2):
            self.conv1 = FusedConv2d.from_conv(self.conv1, "relu")
            self.conv2 = FusedConv2d.from_conv(self.conv2, "relu")

    fold_frozen_bn = False  # see Bottleneck

    def forward(self, x: Tensor) -> Tensor:
        if self.fold_frozen_bn and self.training:
            identity = x if self.downsample is None else _downsample(self.downsample, x)
            out = conv_norm(self.conv1, self.bn1, x, relu=True)
            return conv_norm(self.conv2, self.bn2, out, relu=True, residual=identity)
        identity = x if self.downsample is None else self.downsample(x)
        if isinstance(self.conv2, FusedConv2d):  # fuse_(): relu(conv2(.) + identity) in one kernel
            return self.conv2(self.conv1(x), identity)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, downsample: Optional[nn.Module], norm_layer):
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, width * 4)
        self.bn3 = norm_layer(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def fuse_(self) -> None:
        """After folding: conv1 + relu, conv2 + relu and conv3 + identity + relu as FusedConv2d
        (inference)."""
        if isinstance(self.conv3, nn.Conv2d) and _folded(self.bn1, self.bn2, self.bn3):
            self.conv1 = FusedConv2d.from_conv(self.conv1, "relu")
            self.conv2 = FusedConv2d.from_conv(self.conv2, "relu")
            self.conv3 = FusedConv2d.from_conv(self.conv3, "relu")

    # True (and training): every FrozenBatchNorm2d is folded into its conv on the fly, each conv with its
    # ReLU (and the residual sum) as one op (``conv_norm``: no elementwise passes, same parameters); set
    # by the detectors' ``use_channels_last()`` fast path. False, or eval mode (inference has its own
    # path, ``optimize_for_inference``): torchvision's layer graph.
    fold_frozen_bn = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fold_frozen_bn and self.training:  # the same function, fewer passes (conv_norm)
            identity = x if self.downsample is None else _downsample(self.downsample, x)
            out = conv_norm(self.conv1, self.bn1, x, relu=True)
            out = conv_norm(self.conv2, self.bn2, out, relu=True)
            return conv_norm(self.conv3, self.bn3, out, relu=True, residual=identity)
        identity = x if self.downsample is None else self.downsample(x)
        if isinstance(self.conv3, FusedConv2d):  # fuse_(): relu(conv3(.) + identity) in one kernel
            return self.conv3(self.conv2(self.conv1(x)), identity)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(downsample: nn.Module, x: Tensor) -> Tensor:
    """A residual block's shortcut ``Sequential(conv1x1, norm)`` with the norm folded (``conv_norm``)."""
    if isinstance(downsample, nn.Sequential) and len(downsample) == 2:
        return conv_norm(downsample[0], downsample[1], x)
    return downsample(x)


class ResNet(nn.Module):
    """ResNet trunk without the classifier: conv1, bn1, relu, maxpool, layer1..layer4.

    ``forward(x: Tensor[N, 3, H, W])`` returns ``OrderedDict`` ``"layer1"``..``"layer4"`` with
    strides 4, 8, 16, 32. ``channels`` lists their channel counts.
    """

    def __init__(self, block, layers: Sequence[int], norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        self.channels: List[int] = []
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != width * block.expansion:
                downsample = nn.Sequential(_conv1x1(cin, width * block.expansion, stride),
                                           norm_layer(width * block.expansion))
            blocks = [block(cin, width, stride, downsample, norm_layer)]
            cin = width * block.expansion
            blocks += [block(cin, width, 1, None, norm_layer) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.channels.append(cin)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def fuse_(self) -> None:
        """After folding: the stem's conv1 + relu as one FusedConv2d (the blocks fuse themselves)."""
        _fuse_stem_(self)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: Dict[str, Tensor] = OrderedDict()
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


def resnet18(norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), norm_layer)


def resnet50(norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), norm_layer)


# ---------------------------------------------------------------------------
# MobileNetV3-Large (Howard et al. 2019), torchvision's layout
# ---------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))) with 1x1 convs fc1, fc2."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))), inplace=True)
        return x * s


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise kxk (stride) -> [squeeze-excitation] -> project 1x1 (+ input when shapes allow)."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: str, stride: int,
                 norm_layer):
        super().__init__()
        activation = nn.Hardswish if act == "HS" else nn.ReLU
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormAct(cin, expanded, 1, norm_layer=norm_layer, activation_layer=activation))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, norm_layer=norm_layer,
                                  activation_layer=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvNormAct(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.out_channels = cout
        self.is_strided = stride > 1

    def fuse_(self) -> None:
        """After folding, with the residual connection: the projection conv + input addition as one
        FusedConv2d (the expand / depthwise ConvNormActs are fused as any Sequential)."""
        project = self.block[-1]
        if self.use_res_connect and isinstance(project[0], nn.Conv2d) and _folded(*list(project)[1:]):
            project[0] = FusedConv2d.from_conv(project[0], "none")

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect and isinstance(self.block[-1][0], FusedConv2d):  # fuse_(): conv + x in one kernel
            out = x
            for layer in list(self.block)[:-1]:
                out = layer(out)
            return self.block[-1][0](out, x)
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (input, kernel, expanded, output, squeeze-excitation, activation, stride)
_MOBILENET_V3_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]


class MobileNetV3Large(nn.Sequential):
    """torchvision's ``mobilenet_v3_large().features``: stem (0), 15 inverted residual blocks (1..15),
    last 1x1 conv to 960 channels (16). Children are named "0".."16"."""

    def __init__(self, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        layers: List[nn.Module] = [ConvNormAct(3, 16, 3, 2, norm_layer=norm_layer, activation_layer=nn.Hardswish)]
        for cfg in _MOBILENET_V3_LARGE:
            layers.append(InvertedResidual(*cfg, norm_layer=norm_layer))
        layers.append(ConvNormAct(160, 960, 1, norm_layer=norm_layer, activation_layer=nn.Hardswish))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------
# a tiny CNN for training from scratch on a CPU
# ---------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """Five stages of two 3x3 convs (the first of stride 2), widths ``widths`` -> OrderedDict of the
    last four stages' maps named "0".."3" (strides 4, 8, 16, 32); ``channels``: their widths."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128, 128),
                 norm_layer: Callable[[int], nn.Module] = _group_norm):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 stage widths, got {len(widths)}")
        stages: List[nn.Module] = []
        cin = 3
        for w in widths:
            stages.append(nn.Sequential(ConvNormAct(cin, w, 3, 2, norm_layer=norm_layer),
                                        ConvNormAct(w, w, 3, 1, norm_layer=norm_layer)))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.channels = list(widths[1:])

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = OrderedDict()
        x = self.stages[0](x)
        for i in range(1, 5):
            x = self.stages[i](x)
            out[str(i - 1)] = x
        return out


# ---------------------------------------------------------------------------
# VGG-16 (Simonyan & Zisserman 2015), configuration "D"
# ---------------------------------------------------------------------------

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features(batch_norm: bool = False) -> nn.Sequential:
    """VGG-16's convolutional trunk as torchvision's ``vgg16().features`` (same indices, so the
    same ``state_dict`` keys ``0.weight``, ``2.weight``, ... ``28.weight``): thirteen 3x3 convs
    (padding 1) each followed by ReLU (with ``batch_norm``: conv, BatchNorm2d, ReLU), and a 2x2
    max pool of stride 2 after each of the five stages (widths 64, 128, 256, 512, 512).

    ``forward(Tensor[N, 3, H, W])`` -> Tensor[N, 512, H / 32, W / 32] (floored at every pool).
    Convs are initialised as torchvision's VGG (Kaiming normal, fan-out; zero bias).
    """
    layers: List[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(cin, int(v), kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        cin = int(v)
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# feature pyramid network (Lin et al. 2017)
# ---------------------------------------------------------------------------


class LastLevelMaxPool(nn.Module):
    """Adds "pool": the coarsest map subsampled by 2 (max pool, kernel 1), for the RPN's P6."""

    def forward(self, results: List[Tensor], names: List[str]):
        names.append("pool")
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results, names


class LastLevelP6P7(nn.Module):
    """Adds "p6" and "p7" (RetinaNet): P6 = conv3x3/2(x), P7 = conv3x3/2(ReLU(P6)), torchvision's names
    ``p6`` / ``p7``. ``x`` is P5 when ``in_channels == out_channels`` (torchvision's RetinaNet v1:
    ``LastLevelP6P7(256, 256)``), else C5, the trunk's coarsest map (the paper; v2's ``(2048, 256)``).

    ``forward(results, names, inputs)``: the FPN outputs (finest first), their names and the FPN's
    inputs C_i (``uses_inputs``: the FPN passes them).
    """

    uses_inputs = True

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.use_P5 = in_channels == out_channels

    def forward(self, results: List[Tensor], names: List[str], inputs: List[Tensor]):
        p6 = self.p6(results[-1] if self.use_P5 else inputs[-1])
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7], names + ["p6", "p7"]


class FeaturePyramidNetwork(nn.Module):
    """Top-down pathway with lateral 1x1 connections and 3x3 output convs.

    ``forward(x: OrderedDict name -> Tensor[N, C_i, H_i, W_i], finest first)`` returns an
    OrderedDict with the same names (plus "pool" with ``LastLevelMaxPool``), every map with
    ``out_channels`` channels: P_i = conv3x3(lateral_i(C_i) + nearest-upsample(inner_{i+1})).
    """

    def __init__(self, in_channels_list: List[int], out_channels: int, extra_blocks: Optional[nn.Module] = None):
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            [ConvNormAct(c, out_channels, 1, norm_layer=None, activation_layer=None) for c in in_channels_list])
        self.layer_blocks = nn.ModuleList(
            [ConvNormAct(out_channels, out_channels, 3, norm_layer=None, activation_layer=None)
             for _ in in_channels_list])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        self.extra_blocks = extra_blocks

    def fuse_(self) -> None:
        """The lateral 1x1 convs as FusedConv2d, so that lateral + upsampled top-down is one kernel
        (inference; the lateral ConvNormActs must hold the conv only)."""
        for block in self.inner_blocks:
            if len(block) == 1 and isinstance(block[0], nn.Conv2d):
                block[0] = FusedConv2d.from_conv(block[0], "none")

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral_conv = self.inner_blocks[idx][0]
            if isinstance(lateral_conv, FusedConv2d):  # fuse_(): lateral conv + top-down in one kernel
                top_down = F.interpolate(last_inner, size=lateral_conv.output_size(feats[idx]), mode="nearest")
                last_inner = lateral_conv(feats[idx], top_down)
            else:
                lateral = self.inner_blocks[idx](feats[idx])
                top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
                last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            if getattr(self.extra_blocks, "uses_inputs", False):  # e.g. LastLevelP6P7 from C5
                results, names = self.extra_blocks(results, names, feats)
            else:
                results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """``body`` (a trunk returning named maps) followed by ``fpn``; ``out_channels`` per map.

    ``body`` holds the trunk's modules directly (torchvision's names: ``body.conv1``,
    ``body.layer1`` or ``body.0`` .. ``body.16``), ``fpn`` the pyramid.
    """

    def __init__(self, body: nn.Module, in_channels_list: List[int], out_channels: int,
                 extra_blocks: Optional[nn.Module] = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels,
                                         LastLevelMaxPool() if extra_blocks is None else extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return self.fpn(self.body(x))


class _ResNetBody(nn.Module):
    """The ResNet trunk up to the last returned layer (torchvision's IntermediateLayerGetter):
    children conv1, bn1, relu, maxpool, layer1..layerK; returns the layers in ``return_layers``."""

    def __init__(self, resnet: nn.Module, return_layers: Dict[str, str]):
        super().__init__()
        last = max(int(k[-1]) for k in return_layers)
        for name, module in resnet.named_children():
            if name.startswith("layer") and int(name[-1]) > last:
                break
            self.add_module(name, module)
        self.return_layers = dict(return_layers)
        self._stem = [n for n, _ in self.named_children() if not n.startswith("layer")]
        self._layers = [n for n, _ in self.named_children() if n.startswith("layer")]

    def fuse_(self) -> None:
        """After folding: the stem's conv1 + relu as one FusedConv2d (the blocks fuse themselves)."""
        _fuse_stem_(self)

    fold_frozen_bn = False  # True: the stem's conv1, bn1 (folded on the fly) and relu as one op (``conv_norm``)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        stem = self._stem
        if self.fold_frozen_bn and self.training and stem[:3] == ["conv1", "bn1", "relu"]:
            x = conv_norm(self.conv1, self.bn1, x, relu=True)
            stem = stem[3:]
        for name in stem:
            x = getattr(self, name)(x)
        out: Dict[str, Tensor] = OrderedDict()
        for name in self._layers:
            x = getattr(self, name)(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class _SequentialBody(nn.Sequential):
    """A Sequential trunk cut after its last returned child; returns the children in ``return_layers``."""

    def __init__(self, seq: nn.Sequential, return_layers: Dict[str, str]):
        last = max(int(k) for k in return_layers)
        super().__init__(*list(seq.children())[: last + 1])
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = OrderedDict()
        for i, module in enumerate(self):
            x = module(x)
            if str(i) in self.return_layers:
                out[self.return_layers[str(i)]] = x
        return out


def resnet_fpn_backbone(depth: int = 50, norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
                        trainable_layers: int = 3, returned_layers: Optional[List[int]] = None,
                        out_channels: int = 256, fpn: bool = True,
                        extra_blocks: Optional[nn.Module] = None) -> nn.Module:
    """ResNet-18/50 + FPN (P2..P5 named "0".."3" + "pool"), torchvision's ``_resnet_fpn_extractor``.

    ``extra_blocks``: the FPN's extra levels (default ``LastLevelMaxPool``: "pool"; RetinaNet:
    ``LastLevelP6P7`` with ``returned_layers=[2, 3, 4]``: P3..P7 named "0", "1", "2", "p6", "p7").

    ``trainable_layers`` (0..5): how many of layer4, layer3, layer2, layer1, conv1 (from the top) train;
    5 also trains bn1. Without ``fpn``: the trunk's layer4 as one map "0" (``out_channels`` = its channels).
    """
    if depth not in (18, 50):
        raise ValueError(f"depth must be 18 or 50, got {depth}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    trunk = resnet18(norm_layer) if depth == 18 else resnet50(norm_layer)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, p in trunk.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            p.requires_grad_(False)
    if not fpn:
        body = _ResNetBody(trunk, {"layer4": "0"})
        body.out_channels = trunk.channels[-1]
        return body
    if returned_layers is None:
        returned_layers = [1, 2, 3, 4]
    if min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must be in [1, 4], got {returned_layers}")
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels = [trunk.channels[k - 1] for k in returned_layers]
    return BackboneWithFPN(_ResNetBody(trunk, return_layers), in_channels, out_channels, extra_blocks)


def mobilenet_v3_fpn_backbone(norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d, trainable_layers: int = 3,
                              out_channels: int = 256) -> BackboneWithFPN:
    """MobileNetV3-Large features + FPN on the last two stages (strides 16, 32; "0", "1", + "pool"),
    torchvision's ``_mobilenet_extractor(fpn=True)``. ``trainable_layers`` in [0, 6] counts stages
    from the top."""
    if not 0 <= trainable_layers <= 6:
        raise ValueError(f"trainable_layers must be in [0, 6], got {trainable_layers}")
    features = MobileNetV3Large(norm_layer)
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "is_strided", False)] + [len(features) - 1]
    num_stages = len(stage_indices)
    freeze_before = len(features) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
    for b in list(features)[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)
    returned = [num_stages - 2, num_stages - 1]
    return_layers = {str(stage_indices[k]): str(v) for v, k in enumerate(returned)}
    in_channels = [features[stage_indices[k]].out_channels for k in returned]
    return BackboneWithFPN(_SequentialBody(features, return_layers), in_channels, out_channels)


# ---------------------------------------------------------------------------
# inference speed-up: fold FrozenBatchNorm2d into the preceding conv
# ---------------------------------------------------------------------------


def fold_frozen_batchnorm_(module: nn.Module) -> nn.Module:
    """Fold every (Conv2d, norm) pair of ``module`` in place, where the norm is a FrozenBatchNorm2d
    or a BatchNorm2d in eval mode (its running statistics): the conv gets ``weight * scale`` and
    ``bias = shift (+ bias * scale)``, the norm becomes Identity.

    Only for inference (the folded weights are new, frozen Parameters); the ``state_dict`` keys
    change (norm buffers gone, conv biases appear), so do it after loading. Returns ``module``.
    """
    for parent in list(module.modules()):
        names = [n for n, _ in parent.named_children()]
        for i in range(1, len(names)):
            conv, bn = getattr(parent, names[i - 1]), getattr(parent, names[i])
            foldable = isinstance(bn, FrozenBatchNorm2d) or (
                isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats)
            if foldable and isinstance(conv, nn.Conv2d):
                _fold(conv, bn)
                setattr(parent, names[i], nn.Identity())
    return module


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    if isinstance(bn, FrozenBatchNorm2d):
        scale, shift = bn.scale_shift()
    else:
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias, requires_grad=False)


# ---------------------------------------------------------------------------
# one feature map (SPPNet, Fast R-CNN, R-CNN's per-region CNN)
# ---------------------------------------------------------------------------


class SingleMapBackbone(nn.Module):
    """A trunk cut after the stage of stride ``stride``: ``forward(Tensor[N, 3, H, W])`` ->
    Tensor[N, out_channels, ceil(H / stride), ceil(W / stride)] (one map, no pyramid)."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return list(out.values())[-1] if isinstance(out, dict) else out


def single_map_backbone(name: str = "tiny", norm_layer: Callable[[int], nn.Module] = _group_norm,
                        stride: int = 16) -> SingleMapBackbone:
    """"tiny" (TinyCNN's first 3, 4 or all 5 stages: 64 / 128 / 128 channels at stride 8 / 16 / 32),
    "resnet18" / "resnet50" (up to layer2, layer3 or layer4: 128 / 256 / 512 and 512 / 1024 / 2048
    channels at stride 8 / 16 / 32), all layers trainable."""
    if stride not in (8, 16, 32):
        raise ValueError(f"stride: must be 8, 16 or 32, got {stride!r}")
    if name == "tiny":
        trunk = TinyCNN(norm_layer=norm_layer)
        n = {8: 3, 16: 4, 32: 5}[stride]
        return SingleMapBackbone(nn.Sequential(*list(trunk.stages.children())[:n]), trunk.channels[n - 2], stride)
    if name in ("resnet18", "resnet50"):
        trunk = resnet18(norm_layer) if name == "resnet18" else resnet50(norm_layer)
        layer = {8: "layer2", 16: "layer3", 32: "layer4"}[stride]
        return SingleMapBackbone(_ResNetBody(trunk, {layer: "0"}), trunk.channels[int(layer[-1]) - 1], stride)
    raise ValueError(f"backbone: must be 'tiny', 'resnet18' or 'resnet50', got {name!r}")
