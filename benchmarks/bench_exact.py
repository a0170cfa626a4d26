"""Exact samplers against SGLD at equal wall time, on the zoo LeNet's 10 digit neurons.

Setting (issue 10): ``zoo:lenet-mnist``, targets ``output:0-9`` x 10 chains, T = 0.02,
ε = 0.004, L2 0.3, the pixel box ``Box.from_normalization``. SGLD's 2,000 steps set the time
budget; every other method gets as many steps as fit in the same time (and in twice that time).
Per method this reports, over the second half of its run (the first half is burn-in):

* **agreement**: the fraction of the 100 chain means that an *independent* classifier (an MLP
  trained with ``ldam.train``, another architecture and seed than the LeNet, cached under
  ``runs/bench_exact/``) assigns to the chain's digit; also the LeNet's own agreement;
* **target logit**: the mean of the target logit over the kept steps;
* **ESS/s**: effective sample size of the target logit (``ldam.analysis.ess``) per second of the
  run: pooled over each target's 10 chains (chains that sit in different modes count as not
  mixing) and summed over targets, and the sum of the 100 single-chain ESS (local mixing).

The cost of a step of each method is measured once, interleaved in short blocks (as in
``bench_step.py``), as the fastest block (other jobs only add time); the step counts follow
from it, so a rerun on the same machine reruns the same chains. One run of
``2·N`` steps gives both budgets: its steps ``[N/2, N)`` are the 1x result (burn-in ``N/2``),
its steps ``[N, 2N)`` the 2x result (burn-in ``N``).

    python benchmarks/bench_exact.py                    # SGLD, MALA, pMALA, HMC
    python benchmarks/bench_exact.py --methods sgld hmc-L10 pmala-fisher
    python benchmarks/bench_exact.py --quick            # smoke test, < 60 s; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ldam
import ldam.zoo
from ldam.analysis import ess
from ldam.train import TrainConfig, evaluate, load_dataset, train

ROOT = Path(__file__).resolve().parent.parent
SETTING = dict(temperature=0.02, step_size=0.004, l2=0.3, chains=10, targets="output:0-9")
JUDGE = TrainConfig(arch="mlp", dataset="mnist", epochs=4, average_last=0, optimizer="sgd", lr=0.05, warmup=1,
                    batch_size=128, seed=7, val_size=5000)

#: Method variants by name; the first four are the defaults.
VARIANTS = {
    "sgld": lambda: ldam.SGLD(),
    "mala": lambda: ldam.MALA(),
    "pmala": lambda: ldam.PMALA(),
    "hmc": lambda: ldam.HMC(),
    "hmc-L2": lambda: ldam.HMC(leapfrog=2),
    "hmc-L10": lambda: ldam.HMC(leapfrog=10),
    "hmc-L20": lambda: ldam.HMC(leapfrog=20),
    "hmc-nometric": lambda: ldam.HMC(metric=False),
    "pmala-var": lambda: ldam.PMALA(metric_kind="variance"),
    "hmc-var": lambda: ldam.HMC(metric_kind="variance"),
    "psgld": lambda: ldam.PSGLD(),
}
DEFAULT = ["sgld", "mala", "pmala", "hmc"]
#: ``NAME-warm``: the exact method after a warm-up of unadjusted Langevin steps (``warmup=``) that
#: spend the first half of the 1x budget, SGLD's own burn-in; only the exact states are kept.
WARM = "-warm"


def method_for(name: str, warmup: int = 0):
    base = name[: -len(WARM)] if name.endswith(WARM) else name
    m = VARIANTS[base]()
    if name.endswith(WARM):
        m.warmup = warmup
    return m


def judge_model(quick: bool, cache: Path) -> tuple[torch.nn.Module, float]:
    """The independent classifier (trained once, then read from ``cache``)."""
    data = load_dataset("mnist", val_size=5000)
    cfg = JUDGE
    if quick:
        cfg = TrainConfig(**{**JUDGE.__dict__, "epochs": 1, "val_size": 0})
        data = {"x_train": data["x_train"][:500], "y_train": data["y_train"][:500], "x_val": data["x_test"][:100],
                "y_val": data["y_test"][:100], "x_test": data["x_test"][:500], "y_test": data["y_test"][:500]}
    out = cache / ("judge-mnist-quick" if quick else "judge-mnist")
    if (out / "model.pt").exists():
        model, _ = ldam.zoo.load_checkpoint(out / "model.pt")
    else:
        print(f"training the independent MLP judge (cached in {out})", flush=True)
        model = train(cfg, out, data=data, progress=False)["model"]
    model.eval()
    return model, evaluate(model, data["x_test"], data["y_test"])


def make_sampler(name: str, model: torch.nn.Module, info: ldam.zoo.ModelInfo, chains: int, burn_in: int,
                 seed: int = 0, callbacks=(), warmup: int = 0) -> ldam.Sampler:
    box = ldam.Box.from_normalization(info.mean, info.std)
    return ldam.Sampler(model, SETTING["targets"], info.input_shape, chains=chains, step_size=SETTING["step_size"],
                        temperature=SETTING["temperature"], regularizers=[ldam.L2(SETTING["l2"]), box],
                        method=method_for(name, warmup), burn_in=burn_in, keep_samples=False, ema_tau=None, seed=seed,
                        callbacks=callbacks)


def step_costs(names: list[str], model, info, chains: int, blocks: int, steps: int) -> dict[str, float]:
    """Seconds per step of each method: the fastest of interleaved blocks of ``steps`` steps.

    Other jobs on the machine can only add time, so the fastest block is the best estimate of a
    step's own cost (a median drifts with the load: the ratio MALA/SGLD came out 1.06 and 1.5 on
    two runs on this shared machine)."""
    samplers = {n: make_sampler(n, model, info, chains, burn_in=10**9, seed=99) for n in names}
    for s in samplers.values():
        s.run(3)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(blocks):
        for n, s in samplers.items():
            t0 = time.perf_counter()
            s.run(steps)
            times[n].append((time.perf_counter() - t0) / steps)
    return {n: min(t) for n, t in times.items()}


class Windows(ldam.Callback):
    """Sums of the chains' states over the step windows ``[a, b)``."""

    def __init__(self, windows: list[tuple[int, int]]):
        self.windows = windows
        self.sums: list[torch.Tensor | None] = [None] * len(windows)
        self.acceptance: list[float | None] = [None] * len(windows)

    def on_step(self, sampler, info) -> None:
        t = info.t  # sampler.x is now x_{t+1}: windows count the states x_{a+1} .. x_b
        for i, (a, b) in enumerate(self.windows):
            if a <= t < b:
                self.sums[i] = sampler.x.clone() if self.sums[i] is None else self.sums[i].add_(sampler.x)
            if t == b - 1 and isinstance(sampler.method, ldam.Metropolis) and sampler.method.acceptance is not None:
                self.acceptance[i] = float(sampler.method.acceptance.mean())  # since burn-in ended


