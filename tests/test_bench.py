"""The benchmark's machinery (python -m pydetops.bench): the header (threads, machine load,
which baseline and why), the spread flag rule, --threads, the footnotes. A couple of quick
cases only; the figures themselves are not asserted (they depend on the machine)."""
import json
import sys

import pytest
import torch

from pydetops.bench import _core, boxes
from pydetops.bench.__main__ import main

ONE_CASE = ["--quick", "--repeats", "3", "--filter", "distance_box_iou_loss"]


@pytest.fixture(autouse=True)
def _restore_threads_and_probe():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    _core._TV_STATUS = None  # the next user probes the real environment again


def _case(note=""):
    return _core.Case("op", "cfg", lambda: None, lambda: None, "plain torch (test)", note=note)


# ---- the spread rule -----------------------------------------------------------------------------


def test_spread_rule_on_synthetic_timings():
    ms = 1e-3
    assert not _core.spread_too_wide([1 * ms] * 5)
    assert not _core.spread_too_wide([1 * ms, 1.4 * ms, 1.45 * ms])
    assert not _core.spread_too_wide([1 * ms, 1.5 * ms, 1.5 * ms])          # the limit itself is still ok
    assert _core.spread_too_wide([1 * ms, 1.51 * ms, 1.6 * ms])
    # The busy-machine pattern of the issue: microseconds, but most calls wait a scheduler tick.
    assert _core.spread_too_wide([0.017 * ms, 8.01 * ms, 8.02 * ms])
    # One slow call among fast ones leaves the median honest: shown as max, not flagged.
    assert not _core.spread_too_wide([1 * ms, 1 * ms, 1.1 * ms, 1 * ms, 100 * ms])
    assert not _core.spread_too_wide([])


def test_rows_flag_either_side_and_show_min_median_max():
    ms = 1e-3
    steady = _core.make_row(_case(), [1 * ms, 1.1 * ms, 1.2 * ms], [4 * ms, 4.2 * ms, 4.4 * ms])
    assert not steady["wide"]
    assert steady["ours_min_ms"] == pytest.approx(1.0) and steady["ours_ms"] == pytest.approx(1.1)
    assert steady["ours_max_ms"] == pytest.approx(1.2)
    assert steady["baseline_min_ms"] == pytest.approx(4.0) and steady["baseline_max_ms"] == pytest.approx(4.4)
    assert steady["speedup"] == pytest.approx(4.2 / 1.1)
    snapped_base = _core.make_row(_case(), [0.017 * ms] * 3, [0.015 * ms, 8.0 * ms, 8.01 * ms])
    snapped_ours = _core.make_row(_case(), [0.03 * ms, 24 * ms, 24 * ms], [1.6 * ms] * 3)
    assert snapped_base["wide"] and snapped_ours["wide"]
    no_base = _core.make_row(_core.Case("floor", "cfg", lambda: None, None, "none", comparable=False), [1 * ms], [])
    assert not no_base["wide"] and no_base["baseline_ms"] is None and no_base["speedup"] is None

    table = _core.format_table([steady, snapped_base, no_base])
    lines = table.splitlines()
    assert "pydetops ms min / med / max" in lines[0] and "trust" in lines[0]
    assert "1.00 / 1.10 / 1.20" in lines[2] and "4.00 / 4.20 / 4.40" in lines[2] and " ok " in lines[2]
    assert "WIDE" in lines[3]
    assert _core.SPREAD_RULE in table and "1.5x" in _core.SPREAD_RULE and _core.RERUN_HINT in table
    assert _core.WAIT_RULE not in table  # no CPU times given: no WAIT
    # Without a flagged row no rule is printed.
    assert _core.SPREAD_RULE not in _core.format_table([steady])
    assert _core.RERUN_HINT not in _core.format_table([steady])


