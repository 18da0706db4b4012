"""Microbenchmarks: ``python -m pydetops.bench``.

Each module in this package (not starting with ``_``) defines ``cases(device, quick)``
returning a list of :class:`Case`; the runner times pydetops against the baseline a
user would otherwise run, side by side in one process, and prints medians and ratios.
"""
from ._core import Case, baseline_torchvision, median_time, run_cases  # noqa: F401
