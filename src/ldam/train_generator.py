"""Training the generator prior: a small VAE on a zoo dataset (``ldam train-generator``).

The VAE maximizes the evidence lower bound

    ELBO(x) = E_q(h|x)[log p(x|h)] − KL(q(h|x) ‖ N(0, I))

with ``p(x|h)`` Bernoulli per pixel for MNIST and Gaussian ``N(G(h), σ_x²)`` per pixel for
CIFAR-10. Its decoder ``G`` then parameterizes the chains: ``ldam.Generator(G, (latent,))``
samples ``log p(h) = (f(G(h)) − …)/T − ½‖h‖²`` under the prior the VAE was trained with.

Checkpoints atomically after every epoch (``OUT/checkpoint.pt``, resumable); writes
``OUT/generator.pt`` (the VAE's weights-only state dict) and ``OUT/generator.json`` (config,
recipe, per-epoch ELBO and the test set's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._training import (CHECKPOINT, add_run_options, epoch_bar, resume_checkpoint, save_training_checkpoint,
                        start_run, training_device)
from .errors import LdamError
from .io import atomic_save
from .train import DATASETS, dataset_spec
from .zoo.vae import VAE


@dataclass
class GeneratorConfig:
    dataset: str = "mnist"
    latent: int = 16
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    sigma_x: float = 0.1  # the Gaussian likelihood's σ (CIFAR-10), in pixel units


def pixels(dataset: str, split: str) -> torch.Tensor:
    """The dataset's images as float pixels in [0, 1], ``[N, C, H, W]``."""
    x, _ = DATASETS[dataset].load(split)
    return x.float().div_(255)


