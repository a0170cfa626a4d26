"""``ldam train`` and ``ldam eval``: train zoo architectures with the paper's recipe.

The recipe (PAPER.md §5): RMSProp with momentum and cross-entropy for a fixed number of epochs.

**Parameter averaging.** Over the last ``K = average_last`` epochs the trainer keeps the running
mean of the weights after every optimizer step, ``θ̄ = (1/n) Σ_{s ≤ n} θ_s`` (a moving average
of the parameters, as in the paper), then recomputes BatchNorm statistics for ``θ̄`` with one
pass over the training data. **Prediction averaging** averages the softmax outputs of the K
end-of-epoch snapshots. All three test accuracies are reported.

Training is deterministic under a seed: epoch ``e`` shuffles (and augments) with a generator
seeded from ``(seed, e)``. A checkpoint is written atomically after every epoch, and
``--resume`` continues from the last completed epoch with the same result as an uninterrupted
run. A validation split is carved from the training data with a fixed seed.

**Devices.** ``train(..., device=...)`` (``ldam train --device``) trains on that device: the model
is built on the CPU (so a seed gives the same initial weights everywhere), then moved; the
datasets stay on the host and each batch is moved to the device for its step (shuffling and
augmentation are drawn on the host, so they do not depend on the device). :func:`predict`,
:func:`evaluate` and :func:`recompute_batchnorm` run on the model's device, a batch at a time, and
:func:`predict` returns its probabilities on the CPU. Checkpoints hold CPU tensors.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._training import (CHECKPOINT, add_run_options, epoch_bar, resume_checkpoint, save_training_checkpoint,
                        start_run, training_device)
from .data.pixels import to_model_units
from .device import model_device, resolve_device
from .errors import LdamError
from .zoo import ARCHITECTURES, CIFAR10_CLASSES, CIFAR10_NORM, MNIST_CLASSES, ModelInfo, build, load_model, save_checkpoint

if TYPE_CHECKING:
    from .monitor import Monitor


@dataclass(frozen=True)
class DatasetSpec:
    """A training set: how to load it (uint8 NCHW), its normalization, classes, augmentation."""

    load: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    augment: bool


def _mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_mnist

    x, y = load_mnist(split)
    return x.unsqueeze(1), y


def _cifar10(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_cifar10

    return load_cifar10(split)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(_mnist, (1, 28, 28), (0.1307,), (0.3081,), MNIST_CLASSES, False),
    "cifar10": DatasetSpec(_cifar10, (3, 32, 32), *CIFAR10_NORM, CIFAR10_CLASSES, True),
}


@dataclass
class TrainConfig:
    """One training run: architecture, data, the RMSProp-with-momentum recipe, and averaging."""

    arch: str = "lenet5"
    dataset: str = "mnist"
    epochs: int = 10
    lr: float = 2e-4
    momentum: float = 0.9
    alpha: float = 0.99
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    average_last: int = 5
    val_size: int = 5000
    lr_drop: float = 1.0  # multiply the lr by this for the averaging window
    optimizer: str = "rmsprop"  # or "sgd" (Nesterov momentum)
    warmup: int = 0  # epochs of linear warm-up; with warmup > 0 the lr then decays linearly to the window
    label_smoothing: float = 0.0
    bf16: bool = False  # bfloat16 autocast on the device (weights and optimizer stay float32)


def learning_rate(cfg: TrainConfig, epoch_float: float) -> float:
    """The lr at fractional epoch ``t``.

    ``warmup = 0``: ``lr`` until the averaging window, ``lr·lr_drop`` inside it (the paper's
    constant-rate recipe). ``warmup > 0``: a linear rise from 0 to ``lr`` over ``warmup`` epochs,
    a linear fall to ``lr·lr_drop`` at the start of the window, then constant (SWA-style).
    """
    window = cfg.epochs - cfg.average_last if cfg.average_last > 0 else cfg.epochs
    low = cfg.lr * cfg.lr_drop
    if epoch_float >= window and cfg.average_last > 0:
        return low
    if cfg.warmup <= 0:
        return cfg.lr
    if epoch_float < cfg.warmup:
        return cfg.lr * epoch_float / cfg.warmup
    frac = (epoch_float - cfg.warmup) / max(window - cfg.warmup, 1e-9)
    return cfg.lr + (low - cfg.lr) * min(frac, 1.0)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    raise LdamError(f"unknown optimizer {cfg.optimizer!r}; use 'rmsprop' (the paper's) or 'sgd'")


def normalize(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` pixels → float model input ``(pixel/255 − mean) / std``."""
    return to_model_units(images.unsqueeze(1) if images.dim() == 3 else images, mean, std)


