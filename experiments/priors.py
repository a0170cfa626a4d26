"""Natural-image priors inside the Langevin energy (issue 12): what each buys, judged independently.

For the zoo's EfficientNet-Lite0 (ImageNet classes), the zoo VGG (the 10 CIFAR-10 classes) and the
zoo LeNet (the 10 digits), and for each prior (pixel space; the spectral parameterization; spectral
+ transformation robustness; on CIFAR-10 and MNIST also the VAE generator prior), each sampled with
SGLD (or pSGLD) and optimized with ``method="ascent"`` (Adam) on the same energy:

* **class agreement by independent judges**: for ImageNet, EfficientNet-Lite1 and Lite2 (other
  depth, width, resolution and training run), top-1 and top-5 of the chain means; for CIFAR-10 and
  MNIST, an independently trained classifier of another architecture (``cnn-cifar``, ``mlp``;
  trained here and cached);
* **diversity** within a class: the mean pairwise cosine distance of the chain means in the first
  judge's penultimate features, and the number of modes (average linkage, cut at 0.5);
* the target logit at the chain means, and the **cost per step** relative to pixel-space SGLD,
  timed interleaved in one process;
* the pictures, side by side.

A sampled row's picture is the mean of each chain's kept states (the first half is burn-in); an
ascent row's is the final state (what optimizer-based tools show). Each configuration's numbers
are cached in ``runs/priors/`` so an interrupted run resumes.

    python experiments/priors.py                      # both parts: docs/repro/priors.md
    python experiments/priors.py --part cifar10       # one part (imagenet, cifar10, mnist)
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ldam
import ldam.zoo
from ldam.analysis import cosine_distances, count_modes, mean_pairwise
from ldam.render import batch_grid
from ldam.train import TrainConfig, evaluate, load_dataset, train

from _common import ROOT, Report, fmt, header, labeled, on, parser, setup, stack

IMAGENET_CLASSES = [1, 130, 309, 327, 417, 949, 954, 967]  # chosen before any run; not cherry-picked
CACHE = ROOT / "runs" / "priors"
JUDGE_MNIST = TrainConfig(arch="mlp", dataset="mnist", epochs=4, average_last=0, optimizer="sgd", lr=0.05, warmup=1,
                          batch_size=128, seed=7, val_size=5000)  # benchmarks/bench_exact.py's judge
JUDGE_CIFAR = TrainConfig(arch="cnn-cifar", dataset="cifar10", epochs=8, average_last=0, optimizer="sgd", lr=0.05,
                          warmup=1, batch_size=128, seed=11, val_size=5000)
TRANSFORMS = {"imagenet": [ldam.Jitter(8), ldam.Scale((0.9, 1.1)), ldam.Rotate(10)],
              "cifar10": [ldam.Jitter(2), ldam.Scale((0.9, 1.1)), ldam.Rotate(10)],
              "mnist": [ldam.Jitter(2), ldam.Scale((0.9, 1.1)), ldam.Rotate(10)]}
GENERATORS = {"cifar10": "vae-cifar10", "mnist": "vae-mnist"}


def configs(part: str, info: ldam.zoo.ModelInfo, generator: torch.nn.Module | None) -> dict[str, dict]:
    """Every row: the sampler's keyword arguments (built fresh per run)."""
    box = ldam.Box.from_normalization(info.mean, info.std)
    if part == "imagenet":  # experiments/imagenet.py's pixel-space energy
        pixel = dict(step_size=2e-3, temperature=5e-4, regularizers=[ldam.L2(0.02), box])
    elif part == "cifar10":  # experiments/cifar10.py's
        pixel = dict(step_size=2e-3, temperature=1e-3, regularizers=[ldam.L2(0.05), box])
    else:  # the CLI's defaults for the zoo LeNet
        pixel = dict(step_size=4e-3, temperature=0.02, regularizers=[ldam.L2(0.3), box])
    temp = pixel["temperature"]
    # In the spectral latent the Gaussian on z is the prior (no L2 on x); low frequencies are
    # amplified, so SGLD needs a smaller ε to stay stable there.
    spec = dict(temperature=temp, regularizers=[box])
    adam = dict(method=ldam.Ascent("adam"), step_size=0.05)
    tr = TRANSFORMS[part]
    out = {
        "pixel · SGLD": dict(pixel),
        "pixel · ascent": {**pixel, **adam},
        "spectral · SGLD": dict(spec, step_size=2e-4, p="spectral"),
        "spectral · ascent": dict(spec, **adam, p="spectral"),
        "spectral + transforms · SGLD": dict(spec, step_size=2e-4, p="spectral", transforms=tr),
        "spectral + transforms · pSGLD": dict(spec, method="psgld", step_size=0.05, p="spectral", transforms=tr),
        "spectral + transforms · ascent": dict(spec, **adam, p="spectral", transforms=tr),
    }
    if part == "imagenet":  # averaging over more samples: twice the steps, the same energy
        out["spectral + transforms · SGLD, 2x steps"] = dict(spec, step_size=2e-4, p="spectral", transforms=tr,
                                                            steps_factor=2)
        # the same density; E_τ f estimated with two transforms per step (less gradient noise)
        out["spectral + transforms · SGLD, 2x steps, 2 draws"] = dict(
            spec, step_size=2e-4, p="spectral", transforms=tr, transform_draws=2, steps_factor=2)
    if generator is not None:
        out["generator · SGLD"] = dict(temperature=temp, step_size=2e-3, p="generator")
        out["generator · ascent"] = dict(temperature=temp, **adam, p="generator")
    for kw in out.values():
        p = kw.pop("p", None)
        if p == "spectral":
            kw["parameterization"] = ldam.Spectral(std=info.std)
        elif p == "generator":
            kw["parameterization"] = ldam.Generator(generator, (generator.latent,))
    return out


