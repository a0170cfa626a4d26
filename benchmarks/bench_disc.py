"""What the discriminator costs per sampler step, measured side by side in one run.

For each zoo model, three samplers on the same batch (the 10 output logits, SGLD + L2 + the
pixel-range box) are stepped in alternating blocks:

* ``plain``: no discriminator;
* ``frozen``: a discriminator at w = 0.5 whose critic never trains (the cost of ``∇ log D``);
* ``online``: the same, with the critic trained online at the default interval (one update of
  64 fake + 64 real images every 10 steps).

The median time per step over blocks is printed, with the ratios ``online / frozen`` (what
online training adds: the target is at most 1.30) and ``online / plain`` (the whole regularizer).

    python benchmarks/bench_disc.py [--blocks 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ldam
import ldam.zoo
from ldam.data import load_cifar10, load_mnist
from ldam.train import normalize

PLAN = {"lenet-mnist": 10, "vgg-cifar10": 3}  # chains per target (x 10 targets)


def real_images(name: str, info: ldam.zoo.ModelInfo) -> torch.Tensor:
    if info.dataset == "mnist":
        images = load_mnist("train")[0][:5000].unsqueeze(1)
    else:
        images = load_cifar10("train")[0][:5000]
    return normalize(images, info.mean, info.std)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps per block (a multiple of the update interval)")
    p.add_argument("--models", nargs="*", default=list(PLAN))
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':14s} {'batch':>5s} {'plain ms':>9s} {'frozen ms':>10s} {'online ms':>10s} "
          f"{'online/frozen':>14s} {'online/plain':>13s}")
    for name in a.models:
        model, info = ldam.zoo.load(name)
        real = real_images(name, info)
        box = ldam.Box.from_normalization(info.mean, info.std)

        def make(disc: ldam.Discriminator | None) -> ldam.Sampler:
            regs = [ldam.L2(0.3), box] + ([disc] if disc is not None else [])
            return ldam.Sampler(model, "output:0-9", info.input_shape, chains=PLAN[name], step_size=0.004,
                                temperature=0.02, regularizers=regs, keep_samples=False)

        samplers = {"plain": make(None), "frozen": make(ldam.Discriminator(real, weight=0.5, training=None)),
                    "online": make(ldam.Discriminator(real, weight=0.5))}
        times: dict[str, list[float]] = {k: [] for k in samplers}
        for s in samplers.values():
            s.run(a.steps)  # warm-up (and the online critic's optimizer state)
        for _ in range(a.blocks):
            for k, s in samplers.items():
                t = time.perf_counter()
                s.run(a.steps)
                times[k].append((time.perf_counter() - t) / a.steps * 1000)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:14s} {samplers['plain'].batch:5d} {m['plain']:9.1f} {m['frozen']:10.1f} {m['online']:10.1f} "
              f"{m['online'] / m['frozen']:14.3f} {m['online'] / m['plain']:13.3f}", flush=True)


if __name__ == "__main__":
    main()
