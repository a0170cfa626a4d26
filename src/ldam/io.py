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


def load_weights(module: torch.nn.Module, state: Any, source: str | Path, fits: str, detail_lines: int = 3) -> None:
    """``module.load_state_dict(state, strict=True)`` for a state dict read from ``source``: a
    :class:`CheckpointError` naming ``source`` when ``state`` is not a dict of tensors, or when it
    does not fit ``module`` (``fits`` names what it should fit, e.g. ``"architecture LeNet5"``;
    the first ``detail_lines`` lines of torch's reason follow)."""
    from .errors import CheckpointError

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} does not hold a state dict of tensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).strip().splitlines()[:detail_lines])
        raise CheckpointError(f"{source} does not fit {fits}: {reason}") from None


__all__ = ["atomic_save", "load_training_checkpoint", "load_weights"]
