"""ldam.Monitor on a real training run, measured: the zoo's LeNet recipe on MNIST for 10 epochs
(``ldam.train.train`` with the default :class:`~ldam.train.TrainConfig`), with the monitor called in
the foreground after every epoch on ``fc3:0-9`` and ``conv2:0-5@5,5`` (300 steps, 4 chains per unit,
the MNIST sampling defaults of :data:`ldam.zoo.SAMPLING_DEFAULTS`).

Measured: each epoch's training time (``history[i]["seconds"]``: the epoch's optimizer steps and
its validation), each monitor call's time (its record's ``seconds``, and the wall time around the
call), and the whole ``train()`` call, which includes the monitor calls, the checkpoints and the
final tests. The monitor's share is ``Σ monitor / train()``. A second, shorter run with
``budget=0.1`` shows the budget at work (the steps it chose and its measured share).

Writes ``docs/monitor/lenet_epochs.png`` (rows: units, columns: epochs; each cell is chain 0's
mean in that epoch's call: the same chain, continued across epochs), prints a markdown summary,
and keeps the numbers in ``runs/monitor_lenet/measured.json`` and the TensorBoard logs in
``runs/monitor_lenet/tb``.

    python experiments/monitor_lenet.py            # about 4-6 minutes on 2 CPU cores
    python experiments/monitor_lenet.py --quick    # 2 epochs on a slice of the data: checks that it runs
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

import ldam
from ldam.render import batch_grid
from ldam.train import TrainConfig, load_dataset, train
from ldam.zoo import SAMPLING_DEFAULTS

from _common import ROOT, data_available, header, labeled, parser, setup, stack

TARGETS = ["fc3:0-9", "conv2:0-5@5,5"]  # conv2 units at the centre (a unit's mean over positions shows only noise here)
SHOWN = ["fc3:0", "fc3:1", "fc3:4", "fc3:7", "conv2:1@5,5", "conv2:2@5,5", "conv2:4@5,5"]


def monitored_run(args, data: dict[str, torch.Tensor], epochs: int, budget: float | None, log_dir: Path,
                  out: Path) -> dict:
    """Train with a monitor after every epoch; returns the timings and the chain-0 means per epoch."""
    knobs = SAMPLING_DEFAULTS["mnist"]
    monitor = ldam.Monitor(TARGETS, (1, 28, 28), steps=args.steps, chains=args.chains, budget=budget,
                           log_dir=log_dir, step_size=knobs["step_size"], temperature=knobs["temperature"],
                           regularizers=[ldam.L2(knobs["l2"])])
    calls: list[dict] = []
    means: list[torch.Tensor] = []

    def on_epoch(model: torch.nn.Module, epoch: int) -> None:
        t = time.perf_counter()
        r = monitor(model, step=epoch)
        wall = time.perf_counter() - t
        calls.append({"epoch": epoch, "steps": r.steps, "seconds": r.seconds, "wall": wall, "interval": r.interval,
                      "activation": dict(zip(r.targets, r.activation)), "diversity": dict(zip(r.targets, r.diversity)),
                      "modes": dict(zip(r.targets, r.modes))})
        means.append(r.means[:: args.chains].clone())  # chain 0 of every target
        print(f"  monitor after epoch {epoch + 1}: {r.steps} steps, {wall:.2f} s", flush=True)

    cfg = TrainConfig(epochs=epochs)  # the zoo's LeNet recipe (lenet5, mnist, RMSProp, averaging the last 5)
    if epochs < cfg.average_last:
        cfg = TrainConfig(epochs=epochs, average_last=0)
    t0 = time.perf_counter()
    try:
        rec = train(cfg, out, data=data, progress=False, device=args.device, on_epoch=on_epoch)
    finally:
        monitor.close()
    total = time.perf_counter() - t0
    monitor_s = sum(c["wall"] for c in calls)
    training_s = sum(h["seconds"] for h in rec["history"])
    return {"epochs": epochs, "budget": budget, "steps": args.steps, "chains": args.chains, "targets": TARGETS,
            "total_s": total, "training_s": training_s, "monitor_s": monitor_s,
            "monitor_record_s": sum(c["seconds"] for c in calls), "share_of_total": monitor_s / total,
            "monitor_over_training": monitor_s / training_s, "test_accuracy": rec["test_accuracy"],
            "history": rec["history"], "calls": calls, "names": list(calls[0]["activation"]) if calls else [],
            "_means": means}


def picture(run: dict, path: Path) -> None:
    """Rows: the units of ``SHOWN``; columns: epochs; each cell chain 0's mean in that epoch's call."""
    names = run["names"]
    rows = []
    tile = 28 * 2
    for name in SHOWN:
        i = names.index(name)
        cells = torch.stack([m[i] for m in run["_means"]])
        rows.append(labeled(batch_grid(cells, len(cells), zoom=2), name, width=80))
    head = header([f"ep {e + 1}" for e in range(len(run["_means"]))], tile, left=80)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack([head, *rows]).save(path)
    print(f"wrote {path}")


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(out=ROOT / "docs" / "monitor")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="chain steps per monitor call (default: %(default)s)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--budget-epochs", type=int, default=3, help="epochs of the budget=0.1 run (0: skip it)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "monitor_lenet")
    args = p.parse_args()
    setup(args)
    if not data_available("mnist"):
        raise SystemExit("MNIST is needed: set LDAM_DATA_DIR (see docs/data.md)")
    data = load_dataset("mnist", TrainConfig().val_size)
    if args.quick:
        data = {k: v[:2000] for k, v in data.items()}
        args.epochs, args.steps, args.budget_epochs = 2, 20, 2
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    runs = [("fixed", monitored_run(args, data, args.epochs, None, args.runs / "tb", args.runs / "fixed"))]
    if args.budget_epochs:
        runs.append(("budget", monitored_run(args, data, args.budget_epochs, 0.1, args.runs / "tb-budget",
                                             args.runs / "budget")))
    picture(runs[0][1], args.out / ("lenet_epochs_quick.png" if args.quick else "lenet_epochs.png"))
    print("\n| run | epochs | steps per call | training (s) | monitor (s) | train() total (s) | monitor share of total |")
    print("|---|---|---|---|---|---|---|")
    for label, r in runs:
        steps = sorted({c["steps"] for c in r["calls"]})
        print(f"| {label}{'' if r['budget'] is None else ' (budget 0.1)'} | {r['epochs']} | "
              f"{', '.join(map(str, steps))} | {r['training_s']:.1f} | {r['monitor_s']:.1f} | {r['total_s']:.1f} | "
              f"{100 * r['share_of_total']:.1f} % |")
    args.runs.mkdir(parents=True, exist_ok=True)
    keep = {label: {k: v for k, v in r.items() if not k.startswith("_")} for label, r in runs}
    keep["machine"] = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average_at_start": load}
    (args.runs / "measured.json").write_text(json.dumps(keep, indent=2) + "\n")
    print(f"wrote {args.runs / 'measured.json'}")


if __name__ == "__main__":
    main()
