"""The generator prior's training and loading (issue 12): the VAE's objective against
torch.distributions, resumable training, weights-only loading with checksums, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldam.cli import main
from ldam.errors import CheckpointError, LdamError
from ldam.train_generator import GeneratorConfig, neg_elbo, train_generator
from ldam.zoo import entry, generators
from ldam.zoo.vae import VAE


def toy(dataset: str, n: int = 96, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth random pixel images in [0, 1] of the dataset's shape (no real data needed)."""
    c, s = (1, 28) if dataset == "mnist" else (3, 32)
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    if dataset == "mnist":  # binary, like MNIST's strokes: the Bernoulli likelihood can approach 1
        x = (x > 0.5).float()
    return {"train": x[: n - 32], "test": x[n - 32:]}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_neg_elbo_is_the_stated_objective(dataset):
    cfg = GeneratorConfig(dataset=dataset, latent=4)
    c, s = (1, 28) if dataset == "mnist" else (3, 32)
    torch.manual_seed(0)
    vae = VAE(c, s, 4)
    x = toy(dataset)["train"][:8]
    torch.manual_seed(5)
    loss, kl = neg_elbo(vae, x, cfg)
    torch.manual_seed(5)
    recon, mu, logvar = vae(x)
    want_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum().detach()
    r, xs = recon.detach().double().numpy(), x.double().numpy()
    if dataset == "mnist":
        nll = -(xs * np.log(r) + (1 - xs) * np.log(1 - r)).sum()
    else:
        nll = -Normal(torch.from_numpy(r), cfg.sigma_x).log_prob(torch.from_numpy(xs)).sum().item()
    assert float(kl.detach()) == pytest.approx(float(want_kl), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(nll + float(want_kl), rel=1e-4)


def test_training_improves_the_bound_and_resumes_exactly(tmp_path):
    data = toy("mnist", n=288)
    cfg = GeneratorConfig(dataset="mnist", latent=4, epochs=6, batch_size=16, lr=5e-3)
    full = train_generator(cfg, tmp_path / "a", data=data, progress=False)
    first = full["history"][0]["train_elbo"]
    assert full["history"][-1]["train_elbo"] > first + 10  # nats per image
    # interrupted after one epoch (only the checkpoint left), then resumed
    train_generator(GeneratorConfig(**{**cfg.__dict__, "epochs": 1}), tmp_path / "b", data=data, progress=False)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    ckpt["config"] = json.dumps(cfg.__dict__)
    torch.save(ckpt, tmp_path / "b" / "checkpoint.pt")
    resumed = train_generator(cfg, tmp_path / "b", data=data, progress=False, resume=True)
    for (k, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert resumed["history"] == full["history"]


def test_a_trained_generator_loads_safely_and_is_normalized_for_the_model(tmp_path):
    data = toy("cifar10")
    cfg = GeneratorConfig(dataset="cifar10", latent=6, epochs=1, batch_size=32)
    train_generator(cfg, tmp_path, data=data, progress=False)
    vae, record = generators.load_vae(str(tmp_path))
    assert record["config"]["latent"] == 6
    info = entry("vgg-cifar10")
    g = generators.for_model(str(tmp_path), info)
    h = torch.randn(3, 6)
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(g(h), (vae.decoder(h) - mean) / std)
    with pytest.raises(LdamError, match="trained on cifar10"):
        generators.for_model(str(tmp_path), entry("lenet-mnist"))
    rec = json.loads((tmp_path / "generator.json").read_text())
    rec["sha256"] = "0" * 64
    (tmp_path / "generator.json").write_text(json.dumps(rec))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        generators.load_vae(str(tmp_path))
    torch.save({"not": "weights"}, tmp_path / "other.pt")
    (tmp_path / "other.json").write_text(json.dumps({"config": cfg.__dict__}))
    with pytest.raises(CheckpointError, match="cannot load the generator"):
        generators.load_vae(str(tmp_path / "other.pt"))


def test_cli_samples_in_a_generators_latent(tmp_path, capsys):
    train_generator(GeneratorConfig(dataset="cifar10", latent=5, epochs=1, batch_size=32), tmp_path / "g",
                    data=toy("cifar10"), progress=False)
    rc = main(["sample", "--model", "zoo:vgg-cifar10", "--target", "output:3", "--steps", "6", "--chains", "2", "--quiet",
               "--parameterization", "generator", "--generator", str(tmp_path / "g"), "--out", str(tmp_path / "run"),
               "--pixel-range"])
    assert rc == 0, capsys.readouterr().err
    res = torch.load(tmp_path / "run" / "result.pt", weights_only=True)
    info = entry("vgg-cifar10")
    px = res["mean"] * torch.tensor(info.std).view(3, 1, 1) + torch.tensor(info.mean).view(3, 1, 1)
    assert float(px.min()) >= -1e-5 and float(px.max()) <= 1 + 1e-5  # G's sigmoid keeps the range
    rc = main(["sample", "--model", "zoo:vgg-cifar10", "--target", "output:3", "--steps", "2", "--quiet", "--parameterization", "generator",
               "--out", str(tmp_path / "r2")])
    assert rc == 2 and "--generator" in capsys.readouterr().err