def dataset_spec(name: str) -> DatasetSpec:
    """The training set ``name`` (one of :data:`DATASETS`), or an :class:`LdamError` listing them."""
    if name not in DATASETS:
        raise LdamError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, val_size: int = 0) -> dict[str, torch.Tensor]:
    """Train/val/test tensors in model units. The validation split uses a fixed seed (0)."""
    spec = dataset_spec(name)
    x, y = spec.load("train")
    xt, yt = spec.load("test")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, tr = perm[:val_size], perm[val_size:]
    out = {"x_train": x[tr], "y_train": y[tr], "x_val": x[val], "y_val": y[val], "x_test": xt, "y_test": yt}
    for k in ("x_train", "x_val", "x_test"):
        out[k] = normalize(out[k], spec.mean, spec.std)
    return out


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops (zero padding ``pad``) and horizontal flips, drawn from ``g``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = dx[:, None] + torch.arange(w)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Softmax probabilities on the CPU, in eval mode (the model's mode is restored); each batch of
    ``x`` runs on the model's device."""
    was = model.training
    model.eval()
    dev = model_device(model)
    out = torch.cat([F.softmax(model(x[i:i + batch_size].to(dev)), 1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on model-unit inputs ``x``."""
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, batch_size).argmax(1) == y).double().mean())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> None:
    """Replace BatchNorm running statistics by the average, over batches of ``x``, of each
    batch's mean and unbiased variance (the model runs in train mode, as in training)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    was = model.training
    model.train()
    dev = model_device(model)
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size].to(dev))
    model.train(was)
    for bn, m in zip(bns, momenta):
        bn.momentum = m


def _clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state dict on the CPU (snapshots stay on the host, whatever the device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


@dataclass
class _Run:
    """A run's progress: what its checkpoint holds besides the model and optimizer."""

    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    avg: dict[str, torch.Tensor] | None = None  # running mean of the parameters over the averaging window
    n_avg: int = 0  # optimizer steps in that mean
    snapshots: list[dict[str, torch.Tensor]] = field(default_factory=list)  # end-of-epoch weights in the window


def _check_config(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise LdamError(f"unknown architecture {cfg.arch!r}; known: {', '.join(ARCHITECTURES)}")
    if not 0 <= cfg.average_last <= cfg.epochs:
        raise LdamError(f"average_last must be between 0 and epochs ({cfg.epochs}), got {cfg.average_last}")


def _resume(ckpt: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, dev: torch.device) -> _Run:
    """The progress saved in ``ckpt`` (loaded into ``model`` and ``opt``), or a fresh run."""
    state = resume_checkpoint(ckpt, model, opt, asdict(cfg))
    if state is None:
        return _Run()
    avg = state["avg"]
    if avg is not None:
        avg = {k: v.to(dev) for k, v in avg.items()}
    return _Run(state["epoch"], state["history"], avg, int(state["n_avg"]), list(state["snapshots"]))


def _save_progress(ckpt: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, run: _Run) -> None:
    save_training_checkpoint(ckpt, model, opt, run.epochs_done, asdict(cfg), run.history, avg=run.avg,
                             n_avg=run.n_avg, snapshots=run.snapshots)


def _accumulate_average(run: _Run, model: nn.Module) -> None:
    """One more step in the running mean of the parameters, ``θ̄ += (θ − θ̄)/n``."""
    run.n_avg += 1
    params = dict(model.named_parameters())
    if run.avg is None:
        run.avg = {k: p.detach().clone() for k, p in params.items()}
    else:
        for k, p in params.items():
            run.avg[k].add_(p.detach() - run.avg[k], alpha=1.0 / run.n_avg)


def _fit_epoch(cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, run: _Run, epoch: int,
               x_tr: torch.Tensor, y_tr: torch.Tensor, use_aug: bool, averaging: bool, dev: torch.device,
               progress: bool, on_step: Callable[[nn.Module], None] | None) -> tuple[float, float]:
    """One epoch of optimizer steps (shuffled and augmented from a generator seeded by ``(seed, epoch)``);
    returns its mean loss and training accuracy."""
    n = len(x_tr)
    model.train()
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    # Running sums stay on the device (no host sync per step), in float64: the same sums as Python floats
    # (MPS has no float64: float32 there).
    acc = torch.float32 if dev.type == "mps" else torch.float64
    loss_sum = torch.zeros((), dtype=acc, device=dev)
    correct = torch.zeros((), dtype=acc, device=dev)
    seen = 0
    bar = epoch_bar(n, cfg.batch_size, epoch, cfg.epochs, progress)
    for i in bar:
        idx = perm[i:i + cfg.batch_size]
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, epoch + i / n)
        xb = (augment(x_tr[idx], g) if use_aug else x_tr[idx]).to(dev, non_blocking=True)
        yb = y_tr[idx].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaging:
            _accumulate_average(run, model)
        if on_step is not None:
            on_step(model)
        loss_sum += loss.detach().to(acc) * len(idx)
        correct += (logits.argmax(1) == yb).sum().to(acc)
        seen += len(idx)
        if (i // cfg.batch_size) % 20 == 0:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{float(correct) / seen:.4f}", refresh=False)
    bar.close()
    return float(loss_sum) / seen, float(correct) / seen


def _run_epoch(cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, run: _Run, epoch: int,
               d: dict[str, torch.Tensor], use_aug: bool, dev: torch.device, progress: bool,
               on_step: Callable[[nn.Module], None] | None) -> None:
    """Train epoch ``epoch``, snapshot it inside the averaging window, validate, and record it in ``run``."""
    averaging = cfg.average_last > 0 and epoch >= cfg.epochs - cfg.average_last
    t0 = time.perf_counter()
    loss, train_acc = _fit_epoch(cfg, model, opt, run, epoch, d["x_train"], d["y_train"], use_aug, averaging, dev,
                                 progress, on_step)
    if averaging:
        run.snapshots.append(_clone(model.state_dict()))
    val_acc = evaluate(model, d["x_val"], d["y_val"])
    h = {"epoch": epoch + 1, "loss": loss, "train_accuracy": train_acc, "val_accuracy": val_acc,
         "seconds": time.perf_counter() - t0}
    run.history.append(h)
    run.epochs_done = epoch + 1
    if progress:
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {h['loss']:.4f}, train accuracy {h['train_accuracy']:.4f}, "
              f"validation accuracy {val_acc:.4f}, {h['seconds']:.1f} s", flush=True)


def _trained_on(dev: torch.device) -> str:
    where = (f"{torch.get_num_threads()} threads" if dev.type == "cpu" else
             f"{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else str(dev))
    return f"{platform.machine()}, torch {torch.__version__}, {where}"


def _parameter_average(cfg: TrainConfig, model: nn.Module, avg: dict[str, torch.Tensor], x_tr: torch.Tensor,
                       dev: torch.device) -> nn.Module:
    """``model`` with its parameters replaced by their running mean ``avg`` and its BatchNorm
    statistics recomputed on ``x_tr``."""
    averaged = build(cfg.arch).to(dev)
    averaged.load_state_dict(model.state_dict())
    with torch.no_grad():
        for k, p in averaged.named_parameters():
            p.copy_(avg[k])
    recompute_batchnorm(averaged, x_tr)
    return averaged


def _prediction_average_accuracy(cfg: TrainConfig, snapshots: list[dict[str, torch.Tensor]], x: torch.Tensor,
                                 y: torch.Tensor, dev: torch.device) -> float:
    """Top-1 accuracy of the snapshots' softmax outputs, averaged."""
    probs = 0
    snap = build(cfg.arch).to(dev)
    for s in snapshots:
        snap.load_state_dict(s)
        probs = probs + predict(snap, x)
    return float((probs.argmax(1) == y).double().mean())  # type: ignore[union-attr]


def _finish(cfg: TrainConfig, out: Path, d: dict[str, torch.Tensor], model: nn.Module, run: _Run,
            spec: DatasetSpec | None, dev: torch.device, record: dict[str, Any]) -> None:
    """Test the trained model (and the averaged ones), write ``model.pt``, ``model-avg.pt`` and ``train.json``."""
    x_te, y_te = d["x_test"], d["y_test"]
    record["test_size"] = len(y_te)
    record["test_accuracy"] = evaluate(model, x_te, y_te)
    info = None
    if spec is not None:
        info = ModelInfo("model.pt", cfg.arch, spec.input_shape, spec.class_names, spec.mean, spec.std, cfg.dataset)
    save_checkpoint(model, cfg.arch, out / "model.pt", info)
    if run.avg is not None:
        averaged = _parameter_average(cfg, model, run.avg, d["x_train"], dev)
        record["averaged_steps"] = run.n_avg
        record["test_accuracy_param_avg"] = evaluate(averaged, x_te, y_te)
        record["val_accuracy_param_avg"] = evaluate(averaged, d["x_val"], d["y_val"])
        record["test_accuracy_pred_avg"] = _prediction_average_accuracy(cfg, run.snapshots, x_te, y_te, dev)
        save_checkpoint(averaged, cfg.arch, out / "model-avg.pt", info)
        record["model_avg"] = averaged
    (out / "train.json").write_text(json.dumps({k: v for k, v in record.items() if not k.startswith("model")},
                                               indent=2) + "\n")


def train(cfg: TrainConfig, out: Path, resume: bool = False, data: dict[str, torch.Tensor] | None = None,
          stop_after: int | None = None, progress: bool = True,
          on_step: Callable[[nn.Module], None] | None = None,
          device: torch.device | str | None = None,
          on_epoch: Callable[[nn.Module, int], None] | None = None) -> dict[str, Any]:
    """Train, checkpointing to ``out/checkpoint.pt`` after every epoch; write ``out/model.pt``,
    ``out/model-avg.pt`` and ``out/train.json``.

    ``data`` may give the tensors of :func:`load_dataset` (the tests use a toy set);
    ``stop_after`` ends the run after that many epochs, as an interrupt would; ``on_step`` sees
    the model after every optimizer step (every batch); ``on_epoch(model, epoch)`` sees it after
    every epoch (0-based ``epoch``), once the epoch is validated and checkpointed (``ldam train
    --monitor`` hangs an :class:`ldam.Monitor` there); ``device`` (default: the CPU) is where it
    trains (see the module's notes on devices). Returns the run record, with the models (on
    ``device``) under ``"model"`` and ``"model_avg"``.
    """
    _check_config(cfg)
    d = data if data is not None else load_dataset(cfg.dataset, cfg.val_size)
    spec = DATASETS.get(cfg.dataset)
    use_aug = spec.augment if spec is not None else False
    dev = training_device(device)
    torch.manual_seed(cfg.seed)
    model = build(cfg.arch).to(dev)  # initialized on the CPU, the same on every device
    opt = make_optimizer(cfg, model)
    ckpt = out / CHECKPOINT
    run = _resume(ckpt, cfg, model, opt, dev) if resume else _Run()
    for epoch in range(run.epochs_done, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        _run_epoch(cfg, model, opt, run, epoch, d, use_aug, dev, progress, on_step)
        _save_progress(ckpt, cfg, model, opt, run)
        if on_epoch is not None:
            on_epoch(model, epoch)
    record: dict[str, Any] = {"config": asdict(cfg), "history": run.history, "epochs_done": len(run.history),
                              "trained_on": _trained_on(dev), "model": model}
    if len(run.history) == cfg.epochs:  # not interrupted
        _finish(cfg, out, d, model, run, spec, dev, record)
    return record


def cmd_train(args: argparse.Namespace) -> int:
    device = start_run(args)  # checked before the data is read
    d = TrainConfig()
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, average_last=args.average_last,
                      weight_decay=args.weight_decay, val_size=args.val_size,
                      lr_drop=args.lr_drop if args.lr_drop is not None else d.lr_drop, optimizer=args.optimizer,
                      warmup=args.warmup, label_smoothing=args.label_smoothing, bf16=args.bf16)
    monitor = monitor_from_args(args)
    try:
        rec = train(cfg, args.out, resume=args.resume, device=device,
                    on_epoch=None if monitor is None else (lambda model, epoch: monitor(model, step=epoch)))
    finally:
        if monitor is not None:
            monitor.close()
    if monitor is not None:
        print(f"monitor: TensorBoard logs in {monitor_log_dir(args)} (tensorboard --logdir {monitor_log_dir(args)})")
    print(f"model: {args.out / 'model.pt'} (trained on {device})")
    if "test_accuracy_param_avg" in rec:
        print(f"parameter-averaged model (last {cfg.average_last} epochs): {args.out / 'model-avg.pt'}")
        print(f"test accuracy ({rec['test_size']} images): base {rec['test_accuracy']:.4f}, "
              f"parameter-averaged {rec['test_accuracy_param_avg']:.4f}, "
              f"prediction-averaged {rec['test_accuracy_pred_avg']:.4f}")
    print(f"accuracy: {rec['test_accuracy']:.4f}")
    return 0


def monitor_log_dir(args: argparse.Namespace) -> Path:
    """``--monitor-log-dir``, by default ``OUT/tb``."""
    return args.monitor_log_dir if args.monitor_log_dir is not None else args.out / "tb"


def monitor_from_args(args: argparse.Namespace) -> "Monitor | None":
    """The :class:`ldam.Monitor` that ``ldam train --monitor TARGET ...`` asks for (``None`` without
    ``--monitor``): the dataset's sampling defaults (:data:`ldam.zoo.SAMPLING_DEFAULTS`: step size,
    temperature, L2 weight), ``--monitor-steps`` steps and ``--monitor-chains`` chains per epoch,
    logging to :func:`monitor_log_dir`."""
    if not getattr(args, "monitor", None):
        return None
    from .energy import L2
    from .monitor import Monitor
    from .targets import resolve
    from .zoo import SAMPLING_DEFAULTS

    knobs = SAMPLING_DEFAULTS[args.dataset]
    shape = dataset_spec(args.dataset).input_shape
    resolve(build(args.arch), args.monitor, shape)  # a bad target fails now, not after the first epoch
    try:
        monitor = Monitor(args.monitor, shape, steps=args.monitor_steps, chains=args.monitor_chains,
                          budget=args.monitor_budget, log_dir=monitor_log_dir(args), seed=args.seed,
                          step_size=knobs["step_size"], temperature=knobs["temperature"], regularizers=[L2(knobs["l2"])])
    except ImportError as e:  # TensorBoard (or scipy) is missing: one line naming the extra, not a traceback
        raise LdamError(str(e)) from None
    return monitor


def cmd_eval(args: argparse.Namespace) -> int:
    from .cli import model_options

    opts = model_options(args)
    device = resolve_device(getattr(args, "device", "auto"))
    dataset = getattr(args, "dataset", None)
    if opts["arch"] and dataset is None:
        raise LdamError(f"ldam eval --arch needs the test set: add --dataset {'|'.join(DATASETS)} (and --mean/--std if "
                        "the model expects normalized pixels)")
    if opts["arch"] and not opts["input_shape"]:
        opts["input_shape"] = DATASETS[dataset].input_shape  # the test images' shape
    model, info = load_model(args.model, dataset=dataset, **opts)
    model = model.to(device)  # loaded on the CPU; the test images stay there and go over a batch at a time
    if info.dataset not in DATASETS:
        raise LdamError(f"{args.model} was trained on {info.dataset or 'an unknown dataset'}, which ldam cannot "
                        f"evaluate on here (it has {', '.join(DATASETS)}; choose one with --dataset); for the "
                        "ImageNet model, experiments/imagenet.py prints its top-5 on sample photos")
    spec = DATASETS[info.dataset]
    if tuple(info.input_shape) != tuple(spec.input_shape):
        raise LdamError(f"the {info.dataset} test images have shape {list(spec.input_shape)} but the model's inputs "
                        f"have shape {list(info.input_shape)}; pass the dataset the model was trained on")
    images, labels = spec.load("test")
    x = normalize(images, info.mean, info.std)  # the model's own preprocessing: (pixel − mean) / std
    try:
        with torch.no_grad():
            out = model.eval()(x[:2].to(device))
    except Exception as e:  # noqa: BLE001 - reported with its cause
        raise LdamError(f"{args.model} rejects the {info.dataset} test images {list(x.shape[1:])}: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200]}; pass the dataset the model was trained on") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < len(spec.class_names):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LdamError(f"ldam eval needs class scores of shape [N, {len(spec.class_names)}] from the model; "
                        f"{args.model} returns {got}")
    acc = evaluate(model, x, labels)
    norm = "" if not opts["arch"] and opts["mean"] is None and opts["std"] is None else \
        f", inputs (pixel - {list(info.mean)}) / {list(info.std)}"
    print(f"{args.model} on the {info.dataset} test set ({len(labels)} images{norm}, on {device})")
    print(f"accuracy: {acc:.4f}")
    return 0


def add_subcommands(sub: Any) -> None:
    """Register ``train`` and ``eval`` on the ``ldam`` command's subparsers."""
    d = TrainConfig()
    t = sub.add_parser("train", help="train a zoo architecture (RMSProp with momentum, parameter averaging)",
                       description="Train a zoo architecture with the paper's recipe. Checkpoints every epoch "
                       "to OUT/checkpoint.pt; writes OUT/model.pt (final weights), OUT/model-avg.pt (weights "
                       "averaged over the last epochs) and OUT/train.json (history and the three test accuracies).")
    t.add_argument("--arch", default=d.arch, choices=["lenet5", "vgg-cifar", "mlp", "cnn-cifar"], help="architecture (default: %(default)s)")
    t.add_argument("--lr-drop", type=float, default=None, help="lr factor during the averaging window (default: 1)")
    t.add_argument("--optimizer", default=d.optimizer, choices=["rmsprop", "sgd"],
                   help="rmsprop: RMSProp with momentum, the paper's; sgd: Nesterov SGD (default: %(default)s)")
    t.add_argument("--warmup", type=int, default=d.warmup,
                   help="epochs of linear lr warm-up, then a linear decay to the averaging window; 0 keeps the lr "
                   "constant (default: %(default)s)")
    t.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default: %(default)s)")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (about 2x faster on CPUs with AVX-512 BF16)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    t.add_argument("--average-last", type=int, default=d.average_last,
                   help="average the weights (and predictions) over the last K epochs (default: %(default)s)")
    t.add_argument("--val-size", type=int, default=d.val_size,
                   help="training images held out for validation (default: %(default)s)")
    add_run_options(t, d, datasets=list(DATASETS), lr_help="learning rate (the peak, with --warmup)",
                    device_where="the model trains (the data stays on the host; each batch is moved)")
    m = t.add_argument_group("training monitor (TensorBoard; pip install 'ldam[monitor]')")
    m.add_argument("--monitor", nargs="+", metavar="TARGET", default=None,
                   help="after every epoch, sample these targets (e.g. fc3:0-9 conv2:0-3@5,5) on a copy of the model "
                   "and log pictures and numbers to TensorBoard")
    m.add_argument("--monitor-log-dir", type=Path, default=None, help="(default: OUT/tb)")
    m.add_argument("--monitor-steps", type=int, default=300, help="chain steps per epoch (default: %(default)s)")
    m.add_argument("--monitor-chains", type=int, default=4, help="chains per target (default: %(default)s)")
    m.add_argument("--monitor-budget", type=float, default=None,
                   help="at most this share of each epoch's time, e.g. 0.1 (default: always --monitor-steps)")
    from .cli import add_arch_options, add_device_option

    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="print a model's test accuracy", description="Print a model's test accuracy; "
                       "the last line is 'accuracy: 0.XXXX'.",
                       epilog="Examples:\n  ldam eval zoo:lenet-mnist\n  ldam eval weights.pt --arch mypkg.nets:Net "
                       "--arch-kwargs '{\"width\": 32}' --dataset mnist --mean 0.1307 --std 0.3081",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", help="zoo:NAME, a checkpoint file, or with --arch a weights file")
    e.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="the test set (default: the model's own; required with --arch)")
    add_device_option(e, "the model runs")
    add_arch_options(e, input_shape="one example's shape (default: the model's own; with --arch, the dataset's)",
                     shape_note="--dataset is then required.")
    e.set_defaults(func=cmd_eval)
