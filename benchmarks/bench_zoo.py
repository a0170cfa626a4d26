"""Sampler throughput for every zoo model: image-steps per second at a batch that saturates the CPU.

For each model, the 10 (or, for ImageNet, 4) output logits are sampled with SGLD + L2 + the
pixel-range box; for each batch size (chains × targets) the sampler runs a few warm-up steps,
then ``steps`` timed steps, in ``blocks`` alternating blocks; the median over blocks is kept. One
image-step is one chain advanced by one step. Also printed: the bare forward+backward rate on
the same batch, side by side, and the ratio of the two.

    python benchmarks/bench_zoo.py [--blocks 3] [--steps 10] [--device auto|cpu|cuda|cuda:N|mps]

``--device`` (default auto: a GPU when there is one) is where the models run; on a GPU every
timed block ends with a synchronize, so queued work is counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ldam
import ldam.zoo
from ldam.device import CHOICES, script_device, synchronize

PLAN = {  # zoo name: (targets, chains per target for each batch size tried)
    "lenet-mnist": ("output:0-9", (10, 40, 100)),
    "lenet-mnist-avg": ("output:0-9", (40,)),
    "vgg-cifar10": ("output:0-9", (3, 10, 25)),
    "vgg-cifar10-avg": ("output:0-9", (10,)),
    "efficientnet-lite0-imagenet": (["output:1", "output:130", "output:949", "output:967"], (1, 2, 4)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--models", nargs="*", default=list(PLAN))
    p.add_argument("--device", default="auto", metavar="{" + ",".join(CHOICES) + "}",
                   help="where to run: auto takes a GPU when there is one, else the CPU (default: %(default)s)")
    a = p.parse_args()
    dev = script_device(a.device, "bench_zoo.py")
    print(f"{'model':30s} {'batch':>6s} {'image-steps/s':>14s} {'bare fwd+bwd/s':>15s} {'ratio':>6s}")
    for name in a.models:
        if name not in ldam.zoo.names():
            print(f"{name:30s} (not installed)")
            continue
        try:
            model, info = ldam.zoo.load(name)
            model = model.to(dev)
        except ldam.LdamError as e:
            print(f"{name:30s} skipped: {e}")
            continue
        targets, plan = PLAN[name]
        n_targets = 10 if isinstance(targets, str) else len(targets)
        box = ldam.Box.from_normalization(info.mean, info.std)
        for chains in plan:
            s = ldam.Sampler(model, targets, info.input_shape, chains=chains, step_size=0.004, temperature=0.02,
                             regularizers=[ldam.L2(0.3), box], keep_samples=False)
            x = torch.randn(n_targets * chains, *info.input_shape).to(dev)
            s.run(2)
            rates, bare = [], []
            for _ in range(a.blocks):
                synchronize(dev)
                t = time.perf_counter()
                s.run(a.steps)
                synchronize(dev)
                rates.append(s.batch * a.steps / (time.perf_counter() - t))
                t = time.perf_counter()
                for _ in range(a.steps):
                    xr = x.detach().requires_grad_(True)
                    torch.autograd.grad(model(xr).sum(), xr)
                synchronize(dev)
                bare.append(len(x) * a.steps / (time.perf_counter() - t))
            r, b = statistics.median(rates), statistics.median(bare)
            print(f"{name:30s} {s.batch:6d} {r:14.1f} {b:15.1f} {b / r:6.3f}", flush=True)


if __name__ == "__main__":
    main()