def measure(name: str, budget: float, costs: dict[str, float], warm: int, model, info, judge, chains: int,
            seed: int) -> list[dict]:
    """One run that lasts twice the budget; the 1x and 2x results from its two halves in time.

    A plain method runs ``2N`` steps (``N`` = budget / its step cost): windows ``[N/2, N)`` and
    ``[N, 2N)``. A ``-warm`` variant first makes ``warm`` SGLD steps (half the 1x budget), then
    exact steps: its windows start where the warm-up ends and at the 1x budget.
    """
    cost = costs[name[: -len(WARM)] if name.endswith(WARM) else name]
    if name.endswith(WARM):
        left = budget - warm * costs["sgld"]
        n1, n2 = warm + max(2, round(left / cost)), warm + max(4, round((left + budget) / cost))
        windows = [(warm, n1), (n1, n2)]
    else:
        steps = max(4, round(budget / cost))
        windows = [(steps // 2, steps), (steps, 2 * steps)]
    win = Windows(windows)
    sampler = make_sampler(name, model, info, chains, burn_in=windows[0][0], seed=seed, callbacks=[win], warmup=warm)
    t0 = time.perf_counter()
    sampler.run(windows[1][1])
    wall = time.perf_counter() - t0
    acts = sampler.activations.double()  # [2·steps, batch]; row t is f(x_t)
    n_targets = 10
    cls = torch.arange(n_targets).repeat_interleave(chains)
    out = []
    for k, ((a, b), total) in enumerate(zip(windows, win.sums)):
        assert total is not None
        means = total / (b - a)
        with torch.no_grad():
            hit = (judge(means).argmax(1) == cls).double()
            own = (model(means).argmax(1) == cls).double()
        trace = acts[a:b]
        pooled = sum(ess(trace[:, j * chains:(j + 1) * chains]) for j in range(n_targets))
        single = sum(ess(trace[:, j]) for j in range(trace.shape[1]))
        seconds = (k + 1) * budget  # the run up to the window's end
        acc = win.acceptance[k]
        scale = sampler.method.step_scale() if isinstance(sampler.method, ldam.Metropolis) else None
        out.append({
            "method": name, "budget": k + 1, "steps": b, "kept": b - a, "seconds": seconds,
            "agreement": float(hit.mean()), "lenet_agreement": float(own.mean()),
            "target_logit": float(trace.mean()), "ess_pooled": pooled, "ess_chains": single,
            "ess_pooled_per_s": pooled / seconds, "ess_chains_per_s": single / seconds,
            "acceptance": acc,
            "step_scale": None if scale is None else float(scale.mean()),
            "wall_run": wall,
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=DEFAULT, choices=list(VARIANTS) + [v + WARM for v in VARIANTS])
    p.add_argument("--budget-steps", type=int, default=2000, help="SGLD steps that set the time budget")
    p.add_argument("--quick", action="store_true", help="smoke test (< 60 s): few chains and steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_exact")
    p.add_argument("--name", default="results", help="the results file: OUT/NAME.json")
    p.add_argument("--seed", type=int, default=0, help="the chains' seed")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    if "sgld" not in a.methods:
        a.methods = ["sgld", *a.methods]
    chains = 2 if a.quick else SETTING["chains"]
    budget = 20 if a.quick else a.budget_steps
    model, info = ldam.zoo.load_model("zoo:lenet-mnist")
    judge, judge_acc = judge_model(a.quick, a.out)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); judge: MLP, test accuracy {judge_acc:.4f}",
          flush=True)
    timed = list(dict.fromkeys(n[: -len(WARM)] if n.endswith(WARM) else n for n in a.methods))
    costs = step_costs(timed, model, info, chains, blocks=2 if a.quick else 15, steps=3 if a.quick else 10)
    seconds = budget * costs["sgld"]
    print(f"budget: {budget} SGLD steps = {seconds:.1f} s; seconds per step: "
          + ", ".join(f"{n} {1e3 * c:.1f} ms" for n, c in costs.items()), flush=True)
    rows = []
    for name in a.methods:
        rows += measure(name, seconds, costs, budget // 2, model, info, judge, chains, a.seed)
        for r in rows[-2:]:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    head = ["method", "budget", "steps", "agreement (MLP)", "agreement (LeNet)", "target logit",
            "ESS/s pooled", "ESS/s per chain", "acceptance", "step scale"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in sorted(rows, key=lambda r: r["budget"]):
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        sc = "-" if r["step_scale"] is None else f"{r['step_scale']:.3f}"
        print(f"| {r['method']} | {r['budget']}x | {r['steps']} | {r['agreement']:.2f} | {r['lenet_agreement']:.2f} | "
              f"{r['target_logit']:.1f} | {r['ess_pooled_per_s']:.2f} | {r['ess_chains_per_s']:.1f} | {acc} | {sc} |")
    result = {"setting": SETTING, "seed": a.seed, "budget_steps": budget, "budget_seconds": seconds, "step_seconds": costs,
              "judge_accuracy": judge_acc, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "quick": a.quick, "rows": rows}
    path = a.out / (f"{a.name}-quick.json" if a.quick else f"{a.name}.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
