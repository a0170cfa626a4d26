"""The discriminator regularizer: online critic training, the weight's extremes, persistence, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ldam
from ldam.discriminator import RealImages, make_critic
from ldam.sampler import model_fingerprint

from models import LinearNeuron, SmallConvNet

MU_REAL = torch.tensor([2.0, 0.0])
MU_FAKE = torch.tensor([-2.0, 0.0])
SIGMA = 0.5


def blob(mu: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return mu + SIGMA * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def toy_disc(**kw) -> ldam.Discriminator:
    training = ldam.CriticTraining(every=1, lr=3e-3, optimizer="adam", batch_size=128, label_smoothing=0.0)
    return ldam.Discriminator(blob(MU_REAL, 4000, 0), training=training, **kw)


@pytest.mark.filterwarnings("ignore::ldam.CriticWarning")  # a perfect critic is the point here
def test_online_critic_separates_two_blobs_like_the_bayes_optimal_critic():
    disc = toy_disc()
    fake = blob(MU_FAKE, 4000, 1)
    disc.fit(fake, steps=300)
    real_test, fake_test = blob(MU_REAL, 1000, 2), blob(MU_FAKE, 1000, 3)
    acc = 0.5 * (float((disc.prob_real(real_test) > 0.5).float().mean()) + float((disc.prob_real(fake_test) < 0.5).float().mean()))
    # Bayes-optimal accuracy for two unit-separated Gaussians: Φ(|μ_r − μ_f| / 2σ) = Φ(4) ≈ 0.99997.
    assert acc > 0.99
    # The optimal logit is linear, (μ_r − μ_f)·x / σ² + c, so D = ½ on the bisecting line x₁ = 0.
    mid = torch.stack([torch.zeros(21), torch.linspace(-1, 1, 21)], 1)
    assert float((disc.prob_real(mid) - 0.5).abs().max()) < 0.3
    # −∇R_D = ∇ log D points from the fake blob toward the real one.
    g = -disc.grad(fake_test)
    cos = torch.nn.functional.cosine_similarity(g, (MU_REAL - MU_FAKE).expand_as(g), dim=1)
    assert float(cos.median()) > 0.9


@pytest.mark.filterwarnings("ignore::ldam.CriticWarning")
def test_the_sampler_with_w_1_moves_chains_to_the_real_blob():
    model = LinearNeuron(torch.tensor([0.0, -5.0]))  # pulls the other way; w = 1 must ignore it
    disc = toy_disc(weight=1.0)
    disc.fit(blob(MU_FAKE, 4000, 1), steps=200)
    s = ldam.Sampler(model, "fc:0", (2,), chains=64, step_size=0.01, temperature=0.05,
                     regularizers=[ldam.L2(0.01), disc], init=MU_FAKE.expand(64, 2).clone(), seed=3)
    s.run(300)
    d_real = (s.x - MU_REAL).norm(dim=1).mean()
    d_fake = (s.x - MU_FAKE).norm(dim=1).mean()
    assert float(d_real) < 1.0 < float(d_fake)


def _conv_setup():
    torch.manual_seed(0)
    model = SmallConvNet()
    real = torch.randn(256, 1, 12, 12) * 0.5 + 0.3
    return model, real


@pytest.mark.parametrize("method,mode", [("sgld", "density"), ("mala", "density"), ("psgld", "density"),
                                         ("paper", "mix"), ("paper", "density")])
def test_weight_zero_is_bit_for_bit_the_plain_sampler(method, mode):
    model, real = _conv_setup()
    kw = dict(chains=4, step_size=0.01, temperature=0.5, method=method, burn_in=5, seed=2)
    plain = ldam.Sampler(model, "fc:0-1", (1, 12, 12), regularizers=[ldam.L2(0.1)], **kw)
    plain.run(40)
    disc = ldam.Discriminator(real, weight=0.0, mode=mode, training=ldam.CriticTraining(every=3))
    with_d = ldam.Sampler(model, "fc:0-1", (1, 12, 12), regularizers=[ldam.L2(0.1), disc], **kw)
    with_d.run(40)
    assert disc.updates == 13  # the critic did learn alongside
    assert torch.equal(plain.x, with_d.x)
    assert torch.equal(plain.activations, with_d.activations)


@pytest.mark.parametrize("method,mode", [("sgld", "density"), ("mala", "density"), ("paper", "mix")])
def test_weight_one_ignores_the_classifier(method, mode):
    _, real = _conv_setup()
    runs = []
    for seed in (1, 2):  # two classifiers with different weights
        torch.manual_seed(seed)
        model = SmallConvNet()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(generator=torch.Generator().manual_seed(seed))
        disc = ldam.Discriminator(real, weight=1.0, mode=mode, training=ldam.CriticTraining(every=2), seed=5)
        s = ldam.Sampler(model, "fc:0", (1, 12, 12), chains=6, step_size=0.01, temperature=0.5, method=method,
                         burn_in=5, regularizers=[ldam.L2(0.1), disc], seed=4)
        s.run(30)
        runs.append((s.x.clone(), s.activations.clone()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][1], runs[1][1])  # the classifiers do differ


def test_density_mode_is_the_stated_density():
    """In density mode the energy is (1−w)·f − w·R_D − ΣλR; check the drift SGLD takes against it."""
    model, real = _conv_setup()
    disc = ldam.Discriminator(real, weight=0.3, training=None)
    s = ldam.Sampler(model, "fc:0", (1, 12, 12), chains=3, step_size=1e-3, temperature=0.7,
                     regularizers=[ldam.L2(0.2), disc], seed=1)
    x0 = s.x.clone()
    xr = x0.clone().requires_grad_(True)
    logp = ((1 - 0.3) * model(xr)[:, 0] - 0.3 * disc.value(xr) - 0.2 * 0.5 * xr.flatten(1).pow(2).sum(1)) / 0.7
    (g,) = torch.autograd.grad(logp.sum(), xr)
    noise = ldam.samplers.ChainNoise(ldam.samplers.chain_seeds(1, s._config["targets"], 3), (1, 12, 12),
                                     torch.device("cpu"), torch.float32)
    noise.initial()
    xi = noise.normal()
    s.run(1)
    expect = x0 + 1e-3 / 2 * g + math.sqrt(1e-3) * xi
    assert torch.allclose(s.x, expect, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model, real = _conv_setup()
    disc = ldam.Discriminator(real, weight=0.4, training=ldam.CriticTraining(every=1))
    s = ldam.Sampler(model, "fc:0", (1, 12, 12), chains=4, regularizers=[disc])
    s.run(5)
    path = disc.save(tmp_path / "critic.pt")
    probe = torch.randn(10, 1, 12, 12)
    back = ldam.Discriminator.load(path, weight=0.4)
    assert back.training is None  # no real images: frozen
    assert torch.equal(disc.prob_real(probe), back.prob_real(probe))
    # Loaded with real images, it keeps learning; a different input shape is refused.
    again = ldam.Discriminator.load(path, real)
    assert again.training is not None
    with pytest.raises(ldam.ShapeError, match="critic was built for"):
        ldam.Sampler(SmallConvNet(size=16), "fc:0", (1, 16, 16), regularizers=[ldam.Discriminator.load(path)])


def test_unsafe_or_corrupt_critic_files_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ldam.CheckpointError, match="safely"):
        ldam.Discriminator.load(bad)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ldam-critic", "state_dict": {}, "arch": ldam.CriticTraining()}, evil)
    with pytest.raises(ldam.CheckpointError, match="safely"):
        ldam.Discriminator.load(evil)
    other = tmp_path / "other.pt"
    torch.save({"arch": "lenet5", "state_dict": {}}, other)
    with pytest.raises(ldam.CheckpointError, match="not an ldam critic"):
        ldam.Discriminator.load(other)


def test_bad_input_gets_a_clear_error():
    model, real = _conv_setup()
    with pytest.raises(ldam.ShapeError, match=r"real images have shape \[1, 10, 10\]"):
        ldam.Sampler(model, "fc:0", (1, 12, 12), regularizers=[ldam.Discriminator(torch.zeros(5, 1, 10, 10))])
    with pytest.raises(ldam.DataError, match="empty"):
        ldam.Discriminator(torch.zeros(0, 1, 12, 12))
    with pytest.raises(ldam.DataError, match="empty"):
        ldam.Discriminator(TensorDataset(torch.zeros(0, 1, 12, 12)))
    with pytest.raises(ldam.DataError, match="floating point"):
        ldam.Discriminator(torch.zeros(5, 1, 12, 12, dtype=torch.uint8))
    with pytest.raises(ldam.DataError, match="needs real images"):
        ldam.Discriminator(None)
    for w in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            ldam.Discriminator(real, weight=w)
    with pytest.raises(ValueError, match="method='paper'"):
        ldam.Sampler(model, "fc:0", (1, 12, 12), regularizers=[ldam.Discriminator(real, mode="mix")])
    disc = ldam.Discriminator(real, weight=0.2)
    s = ldam.Sampler(model, "fc:0", (1, 12, 12), regularizers=[disc])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        s.set_weight("disc", 2.0)
    assert disc.weight == 0.2
    s.set_weight("disc", 0.9)
    assert disc.weight == 0.9


def test_datasets_and_loaders_are_real_image_sources():
    x = torch.arange(40, dtype=torch.float32).view(10, 1, 2, 2)
    for source in (TensorDataset(x, torch.zeros(10)), DataLoader(TensorDataset(x), batch_size=3, shuffle=False)):
        r = RealImages(source)
        assert r.shape == (1, 2, 2)
        seen = torch.cat([r.batch(4) for _ in range(5)])
        assert seen.shape == (20, 1, 2, 2)
        # Every image is a row of x; 20 draws from 10 images cycle through all of them.
        idx = (seen[:, 0, 0, 0] / 4).long()
        assert torch.equal(x[idx], seen)
        assert set(idx.tolist()) == set(range(10))


def test_the_model_is_untouched_and_only_the_critic_learns():
    model, real = _conv_setup()
    model.train()
    model.fc.weight.requires_grad_(False)
    before = model_fingerprint(model)
    disc = ldam.Discriminator(real, weight=0.5, training=ldam.CriticTraining(every=1, lr=1e-3))
    s = ldam.Sampler(model, "conv2:1", (1, 12, 12), chains=3, regularizers=[ldam.L2(0.1), disc])
    critic_before = {k: v.clone() for k, v in disc.critic.state_dict().items()}
    s.run(20)
    assert model_fingerprint(model) == before
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert disc.updates == 20
    assert any(not torch.equal(v, disc.critic.state_dict()[k]) for k, v in critic_before.items())


def test_collapse_warnings():
    x = torch.randn(500, 2)
    # Real and fake from the same distribution: the critic stays at chance.
    same = ldam.Discriminator(x, training=ldam.CriticTraining(lr=1e-4, label_smoothing=0.0, patience=20, batch_size=64))
    with pytest.warns(ldam.CriticWarning, match="alike"):
        same.fit(torch.randn(500, 2), steps=40)
    # Trivially separable: a fast critic saturates.
    easy = ldam.Discriminator(x + 20, training=ldam.CriticTraining(lr=1e-2, optimizer="adam", label_smoothing=0.0,
                                                                  patience=20))
    with pytest.warns(ldam.CriticWarning, match="perfectly"):
        easy.fit(x - 20, steps=150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        easy.fit(x - 20, steps=5)  # warned once, not on every update


def test_default_critics_mirror_the_papers():
    mnist = make_critic((1, 28, 28))
    widths = [m.out_channels for m in mnist.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in mnist.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 64] and fcs == [1024, 1]
    cifar = make_critic((3, 32, 32))
    assert len([m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)]) == 3
    assert len([m for m in cifar.modules() if isinstance(m, torch.nn.Linear)]) == 2
    assert make_critic((3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape == (2,)


@pytest.mark.filterwarnings("ignore::ldam.CriticWarning")
def test_the_r1_gradient_penalty_flattens_the_critic_on_real_images():
    """R1 = (γ/2)·E‖∇_x c(x_real)‖²: with γ > 0 the critic's input gradient on real data shrinks."""
    real, fake = blob(MU_REAL, 2000, 0), blob(MU_FAKE, 2000, 1)
    norms = {}
    for gamma in (0.0, 10.0):
        training = ldam.CriticTraining(every=1, lr=3e-3, optimizer="adam", batch_size=128, label_smoothing=0.0,
                                       gradient_penalty=gamma)
        disc = ldam.Discriminator(real, training=training, seed=0)
        disc.fit(fake, steps=200)
        probe = blob(MU_REAL, 500, 5).requires_grad_(True)
        (g,) = torch.autograd.grad(disc.logits(probe).sum(), probe)
        norms[gamma] = float(g.norm(dim=1).mean())
        assert float((disc.prob_real(blob(MU_REAL, 500, 6)) > 0.5).float().mean()) > 0.95  # still a good critic
    assert norms[10.0] < 0.5 * norms[0.0], norms


def test_each_discriminator_gets_its_own_training_settings():
    x = torch.randn(10, 2)
    a, b = ldam.Discriminator(x), ldam.Discriminator(x)
    a.training.lr = 0.5
    assert b.training.lr == 1e-4 and a.training is not b.training
