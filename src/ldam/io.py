"""Reading and writing weights files: the one place ldam touches ``torch.save``/``torch.load``.

* :func:`atomic_save` writes so that an interrupted write never leaves a half-written file behind.
* :func:`safe_load` reads with ``torch.load(weights_only=True)``: no object is ever unpickled, and
  a refused file (a pickled model, a foreign or corrupt file) raises a :class:`CheckpointError`
  whose reason :func:`load_error` puts in one short clause.
* :func:`load_weights` loads a state dict into a module strictly, with an error that names the
  missing and unexpected keys and the shape mismatches.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import torch

from .errors import CheckpointError


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``path``, renamed over it once complete."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, renamed over it once complete."""
    return _atomic(path, lambda f: f.write(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's files are private; these are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_error(e: Exception) -> str:
    """The reason ``torch.load(weights_only=True)`` refused a file, in one short clause."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled {found.group(1)} object, and unpickling would run code"
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation of torch.load")[0]
    else:
        detail = text.strip().splitlines()[0] if text.strip() else ""
    detail = " ".join(detail.split())[:200] or ("the file is empty or cut short" if isinstance(e, EOFError) else "")
    return f"{type(e).__name__}: {detail}"


def safe_load(path: str | Path, hint: str = "", what: str | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``. A file it refuses raises
    ``CheckpointError("cannot load WHAT safely (REASON). HINT")``; ``what`` defaults to the path."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the cause is reported
        raise CheckpointError(f"cannot load {what or path} safely ({load_error(e)})"
                              + (f". {hint}" if hint else "")) from None


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a mapping of names to tensors (possibly empty)."""
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items())


def describe(obj: Any) -> str:
    """What a file holds instead of a state dict, e.g. ``a dict with keys 'epoch', 'lr'``."""
    if isinstance(obj, Mapping):
        return f"a dict with keys {', '.join(map(repr, list(obj)[:8]))}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def _names(keys: Sequence[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_dict_problems(want: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` misfits a module whose own state dict is ``want``: its missing keys, unexpected
    keys and shape mismatches (empty when it fits)."""
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} is {list(state[k].shape)} in the file but {list(want[k].shape)} in the model"
              for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        more = f" (+{len(shapes) - 4} more)" if len(shapes) > 4 else ""
        problems.append("shape mismatch: " + "; ".join(shapes[:4]) + more)
    return problems


def load_weights(module: torch.nn.Module, state: Any, source: str | Path, fits: str, hint: str = "") -> None:
    """``module.load_state_dict(state, strict=True)`` for a state dict read from ``source``.

    A :class:`CheckpointError` naming ``source`` when ``state`` is not a dict of tensors, or when it
    does not fit ``module`` (``fits`` names what it should fit, e.g. ``"architecture LeNet5"``): the
    missing and unexpected keys and the shape mismatches, then ``hint``. A state dict saved from
    ``DataParallel``/``DistributedDataParallel`` (every key prefixed ``module.``) is unwrapped.
    """
    if not is_state_dict(state):
        raise CheckpointError(f"cannot load {source}: it holds {describe(state)}, not a state dict of tensors")
    want = module.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in want):
        state = {k[len("module."):]: v for k, v in state.items()}
    problems = state_dict_problems(want, state)
    if not problems:
        try:
            module.load_state_dict(state, strict=True)
            return
        except RuntimeError as e:
            problems.append(" ".join(str(e).strip().splitlines()[:3]))
    raise CheckpointError(f"{source} does not fit {fits}: {'; '.join(problems)}" + (f". {hint}" if hint else ""))


def load_training_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Read a training checkpoint (weights only) into ``model`` and ``optimizer``; returns the whole
    dict (epoch, history, config...). A file that cannot be read raises a :class:`CheckpointError`
    naming it and the way out."""
    way_out = "Delete it to start over"
    state = safe_load(path, way_out, what=f"the training checkpoint {path}")
    if not isinstance(state, dict) or "model" not in state or "optimizer" not in state:
        raise CheckpointError(f"cannot resume from {path}: it holds {describe(state)}, not a training checkpoint "
                              f"('model', 'optimizer', 'epoch', ...). {way_out}")
    load_weights(model, state["model"], f"the training checkpoint {path}", f"the model {type(model).__name__}",
                 way_out)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # noqa: BLE001 - the cause is reported
        raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit "
                              f"({type(e).__name__}: {str(e).strip()[:200]}). {way_out}") from None
    return state


__all__ = ["atomic_save", "atomic_write_bytes", "safe_load", "load_error", "is_state_dict", "describe", "state_dict_problems",
           "load_weights", "load_training_checkpoint"]
