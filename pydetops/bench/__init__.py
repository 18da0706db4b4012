"""Microbenchmarks: ``python -m pydetops.bench``.

Each module in this package (not starting with ``_``) defines ``cases(device, quick)``
returning a list of :class:`Case`; the runner times pydetops against the baseline a
user would otherwise run (torchvision.ops when it is usable here, see
:func:`torchvision_status`), side by side in one process, and prints min / median / max
per side, the speed-up of the medians, and flags rows not to trust (``_core.SPREAD_RULE``,
``_core.WAIT_RULE``).
"""
from ._core import (Case, baseline_torchvision, median_time, run_cases, time_calls,  # noqa: F401
                    torchvision_status)
