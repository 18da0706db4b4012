"""The commands end to end: ``python -m pydetops.data.synthetic`` -> ``pydetops.train`` ->
``pydetops.evaluate`` -> ``pydetops.predict``, in-process and in subprocesses, with a tiny
model that follows the model contract (registered into ``pydetops.models.MODELS`` here),
plus resume after a kill, DDP under torchrun, time budget and the one-line errors."""
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from pydetops import evaluate, predict, train
from pydetops.checkpoint import load_checkpoint, save_checkpoint
from pydetops.data import synthetic

import pydetops

# Subprocesses import the pydetops this process imported (the worktree, or a copy built
# against another torch), whatever their working folder.
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pydetops.__file__)))

TINY_SOURCE = textwrap.dedent('''
    import os
    import time

    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class TinyDetector(nn.Module):
        """One box per image from mean-pooled conv features (no batch statistics).
        Train mode: {"loss_box", "loss_cls"} against each image's first object;
        eval mode: one detection per image."""

        def __init__(self, num_classes, hidden=8):
            super().__init__()
            self.conv = nn.Conv2d(3, hidden, 3, stride=2, padding=1)
            self.head = nn.Linear(hidden, 4 + num_classes)

        def forward(self, images, targets=None):
            feats = torch.stack([F.relu(self.conv(im[None])).mean((2, 3))[0] for im in images])
            out = self.head(feats)
            size = torch.tensor([[im.shape[-1], im.shape[-2]] * 2 for im in images], dtype=out.dtype)
            c = torch.sigmoid(out[:, :4])
            logits = out[:, 4:]
            if self.training:
                if os.environ.get("TINY_SLEEP"):
                    time.sleep(float(os.environ["TINY_SLEEP"]))
                g = torch.stack([t["boxes"][0] for t in targets]) / size
                g = torch.stack([(g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2, g[:, 2] - g[:, 0],
                                 g[:, 3] - g[:, 1]], 1)
                labels = torch.stack([t["labels"][0] for t in targets])
                return {"loss_box": 10 * F.smooth_l1_loss(c, g, beta=0.1), "loss_cls": F.cross_entropy(logits, labels)}
            boxes = torch.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2,
                                 c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], 1) * size
            scores, labels = logits.softmax(1)[:, 1:].max(1)
            res = [{"boxes": boxes[i:i + 1], "labels": labels[i:i + 1] + 1, "scores": scores[i:i + 1]}
                   for i in range(len(images))]
            if os.environ.get("TINY_EXTRAS"):  # box-shaped masks and five keypoints, as Mask/Keypoint R-CNN
                for im, r in zip(images, res):
                    H, W = im.shape[-2:]
                    x1, y1, x2, y2 = [float(v) for v in r["boxes"][0]]
                    m = torch.zeros(1, 1, H, W)
                    m[0, 0, max(0, int(y1)):max(0, int(y2)), max(0, int(x1)):max(0, int(x2))] = 0.9
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    r["masks"] = m
                    r["keypoints"] = torch.tensor([[[x1, cy, 1.0], [x2, cy, 1.0], [cx, y1, 1.0], [cx, y2, 1.0],
                                                    [cx, cy, 1.0]]])
            return res
''')

RUNNER_SOURCE = textwrap.dedent('''
    import importlib
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tiny_model import TinyDetector
    from pydetops.models import MODELS
    MODELS["tiny"] = TinyDetector
    sys.exit(importlib.import_module("pydetops." + sys.argv[1]).main(sys.argv[2:]))
''')


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core CPU: a second intra-op thread only adds contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    synthetic.generate(str(root / "train"), images=8, seed=0, size=(40, 48), single_object=True)
    synthetic.generate(str(root / "val"), images=4, seed=1, size=(40, 48), single_object=True)
    (root / "tiny_model.py").write_text(TINY_SOURCE)
    (root / "runner.py").write_text(RUNNER_SOURCE)
    return root


