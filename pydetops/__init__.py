"""pydetops: compiled object-detection ops for PyTorch.

Drop-in replacements for ``torchvision.ops`` (same calls, same results), registered
as real torch ops under ``torch.ops.pydetops``: autograd, ``torch.compile`` and
TorchScript work on each.

    from pydetops import ops
    keep = ops.nms(boxes, scores, 0.5)
"""
from ._version import __version__
from ._loader import build_info, load_extension

_C = load_extension()

from . import ops  # noqa: E402  (registers fake kernels; needs _C loaded)

__all__ = ["__version__", "build_info", "ops"]
