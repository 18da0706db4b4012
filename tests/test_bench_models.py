"""The model cases of ``python -m pydetops.bench`` (pydetops/bench/models.py) on tiny images: the
rows, the per-stage breakdown, the torchvision side when torchvision is usable here, the
images/s line. The figures themselves are not asserted (they depend on the machine)."""
import pytest
import torch

from pydetops.bench import _core, models
from pydetops.bench.__main__ import main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models are fastest and steadiest on one thread here
    yield
    torch.set_num_threads(threads)
    _core._TV_STATUS = None


def test_model_cases_run_on_a_tiny_image():
    tv = _core.torchvision_status(refresh=True)
    cases = models.model_cases("cpu", (64, 80), 64, 80, 2, (64, 64))
    assert [c.op for c in cases] == ["faster_rcnn_r50_fpn inference", "faster_rcnn_r50_fpn inference optimized",
                                     "faster_rcnn_mobilenet_v3_fpn inference",
                                     "faster_rcnn_mobilenet_v3_fpn inference optimized",
                                     "faster_rcnn_tiny train step", "faster_rcnn_r50_fpn train step channels-last"]
    rows = _core.run_cases(cases, 3, progress=lambda msg: None)
    for row in rows[:4]:
        assert row["calls"] == 3 and row["ours_ms"] > 0
        assert row["details"].startswith("ours per stage (medians): ")
        for stage in models.STAGES:
            assert f"{stage} " in row["details"], (stage, row["details"])
        if tv.usable:
            assert row["baseline"].startswith("torchvision") and row["baseline_ms"] > 0
            assert row["speedup"] is not None and "of torchvision's detections in ours'" in row["details"]
        else:
            assert row["baseline_ms"] is None and row["speedup"] is None and not row["comparable"]
            assert "no plain-torch equivalent" in row["note"]
    for row in (rows[1], rows[3]):
        assert "optimize_for_inference()" in row["note"]
    r50_train = rows[5]
    assert r50_train["ours_ms"] > 0 and "use_channels_last(True)" in r50_train["note"]
    assert (r50_train["speedup"] is not None) == tv.usable
    train = rows[4]
    assert train["baseline_ms"] is None and train["speedup"] is None
    rate = float(train["details"].split(" images/s")[0])
    assert rate == pytest.approx(2 / (train["ours_ms"] / 1e3), abs=0.05 + 1e-9)  # printed with one decimal
    table = _core.format_table(rows)
    assert f"faster_rcnn_tiny train step batch 2 64x64: {train['details']}" in table.splitlines()


def test_stage_timer_covers_the_forward():
    torch.manual_seed(0)
    from pydetops.models import faster_rcnn
    model = faster_rcnn(num_classes=3, backbone="tiny", min_size=64, max_size=64).eval()
    timer = models.StageTimer(model)
    img = models.structured_image(64, 64)
    assert img.shape == (3, 64, 64)
    with torch.no_grad():
        for _ in range(2):
            out = model([img])
    assert isinstance(out, list) and set(out[0]) == {"boxes", "scores", "labels"}
    assert all(len(timer.t[s]) == 2 for s in models.STAGES)
    assert list(timer.medians()) == list(models.STAGES)
    timer.reset()
    assert timer.medians() == {}


def test_bench_command_runs_the_train_case(capsys):
    assert main(["--quick", "--repeats", "3", "--threads", "1", "--filter", "faster_rcnn_tiny"]) == 0
    out = capsys.readouterr().out
    assert "faster_rcnn_tiny train step" in out and "images/s (batch 2 / median step)" in out
