"""Train a detector on a COCO-layout dataset.

    python -m pydetops.train --model NAME --train-images DIR --train-annotations FILE.json \\
        [--val-images DIR --val-annotations FILE.json] --out DIR \\
        [--epochs N | --max-minutes M] [--batch-size B] [--lr LR] [--backbone NAME] \\
        [--image-size S] [--device cpu|cuda] [--amp] [--resume] [--seed S] [--workers W]

Writes ``OUT/last.pt`` after every epoch (atomically), ``OUT/best.pt`` (best validation
bbox AP; mIoU for a semantic segmentation model), ``OUT/metrics.json`` and ``OUT/losses.png``.
``--resume`` continues from ``OUT/last.pt`` (a run killed at any moment loses at most the epoch in progress; with a
deterministic model the resumed run ends with the weights of an uninterrupted one).
``--max-minutes`` stops at the end of the step that crosses the budget (counted from the
first step), then still evaluates and saves; that epoch counts as done.

Under ``torchrun --nproc_per_node=N -m pydetops.train ...`` it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA). ``--batch-size`` is per process; the
global order of images depends only on ``--seed`` and the epoch, so N processes with
batch B see the same global batches as one process with batch N * B.

Optimiser: SGD (momentum 0.9, weight decay 1e-4; ``--lr`` defaults to the constructor's
``default_lr`` attribute where it has one, else 0.01), linear warm-up over the first
``--warmup-steps`` steps, then (when ``--epochs`` is given) cosine decay to 5% of ``--lr``.
"""
import argparse
import inspect
import math
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import (CocoDetection, Compose, DatasetError, EpochSampler, RandomHorizontalFlip, ToTensor,
                   make_loader)
from .evaluate import (UsageError, _autocast, check_categories, evaluate_model, one_line_warnings, resolve_device,
                       selection_metric, write_json)
from .evaluation import plot_losses

__all__ = ["main", "parse_args"]

# Target fields beyond boxes/labels that a model trains on (by its MODELS name).
_NEEDS_MASKS = {"mask_rcnn", "fcn"}
_NEEDS_KEYPOINTS = {"keypoint_rcnn"}


class SeededDataset(torch.utils.data.Dataset):
    """Draws each sample's random augmentation from (seed, epoch, index) alone, so the
    augmentation of an image does not depend on the number of processes or workers."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.dataset[i]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pydetops.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train-images", required=True)
    p.add_argument("--train-annotations", required=True)
    p.add_argument("--val-images")
    p.add_argument("--val-annotations")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=None, help="default 10, or unlimited with --max-minutes")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=2, help="images per process")
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: the model's default_lr, else 0.01)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--backbone", default=None, help="passed to the model constructor as backbone=")
    p.add_argument("--image-size", type=int, default=None, help="passed to the model constructor as image_size=")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, float16 + loss scaling on CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    a = p.parse_args(argv)
    if (a.val_images is None) != (a.val_annotations is None):
        p.error("--val-images and --val-annotations go together")
    if a.epochs is not None and a.epochs < 1:
        p.error("--epochs must be >= 1")
    if a.max_minutes is not None and not a.max_minutes > 0:
        p.error("--max-minutes must be > 0")
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if a.lr is not None and not (a.lr > 0 and math.isfinite(a.lr)):
        p.error("--lr must be a positive number")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    if a.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    if a.image_size is not None and a.image_size < 16:
        p.error("--image-size must be >= 16")
    return a


def _models():
    try:
        from .models import MODELS
    except ImportError as e:
        raise UsageError(f"pydetops.models is not available: {e}") from None
    return MODELS


def model_kwargs(ctor, backbone: Optional[str], image_size: Optional[int]) -> Dict[str, Any]:
    """Constructor keywords from ``--backbone`` and ``--image-size``: ``backbone=`` as
    given; the image size as ``image_size=`` where the constructor names that argument,
    else as torchvision's ``min_size=S, max_size=S * 1333 // 800`` (short side S)."""
    kwargs: Dict[str, Any] = {}
    if backbone is not None:
        kwargs["backbone"] = backbone
    if image_size is not None:
        try:
            params = inspect.signature(ctor).parameters
        except (TypeError, ValueError):
            params = {}
        if "image_size" in params or "min_size" not in params:
            kwargs["image_size"] = image_size
        else:
            kwargs["min_size"] = image_size
            kwargs["max_size"] = image_size * 1333 // 800
    return kwargs


def _takes(ctor, name: str) -> bool:
    try:
        return name in inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return False


