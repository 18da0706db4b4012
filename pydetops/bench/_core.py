"""The benchmark runner: cases, timing, the table."""
import dataclasses
import statistics
import time
from typing import Any, Callable, List, Optional

import torch


@dataclasses.dataclass
class Case:
    op: str                      # e.g. "box_iou"
    config: str                  # e.g. "4000x4000 float32"
    ours: Callable[[], Any]      # runs pydetops once
    baseline: Optional[Callable[[], Any]]
    baseline_name: str           # what the baseline is, e.g. "torchvision 0.26 (C++)"
    device: str = "cpu"
    comparable: bool = True      # False: the baseline is no fair stand-in; no speed-up is claimed
    note: str = ""


def baseline_torchvision():
    """torchvision.ops if it imports and works here, else None."""
    try:
        import torchvision
        from torchvision import ops as tv_ops

        b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        tv_ops.nms(b, torch.ones(1), 0.5)  # its C++ ops must load too
        return tv_ops, torchvision.__version__
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return None, None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: str = "cpu", repeats: int = 7, warmup: int = 1,
                min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn`` in seconds (device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def _fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def run_cases(cases: List[Case], repeats: int, progress: Callable[[str], None]) -> List[dict]:
    """Times every case, interleaving ours and the baseline, and returns one row per case."""
    rows = []
    for k, case in enumerate(cases, 1):
        progress(f"[{k}/{len(cases)}] {case.op} {case.config} ({case.device})")
        ours_times, base_times = [], []
        # Alternate the two so that machine noise hits both alike.
        for _ in range(3):
            ours_times.append(median_time(case.ours, case.device, repeats=max(1, repeats // 3)))
            if case.baseline is not None:
                base_times.append(median_time(case.baseline, case.device, repeats=max(1, repeats // 3)))
        ours = statistics.median(ours_times)
        base = statistics.median(base_times) if base_times else None
        speedup = (base / ours) if (base is not None and case.comparable and ours > 0) else None
        rows.append(dict(op=case.op, config=case.config, device=case.device, ours_ms=ours * 1e3,
                         baseline_ms=None if base is None else base * 1e3, baseline=case.baseline_name,
                         comparable=case.comparable, speedup=speedup, note=case.note))
    return rows


def format_table(rows: List[dict]) -> str:
    header = ["op", "config", "dev", "pydetops ms", "baseline ms", "speed-up", "baseline"]
    table = [header]
    for r in rows:
        if r["speedup"] is not None:
            sp = f"{r['speedup']:.1f}x"
        elif r["baseline_ms"] is not None:
            sp = "n/a*"
        else:
            sp = "-"
        table.append([r["op"], r["config"], r["device"], _fmt_ms(r["ours_ms"] / 1e3),
                      _fmt_ms(None if r["baseline_ms"] is None else r["baseline_ms"] / 1e3), sp, r["baseline"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r["speedup"] is None and r["baseline_ms"] is not None for r in rows):
        lines.append("n/a*: the baseline is not a fair stand-in (e.g. a Python loop for a C++ kernel); no speed-up claimed.")
    return "\n".join(lines)
