"""The opt-in CPU fast paths every convolutional detector shares, written once.

``use_channels_last(True)`` puts the detector's convolutional modules (``CHANNELS_LAST_MODULES``,
dotted attribute names) and its input batch in channels-last memory format (NHWC): oneDNN's
CPU convolutions run faster so, and pydetops' RoI ops read it in place. Training or inference.
In training it also folds every FrozenBatchNorm2d of those modules into its convolution ON THE FLY
(``backbones.conv_norm``: same parameters and ``state_dict``, no elementwise passes; conv, ReLU and
the residual sum as one oneDNN op), runs the RPN head's two 1x1 predictors as one convolution, and
keeps the gradients channels-last where the RoI ops' backward would hand back NCHW
(``roi_features``); see ``FAST_PATH_FLAGS``. In eval mode those modules run their plain graph.

``optimize_for_inference()``: eval mode, the backbone's (Frozen)BatchNorm folded into its
convolutions, channels-last, and every convolution fused with what follows it
(:func:`fuse_conv_activations_`): its activation (ReLU, Hardswish) and, in the residual blocks and
the FPN's top-down pathway, the addition, as one oneDNN kernel with post-ops
(:class:`FusedConv2d`) instead of a convolution writing its output and one or two element-wise
passes reading it back. Inference only: the folded model's ``state_dict`` keys differ.

With ``winograd`` (the default) the 3x3 stride-1 convolutions of at least 64 channels (R50
layers 1-4, the FPN outputs, the RPN / RetinaNet heads, the mask / keypoint heads, VGG's trunk) run
pydetops' Winograd F(2x2, 3x3) kernel (:func:`pydetops.ops.conv3x3_winograd`: 2.25x fewer
multiply-adds, 1.2-2x faster than oneDNN's direct convolution on CPUs), fused with their bias,
residual and ReLU the same way.

Folding, channels-last and Winograd change only the order of floating-point operations: features
differ from the plain model's by float rounding (~5e-6 relative; Winograd's own error against
float64 is smaller than the direct convolution's), which can reorder near-tied scores.
Fusion adds no rounding for ReLU and the additions (bit-identical to the folded channels-last
model); oneDNN's Hardswish differs from torch's by float rounding (see :class:`FusedConv2d`). The
plain model (the default) runs torchvision's exact layer graph and gives its detections.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.winograd import conv3x3_winograd, winograd_applies, winograd_conv2d, winograd_weight

__all__ = ["FastPathsMixin", "FusedConv2d", "WinogradConv2d", "fuse_conv_activations_", "use_winograd_",
           "MKLDNN_FUSION_AVAILABLE"]

# oneDNN's convolution with post-ops, in torch's CPU builds with mkldnn (the ops torch.compile's
# CPU backend calls). Without them FusedConv2d runs the plain ops.
MKLDNN_FUSION_AVAILABLE: bool = bool(torch.backends.mkldnn.is_available()) and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise")

# activation name -> (oneDNN post-op name, its scalars)
_ONEDNN_UNARY = {"none": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
                 "hardswish": ("hardswish", [])}
# torch module types -> activation name, for the fusion pass
_ACTIVATION_MODULES = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.Hardswish, "hardswish"))


class FusedConv2d(nn.Module):
    """``act(conv2d(x) + residual)`` in one module: a Conv2d's weight, bias and geometry plus an
    activation name, ``"none"``, ``"relu"``, ``"relu6"`` or ``"hardswish"``.

    ``forward(x: Tensor[N, C_in, H, W], residual: Optional[Tensor[N, C_out, H', W']] = None)`` ->
    Tensor[N, C_out, H', W'] (``residual`` of the output's shape, added before the activation).

    Built from a convolution (:meth:`from_conv`), it shares its ``weight`` and ``bias`` Parameters:
    put at the convolution's place it keeps its ``state_dict`` keys.

    Two ways to compute the same thing:

    * the CPU kernel (:meth:`_cpu_kernel`): oneDNN's convolution with the addition and the
      activation as post-ops (``torch.ops.mkldnn._convolution_pointwise``), one pass over the
      output. Taken for float32 CPU tensors where eager conv2d would run oneDNN channels-last
      (:meth:`_runs_channels_last`, :meth:`_eager_uses_onednn`: elsewhere ATen's own kernel
      rounds differently), a ``residual`` (if any) of the output's shape and dtype, no autograd
      needed (grad disabled or nothing requiring grad), no CPU autocast, and with a residual an
      activation of "none" or "relu" (oneDNN has no other post-sum activation);
    * otherwise ``F.conv2d`` (+ residual) and the activation as torch's functions: CUDA, float64,
      NCHW input and weight, training, TorchScript (``torch.jit.script`` compiles this path
      only), bad input (which raises torch's usual errors).

    Exactness against ``F.conv2d`` then the activation (channels-last float32, same thread count):
    "none", "relu", "relu6" and the residual addition are bit-identical (oneDNN adds the bias and
    the residual in the same order, and max/min round nothing). "hardswish" is not: oneDNN
    evaluates ``x * relu6(x + 3) / 6`` with another rounding, up to ~2 float32 ulps of the
    convolution's output (absolute differences <= 5e-7 on values of order 1; the fusion tests
    allow ``1e-6 * max|y|``).
    """

    ACTIVATIONS: Tuple[str, ...] = tuple(_ONEDNN_UNARY)

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter], stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int], groups: int, activation: str = "none",
                 winograd: bool = False):
        super().__init__()
        if activation not in _ONEDNN_UNARY:
            raise ValueError(f"activation: must be one of {list(_ONEDNN_UNARY)}, got {activation!r}")
        if not isinstance(weight, Tensor) or weight.dim() != 4:
            raise ValueError("weight: expected Tensor[C_out, C_in / groups, kH, kW]")
        self.weight = weight
        self.bias = bias
        self.stride: List[int] = [int(s) for s in stride]
        self.padding: List[int] = [int(p) for p in padding]
        self.dilation: List[int] = [int(d) for d in dilation]
        self.groups = int(groups)
        self.activation = activation
        self._onednn_attr: str = _ONEDNN_UNARY[activation][0]
        self._onednn_scalars: List[float] = list(_ONEDNN_UNARY[activation][1])
        # the CPU kernel is pydetops' Winograd F(2x2, 3x3) instead of oneDNN's direct convolution
        self.winograd: bool = False
        self.set_winograd(winograd)
        self._winograd_cache = []      # [the transformed weight] (not state: derived from the weight)
        self._winograd_key = (0, -1)   # the (data_ptr, version) of the weight it was made from

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str = "none", winograd: bool = False) -> "FusedConv2d":
        """The fused form of ``conv`` (sharing its Parameters); ``conv`` must pad with zeros by a
        number of pixels (not ``padding="same"`` / other padding modes). ``winograd``: compute it
        with :func:`pydetops.ops.conv3x3_winograd` where that applies (a 3x3 stride-1 conv of >= 64
        channels, activation "none" or "relu")."""
        if not cls.can_fuse(conv):
            raise ValueError(f"conv: expected an nn.Conv2d with numeric zero padding, got {conv!r}")
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, activation,
                   winograd)

    @staticmethod
    def can_fuse(conv: nn.Module) -> bool:
        return (type(conv) in (nn.Conv2d, WinogradConv2d) and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str))

    def extra_repr(self) -> str:
        c_out, c_in, kh, kw = self.weight.shape
        return (f"{c_in * self.groups}, {c_out}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, groups={self.groups}, "
                f"bias={self.bias is not None}, activation={self.activation!r}"
                + (", winograd=True" if self.winograd else ""))

    def output_size(self, x: Tensor) -> List[int]:
        """[H', W'] of the output for an input ``x`` [N, C, H, W] (the residual's spatial size)."""
        size: List[int] = []
        for i in range(2):
            k = int(self.weight.shape[2 + i])
            size.append((int(x.shape[2 + i]) + 2 * self.padding[i] - self.dilation[i] * (k - 1) - 1)
                        // self.stride[i] + 1)
        return size

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles the plain ops only
            if self._cpu_kernel_applies(x, residual):
                return self._cpu_kernel(x, residual)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return self._activate(y)

    def _activate(self, y: Tensor) -> Tensor:
        if self.activation == "relu":
            return F.relu(y)
        if self.activation == "relu6":
            return F.hardtanh(y, 0.0, 6.0)
        if self.activation == "hardswish":
            return F.hardswish(y)
        return y

    def _cpu_kernel_applies(self, x: Tensor, residual: Optional[Tensor]) -> bool:
        if not MKLDNN_FUSION_AVAILABLE or torch.jit.is_tracing():
            return False
        w, b = self.weight, self.bias
        if not (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == torch.float32
                and w.dtype == torch.float32 and x.dim() == 4):
            return False
        if not self._runs_channels_last(x):
            return False
        if int(x.shape[1]) != int(w.shape[1]) * self.groups or (b is not None and b.dtype != torch.float32):
            return False  # the plain path raises torch's usual error
        if torch.is_autocast_enabled("cpu"):
            return False  # autocast would run F.conv2d in bfloat16
        if not self._eager_uses_onednn(x):
            return False  # eager conv2d runs ATen's own kernel here: keep its rounding (and its speed)
        needs_grad = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        if residual is not None:
            if self.activation not in ("none", "relu"):
                return False
            if residual.device.type != "cpu" or residual.dtype != torch.float32:
                return False
            # oneDNN reads `residual` as the output's shape without checking it: only exact shapes
            out_hw = self.output_size(x)
            if list(residual.shape) != [int(x.shape[0]), int(w.shape[0]), out_hw[0], out_hw[1]]:
                return False
            needs_grad = needs_grad or residual.requires_grad
        if needs_grad and torch.is_grad_enabled():
            return False
        return min(self.output_size(x)) > 0

    def _runs_channels_last(self, x: Tensor) -> bool:
        """Whether eager conv2d computes this conv channels-last: ``x`` channels-last, or ``x``
        contiguous (NCHW) and the weight channels-last (ATen then converts ``x``: the first conv
        of a channels-last head fed by RoIAlign). Both unambiguously: a one-pixel map or one-channel
        tensor (and a 1x1 kernel's weight) is contiguous in both formats, and ATen decides
        otherwise there."""
        if x.is_contiguous(memory_format=torch.channels_last):
            return not x.is_contiguous()
        w = self.weight
        return (x.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
                and not w.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))

    def _eager_uses_onednn(self, x: Tensor) -> bool:
        """Whether eager ``F.conv2d`` runs oneDNN for this float32 CPU input: ATen's heuristic
        (``ConvParams::use_mkldnn`` in Convolution.cpp, unchanged since torch 1.x): mkldnn enabled,
        and not a 1x1 stride-1 undilated conv of a batch < 16 on one thread, and not a small
        (<= 20480 values) single image through a 1-group conv with a kernel <= 3. Elsewhere ATen's
        gemm-based kernel runs, with another summation order, so the fused kernel would not be
        bit-identical to the plain model there (and ATen calls its kernel the faster one)."""
        if not torch.backends.mkldnn.enabled:
            return False
        kh, kw = int(self.weight.shape[2]), int(self.weight.shape[3])
        n = int(x.shape[0])
        strided_or_dilated = any(s != 1 for s in self.stride) or any(d != 1 for d in self.dilation)
        if not (strided_or_dilated or n >= 16 or kh != 1 or kw != 1 or torch.get_num_threads() > 1):
            return False
        return self.groups > 1 or (kh > 3 and kw > 3) or n > 1 or x.numel() > 20480

    def _cpu_kernel(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        """The CPU fast path (float32, channels-last ``x``, no autograd): oneDNN's convolution with
        the bias, the residual addition and the activation as post-ops. Returns channels-last."""
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op but for an NCHW x meeting a channels-last weight
        if self.winograd:
            return conv3x3_winograd(x, self._winograd_weight(), self.bias, residual, self.activation)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                self._onednn_attr, self._onednn_scalars, None)
        unary: Optional[str] = None if self.activation == "none" else self.activation
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", 1.0, unary, [], None)


    def set_winograd(self, enabled: bool) -> None:
        """Compute with :func:`pydetops.ops.conv3x3_winograd` where it applies (``enabled``), or with
        oneDNN's direct convolution."""
        self.winograd = bool(enabled) and self.activation in ("none", "relu") and winograd_applies(self)

    def _winograd_weight(self) -> Tensor:
        """The weight's Winograd transform, made once and again only if the weight changes."""
        w = self.weight
        key = (w.data_ptr(), w._version)
        if key != self._winograd_key or not self._winograd_cache:
            self._winograd_cache = [winograd_weight(w.detach())]
            self._winograd_key = key
        return self._winograd_cache[0]


def _activation_name(module: nn.Module, activations: Tuple[str, ...]) -> Optional[str]:
    for kind, name in _ACTIVATION_MODULES:
        if type(module) is kind and name in activations:
            return name
    return None


def fuse_conv_activations_(module: nn.Module,
                           activations: Tuple[str, ...] = ("relu", "relu6", "hardswish")) -> nn.Module:
    """Give every convolution of ``module`` its fused form (:class:`FusedConv2d`), in place; for
    inference, after the BatchNorm is folded (a norm between a conv and its activation stops it).

    1. Every submodule with a ``fuse_()`` method fuses its own convolutions (the residual blocks,
       the FPN's lateral convs + top-down addition, a ResNet stem): it knows its forward's graph.
    2. In every ``nn.Sequential`` that runs its children in order (nn.Sequential's own forward, or a
       class saying ``runs_children_in_order = True``: ConvNormAct; VGG's trunk, the RPN /
       RetinaNet / mask / keypoint head convs), each ``Conv2d`` followed (after ``Identity``s the
       folding left) by an activation
       of ``activations`` becomes a FusedConv2d at the conv's index (same ``state_dict`` keys) and
       the activation an Identity.

    Returns ``module``. Idempotent; convolutions without an activation are left as they are.
    """
    for m in list(module.modules()):
        fuse = getattr(m, "fuse_", None)
        if callable(fuse):
            fuse()
    for seq in list(module.modules()):
        if not isinstance(seq, nn.Sequential) or not (type(seq).forward is nn.Sequential.forward
                                                      or getattr(seq, "runs_children_in_order", False)):
            continue  # a Sequential with its own forward may read a conv's output before its activation
        names = [n for n, _ in seq.named_children()]
        for i, name in enumerate(names):
            conv = getattr(seq, name)
            if not FusedConv2d.can_fuse(conv):
                continue
            j = i + 1
            while j < len(names) and type(getattr(seq, names[j])) is nn.Identity:
                j += 1
            act = _activation_name(getattr(seq, names[j]), activations) if j < len(names) else None
            if act is not None:
                setattr(seq, name, FusedConv2d.from_conv(conv, act))
                setattr(seq, names[j], nn.Identity())
    return module


def use_winograd_(module: nn.Module, enabled: bool = True) -> nn.Module:
    """After :func:`fuse_conv_activations_`: every convolution of ``module`` that
    :func:`pydetops.ops.winograd_applies` to (3x3, stride 1, >= 64 channels) computes with the
    Winograd kernel (``enabled``) or with oneDNN's direct one. Fused convolutions switch in place; a
    plain ``nn.Conv2d`` (one without an activation: the FPN's output convs, RetinaNet's class
    logits) becomes a FusedConv2d with activation "none" at its place (same ``state_dict`` keys).
    Returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedConv2d):
                child.set_winograd(enabled)
            elif enabled and FusedConv2d.can_fuse(child) and winograd_applies(child):
                setattr(parent, name, FusedConv2d.from_conv(child, "none", winograd=True))
    return module


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1, >= 64 channels: :func:`pydetops.ops.winograd_applies`)
    computed by :func:`pydetops.ops.winograd_conv2d` on CPU float32 channels-last maps of at least
    ``MIN_PIXELS`` pixels, differentiable (training); elsewhere, as ``nn.Conv2d``. Same parameters,
    same ``state_dict``; :meth:`FastPathsMixin.use_winograd` turns a model's eligible convs into it
    (by class, in place) and back.

    Why the map size: the filters are transformed at every call (they change at every step), a
    cost proportional to the filters' size; on small maps it outweighs the gain (1 thread, fwd +
    bwd: 1.2x at 50x68 and 100x136, 1.4x at 200x272, 0.94x at 25x34 with 512 channels)."""

    MIN_PIXELS: int = 2048

    def runs_winograd(self, x: Tensor, weight: Tensor) -> bool:
        """Whether a call on ``x`` with ``weight`` (this conv's, or a folded copy) takes the kernel."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                and x.dim() == 4 and int(x.shape[2]) * int(x.shape[3]) >= self.MIN_PIXELS
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing())

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        # nn.Conv2d.forward calls this with the module's own weight; code that folds a norm into the
        # weight on the fly (backbones.conv_norm) calls it with the folded one.
        if not torch.jit.is_scripting():
            if self.runs_winograd(input, weight):
                return winograd_conv2d(input, weight, bias)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


# Module attributes that ``use_channels_last()`` switches with it (each module documents its own):
# ``fold_frozen_bn`` (ResNet blocks and stem, ConvNormAct: FrozenBatchNorm2d folded into the conv on
# the fly), ``fuse_sibling_convs`` (RPNHead: its two 1x1 predictors as one convolution).
FAST_PATH_FLAGS = ("fold_frozen_bn", "fuse_sibling_convs")


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity; its backward returns the gradient in channels-last memory format."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class FastPathsMixin:
    """Mixed into an ``nn.Module`` detector with a ``backbone``; the subclass names the modules
    that run channels-last in ``CHANNELS_LAST_MODULES`` and passes its input batch through
    :meth:`to_memory_format`."""

    CHANNELS_LAST_MODULES: Tuple[str, ...] = ("backbone",)
    channels_last: bool = False

    def to_memory_format(self, x: Tensor) -> Tensor:
        """The input batch in the format the backbone runs in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def use_channels_last(self, enabled: bool = True):
        """Run the convolutional modules channels-last (``enabled``) or back in the default format.
        Returns self."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.channels_last = enabled
        for name in self.CHANNELS_LAST_MODULES:
            module = self.get_submodule(name)
            if module is not None:
                module.to(memory_format=fmt)
                for m in module.modules():  # the modules' own fast-path switches
                    for flag in FAST_PATH_FLAGS:
                        if hasattr(m, flag):
                            setattr(m, flag, enabled)
        return self

    def roi_features(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The feature maps as the RoI heads get them. Channels-last and recording gradients: each
        map passes through an identity whose backward returns the gradient channels-last (the RoI
        ops' backward writes NCHW; without this, autograd adds it to the RPN head's channels-last
        gradient in mixed formats, and the FPN's backward runs on an NCHW gradient). Else as given."""
        if not (self.channels_last and torch.is_grad_enabled()):
            return features
        return OrderedDict((k, _ChannelsLastGrad.apply(v) if v.requires_grad else v) for k, v in features.items())

    def use_winograd(self, enabled: bool = True):
        """Training or inference: every 3x3 stride-1 convolution of >= 64 channels computes with
        Winograd F(2x2, 3x3) (:class:`WinogradConv2d`: differentiable; CPU float32 channels-last
        maps of >= 2048 pixels, so use it with :meth:`use_channels_last`) (``enabled``), or as a
        plain ``nn.Conv2d``. Float rounding differs from the direct convolution's (~1e-6 relative).
        ``optimize_for_inference`` does its own (cached, fused) Winograd. Returns self."""
        assert isinstance(self, nn.Module)
        for m in self.modules():
            if enabled and type(m) is nn.Conv2d and FusedConv2d.can_fuse(m) and winograd_applies(m):
                m.__class__ = WinogradConv2d
            elif not enabled and type(m) is WinogradConv2d:
                m.__class__ = nn.Conv2d
        return self

    def optimize_for_inference(self, channels_last: bool = True, fold_batchnorm: bool = True, fuse: bool = True,
                               winograd: bool = True):
        """Eval mode, the backbone's BatchNorm folded into its convolutions, channels-last,
        (``fuse``) every convolution fused with its activation / residual addition
        (:func:`fuse_conv_activations_`; it pays off channels-last on a CPU, elsewhere the fused
        modules run the plain ops), and (``winograd``, with ``fuse``) the 3x3 stride-1 convolutions
        of >= 64 channels computed by the Winograd kernel (:func:`use_winograd_`). Inference only
        (the folded model's ``state_dict`` keys differ). Returns self."""
        from .backbones import fold_frozen_batchnorm_  # backbones imports FusedConv2d from here

        assert isinstance(self, nn.Module)
        self.eval()
        if fold_batchnorm:
            fold_frozen_batchnorm_(self.backbone)
        if channels_last:
            self.use_channels_last(True)
        if fuse:
            fuse_conv_activations_(self)
            use_winograd_(self, winograd)
        return self