def _build(models, name: str, num_classes: int, kwargs: Dict[str, Any]):
    if name not in models:
        raise UsageError(f"--model: unknown model {name!r} (models: {', '.join(sorted(models))})")
    try:
        return models[name](num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--model {name}: cannot build with {kwargs}: {e}") from None


class _Dist:
    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_arg)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.local_rank if self.world > 1 else torch.cuda.current_device())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, values: List[float]) -> List[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _lr_lambda(warmup: int, total: Optional[int]):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        if total is None or total <= warmup:
            return 1.0
        t = min(1.0, (step - warmup) / (total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def train(a: argparse.Namespace) -> int:
    dist = _Dist(a.device)
    try:
        return _train(a, dist)
    finally:
        dist.close()


def _train(a: argparse.Namespace, dist: "_Dist") -> int:
    device = dist.device
    models = _models()
    if a.model not in models:
        raise UsageError(f"--model: unknown model {a.model!r} (models: {', '.join(sorted(models))})")
    ctor = models[a.model]
    if a.lr is None:  # a constructor may name the rate its CPU-sized default trains at
        a.lr = float(getattr(ctor, "default_lr", 0.01))
    want_masks = a.model in _NEEDS_MASKS or "masks" in getattr(ctor, "target_fields", ())
    want_kps = a.model in _NEEDS_KEYPOINTS or "keypoints" in getattr(ctor, "target_fields", ())
    train_raw = CocoDetection(a.train_images, a.train_annotations, masks=want_masks, keypoints=want_kps,
                              skip_crowd=True)
    train_raw.transforms = Compose([ToTensor(), RandomHorizontalFlip(0.5, train_raw.flip_indices)])
    val_ds = None
    if a.val_images:
        val_ds = CocoDetection(a.val_images, a.val_annotations, transforms=ToTensor())
        check_categories(val_ds, train_raw.categories, f"training set {a.train_annotations}")
    if len(train_raw) == 0:
        raise DatasetError(f"{a.train_annotations}: no images")

    os.makedirs(a.out, exist_ok=True)
    if dist.main:  # temporary files of a save that a kill interrupted
        for f in os.listdir(a.out):
            if f.startswith((".tmp-last.pt-", ".tmp-best.pt-")):
                os.unlink(os.path.join(a.out, f))
    last_path = os.path.join(a.out, "last.pt")
    best_path = os.path.join(a.out, "best.pt")
    kwargs = model_kwargs(ctor, a.backbone, a.image_size)
    if want_kps and train_raw.keypoint_names and _takes(ctor, "num_keypoints"):
        kwargs["num_keypoints"] = len(train_raw.keypoint_names)  # K from the dataset's categories
    elif ("keypoints" in getattr(ctor, "optional_target_fields", ()) and train_raw.keypoint_names
            and "num_keypoints" not in kwargs):  # e.g. localization: also regress the dataset's points
        train_raw.want_keypoints = True
        kwargs["num_keypoints"] = len(train_raw.keypoint_names)
    ckpt = None
    if a.resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path, expected_model=a.model)
        if kwargs and kwargs != {k: ckpt["model_kwargs"].get(k) for k in kwargs}:
            raise UsageError(f"--resume: {last_path} was built with {ckpt['model_kwargs']}, not {kwargs}")
        kwargs = dict(ckpt["model_kwargs"])
        mine = [(c["id"], c.get("name")) for c in train_raw.categories]
        if mine != [(c["id"], c.get("name")) for c in ckpt["categories"]]:
            raise DatasetError(f"{a.train_annotations}: categories differ from those of {last_path}")
    elif a.resume and dist.main:
        print(f"--resume: {last_path} does not exist yet; starting from scratch", file=sys.stderr)

    _seed_all(a.seed)
    model = _build(models, a.model, train_raw.num_classes, kwargs).to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
    if hasattr(model, "set_proposal_cache_dir"):  # models with external proposals (R-CNN, ...): keep them on disk
        model.set_proposal_cache_dir(os.path.join(a.out, "proposals"))
    core = model
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    ds = SeededDataset(train_raw, a.seed)
    sampler = EpochSampler(len(ds), shuffle=True, seed=a.seed, rank=dist.rank, world_size=dist.world)
    loader = make_loader(ds, a.batch_size, sampler=sampler, workers=a.workers)
    steps_per_epoch = len(loader)
    epochs = a.epochs if a.epochs is not None else (10 if a.max_minutes is None else 10 ** 9)
    total = steps_per_epoch * epochs if a.epochs is not None else None

    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(a.warmup_steps, total))
    use_scaler = a.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    history: Dict[str, Any] = {"epochs": [], "steps": []}
    best_ap = -1.0  # the best validation selection_metric: box AP, or mIoU for a segmentation model
    sel_name = "AP"
    start_epoch = 0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and use_scaler:
            scaler.load_state_dict(ckpt["scaler"])
        history = ckpt.get("history", history)
        best_ap = ckpt.get("best_ap", -1.0)
        start_epoch = ckpt["epoch"] + 1
        if dist.main:
            print(f"resumed from {last_path} after epoch {ckpt['epoch'] + 1}", file=sys.stderr)

    base = {"model": a.model, "model_kwargs": kwargs, "num_classes": train_raw.num_classes,
            "categories": train_raw.categories, "label_to_category_id": train_raw.label_to_category_id,
            "keypoint_names": train_raw.keypoint_names}
    from tqdm import tqdm
    t0 = time.monotonic()
    stop = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        if stop:
            break
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        _seed_all(a.seed * 7919 + epoch * 104729 + dist.rank)
        model.train()
        sums: Dict[str, float] = {}
        n_steps = 0
        t_epoch = time.monotonic()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}" + (f"/{epochs}" if a.epochs else ""), unit="step",
                   disable=not dist.main, dynamic_ncols=True, file=sys.stderr)
        for images, targets in bar:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with _autocast(device, a.amp):
                loss_dict = model(images, targets)
            if not isinstance(loss_dict, dict) or not loss_dict:
                raise UsageError(f"--model {a.model}: in train mode the model must return a dict of losses")
            loss = sum(v.float() for v in loss_dict.values())
            if not torch.isfinite(loss):
                raise UsageError(f"non-finite loss at epoch {epoch + 1} step {n_steps + 1}: "
                                 + ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
                                 + f" (try a lower --lr than {a.lr})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            n_steps += 1
            vals = {k: float(v.detach()) for k, v in loss_dict.items()}
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            history["steps"].append({"epoch": epoch + 1, "loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"]})
            if dist.main:
                bar.set_postfix({"loss": f"{sums and sum(sums.values()) / n_steps:.3f}",
                                 **{k: f"{s / n_steps:.3f}" for k, s in sums.items()}}, refresh=False)
            if a.max_minutes is not None:
                stop = dist.any(time.monotonic() - t0 >= a.max_minutes * 60)
                if stop:
                    break
        bar.close()
        keys = sorted(sums)
        tot = dist.sum([sums[k] for k in keys] + [float(n_steps)])
        losses = {k: tot[i] / max(tot[-1], 1.0) for i, k in enumerate(keys)}
        losses["loss"] = sum(losses[k] for k in keys)
        rec: Dict[str, Any] = {"epoch": epoch + 1, "steps": n_steps, "complete": not stop,
                               "seconds": round(time.monotonic() - t_epoch, 3), "losses": losses}
        is_best = False
        if dist.main:
            if val_ds is not None:
                metrics, _, _ = evaluate_model(core, val_ds, train_raw.label_to_category_id, device,
                                               batch_size=a.batch_size, amp=a.amp)
                rec["val"] = {k: v for k, v in metrics.items() if k != "images"}
                sel_name, ap = selection_metric(metrics)
                is_best = ap > best_ap
                best_ap = max(best_ap, ap)
            history["epochs"].append(rec)
            payload = {**base, "state_dict": core.state_dict(), "optimizer": opt.state_dict(),
                       "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                       "history": history, "best_ap": best_ap, "args": vars(a)}
            if is_best:
                save_checkpoint(best_path, {**base, "state_dict": core.state_dict(), "epoch": epoch,
                                            "val": rec["val"]})
            save_checkpoint(last_path, payload)
            write_json(os.path.join(a.out, "metrics.json"),
                       {"model": a.model, "model_kwargs": kwargs, "epochs": history["epochs"],
                        "best": {sel_name: best_ap, "epoch": max((e["epoch"] for e in history["epochs"]
                                                                 if "val" in e
                                                                 and selection_metric(e["val"])[1] == best_ap),
                                                              default=None)}
                        if val_ds is not None else None,
                        "steps": history["steps"]})
            plot_losses(history["steps"], history["epochs"], os.path.join(a.out, "losses.png"))
            msg = f"epoch {epoch + 1}: loss {losses['loss']:.4f}"
            if "val" in rec:
                if "AP" in rec["val"]:
                    msg += f", val AP {rec['val']['AP'] or 0.0:.4f} AP50 {rec['val']['AP50'] or 0.0:.4f}"
                if "sem_seg" in rec["val"]:
                    seg = rec["val"]["sem_seg"]
                    msg += (f", val pixel accuracy {seg['pixel_accuracy'] or 0.0:.4f} "
                            f"mIoU {seg['mIoU'] or 0.0:.4f}")
            print(msg + (" (time budget reached)" if stop else ""), file=sys.stderr)
        dist.barrier()
    if dist.main:
        print(f"done: {a.out}/last.pt" + (f", best.pt (val {sel_name} {best_ap:.4f})" if val_ds is not None else ""))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    one_line_warnings()
    try:
        return train(a)
    except (DatasetError, CheckpointError, UsageError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
