"""``ldam train`` and ``ldam eval``: train zoo architectures with the paper's recipe.

The recipe (PAPER.md §5): RMSProp with momentum, cross-entropy, a fixed number of epochs.
Training is deterministic under a seed (epoch ``e`` shuffles with a generator seeded from
``(seed, e)``), writes a checkpoint atomically after every epoch, and ``--resume`` continues
from the last completed epoch with the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import CheckpointError, LdamError
from .zoo import ARCHITECTURES, ModelInfo, build, load_model, save_checkpoint

DATASETS = {"mnist": {"input_shape": (1, 28, 28), "mean": (0.1307,), "std": (0.3081,),
                      "class_names": [str(i) for i in range(10)]}}


@dataclass
class TrainConfig:
    """One training run: architecture, data, and the RMSProp-with-momentum recipe."""

    arch: str = "lenet5"
    dataset: str = "mnist"
    epochs: int = 10
    lr: float = 2e-4
    momentum: float = 0.9
    alpha: float = 0.99
    batch_size: int = 64
    seed: int = 0


def load_dataset(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test tensors, as float images in model units ``(pixel − mean) / std``."""
    if name != "mnist":
        raise LdamError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    from .data import load_mnist

    d = DATASETS[name]
    out = []
    for split in ("train", "test"):
        x, y = load_mnist(split)
        out += [normalize(x, d["mean"], d["std"]), y]
    return out[0], out[1], out[2], out[3]


def normalize(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, C, H, W]`` pixels → float model input."""
    x = images.float().div_(255)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on model-unit inputs ``x``."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / len(x)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train(cfg: TrainConfig, out: Path, resume: bool = False, data: tuple[torch.Tensor, ...] | None = None,
          stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, checkpointing to ``out/checkpoint.pt`` after every epoch; write ``out/model.pt``.

    ``data`` may give ``(x_train, y_train, x_test, y_test)`` in model units (the tests use a
    toy set); ``stop_after`` ends the run after that many epochs, as an interrupt would.
    Returns the run record (config, per-epoch loss/accuracy/seconds, test accuracy).
    """
    if cfg.arch not in ARCHITECTURES:
        raise LdamError(f"unknown architecture {cfg.arch!r}; known: {', '.join(ARCHITECTURES)}")
    x_tr, y_tr, x_te, y_te = data if data is not None else load_dataset(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build(cfg.arch)
    opt = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum)
    ckpt = out / "checkpoint.pt"
    history: list[dict[str, float]] = []
    start = 0
    if resume and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except Exception as e:  # noqa: BLE001 - the cause is reported
            raise CheckpointError(f"cannot resume from {ckpt}: {e}. Delete it to start over") from None
        if state["config"] != asdict(cfg):
            raise CheckpointError(f"{ckpt} was written with a different config {state['config']}; use another --out")
        start, history = int(state["epoch"]), list(json.loads(state["history"]))
    n = len(x_tr)
    for epoch in range(start, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, dynamic_ncols=True, leave=False)
        for i in bar:
            idx = perm[i:i + cfg.batch_size]
            logits = model(x_tr[idx])
            loss = F.cross_entropy(logits, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(1) == y_tr[idx]).sum())
            seen += len(idx)
            if (i // cfg.batch_size) % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.close()
        test_acc = evaluate(model, x_te, y_te)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "test_accuracy": test_acc, "seconds": time.perf_counter() - t0})
        if progress:
            h = history[-1]
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {h['loss']:.4f}, train accuracy {h['train_accuracy']:.4f}, "
                  f"test accuracy {test_acc:.4f}, {h['seconds']:.1f} s")
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                      "config": asdict(cfg), "history": json.dumps(history)}, ckpt)
    record = {"config": asdict(cfg), "history": history, "epochs_done": len(history)}
    if len(history) == cfg.epochs:
        d = DATASETS.get(cfg.dataset, {})
        info = ModelInfo("model.pt", cfg.arch, tuple(d.get("input_shape", ())), d.get("class_names"),
                         tuple(d.get("mean", (0.0,))), tuple(d.get("std", (1.0,))), cfg.dataset)
        save_checkpoint(model, cfg.arch, out / "model.pt", info)
        record["test_accuracy"] = history[-1]["test_accuracy"]
        (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    record["model"] = model
    return record


def cmd_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads) if args.threads else None
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed)
    rec = train(cfg, args.out, resume=args.resume)
    print(f"model: {args.out / 'model.pt'}")
    print(f"accuracy: {rec['test_accuracy']:.4f}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    model, info = load_model(args.model)
    if info.dataset not in DATASETS:
        raise LdamError(f"{args.model} does not name a dataset ldam can evaluate on ({', '.join(DATASETS)})")
    _, _, x_te, y_te = load_dataset(info.dataset)
    acc = evaluate(model, x_te, y_te)
    print(f"{args.model} on the {info.dataset} test set ({len(y_te)} images)")
    print(f"accuracy: {acc:.4f}")
    return 0


def add_subcommands(sub: Any) -> None:
    """Register ``train`` and ``eval`` on the ``ldam`` command's subparsers."""
    d = TrainConfig()
    t = sub.add_parser("train", help="train a zoo architecture (RMSProp with momentum)",
                       description="Train a zoo architecture with the paper's recipe; checkpoints every "
                       "epoch to OUT/checkpoint.pt and writes OUT/model.pt and OUT/train.json.")
    t.add_argument("--arch", default=d.arch, choices=list(ARCHITECTURES), help="architecture (default: %(default)s)")
    t.add_argument("--dataset", default=d.dataset, choices=list(DATASETS), help="(default: %(default)s)")
    t.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    t.add_argument("--lr", type=float, default=d.lr, help="RMSProp learning rate (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    t.add_argument("--out", type=Path, required=True, help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="print a model's test accuracy", description="Print a model's test accuracy; "
                       "the last line is 'accuracy: 0.XXXX'.")
    e.add_argument("model", help="zoo:NAME or a checkpoint file")
    e.set_defaults(func=cmd_eval)