def neg_elbo(vae: VAE, x: torch.Tensor, cfg: GeneratorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``−ELBO`` summed over the batch (one reparameterized draw), and its KL part."""
    recon, mu, logvar = vae(x)
    if cfg.dataset == "mnist":
        nll = F.binary_cross_entropy(recon, x, reduction="sum")
    else:
        d = x[0].numel()
        nll = F.mse_loss(recon, x, reduction="sum") / (2 * cfg.sigma_x**2) + len(x) * d * math.log(
            cfg.sigma_x * math.sqrt(2 * math.pi))
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
    return nll + kl, kl


def build_vae(cfg: GeneratorConfig) -> VAE:
    c, s, _ = dataset_spec(cfg.dataset).input_shape
    return VAE(c, s, cfg.latent)


def _fit_epoch(cfg: GeneratorConfig, vae: VAE, opt: torch.optim.Optimizer, x_train: torch.Tensor, epoch: int,
               dev: torch.device, progress: bool) -> dict[str, float]:
    """One epoch of Adam steps on the negative ELBO; its history entry (ELBO and KL per image).
    The shuffle and the reparameterization noise are seeded by ``(seed, epoch)``, so a resumed run
    continues exactly."""
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    torch.manual_seed(cfg.seed * 1000 + epoch + 1)
    n = len(x_train)
    perm = torch.randperm(n, generator=g)
    vae.train()
    total, total_kl = 0.0, 0.0
    bar = epoch_bar(n, cfg.batch_size, epoch, cfg.epochs, progress)
    for i in bar:
        xb = x_train[perm[i:i + cfg.batch_size]].to(dev)
        loss, kl = neg_elbo(vae, xb, cfg)
        opt.zero_grad(set_to_none=True)
        (loss / len(xb)).backward()
        opt.step()
        total += float(loss.detach())
        total_kl += float(kl.detach())
        bar.set_postfix(elbo=f"{-total / min(n, i + len(xb)):.1f}")
    if not math.isfinite(total):
        raise LdamError(f"the VAE's loss became {total} in epoch {epoch + 1}: lower --lr")
    return {"epoch": epoch + 1, "train_elbo": -total / n, "train_kl": total_kl / n}


@torch.no_grad()
def _test(cfg: GeneratorConfig, vae: VAE, test: torch.Tensor, dev: torch.device) -> tuple[float, float]:
    """The test set's ELBO per image and reconstruction MSE (from the posterior means)."""
    vae.eval()
    torch.manual_seed(cfg.seed)
    test = test.to(dev)
    test_elbo = -sum(float(neg_elbo(vae, test[i:i + 500], cfg)[0]) for i in range(0, len(test), 500)) / len(test)
    recon = vae.decoder(vae.encode(test)[0])
    return test_elbo, float(F.mse_loss(recon, test))


def train_generator(cfg: GeneratorConfig, out: Path, resume: bool = False, data: dict[str, torch.Tensor] | None = None,
                    progress: bool = True, device: torch.device | str | None = None) -> dict[str, Any]:
    """Train the VAE; see the module docstring. ``data`` may give ``{"train": …, "test": …}`` pixel
    tensors (the tests use a slice). Returns the record, with the VAE under ``"model"``."""
    dataset_spec(cfg.dataset)  # an unknown dataset fails before anything is read or built
    d = data if data is not None else {"train": pixels(cfg.dataset, "train"), "test": pixels(cfg.dataset, "test")}
    dev = training_device(device)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg).to(dev)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    state = resume_checkpoint(ckpt, vae, opt, asdict(cfg)) if resume else None
    start, history = (state["epoch"], state["history"]) if state is not None else (0, [])
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        history.append(_fit_epoch(cfg, vae, opt, d["train"], epoch, dev, progress))
        save_training_checkpoint(ckpt, vae, opt, epoch + 1, asdict(cfg), history)
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: ELBO {history[-1]['train_elbo']:.1f} nats per image "
                  f"(KL {history[-1]['train_kl']:.1f})", flush=True)
    test_elbo, mse = _test(cfg, vae, d["test"], dev)
    vae = vae.cpu()
    atomic_save(vae.state_dict(), out / "generator.pt")
    record = {
        "arch": "vae", "config": asdict(cfg),
        "recipe": f"ldam train-generator --dataset {cfg.dataset} --latent {cfg.latent} --epochs {cfg.epochs} "
                  f"--lr {cfg.lr} --batch-size {cfg.batch_size} --seed {cfg.seed} --out {out}",
        "history": history, "test_elbo": test_elbo, "test_recon_mse": mse, "test_images": len(d["test"]),
        "seconds": time.perf_counter() - t0, "torch": torch.__version__,
    }
    (out / "generator.json").write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "model": vae}


def cmd_train_generator(args: argparse.Namespace) -> int:
    device = start_run(args)
    cfg = GeneratorConfig(dataset=args.dataset, latent=args.latent, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, seed=args.seed)
    rec = train_generator(cfg, args.out, resume=args.resume, device=device)
    print(f"test ELBO {rec['test_elbo']:.1f} nats per image, reconstruction MSE {rec['test_recon_mse']:.4f} "
          f"(pixels in [0, 1]) on {rec['test_images']} test images")
    print(f"generator: {args.out / 'generator.pt'} (use with: ldam sample ... --parameterization generator "
          f"--generator {args.out / 'generator.pt'})")
    return 0


def add_subcommands(sub: Any) -> None:
    d = GeneratorConfig()
    t = sub.add_parser("train-generator", help="train a VAE whose decoder is a generator prior (ldam.Generator)",
                       description="Train a small convolutional VAE on a zoo dataset. Its decoder G is the "
                       "generator prior of --parameterization generator: chains then move in G's latent "
                       "space under N(0, I). Checkpoints every epoch to OUT/checkpoint.pt; writes "
                       "OUT/generator.pt (weights only) and OUT/generator.json (recipe and ELBO).")
    t.add_argument("--latent", type=int, default=d.latent, help="latent dimensions (default: %(default)s)")
    add_run_options(t, d, datasets=list(DATASETS), lr_help="Adam's learning rate", device_where="the VAE trains")
    t.set_defaults(func=cmd_train_generator)


__all__ = ["GeneratorConfig", "train_generator", "neg_elbo", "pixels"]
