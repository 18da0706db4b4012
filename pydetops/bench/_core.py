"""The benchmark runner: cases, the baseline probe, machine load, timing, the WIDE/WAIT rules, the table."""
import dataclasses
import importlib.metadata
import importlib.util
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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
    note: str = ""               # printed as a footnote under the table
    # Called once after the case is timed, with its row; returns a line printed under the table
    # (e.g. a per-stage breakdown), kept in the row as "details". None: nothing.
    details: Optional[Callable[[dict], str]] = None


# ---- which baseline: torchvision when it is usable here ---------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchvisionStatus:
    found: bool                  # a torchvision package is installed in this environment
    usable: bool                 # it imported and its C++ ops ran (a tiny nms)
    version: Optional[str]       # from the package metadata, known even when the import fails
    reason: str                  # why it is not usable ("" when it is)
    ops: Any = None              # torchvision.ops when usable

    def describe(self) -> str:
        """One header line: which baseline the rows use, and why."""
        if self.usable:
            return (f"baseline: torchvision {self.version} (real torchvision.ops). Rows whose baseline column says "
                    f"'torchvision {self.version}' call it; the other rows are ops torchvision lacks and name "
                    "the plain-torch equivalent they time.")
        if self.found:
            why = f"torchvision {self.version or '(unknown version)'} is installed but NOT usable here: {self.reason}"
        else:
            why = "torchvision is not installed"
        return (f"baseline: plain-torch equivalents, named in each row's baseline column ({why}). For the real "
                "comparison, run this in an environment where torchvision imports (README, 'Against torchvision').")


def _import_torchvision_ops():
    import torchvision  # noqa: F401 - torchvision 0.28 on a mismatched torch already fails here
    from torchvision import ops as tv_ops

    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    tv_ops.nms(b, torch.ones(1), 0.5)  # its C++ ops must load too
    return tv_ops


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def probe_torchvision() -> TorchvisionStatus:
    """Looks for torchvision, imports it and runs one tiny nms; says why when that fails."""
    try:
        found = importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        found = True
    if not found:
        return TorchvisionStatus(False, False, None, "not installed")
    try:
        version = importlib.metadata.version("torchvision")
    except Exception:  # noqa: BLE001 - e.g. a source checkout without metadata
        version = None
    try:
        tv_ops = _import_torchvision_ops()
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"; the reason is reported
        return TorchvisionStatus(True, False, version, _first_line(e))
    import torchvision

    return TorchvisionStatus(True, True, version or torchvision.__version__, "", tv_ops)


_TV_STATUS: Optional[TorchvisionStatus] = None


def torchvision_status(refresh: bool = False) -> TorchvisionStatus:
    """The probe's result, computed once per run (``refresh=True`` probes again)."""
    global _TV_STATUS
    if _TV_STATUS is None or refresh:
        _TV_STATUS = probe_torchvision()
    return _TV_STATUS


def baseline_torchvision():
    """(torchvision.ops, version) if torchvision imports and works here, else (None, None)."""
    st = torchvision_status()
    return (st.ops, st.version) if st.usable else (None, None)


# ---- machine load --------------------------------------------------------------------------------


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_warning(load1: float, threads: int, cpus: int) -> Optional[str]:
    """The warning for the header, or None.

    Rule: warn when the 1-minute load average (other processes' demand, read before any
    timing) exceeds ``cpus - threads + 0.5``, i.e. when our threads plus what already runs
    need more than the CPUs by over half a core. Then some of torch's OpenMP threads get
    descheduled and the others wait for them at every parallel region: a call of
    microseconds can take a scheduler tick (several ms).
    """
    if threads > cpus:
        return (f"WARNING: {threads} threads on {cpus} CPUs: threads wait for each other and timings are "
                "unreliable; use --threads N with N <= the CPU count.")
    if load1 > cpus - threads + 0.5:
        return (f"WARNING: machine busy: load {load1:.2f} with {threads} thread{'s' if threads > 1 else ''} on "
                f"{cpus} CPUs. Other processes hold CPUs this run needs, so calls may stall for scheduler ticks "
                "(ms) and rows get flagged WIDE or WAIT. Rerun on a quiet machine"
                f"{', or with fewer --threads' if threads > 1 else ''}.")
    return None


def machine_load(threads: int) -> Dict[str, Any]:
    cpus = usable_cpus()
    try:
        l1, l5, l15 = os.getloadavg()
    except (AttributeError, OSError):  # not on every platform
        return dict(load=None, cpus=cpus, threads=threads, warning=None)
    return dict(load=[round(l1, 2), round(l5, 2), round(l15, 2)], cpus=cpus, threads=threads,
                warning=load_warning(l1, threads, cpus))