def penultimate(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The judge's features: the input of its final layer."""
    feats = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: feats.append(i[0].flatten(1)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return feats[0]


def small_judge(dataset: str, quick: bool, root: Path) -> tuple[torch.nn.Module, float]:
    """The independent classifier of ``dataset`` (another architecture; trained once, then cached)."""
    data = load_dataset(dataset, val_size=5000)
    base = JUDGE_CIFAR if dataset == "cifar10" else JUDGE_MNIST
    cfg, out = base, root / f"judge-{dataset}"
    if quick:
        cfg = TrainConfig(**{**base.__dict__, "epochs": 1, "val_size": 0, "warmup": 0})
        data = {"x_train": data["x_train"][:256], "y_train": data["y_train"][:256], "x_val": data["x_test"][:64],
                "y_val": data["y_test"][:64], "x_test": data["x_test"][:200], "y_test": data["y_test"][:200]}
        out = root / f"judge-{dataset}-quick"
    if (out / "model.pt").exists():
        model, _ = ldam.zoo.load_checkpoint(out / "model.pt")
    else:
        print(f"training the independent {dataset} judge (cached in {out})", flush=True)
        model = train(cfg, out, data=data, progress=not quick)["model"]
    model.eval()
    return model, evaluate(model, data["x_test"], data["y_test"])


def run_part(part: str, args, rep: Report) -> None:
    quick = args.quick
    root = args.out / ".priors-cache" if quick else CACHE  # reduced runs never touch the real cache
    if part == "imagenet":
        model, info = ldam.zoo.load("efficientnet-lite0-imagenet")
        judges = {v: ldam.zoo.load(f"efficientnet-{v}-imagenet") for v in ("lite1", "lite2")}
        chosen = [int(c) for c in args.classes.split(",")] if args.classes else IMAGENET_CLASSES
        classes = chosen[:2] if quick else chosen
        size = 64 if quick else args.size
        shape = (3, size, size)
        names = info.class_names
        judge_feat = "_fc"
    else:
        model, info = ldam.zoo.load("vgg-cifar10" if part == "cifar10" else "lenet-mnist")
        judge, acc = small_judge(part, quick, root)
        judges = {"cnn": (judge, None)}
        classes = list(range(10))
        shape = info.input_shape
        names = info.class_names
        judge_feat = "fc" if part == "cifar10" else "fc3"
    assert names is not None
    model = on(model, args.device)
    chains = 2 if quick else (args.chains if part == "imagenet" else args.small_chains)
    steps = 6 if quick else (args.steps if part == "imagenet" else args.small_steps)
    generator = None
    if part in GENERATORS and args.generator != "none":
        from ldam.zoo import generators

        spec = f"zoo:{GENERATORS[part]}" if args.generator == "auto" else args.generator
        if args.generator != "auto" or GENERATORS[part] in generators.names():
            generator = generators.for_model(spec, info).to(args.device)
    rows = configs(part, info, generator)
    if args.rows:
        wanted = [w.strip() for w in args.rows.split(";")]
        rows = {n: kw for n, kw in rows.items() if n in wanted}
        if not rows:
            raise SystemExit(f"--rows matched none of: {', '.join(configs(part, info, generator))}")
    targets = [f"output:{c}" for c in classes]
    cache = root / (f"{part}-{chains}x{steps}" + (f"-{shape[-1]}px" if part == "imagenet" else "")
                    + (f"-classes-{'-'.join(map(str, classes))}" if part == "imagenet" and args.classes else ""))
    cache.mkdir(parents=True, exist_ok=True)
    results, pictures = {}, {}
    factors = {name: kw.pop("steps_factor", 1) for name, kw in rows.items()}
    for name, kw in rows.items():
        row_steps = steps * factors[name]
        key = name.replace(" · ", "_").replace(" + ", "+").replace(", ", "_").replace(" ", "-")
        f = cache / f"{key}.pt"
        if f.exists():
            saved = torch.load(f, weights_only=True)
            results[name] = json.loads((cache / f"{key}.json").read_text())
            pictures[name] = saved["images"]
            continue
        print(f"[{part}] {name}: {len(targets)} targets x {chains} chains, {row_steps} steps", flush=True)
        t0 = time.perf_counter()
        ascent = isinstance(kw.get("method"), ldam.Ascent)
        res = ldam.sample(model, targets, shape, chains=chains, steps=row_steps, burn_in=row_steps // 2, seed=0,
                          keep_samples=False, ema_tau=None, **kw)
        images = (res.last if ascent else res.mean).float().contiguous()
        results[name] = score(part, images, res, model, judges, judge_feat, classes, chains, info)
        results[name]["wall_s"] = time.perf_counter() - t0
        torch.save({"images": images}, f)
        (cache / f"{key}.json").write_text(json.dumps(results[name], indent=1))
        pictures[name] = images
        print(f"    {results[name]}", flush=True)
    cost = step_costs(model, targets[: min(4, len(targets))], shape, rows, 2 if quick else 5, chains)
    write_report(part, rep, rows, results, pictures, cost, info, names, classes, chains, steps, shape,
                 acc if part != "imagenet" else None, quick)


def to_judge(images: torch.Tensor, info: ldam.zoo.ModelInfo, jinfo: ldam.zoo.ModelInfo) -> torch.Tensor:
    """Model inputs → pixels → the judge's resolution and normalization."""
    px = info.to_pixels(images).clamp(0, 1)
    size = jinfo.input_shape[-1]
    if px.shape[-1] != size:
        px = F.interpolate(px, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return jinfo.preprocess(px)


def score(part, images, res, model, judges, judge_feat, classes, chains, info) -> dict:
    cls = torch.tensor(classes).repeat_interleave(chains)
    out: dict = {}
    with torch.no_grad():
        own = model(images.to(next(model.parameters()).device)).cpu()
    out["target_logit"] = float(own.gather(1, cls[:, None]).mean())
    out["own_top1"] = float((own.argmax(1) == cls).float().mean())
    first = True
    for jname, (judge, jinfo) in judges.items():
        x = to_judge(images, info, jinfo) if jinfo is not None else images
        with torch.no_grad():
            logits = judge(x)
        top5 = logits.topk(5, 1).indices
        out[f"{jname}_top1"] = float((top5[:, 0] == cls).float().mean())
        out[f"{jname}_top5"] = float((top5 == cls[:, None]).any(1).float().mean())
        if first:
            feats = penultimate(judge, judge_feat, x).reshape(len(classes), chains, -1)
            out["feature_distance"] = statistics.mean(mean_pairwise(cosine_distances(f)) for f in feats)
            out["modes"] = statistics.mean(count_modes(f) for f in feats)
            px = images.reshape(len(classes), chains, -1)
            out["pixel_distance"] = statistics.mean(mean_pairwise(cosine_distances(p)) for p in px)
            first = False
    return out


def step_costs(model, targets, shape, rows, reps, chains) -> dict[str, float]:
    """Median time per step of each configuration ÷ pixel-space SGLD's, interleaved in one loop."""
    samplers = {}
    for name, kw in rows.items():
        samplers[name] = ldam.Sampler(model, targets, shape, chains=chains, burn_in=10**9, ema_tau=None,
                                      keep_samples=False, seed=1, **kw)
        samplers[name].run(1)
    times: dict[str, list[float]] = {n: [] for n in rows}
    for _ in range(reps):
        for name, s in samplers.items():
            t = time.perf_counter()
            s.run(3)
            times[name].append((time.perf_counter() - t) / 3)
    base = statistics.median(times["pixel · SGLD"])
    return {n: statistics.median(v) / base for n, v in times.items()}


def write_report(part, rep, rows, results, pictures, cost, info, names, classes, chains, steps, shape, acc, quick):
    if part == "imagenet":
        rep.text(f"## ImageNet: EfficientNet-Lite0, {len(classes)} classes × {chains} chains, {steps} steps at "
                 f"{shape[-1]} px",
                 "Judges: EfficientNet-Lite1 (240 px) and Lite2 (260 px); the chain means are mapped to pixels, "
                 "clamped to [0, 1] and resized (bilinear, antialiased) to each judge's resolution. Classes: "
                 + ", ".join(f"{c} {names[c]}" for c in classes) + ".")
        head = ["prior · method", "Lite1 top-1", "Lite1 top-5", "Lite2 top-1", "Lite2 top-5", "Lite0 top-1",
                "target logit", "feature distance", "modes / class", "pixel distance", "cost / step"]
        keys = ["lite1_top1", "lite1_top5", "lite2_top1", "lite2_top5", "own_top1"]
    else:
        cfg = JUDGE_CIFAR if part == "cifar10" else JUDGE_MNIST
        what = "the zoo VGG" if part == "cifar10" else "the zoo LeNet"
        rep.text(f"## {'CIFAR-10' if part == 'cifar10' else 'MNIST'}: {what}, 10 classes × {chains} chains, {steps} steps",
                 f"Judge: a classifier of another architecture (`{cfg.arch}`, {cfg.epochs} epochs of Nesterov SGD, "
                 f"seed {cfg.seed}), {acc:.1%} on the test images it was scored on.")
        head = ["prior · method", "judge top-1", "judge top-5", "model's own top-1", "target logit", "feature distance",
                "modes / class", "pixel distance", "cost / step"]
        keys = ["cnn_top1", "cnn_top5", "own_top1"]
    table = []
    for name in rows:
        r = results[name]
        table.append([name, *[f"{r[k]:.0%}" for k in keys], f"{r['target_logit']:.1f}",
                      fmt(r["feature_distance"]), f"{r['modes']:.2f}", fmt(r["pixel_distance"]), f"{cost[name]:.2f}x"])
    rep.table(head, table)
    tile = shape[-1] + 2
    grid_rows = [header([names[c][:12] for c in classes], tile, mode="RGB")]
    for name in rows:
        first = pictures[name].reshape(len(classes), chains, *shape)[:, 0]
        grid_rows.append(labeled(batch_grid(first, len(classes), display="pixel", zoom=1, mean=info.mean,
                                            std=info.std), name))
    rep.image(stack(grid_rows), f"{rep.path.stem}_{part}.png",
              "Each row a prior and method, each column a class (the first chain's mean, or its final state "
              "for ascent), in pixels.")
    div_rows = []
    for name in rows:
        ims = pictures[name].reshape(len(classes), chains, *shape)[:2].reshape(-1, *shape)
        div_rows.append(labeled(batch_grid(ims, 2 * chains, display="pixel", zoom=1, mean=info.mean, std=info.std),
                                name))
    rep.image(stack(div_rows), f"{rep.path.stem}_{part}_chains.png",
              f"Every chain of the first two classes ({names[classes[0]]}, {names[classes[1]]}): diversity.")
    (rep.path.parent / f"{rep.path.stem}_{part}.json").write_text(json.dumps({"results": results, "cost": cost}, indent=1) + "\n")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--part", choices=["imagenet", "cifar10", "mnist", "all"], default="all")
    p.add_argument("--chains", type=int, default=3, help="ImageNet: chains per class (default: %(default)s)")
    p.add_argument("--steps", type=int, default=256, help="ImageNet: steps per chain (default: %(default)s)")
    p.add_argument("--small-chains", "--cifar-chains", type=int, default=4,
                   help="CIFAR-10 and MNIST: chains per class (default: %(default)s)")
    p.add_argument("--small-steps", "--cifar-steps", type=int, default=512,
                   help="CIFAR-10 and MNIST: steps per chain (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="ImageNet sampling resolution (default: %(default)s)")
    p.add_argument("--generator", default="auto",
                   help="the generator prior's rows on CIFAR-10 and MNIST: zoo:vae-cifar10 / zoo:vae-mnist when "
                   "installed (auto), another generator.pt, or none (default: %(default)s)")
    p.add_argument("--classes", default=None,
                   help="ImageNet: comma-separated class ids instead of the fixed eight (a held-out check)")
    p.add_argument("--rows", default=None, help="semicolon-separated row names to run (default: every row)")
    p.add_argument("--report", default="priors", help="the report's file stem in --out (default: %(default)s)")
    args = p.parse_args()
    setup(args)
    rep = Report(args.out / f"{args.report}.md", "Natural-image priors in the Langevin energy, measured", args.quick)
    rep.text("Produced by `experiments/priors.py` (issue 12). What each prior buys and costs is discussed "
             "in [docs/priors.md](../priors.md).")
    for part in (["imagenet", "cifar10", "mnist"] if args.part == "all" else [args.part]):
        run_part(part, args, rep)
    rep.write()


if __name__ == "__main__":
    main()