@pytest.fixture
def tiny(data, monkeypatch):
    mod = types.ModuleType("tiny_model")
    exec(compile(TINY_SOURCE, str(data / "tiny_model.py"), "exec"), mod.__dict__)
    from pydetops.models import MODELS
    monkeypatch.setitem(MODELS, "tiny", mod.TinyDetector)
    return mod.TinyDetector


def _train_args(data, out, *extra, val=True):
    args = ["--model", "tiny", "--train-images", str(data / "train" / "images"),
            "--train-annotations", str(data / "train" / "annotations.json"), "--out", str(out),
            "--lr", "0.05", "--warmup-steps", "2"]
    if val:
        args += ["--val-images", str(data / "val" / "images"), "--val-annotations", str(data / "val" / "annotations.json")]
    return args + list(extra)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", **extra)
    return env


def _run(data, module, *args, **env):
    return subprocess.run([sys.executable, str(data / "runner.py"), module, *map(str, args)], cwd=str(data),
                          env=_env(**env), capture_output=True, text=True, timeout=120)


def _weights(path):
    return load_checkpoint(str(path))["state_dict"]


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_train_evaluate_predict(data, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(_train_args(data, out, "--epochs", "3", "--batch-size", "2")) == 0
    for f in ("last.pt", "best.pt", "metrics.json", "losses.png"):
        assert (out / f).is_file(), f
    assert (out / "losses.png").read_bytes()[:4] == b"\x89PNG"
    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3] and all(e["complete"] for e in m["epochs"])
    assert set(m["epochs"][0]["losses"]) == {"loss_box", "loss_cls", "loss"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "per_class_AP", "fps"} <= set(m["epochs"][0]["val"])
    assert len(m["steps"]) == 3 * 4 and m["steps"][0]["lr"] < m["steps"][3]["lr"]  # warm-up
    assert m["epochs"][-1]["losses"]["loss"] < m["epochs"][0]["losses"]["loss"]
    ck = load_checkpoint(str(out / "last.pt"))
    assert ck["model"] == "tiny" and ck["model_kwargs"] == {} and ck["num_classes"] == 4 and ck["epoch"] == 2
    assert ck["label_to_category_id"] == [None, 1, 3, 7]
    assert [c["name"] for c in ck["categories"]] == ["rectangle", "ellipse", "triangle"]
    assert {"optimizer", "scheduler", "history", "best_ap"} <= set(ck)
    best = load_checkpoint(str(out / "best.pt"))
    assert best["val"]["AP"] == max(e["val"]["AP"] for e in m["epochs"]) == m["best"]["AP"]

    ev = tmp_path / "eval"
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(out / "best.pt"), "--images", str(data / "val" / "images"),
                          "--annotations", str(data / "val" / "annotations.json"), "--out", str(ev)]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "per-class AP: rectangle" in printed
    dets = json.loads((ev / "detections.json").read_text())
    assert len(dets) == 4 and {d["category_id"] for d in dets} <= {1, 3, 7}
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} and d["bbox"][2] > 0 for d in dets)
    em = json.loads((ev / "metrics.json").read_text())
    assert em["AP"] == pytest.approx(best["val"]["AP"]) and em["images"] == 4 and em["fps"] > 0
    assert set(em["per_class_AP"]) == {"rectangle", "ellipse", "triangle"}
    assert (ev / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"

    pr = tmp_path / "pred"
    imgs = [data / "val" / "images" / "000001.png", data / "val" / "images" / "000002.png"]
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(pr), "--score-threshold", "0",
                         *map(str, imgs)]) == 0
    p = json.loads((pr / "predictions.json").read_text())
    assert [os.path.basename(r["image"]) for r in p] == ["000001.png", "000002.png"]
    assert all(len(r["detections"]) == 1 and r["detections"][0]["category"] in ("rectangle", "ellipse", "triangle")
               for r in p)
    from PIL import Image
    with Image.open(pr / "000001.png") as im, Image.open(imgs[0]) as orig:
        # the drawing changed pixels (numpy: Image.getdata is deprecated in Pillow 13)
        import numpy as np
        assert im.size == orig.size and not np.array_equal(np.asarray(im.convert("RGB")), np.asarray(orig.convert("RGB")))


