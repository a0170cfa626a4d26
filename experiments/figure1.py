"""Paper Figure 1: the discriminator weight morphs a neuron's pre-image into a realistic image.

Rows are discriminator weights w = 0, 0.2, 0.5, 0.8, 1.0; columns are the 10 output neurons of
``zoo:lenet-mnist`` (and of ``zoo:vgg-cifar10``). The sampler is the authors' update
(``method="paper"``) with the normalized mix ``(1 − w)·ĝ_f + w·ĝ_D`` and a critic trained online
on MNIST/CIFAR-10 *training* images. For every weight and seed this measures:

* **activation**: the mean target logit over the kept steps;
* **realism**: ``D`` of a *held-out* critic that the sampler never saw. It is trained on the
  other seed's samples (all weights pooled) against half of the real *test* images, and scores
  this seed's chain means; on the other half it gives the "real" level;
* **distance to real images**: the kernel distance (KID, unbiased MMD²) between the chain means
  and real test images in the feature space of the independent classifier below (its
  penultimate layer); 0 for real images;
* **class agreement**: the fraction of chain means that an *independent* classifier (another
  architecture, another seed: an MLP for MNIST, a small CNN for CIFAR-10) assigns to the target;
* **mode-locking**: the diversity of each class's chain means (mean pairwise cosine distance)
  at w = 0.2 against w = 1.0.

The paper predicts that realism and agreement rise with w while the activation falls, and that a
strong critic locks the chains into one mode.

    python experiments/figure1.py                       # docs/repro/figure1.md and PNGs
    python experiments/figure1.py --datasets mnist      # MNIST only
"""

from __future__ import annotations

from pathlib import Path

import torch

import ldam
import ldam.zoo
from ldam.analysis import cosine_distances, count_modes, kid, layer_activations, mean_pairwise, summarize
from ldam.render import batch_grid
from ldam.train import TrainConfig, evaluate, load_dataset, train

from _common import ROOT, Report, fmt, header, infer, labeled, on, parser, setup, stack

WEIGHTS = (0.0, 0.2, 0.5, 0.8, 1.0)
SETTINGS = {
    "mnist": dict(model="lenet-mnist", chains=5, steps=1000,
                  judge=TrainConfig(arch="mlp", dataset="mnist", epochs=4, average_last=0, optimizer="sgd", lr=0.05,
                                    warmup=1, batch_size=128, seed=7, val_size=5000)),
    "cifar10": dict(model="vgg-cifar10", chains=3, steps=600,
                    judge=TrainConfig(arch="cnn-cifar", dataset="cifar10", epochs=8, average_last=0, optimizer="sgd",
                                      lr=0.05, warmup=1, weight_decay=5e-4, batch_size=128, label_smoothing=0.1,
                                      bf16=True, seed=7, val_size=5000)),
}
SAMPLER = dict(method="paper", step_size=0.01, temperature=0.3)
FEATURES = {"mnist": "relu2", "cifar10": "flatten"}  # the judges' penultimate layers
L2_WEIGHT = 0.3


def independent_classifier(ds: str, data: dict[str, torch.Tensor], cache: Path, quick: bool,
                           device: torch.device) -> tuple[torch.nn.Module, float]:
    """Train (or reuse from ``cache``) the judge: another architecture and seed than the zoo model."""
    cfg = SETTINGS[ds]["judge"]
    if quick:
        cfg = TrainConfig(**{**cfg.__dict__, "epochs": 1, "val_size": 0})
        data = {"x_train": data["x_train"][:500], "y_train": data["y_train"][:500], "x_val": data["x_test"][:100],
                "y_val": data["y_test"][:100], "x_test": data["x_test"][:500], "y_test": data["y_test"][:500]}
    out = cache / f"judge-{ds}"
    if (out / "model.pt").exists():
        model = on(ldam.zoo.load_checkpoint(out / "model.pt")[0], device)
    else:
        print(f"training the independent {cfg.arch} classifier for {ds} (cached in {out})", flush=True)
        model = train(cfg, out, data=data, progress=False, device=device)["model"].eval()
    return model, evaluate(model, data["x_test"], data["y_test"])


def run(model: torch.nn.Module, info: ldam.zoo.ModelInfo, real: torch.Tensor, w: float, seed: int, chains: int,
        steps: int) -> dict:
    box = ldam.Box.from_normalization(info.mean, info.std)
    disc = ldam.Discriminator(real, weight=w, mode="mix", seed=seed)
    res = ldam.sample(model, "output:0-9", info.input_shape, chains=chains, steps=steps, burn_in=steps // 2,
                      thin=10, regularizers=[ldam.L2(L2_WEIGHT), box, disc], seed=seed, **SAMPLER)
    kept = res.activations[res.burn_in:]
    return {"means": res.mean, "samples": res.samples.flatten(0, 1), "activation": float(kept.mean()),
            "critic": disc.stats()}