def test_wait_rule_on_synthetic_timings():
    ms = 1e-3
    # The median call (by wall time) decides: here the 2nd of [1, 8, 9] ms walls.
    assert _core.cpu_share([1 * ms, 8 * ms, 9 * ms], [1 * ms, 4 * ms, 9 * ms]) == pytest.approx(0.5)
    assert _core.cpu_share([], []) is None
    assert not _core.waited(None) and not _core.waited(0.75) and _core.waited(0.74)
    assert not _core.waited(1.9)  # two threads computing: more CPU than wall time
    # Every call stalled alike (the spread rule cannot see it): 8 ms walls, 3.5 ms of CPU each.
    stalled = _core.make_row(_case(), [0.02 * ms] * 3, [8 * ms, 8.1 * ms, 8.2 * ms],
                             [0.02 * ms] * 3, [3.5 * ms] * 3)
    assert stalled["waited"] and not stalled["wide"]
    assert stalled["ours_cpu_share"] == pytest.approx(1.0) and stalled["baseline_cpu_share"] == pytest.approx(3.5 / 8.1)
    healthy = _core.make_row(_case(), [1 * ms] * 3, [2 * ms] * 3, [1.02 * ms] * 3, [3.9 * ms] * 3)
    assert not healthy["waited"]
    # On CUDA the host waits for the GPU by design: never WAIT.
    cuda_case = _core.Case("op", "cfg", lambda: None, lambda: None, "x", device="cuda")
    assert not _core.make_row(cuda_case, [1 * ms] * 3, [2 * ms] * 3, [0.01 * ms] * 3, [0.01 * ms] * 3)["waited"]
    both = _core.make_row(_case(), [0.02 * ms, 8 * ms, 8 * ms], [1 * ms] * 3, [0.02 * ms, 1 * ms, 1 * ms], [1 * ms] * 3)
    assert both["wide"] and both["waited"]
    table = _core.format_table([healthy, stalled, both])
    lines = table.splitlines()
    assert " ok " in lines[2] and " WAIT " in lines[3] and " WIDE+WAIT " in lines[4]
    assert _core.WAIT_RULE in table and "75%" in _core.WAIT_RULE and _core.RERUN_HINT in table


def test_notes_become_numbered_footnotes():
    rows = [_core.make_row(_case(n), [1e-3], [2e-3]) for n in ["first note", "", "second note", "first note"]]
    lines = _core.format_table(rows).splitlines()
    assert lines[2].startswith("op [1]") and lines[3].startswith("op  ") and lines[4].startswith("op [2]")
    assert lines[5].startswith("op [1]")
    assert lines[-2:] == ["[1] first note", "[2] second note"]


def test_box_iou_floor_row_is_explained_in_the_table():
    cases = [c for c in boxes.cases("cpu", quick=True) if c.op in ("box_iou", "box_iou (floor)")]
    assert [c.op for c in cases] == ["box_iou", "box_iou (floor)"]
    table = _core.format_table(_core.run_cases(cases, repeats=1, progress=lambda msg: None))
    assert "box_iou (floor) [1]" in table
    footnote = [ln for ln in table.splitlines() if ln.startswith("[1] ")]
    assert len(footnote) == 1 and "not an op" in footnote[0] and "box_iou" in footnote[0]


# ---- machine load --------------------------------------------------------------------------------


def test_load_warning_rule():
    assert _core.load_warning(0.2, threads=2, cpus=2) is None
    assert _core.load_warning(0.5, threads=2, cpus=2) is None                 # the limit itself
    assert "busy" in _core.load_warning(1.53, threads=2, cpus=2)              # the machine
    assert "fewer --threads" in _core.load_warning(1.53, threads=2, cpus=2)
    assert _core.load_warning(1.2, threads=1, cpus=2) is None                 # one core is still free
    assert "--threads" not in _core.load_warning(3.0, threads=1, cpus=2)      # nothing fewer to suggest
    assert _core.load_warning(20.0, threads=32, cpus=64) is None
    assert "4 threads on 2 CPUs" in _core.load_warning(0.0, threads=4, cpus=2)