def test_masks_and_keypoints_are_evaluated_and_drawn(data, tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train.main(_train_args(data, out, "--epochs", "1", "--batch-size", "4", val=False)) == 0
    monkeypatch.setenv("TINY_EXTRAS", "1")
    ev = tmp_path / "ev"
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(data / "val" / "images"),
                          "--annotations", str(data / "val" / "annotations.json"), "--out", str(ev)]) == 0
    em = json.loads((ev / "metrics.json").read_text())
    assert {"AP", "AP50", "per_class_AP"} <= set(em["segm"]) and {"AP", "AR", "per_class_AP"} <= set(em["keypoints"])
    dets = json.loads((ev / "detections.json").read_text())
    assert all(len(d["keypoints"]) == 15 and set(d["segmentation"]) == {"size", "counts"} for d in dets)
    pr = tmp_path / "pr"
    img = data / "val" / "images" / "000003.png"
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(pr), "--score-threshold", "0",
                         str(img), str(img)]) == 0
    p = json.loads((pr / "predictions.json").read_text())
    assert [r["drawn"] for r in p] == ["000003.png", "000003_2.png"]  # same name twice: not overwritten
    assert "segmentation" in p[0]["detections"][0] and len(p[0]["detections"][0]["keypoints"]) == 15


def test_max_minutes_stops_after_the_step_and_still_saves(data, tiny, tmp_path):
    out = tmp_path / "budget"
    assert train.main(_train_args(data, out, "--max-minutes", "0.00001", "--batch-size", "2", "--amp")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["epochs"]) == 1 and m["epochs"][0]["steps"] == 1 and m["epochs"][0]["complete"] is False
    assert "AP" in m["epochs"][0]["val"] and (out / "best.pt").is_file()
    assert load_checkpoint(str(out / "last.pt"))["epoch"] == 0


def test_one_line_errors(data, tiny, tmp_path, capsys):
    def err(fn, args):
        rc = fn(list(map(str, args)))
        e = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and e and e[-1].startswith("error: "), e
        return e[-1]

    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    a = _train_args(data, tmp_path / "o1", "--epochs", "1", val=False)
    a[a.index("--train-annotations") + 1] = str(bad)
    assert "bad.json: malformed JSON at line 1" in err(train.main, a)
    a = _train_args(data, tmp_path / "o1", "--epochs", "1", val=False)
    a[a.index("--model") + 1] = "nope"
    assert "unknown model 'nope'" in err(train.main, a)
    assert "cannot build with {'backbone': 'x'}" in err(train.main, a[:1] + ["tiny"] + a[2:] + ["--backbone", "x"])

    run = tmp_path / "r"
    assert train.main(_train_args(data, run, "--epochs", "1", "--batch-size", "4", val=False)) == 0
    capsys.readouterr()
    good = (run / "last.pt").read_bytes()
    ev = ["--images", data / "val" / "images", "--annotations", data / "val" / "annotations.json", "--out", tmp_path / "e"]
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    assert "trunc.pt: corrupt or truncated checkpoint" in err(evaluate.main, ["--checkpoint", tmp_path / "trunc.pt", *ev])
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bare.pt")
    assert "bare.pt: not a pydetops checkpoint" in err(evaluate.main, ["--checkpoint", tmp_path / "bare.pt", *ev])
    assert "nothere.pt: checkpoint file not found" in err(predict.main, ["--checkpoint", tmp_path / "nothere.pt",
                                                                        "--out", tmp_path / "p", data / "val/images/000001.png"])
    assert "missing.png: image file not found" in err(predict.main, ["--checkpoint", run / "last.pt", "--out",
                                                                    tmp_path / "p", tmp_path / "missing.png"])
    # --resume with a checkpoint of another model
    from pydetops.models import MODELS
    MODELS["tiny_other"] = tiny
    try:
        a = _train_args(data, run, "--epochs", "2", "--resume", val=False)
        a[a.index("--model") + 1] = "tiny_other"
        assert "last.pt: checkpoint of model 'tiny', not 'tiny_other'" in err(train.main, a)
    finally:
        del MODELS["tiny_other"]
    # weights of a differently built model
    ck = load_checkpoint(str(run / "last.pt"))
    ck["state_dict"]["conv.weight"] = torch.zeros(2, 3, 3, 3)
    save_checkpoint(str(tmp_path / "mismatch.pt"), {k: v for k, v in ck.items() if k not in ("format", "version")})
    assert "mismatch.pt: weights do not fit model 'tiny'" in err(evaluate.main, ["--checkpoint", tmp_path / "mismatch.pt", *ev])
    ck = load_checkpoint(str(run / "last.pt"))
    ck["model"] = "ghost"
    save_checkpoint(str(tmp_path / "ghost.pt"), {k: v for k, v in ck.items() if k not in ("format", "version")})
    assert "ghost.pt: checkpoint of model 'ghost', which this pydetops does not have" in err(
        predict.main, ["--checkpoint", tmp_path / "ghost.pt", "--out", tmp_path / "p", data / "val/images/000001.png"])
    # a dataset with other categories than the checkpoint's
    other = json.loads((data / "val" / "annotations.json").read_text())
    other["categories"][0]["name"] = "square"
    (tmp_path / "other.json").write_text(json.dumps(other))
    msg = err(evaluate.main, ["--checkpoint", run / "last.pt", "--images", data / "val" / "images",
                              "--annotations", tmp_path / "other.json", "--out", tmp_path / "e"])
    assert "other.json: categories differ" in msg and "renamed: ids [1]" in msg
    if not torch.cuda.is_available():
        assert "--device cuda" in err(evaluate.main, ["--checkpoint", run / "last.pt", *ev, "--device", "cuda"])