def realism_critic(real: torch.Tensor, fakes: torch.Tensor, seed: int, steps: int,
                   device: torch.device) -> ldam.Discriminator:
    training = ldam.CriticTraining(lr=2e-4, optimizer="adam", batch_size=64, label_smoothing=0.0, patience=10**9)
    judge = ldam.Discriminator(real, weight=1.0, training=training, seed=seed)
    judge.bind(real.shape[1:], device, torch.float32)  # the critic on the device; real images stay on the host
    judge.fit(fakes, steps)
    return judge


def study(ds: str, args, rep: Report) -> None:
    cfg = SETTINGS[ds]
    chains, steps = (2, 12) if args.quick else (cfg["chains"], cfg["steps"])
    seeds = args.seeds[:2] if not args.quick else [0, 1]
    model, info = ldam.zoo.load(cfg["model"])
    model = on(model, args.device)
    data = load_dataset(ds, val_size=5000)
    cache = (args.out / "cache") if args.quick else ROOT / "runs" / "figure1"
    judge, judge_acc = independent_classifier(ds, data, cache, args.quick, args.device)
    real_train = data["x_train"]
    half = len(data["x_test"]) // 2
    # A seeded random split: MNIST's test set is ordered (its halves come from different writers).
    perm = torch.randperm(len(data["x_test"]), generator=torch.Generator().manual_seed(0))
    real_fit, real_check = data["x_test"][perm[:half]], data["x_test"][perm[half:]]
    # The chains are cached (runs/figure1/chains-*.pt) so that the measures can be recomputed.
    store = cache / f"chains-{ds}-{chains}x{steps}-seeds{'-'.join(map(str, seeds))}.pt"
    runs: dict[tuple[float, int], dict] = {}
    if store.exists() and not args.quick:
        saved = torch.load(store, weights_only=True)
        runs = {(float(k.split("/")[0]), int(k.split("/")[1])): v for k, v in saved.items()}
    for seed in seeds:
        for w in WEIGHTS:
            if (w, seed) not in runs:
                print(f"{ds}: w = {w}, seed {seed}", flush=True)
                runs[w, seed] = run(model, info, real_train, w, seed, chains, steps)
    if not args.quick:
        store.parent.mkdir(parents=True, exist_ok=True)
        torch.save({f"{w}/{seed}": v for (w, seed), v in runs.items()}, store)
    real_feats = layer_activations(judge, FEATURES[ds], real_check)
    kid_real = kid(layer_activations(judge, FEATURES[ds], real_fit[: len(real_check)]), real_feats)
    cls = torch.arange(10).repeat_interleave(chains)
    # Cross-fitted held-out critics: the one trained on seed a's samples scores seed b's means.
    scores: dict[tuple[float, int], float] = {}
    log_odds: dict[tuple[float, int], float] = {}
    real_level = []
    for i, seed in enumerate(seeds):
        other = seeds[(i + 1) % len(seeds)]
        fakes = torch.cat([runs[w, other]["samples"] for w in WEIGHTS] + [runs[w, other]["means"] for w in WEIGHTS])
        critic = realism_critic(real_fit, fakes, seed=1000 + other, steps=10 if args.quick else 600, device=args.device)
        real_level.append(float(critic.prob_real(real_check).mean()))
        for w in WEIGHTS:
            p_real = critic.prob_real(runs[w, seed]["means"]).double().clamp(1e-12, 1 - 1e-12)
            scores[w, seed] = float(p_real.mean())
            log_odds[w, seed] = float((p_real / (1 - p_real)).log().mean())
    rows, per_class = [], {}
    for w in WEIGHTS:
        acts, real_s, odds, agree, kids = [], [], [], [], []
        for seed in seeds:
            r = runs[w, seed]
            pred = infer(judge, r["means"]).argmax(1)
            hit = (pred == cls).double()
            per_class.setdefault(w, []).append(hit.view(10, chains).mean(1))
            acts.append(r["activation"])
            real_s.append(scores[w, seed])
            odds.append(log_odds[w, seed])
            kids.append(1000 * kid(layer_activations(judge, FEATURES[ds], r["means"]), real_feats))
            agree.append(float(hit.mean()))
        rows.append([f"{w:g}", fmt(*summarize(acts), 2), fmt(*summarize(real_s)), fmt(*summarize(odds), 1),
                     fmt(*summarize(kids), 1), fmt(*summarize(agree), 2),
                     ", ".join(f"{a:.2f}" for a in agree)])
    # Pictures: seed 0, chain 0 of each class, rows = weights.
    pix = dict(display="pixel", mean=info.mean, std=info.std)
    zoom = 3 if ds == "mnist" else 2
    first = [runs[w, seeds[0]]["means"].view(10, chains, *info.input_shape)[:, 0] for w in WEIGHTS]
    tile = info.input_shape[-1] * zoom
    names = info.class_names or [str(i) for i in range(10)]
    mode = "L" if info.input_shape[0] == 1 else "RGB"
    grid = stack([header(names, tile, mode=mode)] + [labeled(batch_grid(m, 10, zoom=zoom, **pix), f"w = {w:g}")
                                                     for w, m in zip(WEIGHTS, first)])
    title = {"mnist": "MNIST, zoo:lenet-mnist", "cifar10": "CIFAR-10, zoo:vgg-cifar10"}[ds]
    rep.text(f"## {title}",
             f"{chains} chains per class, {steps} steps of the authors' update (ε = {SAMPLER['step_size']}, "
             f"T = {SAMPLER['temperature']}), L2 {L2_WEIGHT}, pixel-range box, the first {steps // 2} discarded; the "
             f"pictures are chain means. Online critic: the default {'conv32-conv64-fc1024' if ds == 'mnist' else 'conv64-conv128-conv256-fc512'}, "
             f"one update every 10 steps. Seeds {', '.join(map(str, seeds))}. Independent classifier: "
             f"`{cfg['judge'].arch}`, seed {cfg['judge'].seed}, test accuracy {judge_acc:.4f}.")
    rep.image(grid, f"figure1_{ds}.png", f"{title}: rows are discriminator weights, columns the output neurons "
              "(seed 0, chain 0 of each class, in pixel space).")
    rep.table(["w", "target activation", "realism (held-out D of the means)", "realism log-odds",
               "KID x 1000 to real test images (lower is more real)", "class agreement (independent)",
               "agreement per seed"], rows)
    rep.text(f"The held-out critics score real test images they did not train on at "
             f"{fmt(*summarize(real_level))} (the level of a real image). The KID x 1000 between two halves of "
             f"the real test images is {1000 * kid_real:.1f} (the level of real images).")
    if ds == "cifar10":
        rep.table(["w"] + names, [[f"{w:g}"] + [f"{float(v):.2f}" for v in torch.stack(per_class[w]).mean(0)]
                                  for w in WEIGHTS])
        rep.text("Per-class agreement (mean over seeds). The paper found ship and truck most improved by the critic.")
    # Mode-locking: diversity within each class at w = 0.2 vs 1.0.
    lock = []
    for w in (0.2, 1.0):
        div, modes = [], []
        for seed in seeds:
            m = runs[w, seed]["means"].view(10, chains, -1)
            if chains > 1:
                div += [mean_pairwise(cosine_distances(m[c])) for c in range(10)]
                modes += [count_modes(m[c], 0.5) for c in range(10)]
        lock.append([f"{w:g}", fmt(*summarize(div)) if div else "-", fmt(*summarize(modes), 2) if modes else "-"])
    rep.table(["w", "diversity within a class (mean pairwise cosine distance)", f"modes among {chains} chains (cut 0.5)"],
              lock)
    act = [float(r[1].split(" ")[0]) for r in rows]
    kd = [float(r[4].split(" ")[0]) for r in rows]
    agr = [float(r[5].split(" ")[0]) for r in rows]
    rl = [float(r[2].split(" ")[0]) for r in rows]
    rep.text(f"**Measured ({ds}).** From w = 0 to w = 1 the target activation goes {act[0]:.2f} → {act[-1]:.2f}, "
             f"realism {rl[0]:.3f} → {rl[-1]:.3f} (peak {max(rl):.3f} at w = {WEIGHTS[rl.index(max(rl))]:g}), KID x 1000 "
             f"{kd[0]:.1f} → {kd[-1]:.1f} (lowest {min(kd):.1f} at w = {WEIGHTS[kd.index(min(kd))]:g}), class "
             f"agreement {agr[0]:.2f} → {agr[-1]:.2f} (peak {max(agr):.2f} at w = {WEIGHTS[agr.index(max(agr))]:g}). "
             f"Within-class diversity at w = 0.2 vs 1.0: {lock[0][1]} vs {lock[1][1]}.")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"], choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="two sampler seeds (cross-fitted critics)")
    args = p.parse_args()
    setup(args)
    rep = Report(args.out / "figure1.md", "Paper Figure 1, measured: the discriminator weight from 0 to 1", args.quick)
    rep.text("Each row of a grid is one discriminator weight w; w = 0 is plain LDAM, w = 1 ignores the classifier. "
             "Numbers are mean ± standard error over the seeds.")
    for ds in args.datasets:
        study(ds, args, rep)
    rep.write()


if __name__ == "__main__":
    main()
