"""The lineage tables of benchmarks/RESULTS.md: every detector trained on the same synthetic data
with the same time budget on this machine, through the same ``pydetops.train`` / ``pydetops.evaluate``.

    python benchmarks/model_table.py --out DIR [--minutes M] [--models a,b,...] [--threads N] [--jobs J]
        [--train-images N] [--val-images N] [--size H W] [--lr-for NAME=LR ...]

For each model: ``python -m pydetops.train --model NAME`` with its CPU-sized defaults (small
backbone, small images) for ``--minutes`` (budget counted from the first step; no validation
inside the budget), then ``python -m pydetops.evaluate`` of ``last.pt`` on the validation set.
Each model runs in its own process with ``--threads`` torch threads, ``--jobs`` models at a time
(on a 2-core machine ``--threads 1 --jobs 2`` gives each model one core: on a shared machine two
spinning threads per process are slower than one).
Models that localise a single object (``localization``) train and evaluate on the generator's
``--single-object`` data of the same size and seeds; every other model on the multi-object data.

Columns: steps done in the budget, training images/s (images of the completed steps over the
seconds the training loop ran, data loading included), inference images/s (``fps`` of
``evaluate``: the model call at batch 1 after warm-up), COCO AP50 / AP (bbox), and the model's
own metrics where it has them (``segm`` / ``keypoints`` AP, FCN's pixel accuracy and mean IoU,
localisation accuracy and mean IoU). The machine load (1-minute average) is printed before and
after each model: a model timed while the machine was busy is not comparable.

Writes ``OUT/<model>/{train,eval}`` and ``OUT/table.md`` / ``OUT/table.json``, prints the table.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

SINGLE_OBJECT = {"localization"}


def _load1() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def _dataset(root: str, name: str, images: int, seed: int, size, single: bool) -> str:
    out = os.path.join(root, name)
    if not os.path.exists(os.path.join(out, "annotations.json")):
        from pydetops.data.synthetic import generate
        generate(out, images=images, seed=seed, size=tuple(size), single_object=single)
    return out


def _run(cmd: List[str], log: str, threads: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _metric(d: Optional[Dict[str, Any]], *path: str) -> Optional[float]:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, (int, float)) else None


def run_model(name: str, a: argparse.Namespace, data: Dict[str, str]) -> Dict[str, Any]:
    kind = "single" if name in SINGLE_OBJECT else "multi"
    train_dir, val_dir = data[f"{kind}-train"], data[f"{kind}-val"]
    out = os.path.join(a.out, name)
    os.makedirs(out, exist_ok=True)
    row: Dict[str, Any] = {"model": name, "data": kind, "load_before": _load1()}
    cmd = [sys.executable, "-m", "pydetops.train", "--model", name,
           "--train-images", os.path.join(train_dir, "images"),
           "--train-annotations", os.path.join(train_dir, "annotations.json"),
           "--out", os.path.join(out, "train"), "--max-minutes", str(a.minutes), "--seed", "0"]
    if name in a.lr_for:
        cmd += ["--lr", str(a.lr_for[name])]
    if name in a.backbone_for:
        cmd += ["--backbone", a.backbone_for[name]]
        row["backbone"] = a.backbone_for[name]
    rc = _run(cmd, os.path.join(out, "train.log"), a.threads)
    row["train_rc"] = rc
    if rc != 0:
        row["error"] = f"train failed (rc {rc}): see {out}/train.log"
        return row
    with open(os.path.join(out, "train", "metrics.json")) as f:
        tm = json.load(f)
    steps = sum(e["steps"] for e in tm["epochs"])
    seconds = sum(e["seconds"] for e in tm["epochs"])
    batch = 2  # pydetops.train's default --batch-size
    row.update(steps=steps, train_seconds=round(seconds, 1),
               train_images_per_s=round(steps * batch / seconds, 2) if seconds > 0 else None)
    cmd = [sys.executable, "-m", "pydetops.evaluate", "--checkpoint", os.path.join(out, "train", "last.pt"),
           "--images", os.path.join(val_dir, "images"), "--annotations", os.path.join(val_dir, "annotations.json"),
           "--out", os.path.join(out, "eval")]
    rc = _run(cmd, os.path.join(out, "eval.log"), a.threads)
    row["eval_rc"] = rc
    if rc != 0:
        row["error"] = f"evaluate failed (rc {rc}): see {out}/eval.log"
        return row
    with open(os.path.join(out, "eval", "metrics.json")) as f:
        em = json.load(f)
    row["metrics"] = em
    row["load_after"] = _load1()
    return row


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | data | steps | train img/s | infer img/s | AP50 | AP | other | load before/after |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        model = r["model"] + (f" ({r['backbone']})" if "backbone" in r else "")
        if "error" in r:
            lines.append(f"| {model} | {r['data']} | | | | | | {r['error']} | |")
            continue
        m = r["metrics"]
        other = []
        for key, label in (("segm", "segm AP"), ("keypoints", "kp AP")):
            v = _metric(m, key, "AP")
            if v is not None:
                other.append(f"{label} {v:.3f}")
        for key, label in (("pixel_accuracy", "pixel acc"), ("mIoU", "mIoU"), ("accuracy", "accuracy"),
                           ("mean_IoU", "box mIoU"), ("PCK@0.2", "PCK@0.2")):
            v = _metric(m, key)
            if v is None:
                v = _metric(m, "sem_seg", key)
            if v is None:
                v = _metric(m, "localization", key)
            if v is not None:
                other.append(f"{label} {v:.3f}")
        lines.append(f"| {model} | {r['data']} | {r['steps']} | {_fmt(r['train_images_per_s'], 1)} | "
                     f"{_fmt(_metric(m, 'fps'), 1)} | {_fmt(_metric(m, 'AP50'))} | {_fmt(_metric(m, 'AP'))} | "
                     f"{', '.join(other) or '-'} | {r['load_before']:.1f} / {r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--models", default=None, help="comma-separated (default: every model in pydetops.models.MODELS)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="models trained at the same time")
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--val-images", type=int, default=50)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--lr-for", action="append", default=[], metavar="NAME=LR",
                   help="a model's --lr when its default does not suit it (repeatable)")
    p.add_argument("--backbone-for", dest="backbone_for_", action="append", default=[], metavar="NAME=BACKBONE",
                   help="a model's --backbone instead of its default (repeatable), e.g. faster_rcnn=tiny")
    a = p.parse_args(argv)
    lr_for = {}
    for item in a.lr_for:
        name, _, lr = item.partition("=")
        if not lr:
            p.error(f"--lr-for: expected NAME=LR, got {item!r}")
        lr_for[name] = float(lr)
    a.lr_for = lr_for
    a.backbone_for = {}
    for item in a.backbone_for_:
        name, _, bb = item.partition("=")
        if not bb:
            p.error(f"--backbone-for: expected NAME=BACKBONE, got {item!r}")
        a.backbone_for[name] = bb
    from pydetops.models import MODELS
    names = list(MODELS) if a.models is None else [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown} (models: {', '.join(sorted(MODELS))})")
    os.makedirs(a.out, exist_ok=True)
    data_root = os.path.join(a.out, "data")
    data = {}
    for kind in ("multi", "single"):
        if kind == "single" and not any(m in SINGLE_OBJECT for m in names):
            continue
        data[f"{kind}-train"] = _dataset(data_root, f"{kind}-train", a.train_images, 0, a.size, kind == "single")
        data[f"{kind}-val"] = _dataset(data_root, f"{kind}-val", a.val_images, 1, a.size, kind == "single")
    import torch
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | torch {torch.__version__} | "
              f"{platform.processor() or platform.machine()} | {a.threads} threads | budget {a.minutes} min per model | "
              f"train {a.train_images} / val {a.val_images} synthetic images {a.size[0]}x{a.size[1]}")
    print(header, flush=True)
    from concurrent.futures import ThreadPoolExecutor

    def one(name):
        print(f"{name} ...", file=sys.stderr, flush=True)
        return run_model(name, a, data)
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:  # each model is a subprocess: threads only wait
        rows = list(pool.map(one, names))
    text = header + "\n\n" + table(rows)
    print(text)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "table.json"), "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1, default=str)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
