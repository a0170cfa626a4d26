"""What the training commands share (``ldam train``, ``ldam train-generator``): the device, the
per-epoch progress bar, resumable checkpoints written atomically, and the command-line options.

A training checkpoint (``OUT/checkpoint.pt``) is a weights-only dict: ``model`` and ``optimizer``
state dicts (CPU tensors), ``epoch`` (epochs done), ``config`` (the run's configuration as a dict),
``history`` (JSON text), plus whatever else the trainer keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import resolve_device
from .errors import CheckpointError
from .io import atomic_save, load_training_checkpoint

CHECKPOINT = "checkpoint.pt"


def training_device(device: torch.device | str | None) -> torch.device:
    """Where a run trains: ``device`` checked against this machine; the CPU when ``None``."""
    return torch.device("cpu") if device is None else resolve_device(device)


def to_cpu(obj: Any) -> Any:
    """Tensors in nested dicts and lists moved to the CPU (what a checkpoint holds)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def epoch_bar(n: int, batch_size: int, epoch: int, epochs: int, progress: bool) -> tqdm:
    """A progress bar over the batch starts ``0, batch_size, …`` of one epoch (hidden unless ``progress``)."""
    return tqdm(range(0, n, batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
                dynamic_ncols=True, leave=False)


def resume_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                      config: dict[str, Any]) -> dict[str, Any] | None:
    """Load the checkpoint ``ckpt`` into ``model`` and ``optimizer``; ``None`` when there is none.

    Returns the checkpoint's dict with ``epoch`` an int and ``history`` decoded. A checkpoint written
    with another configuration than ``config`` raises a :class:`CheckpointError`.
    """
    if not ckpt.exists():
        return None
    state = load_training_checkpoint(ckpt, model, optimizer)
    saved = state["config"]
    if isinstance(saved, str):  # train-generator's earlier checkpoints hold it as JSON text
        saved = json.loads(saved)
    if saved != config:
        raise CheckpointError(f"{ckpt} was written with a different config {saved}; use another --out")
    return {**state, "epoch": int(state["epoch"]), "history": list(json.loads(state["history"]))}


def save_training_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                             config: dict[str, Any], history: list[dict[str, float]], **extra: Any) -> Path:
    """Write the checkpoint :func:`resume_checkpoint` reads, atomically, with CPU tensors;
    ``extra`` holds what else the trainer keeps (also moved to the CPU)."""
    return atomic_save({"model": to_cpu(model.state_dict()), "optimizer": to_cpu(optimizer.state_dict()),
                        "epoch": epoch, "config": config, "history": json.dumps(history),
                        **{k: to_cpu(v) for k, v in extra.items()}}, ckpt)


# ---- the command line ----

def add_run_options(p: argparse.ArgumentParser, defaults: Any, *, datasets: list[str], lr_help: str,
                    device_where: str) -> None:
    """The options every training command has, in a group of their own: ``--dataset --epochs --lr
    --batch-size --seed --threads --out --resume --device`` (defaults from the config ``defaults``)."""
    from .cli import add_device_option

    g = p.add_argument_group("training run")
    g.add_argument("--dataset", default=defaults.dataset, choices=datasets, help="(default: %(default)s)")
    g.add_argument("--epochs", type=int, default=defaults.epochs, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=defaults.lr, help=f"{lr_help} (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    add_device_option(g, device_where)  # type: ignore[arg-type]  # a group takes add_argument too


def start_run(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device`` (before any data is read, so a bad device fails fast)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


__all__ = ["CHECKPOINT", "training_device", "to_cpu", "epoch_bar", "resume_checkpoint", "save_training_checkpoint",
           "add_run_options", "start_run"]
