"""Per-step noise cost: today's ChainNoise against the counter-based CounterNoise, side by side.

Times one ``normal()`` call (amortized over the refills of each class's block) for
(a) 100 chains x 1x28x28 (LeNet), (b) 30 chains x 3x32x32 (CIFAR), (c) 16 chains x 3x224x224.
The two generators alternate in short blocks in one process, so drifts in machine load hit
both; the reported ratio is the median over blocks of CounterNoise / ChainNoise.

    python benchmarks/bench_noise.py [--device cpu|cuda] [--blocks 15] [--steps 64] [--dtype float32] [--threads N]

On a shared machine whose other cores are busy, intra-op threads that get descheduled make
every parallel region wait a time slice (milliseconds); ``--threads 1`` then measures the
generators themselves (ChainNoise's per-chain draws are serial anyway).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ldam.noise import CounterNoise
from ldam.samplers import ChainNoise, chain_seeds

CASES = [("a", "LeNet", 100, (1, 28, 28)), ("b", "CIFAR", 30, (3, 32, 32)), ("c", "ImageNet", 16, (3, 224, 224))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns, blocks: int, steps: int, device: torch.device):
    """Run each of ``fns`` in turn, ``steps`` calls each, ``blocks`` times.

    Returns, per function, the median wall seconds per call and the median process CPU seconds
    per call, and the medians over blocks of each one's wall and CPU time divided by the first
    one's in the same block. (CPU time counts only the cycles the process got: with one thread
    it is robust to other load on the machine; on an accelerator only wall time means anything.)
    """
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    r_wall, r_cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(blocks):
        row = []
        for i, fn in enumerate(fns):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn(steps)
            sync(device)
            row.append((time.perf_counter() - t0, time.process_time() - c0))
            wall[i].append(row[-1][0] / steps)
            cpu[i].append(row[-1][1] / steps)
        for i, (w, c) in enumerate(row):
            r_wall[i].append(w / row[0][0])
            r_cpu[i].append(c / max(row[0][1], 1e-9))
    med = statistics.median
    return [med(t) for t in wall], [med(t) for t in cpu], [med(r) for r in r_wall], [med(r) for r in r_cpu]


def calls(noise):
    def run(n: int) -> None:
        for _ in range(n):
            noise.normal()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--steps", type=int, default=64, help="normal() calls per timed block (a multiple of 64 "
                   "covers whole refills of both classes)")
    p.add_argument("--cases", default="abc")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {a.dtype}")
    for tag, name, chains, shape in CASES:
        if tag not in a.cases:
            continue
        seeds = chain_seeds(0, ["output:0"], chains)
        old, new = ChainNoise(seeds, shape, device, dtype), CounterNoise(seeds, shape, device, dtype)
        fns = [calls(old), calls(new)]
        for fn in fns:  # warm up: buffers, caches, allocator
            fn(2 * max(old.block, new.block))
        n = chains * torch.Size(shape).numel()
        (w_old, w_new), (c_old, c_new), (_, rw), (_, rc) = interleaved(fns, a.blocks, a.steps, device)
        print(f"[{tag}] {name}: {chains} chains x {'x'.join(map(str, shape))} = {n} numbers/step "
              f"(refill every {old.block} / {new.block} steps)")
        print(f"    wall: ChainNoise {w_old * 1e3:.3f} ms ({w_old / n * 1e9:.2f} ns/number), "
              f"CounterNoise {w_new * 1e3:.3f} ms ({w_new / n * 1e9:.2f} ns/number); "
              f"CounterNoise / ChainNoise = {rw:.2f}")
        if device.type == "cpu":
            print(f"    cpu:  ChainNoise {c_old * 1e3:.3f} ms ({c_old / n * 1e9:.2f} ns/number), "
                  f"CounterNoise {c_new * 1e3:.3f} ms ({c_new / n * 1e9:.2f} ns/number); "
                  f"CounterNoise / ChainNoise = {rc:.2f}")

if __name__ == "__main__":
    main()