def format_load(m: Dict[str, Any]) -> str:
    if m["load"] is None:
        return f"machine load: unavailable on this platform ({m['cpus']} CPUs)"
    l1, l5, l15 = m["load"]
    return f"machine load (1/5/15 min): {l1:.2f} / {l5:.2f} / {l15:.2f} on {m['cpus']} CPUs"


# ---- timing --------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_calls(fn: Callable[[], Any], device: str, repeats: int, warmup: int,
                min_seconds: float) -> Tuple[List[float], List[float]]:
    """(wall times, process CPU times) of each timed call, in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    walls: List[float] = []
    cpus: List[float] = []
    start = time.perf_counter()
    while len(walls) < repeats or (time.perf_counter() - start) < min_seconds:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if len(walls) >= 1000:
            break
    return walls, cpus


def time_calls(fn: Callable[[], Any], device: str = "cpu", repeats: int = 7, warmup: int = 1,
               min_seconds: float = 0.0) -> List[float]:
    """Wall time of each of ``repeats`` calls of ``fn`` in seconds (device synchronised around each)."""
    return _time_calls(fn, device, repeats, warmup, min_seconds)[0]


def median_time(fn: Callable[[], Any], device: str = "cpu", repeats: int = 7, warmup: int = 1,
                min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn`` in seconds."""
    return statistics.median(time_calls(fn, device, repeats, warmup, min_seconds))


# Two flags for rows not to trust (a row can carry both):
# WIDE: on either side, the median call took more than SPREAD_LIMIT times the fastest call: at least
#   half of the calls ran that much slower than the op can run, so the median (and the speed-up
#   built on it) measures the machine, not the op.
# WAIT (CPU rows only): on either side, in the median call the process got CPU time for less than
#   CPU_SHARE_LIMIT of the wall time. A CPU op computes all the time it runs (cpu/wall is about 1 on
#   one thread, up to the thread count on several; measured 1.0-1.07 for healthy calls on a loaded
#   2-core machine, 0.44-0.59 for calls stalled for ms), so this call partly waited: its threads
#   were descheduled, or a thread spun at a barrier for a descheduled partner. Catches the rows
#   where every call stalled alike, which the spread cannot see.
SPREAD_LIMIT = 1.5
CPU_SHARE_LIMIT = 0.75
SPREAD_RULE = (f"WIDE: on one side (pydetops or baseline) the median call took more than {SPREAD_LIMIT:g}x "
               "the fastest call, so that median measures the machine's noise more than the op; do not trust "
               "the row's speed-up.")
WAIT_RULE = (f"WAIT: on one side the median call ran on a CPU less than {CPU_SHARE_LIMIT:.0%} of its wall time "
             "(process CPU time / wall time): its threads waited for CPUs that other processes held, or for a "
             "descheduled partner thread; do not trust the row's figures.")
RERUN_HINT = "For flagged rows: rerun on a quiet machine, or with fewer --threads."


def spread_too_wide(times_s: Sequence[float], limit: float = SPREAD_LIMIT) -> bool:
    """The WIDE rule on one side's wall times (seconds): median > limit x min."""
    if not times_s:
        return False
    fastest = min(times_s)
    return statistics.median(times_s) > limit * fastest if fastest > 0 else False