def test_subprocess_commands_and_corrupt_checkpoint(data, tmp_path):
    d = tmp_path / "d"
    synthetic.main([str(d), "--images", "4", "--seed", "9", "--size", "32", "40", "--single-object"])
    out = tmp_path / "run"
    r = _run(data, "train", "--model", "tiny", "--train-images", d / "images", "--train-annotations",
             d / "annotations.json", "--val-images", d / "images", "--val-annotations", d / "annotations.json",
             "--out", out, "--epochs", "1", "--batch-size", "2", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "epoch 1" in r.stderr and "val AP" in r.stderr  # tqdm bar and epoch line
    # The three commands that read the checkpoint run side by side.
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    runs = {
        "evaluate": ["--checkpoint", out / "best.pt", "--images", d / "images", "--annotations",
                     d / "annotations.json", "--out", tmp_path / "ev"],
        "predict": ["--checkpoint", out / "last.pt", "--out", tmp_path / "pr", d / "images" / "000001.png"],
        "corrupt": ["--checkpoint", tmp_path / "corrupt.pt", "--images", d / "images", "--annotations",
                    d / "annotations.json", "--out", tmp_path / "ev2"],
    }
    procs = {k: subprocess.Popen([sys.executable, str(data / "runner.py"), "predict" if k == "predict" else "evaluate",
                                  *map(str, v)], cwd=str(data), env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, v in runs.items()}
    res = {k: (p.communicate(timeout=120), p.returncode) for k, p in procs.items()}
    (o, e), rc = res["evaluate"]
    assert rc == 0 and "AR100" in o and (tmp_path / "ev" / "metrics.json").is_file(), e
    (o, e), rc = res["predict"]
    assert rc == 0 and (tmp_path / "pr" / "000001.png").is_file(), e
    (o, e), rc = res["corrupt"]
    assert rc == 2 and "Traceback" not in e
    assert e.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'corrupt.pt'}: corrupt or truncated checkpoint")


def test_kill_then_resume_matches_uninterrupted_run(data, tiny, tmp_path):
    ref = tmp_path / "ref"
    assert train.main(_train_args(data, ref, "--epochs", "4", "--batch-size", "2", val=False)) == 0
    out = tmp_path / "killed"
    args = _train_args(data, out, "--epochs", "4", "--batch-size", "2", val=False)
    p = subprocess.Popen([sys.executable, str(data / "runner.py"), "train", *args], cwd=str(data),
                         env=_env(TINY_SLEEP="0.15"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (out / "last.pt").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # into the next epoch
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    done = load_checkpoint(str(out / "last.pt"))["epoch"]  # readable: written atomically
    assert done < 3
    assert train.main(_train_args(data, out, "--epochs", "4", "--batch-size", "2", "--resume", val=False)) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3, 4], done
    _assert_same_weights(_weights(out / "last.pt"), _weights(ref / "last.pt"), atol=1e-6)


def test_ddp_two_processes_match_one(data, tiny, tmp_path):
    one = tmp_path / "one"
    assert train.main(_train_args(data, one, "--epochs", "2", "--batch-size", "4", val=False)) == 0
    two = tmp_path / "two"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed next to this python")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(data / "runner.py"), "train",
                        *_train_args(data, two, "--epochs", "2", "--batch-size", "2", val=False)],
                       cwd=str(data), env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(_weights(two / "last.pt"), _weights(one / "last.pt"), atol=1e-5)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert [e["steps"] for e in m2["epochs"]] == [2, 2] and [e["steps"] for e in m1["epochs"]] == [2, 2]
    for e1, e2 in zip(m1["epochs"], m2["epochs"]):  # epoch losses averaged over both processes
        assert e2["losses"]["loss"] == pytest.approx(e1["losses"]["loss"], rel=1e-4)


def test_faster_rcnn_train_evaluate_predict(tmp_path):
    models = pytest.importorskip("pydetops.models")
    if "faster_rcnn" not in models.MODELS:
        pytest.skip("pydetops.models has no faster_rcnn")
    d = tmp_path / "d"
    synthetic.generate(str(d), images=2, seed=4, size=(64, 64))
    out = tmp_path / "frcnn"
    torch.manual_seed(0)
    assert train.main(["--model", "faster_rcnn", "--backbone", "tiny", "--image-size", "64",
                       "--train-images", str(d / "images"), "--train-annotations", str(d / "annotations.json"),
                       "--val-images", str(d / "images"), "--val-annotations", str(d / "annotations.json"),
                       "--out", str(out), "--epochs", "1", "--batch-size", "2"]) == 0
    ck = load_checkpoint(str(out / "last.pt"), expected_model="faster_rcnn")
    assert ck["model_kwargs"] == {"backbone": "tiny", "min_size": 64, "max_size": 106}
    assert evaluate.main(["--checkpoint", str(out / "last.pt"), "--images", str(d / "images"),
                          "--annotations", str(d / "annotations.json"), "--out", str(tmp_path / "ev")]) == 0
    em = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert em["model"] == "faster_rcnn" and em["images"] == 2 and 0.0 <= em["AP"] <= 1.0
    assert predict.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pr"),
                         "--score-threshold", "0.0", str(d / "images" / "000001.png")]) == 0
    p = json.loads((tmp_path / "pr" / "predictions.json").read_text())
    assert all(det["category_id"] in (1, 3, 7) and len(det["bbox"]) == 4 for det in p[0]["detections"])


def test_lr_defaults_to_the_models_default_lr():
    from pydetops.models import MODELS
    from pydetops.train import parse_args
    a = parse_args(["--model", "keypoint_rcnn", "--train-images", "x", "--train-annotations", "y", "--out", "z"])
    assert a.lr is None  # resolved by train() from the constructor
    assert MODELS["keypoint_rcnn"].default_lr == 0.005
    assert getattr(MODELS["faster_rcnn"], "default_lr", 0.01) == 0.01
    assert parse_args(["--model", "m", "--train-images", "x", "--train-annotations", "y", "--out", "z",
                       "--lr", "0.2"]).lr == 0.2
