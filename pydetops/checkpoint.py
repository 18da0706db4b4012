"""Self-describing checkpoints.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "pydetops-checkpoint", "version": 1,
     "model": NAME, "model_kwargs": {...}, "num_classes": K,
     "categories": [{"id", "name", ...}], "label_to_category_id": [None, id, ...],
     "state_dict": {...},
     # for --resume:
     "optimizer": {...}, "scheduler": {...}, "scaler": {...}, "epoch": E,
     "history": {...}, "best_ap": float, "args": {...}}

``save_checkpoint`` writes a temporary file in the same folder, flushes it to disk and
renames it over the target (``os.replace``): a reader never sees a half-written file,
whenever the writer is killed. ``load_checkpoint`` reports a corrupt or foreign file,
or a checkpoint of another model, as one :class:`CheckpointError` naming the file.
"""
import os
import tempfile
from typing import Any, Dict, Optional

import torch

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "build_model"]

FORMAT = "pydetops-checkpoint"
VERSION = 1
_REQUIRED = ("model", "model_kwargs", "num_classes", "categories", "label_to_category_id", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Atomically write ``payload`` (which must hold the keys listed above)."""
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"save_checkpoint: payload lacks {', '.join(missing)}")
    data = {"format": FORMAT, "version": VERSION, **payload}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_checkpoint(path: str, expected_model: Optional[str] = None, map_location="cpu") -> Dict[str, Any]:
    """Read and check a checkpoint; ``expected_model`` rejects one of another model."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (cannot be read: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pydetops checkpoint (no '{FORMAT}' header; "
                              f"a bare state_dict cannot say which model it belongs to)")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data['version']} is newer than this "
                              f"pydetops reads ({VERSION})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path}: corrupt checkpoint: missing {', '.join(missing)}")
    if expected_model is not None and data["model"] != expected_model:
        raise CheckpointError(f"{path}: checkpoint of model '{data['model']}', not '{expected_model}'")
    return data


def build_model(ckpt: Dict[str, Any], path: str = "<checkpoint>", models=None):
    """The model a checkpoint describes, with its weights loaded (strict)."""
    if models is None:
        from .models import MODELS as models
    name = ckpt["model"]
    if name not in models:
        raise CheckpointError(f"{path}: checkpoint of model '{name}', which this pydetops does not have "
                              f"(models: {', '.join(sorted(models))})")
    model = models[name](num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"{path}: weights do not fit model '{name}' built with "
                              f"{ckpt['model_kwargs']}: {' '.join(first[:2])[:300]}") from None
    return model