def cpu_share(walls_s: Sequence[float], cpus_s: Sequence[float]) -> Optional[float]:
    """Process CPU time / wall time of the median call (by wall time); None without calls."""
    if not walls_s:
        return None
    order = sorted(range(len(walls_s)), key=lambda i: walls_s[i])
    i = order[(len(order) - 1) // 2]
    return cpus_s[i] / walls_s[i] if walls_s[i] > 0 else None


def waited(share: Optional[float], limit: float = CPU_SHARE_LIMIT) -> bool:
    """The WAIT rule on one side's CPU share."""
    return share is not None and share < limit


def make_row(case: Case, ours_s: Sequence[float], base_s: Sequence[float],
             ours_cpu_s: Optional[Sequence[float]] = None, base_cpu_s: Optional[Sequence[float]] = None) -> dict:
    """One table row from the per-call wall times (seconds) of each side and, for CPU rows, the
    process CPU time of each call (None: not measured, no WAIT flag)."""
    ours = statistics.median(ours_s)
    base = statistics.median(base_s) if base_s else None
    speedup = (base / ours) if (base is not None and case.comparable and ours > 0) else None
    ms = (lambda v: None if v is None else v * 1e3)
    on_cpu = not case.device.startswith("cuda")
    ours_share = cpu_share(ours_s, ours_cpu_s) if (on_cpu and ours_cpu_s is not None) else None
    base_share = cpu_share(base_s, base_cpu_s) if (on_cpu and base_cpu_s is not None) else None
    return dict(op=case.op, config=case.config, device=case.device,
                ours_ms=ms(ours), ours_min_ms=ms(min(ours_s)), ours_max_ms=ms(max(ours_s)),
                baseline_ms=ms(base), baseline_min_ms=ms(min(base_s)) if base_s else None,
                baseline_max_ms=ms(max(base_s)) if base_s else None, baseline=case.baseline_name,
                baseline_is_torchvision=case.baseline_name.startswith("torchvision"),
                comparable=case.comparable, speedup=speedup,
                ours_cpu_share=ours_share, baseline_cpu_share=base_share,
                wide=spread_too_wide(ours_s) or spread_too_wide(base_s),
                waited=waited(ours_share) or waited(base_share),
                calls=len(ours_s), note=case.note)


SLOW_CALL_S = 1.0  # calls slower than this are timed once per round (3 timed calls per side)


def run_cases(cases: List[Case], repeats: int, progress: Callable[[str], None]) -> List[dict]:
    """Times every case, interleaving ours and the baseline, and returns one row per case."""
    rows = []
    per_round = max(1, repeats // 3)
    for k, case in enumerate(cases, 1):
        progress(f"[{k}/{len(cases)}] {case.op} {case.config} ({case.device})")
        ours_w: List[float] = []
        ours_c: List[float] = []
        base_w: List[float] = []
        base_c: List[float] = []
        # A side whose calls take seconds (whole detectors) is timed once per round with no
        # further warm-up: a dozen 10-second calls per side would add minutes and no information.
        first = _time_calls(case.ours, case.device, 1, 0, 0.0)[0]
        if case.baseline is not None:
            first += _time_calls(case.baseline, case.device, 1, 0, 0.0)[0]
        slow = max(first) > SLOW_CALL_S
        n, warmup = (1, 0) if slow else (per_round, 1)
        # Three rounds, alternating the two sides, so that machine noise hits both alike.
        for _ in range(3):
            w, c = _time_calls(case.ours, case.device, n, warmup, 0.0)
            ours_w += w
            ours_c += c
            if case.baseline is not None:
                w, c = _time_calls(case.baseline, case.device, n, warmup, 0.0)
                base_w += w
                base_c += c
        row = make_row(case, ours_w, base_w, ours_c, base_c)
        if case.details is not None:
            row["details"] = case.details(row)
        rows.append(row)
    return rows


# ---- the table -----------------------------------------------------------------------------------


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _spread(r: dict, side: str) -> str:
    if r[f"{side}_ms"] is None:
        return "-"
    return " / ".join(_fmt_ms(r[k]) for k in (f"{side}_min_ms", f"{side}_ms", f"{side}_max_ms"))


def format_table(rows: List[dict]) -> str:
    header = ["op", "config", "dev", "pydetops ms min / med / max", "baseline ms min / med / max", "speed-up",
              "trust", "baseline"]
    notes: List[str] = []  # footnotes, numbered in order of first use
    table = [header]
    for r in rows:
        if r["speedup"] is not None:
            sp = f"{r['speedup']:.1f}x"
        elif r["baseline_ms"] is not None:
            sp = "n/a*"
        else:
            sp = "-"
        op = r["op"]
        if r.get("note"):
            if r["note"] not in notes:
                notes.append(r["note"])
            op += f" [{notes.index(r['note']) + 1}]"
        flags = [f for f, on in (("WIDE", r.get("wide")), ("WAIT", r.get("waited"))) if on]
        table.append([op, r["config"], r["device"], _spread(r, "ours"), _spread(r, "baseline"), sp,
                      "+".join(flags) or "ok", r["baseline"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("speed-up = baseline median / pydetops median, both timed in this process, interleaved.")
    if any(r["speedup"] is None and r["baseline_ms"] is not None for r in rows):
        lines.append("n/a*: the baseline is not a fair stand-in (e.g. a Python loop for a C++ kernel); "
                     "no speed-up claimed.")
    if any(r.get("wide") for r in rows):
        lines.append(SPREAD_RULE)
    if any(r.get("waited") for r in rows):
        lines.append(WAIT_RULE)
    if any(r.get("wide") or r.get("waited") for r in rows):
        lines.append(RERUN_HINT)
    lines += [f"[{k}] {n}" for k, n in enumerate(notes, 1)]
    lines += [f"{r['op']} {r['config']}: {r['details']}" for r in rows if r.get("details")]
    return "\n".join(lines)
