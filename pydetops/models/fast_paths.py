"""The opt-in CPU fast paths every convolutional detector shares, written once.

``use_channels_last(True)`` puts the detector's convolutional modules (``CHANNELS_LAST_MODULES``,
dotted attribute names) and its input batch in channels-last memory format (NHWC): oneDNN's
CPU convolutions run faster so, and pydetops' RoI ops read it in place. Training or inference.

``optimize_for_inference()``: eval mode, the backbone's (Frozen)BatchNorm folded into its
convolutions, channels-last. Inference only: the folded model's ``state_dict`` keys differ.

Both change only the order of floating-point operations: features differ from the plain
model's by float rounding (~5e-6 relative), which can reorder near-tied scores. The plain model
(the default) runs torchvision's exact layer graph and gives its detections.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

from .backbones import fold_frozen_batchnorm_

__all__ = ["FastPathsMixin"]


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
        return self

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
