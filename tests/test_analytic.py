"""The sampler against exact answers: for f(x) = w·x + b with L2(λ), p = N(w/λ, (T/λ) I)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ldam
from ldam.samplers import ChainNoise, chain_seeds
from models import LinearNeuron

D = 16
W = torch.linspace(-1.5, 1.5, D).reshape(1, 4, 4)


def run(method, step_size, T=1.0, lam=2.0, steps=4000, burn_in=500, chains=64, seed=0):
    model = LinearNeuron(W)
    return ldam.sample(model, "output:0", input_shape=(1, 4, 4), chains=chains, steps=steps,
                       step_size=step_size, temperature=T, regularizers=[ldam.L2(lam)], method=method,
                       burn_in=burn_in, seed=seed)


def moments(res):
    s = res.samples.double().flatten(2)  # [chains, kept, D]
    return s.mean((0, 1)), s.var((0, 1))


def test_sgld_update_is_exactly_the_langevin_formula():
    """Replay the first steps in numpy with the same noise: x ← x + (ε/2)∇log p + √ε ξ."""
    eps, T, lam = 0.05, 0.7, 2.0
    res = run("sgld", eps, T=T, lam=lam, steps=5, burn_in=0, chains=3)
    noise = ChainNoise(chain_seeds(0, ["output:0"], 3), (1, 4, 4), torch.device("cpu"), torch.float32)
    x = noise.initial().double().numpy().reshape(3, D)
    w = W.double().numpy().reshape(D)
    for t in range(5):
        np.testing.assert_allclose(res.samples[:, t].double().numpy().reshape(3, D), x, rtol=1e-5, atol=1e-5)
        grad = (w[None] - lam * x) / T
        x = x + eps / 2 * grad + math.sqrt(eps) * noise.normal().double().numpy().reshape(3, D)
    np.testing.assert_allclose(res.activations[:, 0].double().numpy(), res.samples[0].double().flatten(1).numpy() @ w + 0.3, rtol=1e-4, atol=1e-4)


def test_sgld_small_step_matches_the_gaussian():
    T, lam = 1.0, 2.0
    res = run("sgld", 0.02 * T / lam, T=T, lam=lam, steps=6000, burn_in=1000)
    mean, var = moments(res)
    target_mean = W.double().flatten() / lam
    # SGLD's own O(ε) bias on this Gaussian is (T/λ)/(1 − ελ/4T): 0.5 % here.
    assert torch.allclose(mean, target_mean, atol=0.05), (mean, target_mean)
    assert abs(var.mean().item() / (T / lam) - 1) < 0.04, var.mean()
    assert (var / (T / lam) - 1).abs().max() < 0.15


def test_mala_large_step_matches_the_gaussian_where_sgld_is_biased():
    T, lam = 1.0, 2.0
    eps = 1.0 * T / lam  # ελ/T = 1: SGLD's variance is off by 1/(1−1/4) = +33 %
    mala = run("mala", eps, T=T, lam=lam, steps=3000, burn_in=300)
    mean, var = moments(mala)
    assert torch.allclose(mean, W.double().flatten() / lam, atol=0.05)
    assert abs(var.mean().item() / (T / lam) - 1) < 0.04, var.mean()
    assert mala.acceptance is not None and 0.3 < float(mala.acceptance.mean()) < 0.95
    sgld = run("sgld", eps, T=T, lam=lam, steps=3000, burn_in=300)
    _, var_sgld = moments(sgld)
    assert var_sgld.mean().item() / (T / lam) == pytest.approx(1 / (1 - eps * lam / (4 * T)), rel=0.04)


def test_mala_without_adaptation_is_exact_too():
    T, lam = 0.5, 1.0
    res = run(ldam.MALA(adapt=False), 0.4, T=T, lam=lam, steps=3000, burn_in=300)
    mean, var = moments(res)
    assert torch.allclose(mean, W.double().flatten() / lam, atol=0.05)
    assert abs(var.mean().item() / (T / lam) - 1) < 0.05


@pytest.mark.parametrize("method,step", [("sgld", 0.01), ("mala", 0.5)])
def test_variance_scales_with_temperature(method, step):
    lam = 1.0
    v = {}
    for T in (0.25, 1.0):
        res = run(method, step * T, T=T, lam=lam, steps=3000, burn_in=500)
        v[T] = moments(res)[1].mean().item()
    assert v[1.0] / v[0.25] == pytest.approx(4.0, rel=0.08)


def test_psgld_matches_the_gaussian():
    T, lam = 1.0, 2.0
    res = run("psgld", 0.01, T=T, lam=lam, steps=6000, burn_in=1000)
    mean, var = moments(res)
    assert torch.allclose(mean, W.double().flatten() / lam, atol=0.08)
    assert abs(var.mean().item() / (T / lam) - 1) < 0.1


def test_the_mean_is_the_mean_of_kept_samples_and_the_ema_follows_its_recursion():
    tau = 37.0  # not the default, so a sampler that ignores ema_tau fails
    res = ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 4, 4), chains=4, steps=300, step_size=0.01,
                      regularizers=[ldam.L2(2.0)], burn_in=100, ema_tau=tau, seed=0)
    assert res.samples.shape == (4, 200, 1, 4, 4)
    s = res.samples.double().numpy()
    scale = np.abs(s).max()
    # the mean is the plain average of the 200 kept states (numpy, float64)
    np.testing.assert_allclose(res.mean.double().numpy(), s.mean(1), rtol=1e-5, atol=1e-5 * scale)
    # the EMA starts at the first kept state and takes every later kept state once:
    # ema <- ema + (x - ema) / tau (nothing after the last kept state: the final step's result is not kept)
    ema = s[:, 0].copy()
    for k in range(1, 200):
        ema += (s[:, k] - ema) / tau
    assert res.ema is not None
    np.testing.assert_allclose(res.ema.double().numpy(), ema, rtol=1e-5, atol=1e-5 * scale)


def test_thinning_keeps_every_nth_state_of_the_same_chain():
    full = run("sgld", 0.01, steps=120, burn_in=20, chains=2)
    thin = ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 4, 4), chains=2, steps=120, step_size=0.01,
                       regularizers=[ldam.L2(2.0)], burn_in=20, thin=7)
    assert thin.samples.shape[1] == math.ceil(100 / 7)
    torch.testing.assert_close(thin.samples, full.samples[:, ::7])


def test_mean_without_keeping_samples_is_the_same():
    kept = run("sgld", 0.01, steps=200, burn_in=50, chains=4)
    lean = ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 4, 4), chains=4, steps=200, step_size=0.01,
                       regularizers=[ldam.L2(2.0)], burn_in=50, keep_samples=False)
    assert lean.samples.shape[1] == 0
    torch.testing.assert_close(lean.mean, kept.mean, rtol=1e-4, atol=1e-5)
