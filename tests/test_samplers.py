"""Sampler behaviour against independent references: numpy replays, schedules, modes, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ldam
from conftest import integrated_autocorrelation_time
from ldam.samplers import ChainNoise, chain_seeds
from models import LinearNeuron, Mixture, SmallConvNet

W = torch.linspace(-1.0, 2.0, 9).reshape(1, 3, 3)


def test_paper_update_matches_a_numpy_replay():
    """PAPER.md §6, step by step: RMS-normalize, noise σ/(1+τ²), L2 pull 2λx/s, momentum, step sη."""
    eta, sigma, lam, frame, scale = 0.05, 0.3, 0.5, 4, 2.0
    res = ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 3, 3), chains=2, steps=9, burn_in=0,
                      step_size=eta, temperature=sigma, regularizers=[ldam.L2(lam)],
                      method=ldam.Paper(frame=frame, scale=scale))
    noise = ChainNoise(chain_seeds(0, ["output:0"], 2), (1, 3, 3), torch.device("cpu"), torch.float32)
    x = noise.initial().double().numpy().reshape(2, 9)
    w = W.double().numpy().reshape(9)
    acc = np.zeros_like(x)
    m = np.zeros_like(x)
    for t in range(9):
        np.testing.assert_allclose(res.samples[:, t].double().numpy().reshape(2, 9), x, rtol=1e-4, atol=1e-5)
        gf = np.broadcast_to(w, x.shape)
        acc = 0.9 * acc + 0.1 * gf**2
        g = gf / np.sqrt(acc + 1e-8)
        g = g + sigma / (1 + (t % frame) ** 2) * noise.normal().double().numpy().reshape(2, 9)
        g = g - 2 * lam / scale * x
        m = 0.9 * m + 0.1 * g
        x = x + scale * eta * m


def test_same_seed_same_result_and_other_seeds_differ():
    kw = dict(input_shape=(1, 12, 12), chains=3, steps=40, burn_in=10, regularizers=[ldam.L2(1.0)])
    a = ldam.sample(SmallConvNet(), "fc:0-1", seed=7, **kw)
    b = ldam.sample(SmallConvNet(), "fc:0-1", seed=7, **kw)
    c = ldam.sample(SmallConvNet(), "fc:0-1", seed=8, **kw)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.activations, b.activations)
    assert not torch.allclose(a.samples, c.samples)


def test_a_chain_does_not_depend_on_the_other_targets_in_the_batch():
    kw = dict(input_shape=(1, 3, 3), chains=2, steps=30, burn_in=0, regularizers=[ldam.L2(1.0)], seed=3)

    def model(other_scale):
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
        with torch.no_grad():
            m[1].weight.copy_(torch.stack([W.flatten() * other_scale, W.flatten(), -W.flatten() * other_scale]))
            m[1].bias.copy_(torch.tensor([0.0, 0.3, 0.0]))
        return m

    alone = ldam.sample(model(0.5), "output:1", **kw)
    together = ldam.sample(model(0.5), ["output:2", "output:0", "output:1"], **kw)
    torch.testing.assert_close(together.samples[4:6], alone.samples, rtol=1e-6, atol=1e-6)
    other = ldam.sample(model(-3.0), ["output:0", "output:1"], **kw)
    torch.testing.assert_close(other.samples[2:4], alone.samples, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(other.samples[0:2], together.samples[2:4])


def test_chains_of_different_targets_get_different_noise():
    seeds = chain_seeds(0, ["a:0", "a:1"], 3)
    assert len(set(seeds)) == 6


def test_schedules():
    d = ldam.PolynomialDecay(a=0.1, b=10, gamma=0.55)
    assert d(0) == pytest.approx(0.1 * 10**-0.55) and d(90) == pytest.approx(0.1 * 100**-0.55)
    c = ldam.CyclicAnnealing(hot=5.0, cold=0.5, period=100, hot_fraction=0.3, ramp_fraction=0.2)
    assert c(0) == c(29) == 5.0 and c(50) == c(99) == 0.5 and c(130) == 0.5 + 4.5 * 0.5 * (1 + math.cos(0))
    assert c(40) == pytest.approx(0.5 + 4.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert c.is_cold(60) and not c.is_cold(10)
    seen = []

    class Spy(ldam.Callback):
        def on_step(self, sampler, info):
            seen.append((info.temperature, info.step_size))

    ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 3, 3), chains=1, steps=5, burn_in=0,
                temperature=lambda t: 1.0 + t, step_size=d, callbacks=[Spy()])
    assert seen == [(1.0 + t, d(t)) for t in range(5)]


def test_cyclic_annealing_visits_several_modes_where_gradient_ascent_stays_in_one():
    centers = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, -3.0]])
    model = Mixture(centers, s=0.6, amplitude=1.0)
    start = torch.tensor([[2.5, 2.5]])

    def modes(res):
        d = torch.cdist(res.last, centers)
        assert (d.min(1).values < 1.5).all(), "every chain should end inside a mode"
        return set(d.argmin(1).tolist())

    kw = dict(input_shape=(2,), chains=32, burn_in=0, init=start, regularizers=[ldam.L2(0.05)])
    # ε ∝ T keeps the drift (ε/2T)∇log p fixed, so T → 0 is plain gradient ascent.
    ascent = ldam.sample(model, "output:0", steps=1500, temperature=1e-4, step_size=0.02 * 1e-4, **kw)
    assert modes(ascent) == {0}
    anneal = ldam.CyclicAnnealing(hot=8.0, cold=0.05, period=500)
    annealed = ldam.sample(model, "output:0", steps=1500, temperature=anneal,
                           step_size=lambda t: 0.02 * anneal(t), **kw)
    assert len(modes(annealed)) >= 3


@pytest.mark.filterwarnings("error")
def test_auto_burn_in_ends_once_the_activation_has_settled():
    lam, T = 1.0, 1.0
    # Start far from the mode; f relaxes towards its stationary mean ‖w‖²/λ + b at rate ελ/2 per step.
    res = ldam.sample(LinearNeuron(W * 3), "output:0", input_shape=(1, 3, 3), chains=16, steps=4000,
                      burn_in="auto", step_size=0.01, regularizers=[ldam.L2(lam)], temperature=T,
                      init=torch.zeros(1, 1, 3, 3))
    stationary = float((W * 3).pow(2).sum() / lam + 0.3)
    # E f relaxes as 1 − e^{−ελt/2}: within 5 % of its rise after 600 steps, within 1 % after 920
    assert 400 <= res.burn_in <= 1500, res.burn_in
    f_at = res.activations[res.burn_in:res.burn_in + 50].mean().item()
    assert f_at == pytest.approx(stationary, rel=0.1)
    assert res.activations[:50].mean().item() < 0.5 * stationary


def _truncated_normal_moments(mu: float, sd: float, a: float, b: float) -> tuple[float, float]:
    """Mean and variance of N(mu, sd²) restricted to [a, b] (the textbook formulas, with math.erf)."""
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    al, be = (a - mu) / sd, (b - mu) / sd
    z = cdf(be) - cdf(al)
    r = (phi(al) - phi(be)) / z
    return mu + sd * r, sd * sd * (1 + (al * phi(al) - be * phi(be)) / z - r * r)


def test_box_reflection_keeps_chains_inside_and_mala_rejects_outside():
    lo, hi, lam = -0.5, 0.25, 1.0
    runs = {}
    for method in ("sgld", "mala", "psgld", "paper"):
        res = runs[method] = ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 3, 3), chains=8, steps=200,
                                         burn_in=50, step_size=0.05, regularizers=[ldam.L2(lam), ldam.Box(lo, hi)],
                                         method=method, seed=0)
        assert res.samples.min() >= lo - 1e-6 and res.samples.max() <= hi + 1e-6, method
    # MALA with the folded proposal is exact for p restricted to the box: each pixel is N(w/λ, T/λ)
    # truncated to [lo, hi]. A sampler that clamped instead of folding (or used the unfolded q) would
    # pile mass on the walls and move these moments.
    ref = np.array([_truncated_normal_moments(w / lam, math.sqrt(1 / lam), lo, hi) for w in W.flatten().tolist()])
    res_mala = runs["mala"]
    s = res_mala.samples.double().flatten(2).numpy()  # [chains, kept, 9]
    std = (s - ref[:, 0]) / np.sqrt(ref[:, 1])
    n_eff = s.shape[0] * s.shape[1] / integrated_autocorrelation_time(std)  # effectively independent samples per pixel
    kurt = (std**4).mean((0, 1))  # the fourth standardized moment: se(var)/var = sqrt((κ − 1)/n)
    z_mean = (s.mean((0, 1)) - ref[:, 0]) / np.sqrt(ref[:, 1] / n_eff)
    z_var = (s.var((0, 1)) / ref[:, 1] - 1) / np.sqrt((kurt - 1) / n_eff)
    assert np.abs(z_mean).max() < 5, (z_mean, s.mean((0, 1)), ref[:, 0])
    assert np.abs(z_var).max() < 5, (z_var, s.var((0, 1)), ref[:, 1])
    assert res_mala.acceptance is not None and (res_mala.acceptance > 0.2).all()


def test_reflection_is_the_fold_at_the_walls():
    box = ldam.Box(0.0, 1.0)
    x = torch.tensor([[-0.25, 1.25, 2.5, 0.5, -1.75]])
    box.reflect_(x)
    torch.testing.assert_close(x, torch.tensor([[0.25, 0.75, 0.5, 0.5, 0.25]]))


def test_box_from_normalization():
    box = ldam.Box.from_normalization([0.5], [0.25])
    assert box.low == [-2.0] and box.high == [2.0]


def test_total_variation_against_numpy():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    tv = ldam.TotalVariation(1.0, beta=1.0, delta=1e-4)
    a = x.numpy()
    dh = a[:, :, 1:, :-1] - a[:, :, :-1, :-1]
    dw = a[:, :, :-1, 1:] - a[:, :, :-1, :-1]
    want = np.sqrt(dh**2 + dw**2 + 1e-4).reshape(2, -1).sum(1)
    np.testing.assert_allclose(tv.value(x).numpy(), want, rtol=1e-10)
    g = tv.grad(x)
    eps = 1e-6
    e = torch.zeros_like(x)
    e[1, 2, 3, 4] = eps
    fd = (tv.value(x + e) - tv.value(x - e))[1] / (2 * eps)
    assert g[1, 2, 3, 4].item() == pytest.approx(fd.item(), rel=1e-5)


def test_streaming_sampler_knobs_take_effect_between_steps():
    s = ldam.Sampler(LinearNeuron(W), "output:0", (1, 3, 3), chains=64, step_size=0.02, temperature=1.0,
                     regularizers=[ldam.L2(1.0)], burn_in=0)
    s.run(800)
    v1 = s.x.var(0).mean().item()
    s.temperature = 0.04
    s.step_size = 0.005
    s.set_weight("l2", 4.0)
    s.run(800)
    v2 = s.x.var(0).mean().item()
    assert v1 == pytest.approx(1.0 / (1 - 0.02 / 4), rel=0.2)
    # SGLD's exact stationary variance at this step: (T/λ) / (1 − ελ/4T)
    assert v2 == pytest.approx(0.01 / (1 - 0.005 * 4.0 / (4 * 0.04)), rel=0.2)
    m2 = s.x.mean(0).flatten()
    torch.testing.assert_close(m2, W.flatten() / 4.0, atol=0.05, rtol=0)
    s.set_method("mala")
    s.run(50)
    assert "acceptance" in s.method.stats()


def test_reset_restarts_the_chains_and_the_history():
    s = ldam.Sampler(LinearNeuron(W), "output:0", (1, 3, 3), chains=4, regularizers=[ldam.L2(1.0)], burn_in=5)
    s.run(20)
    before = s.x.clone()
    s.reset()
    assert s.t == 0 and s.activations.shape == (0, 4) and s.mean is None and not s.burned_in
    assert not torch.allclose(s.x, before)
    s.run(10)
    assert s.burned_in and s.samples.shape[1] == 5


def test_run_stops_before_the_step_its_stop_callable_refuses():
    """``run(n, stop=...)`` asks before every step (the live UI ends a frame within one step this way)
    and the trace holds exactly the steps taken."""
    from models import LinearNeuron

    s = ldam.Sampler(LinearNeuron(torch.ones(1, 4, 4)), "output:0", (1, 4, 4), chains=2, burn_in=0,
                     regularizers=[ldam.L2(1.0)], seed=0)
    asked = []
    s.run(10, stop=lambda: asked.append(s.t) or s.t >= 3)
    assert s.t == 3 and asked == [0, 1, 2, 3] and len(s.activations) == 3
    s.run(2)
    assert s.t == 5
