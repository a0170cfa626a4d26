"""Sampler step cost against a bare forward+backward, measured side by side in one process.

1. LeNet (zoo:lenet-mnist), 100 chains (10 targets x 10 chains): one full sampler step
   (SGLD, L2, activation trace, kept samples, moving average) against one bare
   ``autograd.grad(model(x).sum(), x)`` on the same batch. Target: ratio <= 1.05.
2. Forward truncation: a step for a first-layer target against a full forward+backward of
   a deeper net (a VGG-style CIFAR net), same batch. Target: >= 5x cheaper.

The two timings of each pair alternate in short blocks, so drifts in machine load hit both;
the reported ratio is the median over blocks. On a GPU (``--device``, default auto: a GPU when there
is one) every timed block ends with a synchronize, so queued work is counted.

3. ResNet-50 at 224 px (``--resnet``; on by default on a GPU): SGLD and MALA steps and a
   first-block target against a bare forward+backward; ``--amp bf16`` runs both sides under
   autocast.

    python benchmarks/bench_step.py [--blocks 15] [--steps 40] [--device auto|cpu|cuda|cuda:N|mps] [--resnet] [--amp bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import ldam
import ldam.zoo
from ldam.device import CHOICES, script_device, synchronize


def bare_step(model: nn.Module, x: torch.Tensor) -> None:
    xr = x.detach().requires_grad_(True)
    torch.autograd.grad(model(xr).sum(), xr)


def interleaved(base, others, blocks: int, steps: int, device: torch.device = torch.device("cpu")
                ) -> tuple[float, list[float], list[float]]:
    """Run ``base`` and each of ``others`` in turn, ``steps`` calls each, ``blocks`` times.

    Returns the median seconds per call of ``base``, of each other, and the median over
    blocks of each other's time divided by ``base``'s time in the same block.
    """
    tb, to, ratios = [], [[] for _ in others], [[] for _ in others]
    for _ in range(blocks):
        synchronize(device)
        t0 = time.perf_counter()
        base(steps)
        synchronize(device)
        t_base = time.perf_counter() - t0
        tb.append(t_base / steps)
        for i, fn in enumerate(others):
            synchronize(device)
            t0 = time.perf_counter()
            fn(steps)
            synchronize(device)
            t = time.perf_counter() - t0
            to[i].append(t / steps)
            ratios[i].append(t / t_base)
    med = statistics.median
    return med(tb), [med(t) for t in to], [med(r) for r in ratios]


class VGGish(nn.Module):
    """A VGG-style CIFAR-10 net (6 conv + 2 FC), standing in for any deeper model."""

    def __init__(self):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1),
                    nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="auto", metavar="{" + ",".join(CHOICES) + "}",
                   help="where to run: auto takes a GPU when there is one, else the CPU (default: %(default)s)")
    p.add_argument("--resnet", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure ResNet-50 at 224 px (default: on a GPU only)")
    p.add_argument("--resnet-chains", type=int, default=None, help="ResNet-50 batch (default: 128 on a GPU, 4 on CPU)")
    p.add_argument("--amp", choices=["bf16"], default=None, help="ResNet-50 under autocast, both sides")
    a = p.parse_args()
    dev = script_device(a.device, "bench_step.py")

    model, info = ldam.zoo.load("lenet-mnist")
    model = model.to(dev)
    sampler = ldam.Sampler(model, "output:0-9", info.input_shape, chains=10, step_size=0.004, temperature=0.02,
                           regularizers=[ldam.L2(0.3)], burn_in=0, ema_tau=200)
    x = sampler.x.clone()
    bare = lambda n: [bare_step(model, x) for _ in range(n)]  # noqa: E731

    def minimal_sgld(n: int, xs: torch.Tensor = x.clone(), noise: torch.Tensor = torch.empty_like(x)) -> None:
        for _ in range(n):
            xr = xs.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xr).sum(), xr)
            xs.add_(g, alpha=0.1).add_(torch.randn(x.shape, out=noise), alpha=0.06)

    bare(20), sampler.run(20), minimal_sgld(20)
    tb, (ts, tm), (r, rm) = interleaved(bare, [sampler.run, minimal_sgld], a.blocks, a.steps, dev)
    print(f"[1] LeNet, 100 chains (10 targets x 10): bare forward+backward {tb * 1e3:.2f} ms, "
          f"ldam sampler step {ts * 1e3:.2f} ms, minimal hand-written SGLD step {tm * 1e3:.2f} ms")
    print(f"    ldam step / bare forward+backward = {r:.3f} (target <= 1.05); "
          f"minimal SGLD / bare = {rm:.3f}; ldam / minimal = {r / rm:.3f}")

    torch.manual_seed(0)
    deep = VGGish().eval().to(dev)
    s1 = ldam.Sampler(deep, "features.0:5@16,16", (3, 32, 32), chains=64, regularizers=[ldam.L2(1.0)], burn_in=0)
    x = s1.x.clone()
    full = lambda n: [bare_step(deep, x) for _ in range(n)]  # noqa: E731
    full(3), s1.run(3)
    tf, (tt,), (r2,) = interleaved(full, [s1.run], max(5, a.blocks // 2), max(5, a.steps // 4), dev)
    print(f"[2] VGG-style net, 64 chains: full forward+backward {tf * 1e3:.2f} ms, first-layer target step "
          f"{tt * 1e3:.2f} ms, {1 / r2:.1f}x cheaper (target >= 5x)")

    if a.resnet or (a.resnet is None and dev.type != "cpu"):
        resnet(dev, a.resnet_chains or (128 if dev.type != "cpu" else 4), a.amp)


def resnet(dev: torch.device, chains: int, amp: str | None) -> None:
    """[3] ResNet-50 at 224 px (random weights): SGLD and MALA steps, and a truncated first-block
    target, each against a bare forward+backward of the full model on the same batch."""
    torch.manual_seed(0)
    model = ldam.zoo.build("resnet50").eval().to(dev)
    kw = dict(chains=chains, step_size=1e-3, temperature=1.0, regularizers=[ldam.L2(1.0)], burn_in=0, amp=amp)
    sgld = ldam.Sampler(model, "output:0", (3, 224, 224), **kw)
    mala = ldam.Sampler(model, "output:0", (3, 224, 224), method="mala", **kw)
    first = ldam.Sampler(model, "layer1.0.conv1:3", (3, 224, 224), **kw)
    x = sgld.x.clone()

    def bare(n: int) -> None:
        for _ in range(n):
            xr = x.detach().requires_grad_(True)
            if amp:
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                    out = model(xr).sum()
            else:
                out = model(xr).sum()
            torch.autograd.grad(out, xr)

    blocks, steps = (7, 5) if dev.type != "cpu" else (3, 1)
    bare(2), sgld.run(2), mala.run(2), first.run(2)
    tb, (ts, tm, tf), (rs, rm, rf) = interleaved(bare, [sgld.run, mala.run, first.run], blocks, steps, dev)
    tag = f", autocast {amp}" if amp else ""
    print(f"[3] ResNet-50, 224 px, {chains} chains{tag}: bare forward+backward {tb * 1e3:.1f} ms")
    print(f"    SGLD step {ts * 1e3:.1f} ms = {rs:.3f}x (GPU target <= 1.10); MALA step {tm * 1e3:.1f} ms = "
          f"{rm:.3f}x (GPU target <= 1.15); layer1.0.conv1 target {tf * 1e3:.1f} ms, {1 / rf:.1f}x cheaper "
          f"(GPU target >= 3x)")


if __name__ == "__main__":
    main()
