"""pydetops.ops: drop-in, compiled versions of ``torchvision.ops``.

Every function here calls a ``torch.ops.pydetops.*`` op; importing this package
also registers the ops' fake (meta) kernels used by ``torch.compile``.
Boxes are ``(x1, y1, x2, y2)`` with ``0 <= x1 < x2`` and ``0 <= y1 < y2`` unless a
function says otherwise.
"""
from typing import List

import torch

from .anchors_coding import *  # noqa: F401,F403
from .anchors_coding import __all__ as _anchors_coding_all
from .boxes import *  # noqa: F401,F403
from .boxes import __all__ as _boxes_all
from .conv_transpose import *  # noqa: F401,F403
from .detection import *  # noqa: F401,F403
from .detection import __all__ as _detection_all
from .conv_transpose import __all__ as _conv_transpose_all
from .nms import *  # noqa: F401,F403
from .nms import __all__ as _nms_all
from .paste_keypoints import *  # noqa: F401,F403
from .paste_keypoints import __all__ as _paste_keypoints_all
from .psroi_spp import *  # noqa: F401,F403
from .psroi_spp import __all__ as _psroi_spp_all
from .roi import *  # noqa: F401,F403
from .roi import __all__ as _roi_all
from .unpool import *  # noqa: F401,F403
from .unpool import __all__ as _unpool_all
from .winograd import *  # noqa: F401,F403
from .winograd import __all__ as _winograd_all

__all__ = list(_boxes_all) + list(_nms_all) + list(_anchors_coding_all) + list(_psroi_spp_all) + list(_roi_all)
__all__ += list(_conv_transpose_all) + list(_unpool_all) + list(_detection_all)
__all__ += list(_paste_keypoints_all) + list(_winograd_all)


def registered_op_names() -> List[str]:
    """Names of the ops pydetops has registered in torch.ops.pydetops."""
    return sorted({n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pydetops::")})