def test_machine_load_reads_getloadavg(monkeypatch):
    monkeypatch.setattr(_core, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_core.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    m = _core.machine_load(2)
    assert m["load"] == [3.0, 2.0, 1.0] and m["cpus"] == 2 and "busy" in m["warning"]
    assert _core.format_load(m) == "machine load (1/5/15 min): 3.00 / 2.00 / 1.00 on 2 CPUs"

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(_core.os, "getloadavg", unavailable)
    m = _core.machine_load(2)
    assert m["load"] is None and m["warning"] is None and "unavailable" in _core.format_load(m)


# ---- the command ---------------------------------------------------------------------------------


def test_command_header_threads_and_json(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    start_threads = torch.get_num_threads()
    assert main(ONE_CASE + ["--threads", "1", "--json", str(out_json)]) == 0
    assert torch.get_num_threads() == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pydetops ") and f"torch {torch.__version__}" in out[0]
    assert out[0].endswith("threads 1 (--threads)")
    assert out[1].startswith("machine load")
    base_line = next(ln for ln in out if ln.startswith("baseline: "))
    st = _core.torchvision_status()
    assert (f"torchvision {st.version}" in base_line) if st.usable else ("plain-torch" in base_line)
    assert any("min / med / max" in ln for ln in out)
    assert any(ln.startswith("distance_box_iou_loss ") for ln in out)

    data = json.loads(out_json.read_text())
    assert data["threads"] == 1 and data["quick"] and data["repeats"] == 3
    assert set(data["load_before"]) == {"load", "cpus", "threads", "warning"}
    assert data["torchvision"]["usable"] == st.usable and data["spread_limit"] == _core.SPREAD_LIMIT
    (row,) = data["rows"]
    assert row["op"] == "distance_box_iou_loss" and row["calls"] == 3
    assert row["ours_min_ms"] <= row["ours_ms"] <= row["ours_max_ms"]
    assert row["baseline_min_ms"] <= row["baseline_ms"] <= row["baseline_max_ms"]
    assert row["baseline_is_torchvision"] == st.usable
    assert row["ours_cpu_share"] > 0 and row["baseline_cpu_share"] > 0 and isinstance(row["waited"], bool)
    assert any(ln.startswith("rows flagged: ") for ln in out)

    torch.set_num_threads(start_threads)
    assert main(ONE_CASE) == 0
    assert f"threads {start_threads}" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--threads", "-2"], ["--repeats", "-1"]])
def test_command_rejects_bad_numbers(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(bad)
    assert e.value.code == 2 and bad[0] in capsys.readouterr().err


def test_unusable_torchvision_is_reported_with_its_reason(capsys, tmp_path, monkeypatch):
    # What torchvision 0.28 does on a torch it was not built for: the import itself fails.
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    meta = tmp_path / "torchvision-0.28.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    with monkeypatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        mp.delitem(sys.modules, "torchvision", raising=False)
        st = _core.probe_torchvision()
        assert (st.found, st.usable, st.version) == (True, False, "0.28.0")
        assert st.reason == "RuntimeError: operator torchvision::nms does not exist"
        assert main(ONE_CASE + ["--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert ("baseline: plain-torch equivalents, named in each row's baseline column (torchvision 0.28.0 is "
            "installed but NOT usable here: RuntimeError: operator torchvision::nms does not exist)") in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["torchvision"] == dict(found=True, usable=False, version="0.28.0",
                                       reason="RuntimeError: operator torchvision::nms does not exist")
    assert not any(r["baseline_is_torchvision"] for r in data["rows"])


def test_missing_torchvision_is_reported(capsys, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "torchvision", None)  # what find_spec/import see when it is absent
        st = _core.probe_torchvision()
        assert (st.found, st.usable, st.reason) == (False, False, "not installed")
        assert main(ONE_CASE) == 0
    out = capsys.readouterr().out
    assert "(torchvision is not installed)" in out
    assert "plain torch" in next(ln for ln in out.splitlines() if ln.startswith("distance_box_iou_loss "))


def test_usable_torchvision_is_the_baseline():
    st = _core.probe_torchvision()
    if not st.usable:
        pytest.skip(f"torchvision is not usable here: {st.reason}")
    assert st.found and st.reason == "" and st.ops is not None
    assert f"baseline: torchvision {st.version} (real torchvision.ops)" in st.describe()
    names = {c.baseline_name for c in boxes.cases("cpu", quick=True) if c.baseline is not None}
    assert names == {f"torchvision {st.version}"}


@pytest.mark.parametrize("slow", [False, True])
def test_slow_cases_are_timed_once_per_round(monkeypatch, slow):
    # Whole detectors take seconds per call: 1 untimed first call + 3 timed calls per side,
    # instead of 3 rounds of (warm-up + repeats / 3); fast cases keep the full count.
    monkeypatch.setattr(_core, "SLOW_CALL_S", 0.0 if slow else 1e9)
    calls = {"ours": 0, "base": 0}

    def ours():
        calls["ours"] += 1

    def base():
        calls["base"] += 1

    case = _core.Case("op", "cfg", ours, base, "baseline")
    (row,) = _core.run_cases([case], repeats=9, progress=lambda msg: None)
    expected_timed = 3 if slow else 9
    expected_calls = 1 + (3 if slow else 3 * (1 + 3))
    assert calls == {"ours": expected_calls, "base": expected_calls}
    assert row["calls"] == expected_timed
