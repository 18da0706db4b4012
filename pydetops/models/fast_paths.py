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
convolutions, channels-last. Inference only: the folded model's ``state_dict`` keys differ.

Both change only the order of floating-point operations: features differ from the plain
model's by float rounding (~5e-6 relative), which can reorder near-tied scores. The plain model
(the default) runs torchvision's exact layer graph and gives its detections.
"""
from collections import OrderedDict
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from .backbones import fold_frozen_batchnorm_

__all__ = ["FastPathsMixin"]


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

    def optimize_for_inference(self, channels_last: bool = True, fold_batchnorm: bool = True):
        """Eval mode, the backbone's BatchNorm folded into its convolutions, channels-last.
        Inference only (the folded model's ``state_dict`` keys differ). Returns self."""
        assert isinstance(self, nn.Module)
        self.eval()
        if fold_batchnorm:
            fold_frozen_batchnorm_(self.backbone)
        if channels_last:
            self.use_channels_last(True)
        return self
