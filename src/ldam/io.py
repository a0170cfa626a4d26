"""Writing files so that an interrupted write never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``path``, renamed over it once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_training_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Read a training checkpoint (weights only) into ``model`` and ``optimizer``; returns the whole
    dict (epoch, history, config...). A file that cannot be read raises a :class:`CheckpointError`
    naming it and the way out."""
    from .errors import CheckpointError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # noqa: BLE001 - the cause is reported
        raise CheckpointError(f"cannot resume from {path}: {e}. Delete it to start over") from None
    return state


__all__ = ["atomic_save", "load_training_checkpoint"]
