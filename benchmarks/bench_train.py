"""Training time per epoch for each zoo architecture, with the zoo's own recipe settings.

Each configuration runs ``warmup`` optimizer steps, then ``batches`` timed steps of the real
training step (augmentation, forward, loss, backward, optimizer) on real-shaped random data, in
``blocks`` blocks that alternate between configurations; the median block is scaled to one epoch
of the zoo's training split (55,000 MNIST or 45,000 CIFAR-10 images after the validation split).

    python benchmarks/bench_train.py [--blocks 3] [--batches 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ldam.train import TrainConfig, augment, make_optimizer
from ldam.zoo import build

CONFIGS = {
    "lenet5 / mnist (zoo recipe)": (TrainConfig(arch="lenet5", batch_size=64), (1, 28, 28), 55000, False),
    "vgg-cifar / cifar10, bf16 (zoo recipe)": (
        TrainConfig(arch="vgg-cifar", dataset="cifar10", batch_size=128, optimizer="sgd", bf16=True, lr=0.1),
        (3, 32, 32), 45000, True),
    "vgg-cifar / cifar10, float32": (
        TrainConfig(arch="vgg-cifar", dataset="cifar10", batch_size=128, optimizer="sgd", lr=0.1),
        (3, 32, 32), 45000, True),
}


def make_step(cfg: TrainConfig, shape: tuple[int, ...], aug: bool):
    torch.manual_seed(0)
    model = build(cfg.arch).train()
    opt = make_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, *shape)
    y = torch.randint(0, 10, (cfg.batch_size,))

    def step() -> None:
        xb = augment(x, g) if aug else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    steps = {name: make_step(cfg, shape, aug) for name, (cfg, shape, _, aug) in CONFIGS.items()}
    for s in steps.values():
        for _ in range(a.warmup):
            s()
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(a.blocks):
        for name, s in steps.items():
            t = time.perf_counter()
            for _ in range(a.batches):
                s()
            times[name].append((time.perf_counter() - t) / a.batches)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'configuration':42s} {'s/batch':>8s} {'s/epoch':>8s}")
    for name, (cfg, _, n, _) in CONFIGS.items():
        per = statistics.median(times[name])
        print(f"{name:42s} {per:8.4f} {per * -(-n // cfg.batch_size):8.1f}")


if __name__ == "__main__":
    main()
