"""PNG plots with matplotlib's Agg backend (no display needed)."""
import os
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["plot_pr_curves", "plot_losses"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def plot_pr_curves(curves: Dict[str, Sequence[float]], path: str, title: str = "Precision-recall at IoU 0.5") -> None:
    """One precision-recall line per class (precision at COCO's 101 recall thresholds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, p in curves.items():
        r = np.linspace(0, 1, len(p))
        ax.plot(r, p, label=f"{name} (AP50 {np.mean(p):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_losses(steps: List[Dict[str, float]], epochs: List[Dict], path: str) -> None:
    """Per-step total loss (and its running mean) and per-epoch mean of each loss."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    tot = [s["loss"] for s in steps]
    if tot:
        a1.plot(tot, lw=0.6, alpha=0.5, label="loss")
        w = max(1, len(tot) // 50)
        if w > 1:
            run = np.convolve(tot, np.ones(w) / w, mode="valid")
            a1.plot(np.arange(len(run)) + w - 1, run, label=f"running mean of {w}")
        a1.legend(fontsize=8)
    a1.set_xlabel("step")
    a1.set_title("total loss")
    names = sorted({k for e in epochs for k in e.get("losses", {})})
    for n in names:
        a2.plot([e["epoch"] for e in epochs], [e["losses"].get(n, np.nan) for e in epochs], marker="o", label=n)
    a2.set_xlabel("epoch")
    a2.set_title("mean loss per epoch")
    if names:
        a2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
