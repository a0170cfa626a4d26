"""Transformation robustness (issue 12): the resampling against numpy, the draws against their
distributions, the stochastic gradient against the exact expectation, and the Metropolis refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import ldam
from ldam.transforms import Transformed, apply


def shift_np(x: np.ndarray, dy: int, dx: int, p: int) -> np.ndarray:
    """out[i, j] = x[i + dy, j + dx], edges mirrored (``grid_sample``'s reflection is numpy's 'symmetric')."""
    h, w = x.shape[-2:]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)], mode="symmetric")
    return xp[..., p + dy: p + dy + h, p + dx: p + dx + w]


def test_apply_matches_numpy_shifts_and_rotations():
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    for dy, dx in [(0, 0), (1, -2), (-3, 3)]:
        m = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
        m[:, 0, 2], m[:, 1, 2] = dx, dy
        np.testing.assert_allclose(apply(x, m).numpy(), shift_np(x.numpy(), dy, dx, 3), atol=1e-12)
    r = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64).repeat(2, 1, 1)  # 90°
    np.testing.assert_allclose(apply(x, r).numpy(), np.rot90(x.numpy(), 1, axes=(2, 3)), atol=1e-12)


def _maps(transforms, n_rows=4000, seed=0, calls=1):
    tr = Transformed(object(), transforms, list(range(seed, seed + n_rows)))
    return [tr._maps(torch.device("cpu"), torch.float64)[0] for _ in range(calls)]


def test_draws_follow_their_distributions():
    (m,) = _maps([ldam.Rotate(20)])
    angles = torch.atan2(m[:, 1, 0], m[:, 0, 0]).numpy()
    assert stats.kstest(angles, stats.uniform(loc=-math.radians(20), scale=math.radians(40)).cdf).pvalue > 1e-3
    (m,) = _maps([ldam.Scale((0.8, 1.25))])
    factors = 1 / m[:, 0, 0].numpy()
    assert stats.kstest(factors, stats.uniform(loc=0.8, scale=0.45).cdf).pvalue > 1e-3
    (m,) = _maps([ldam.Jitter(2)])
    counts = np.bincount((m[:, 0, 2].numpy() + 2).astype(int), minlength=5)
    assert counts.sum() == 4000 and stats.chisquare(counts).pvalue > 1e-3
    assert stats.pearsonr(m[:, 0, 2].numpy(), m[:, 1, 2].numpy())[1] > 1e-3  # dx, dy independent


def test_a_chains_draws_do_not_depend_on_the_batch():
    both = _maps([ldam.Jitter(4), ldam.Rotate(10)], n_rows=6, calls=3)
    alone = Transformed(object(), [ldam.Jitter(4), ldam.Rotate(10)], [3])
    for k in range(3):
        np.testing.assert_array_equal(alone._maps(torch.device("cpu"), torch.float64)[0][0].numpy(), both[k][3].numpy())
    assert not torch.equal(both[0][0], both[1][0])  # a fresh draw per evaluation


def test_the_stochastic_gradient_is_unbiased():
    """For a linear neuron ``f = w·x``, ``∇E_τ f(τ(x)) = E_τ[Sτᵀ w]``: the mean over all 25 shifts of
    Jitter(2), built with numpy, must equal the average of the one-draw estimates."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 5, 5, dtype=torch.float64, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 1, bias=False, dtype=torch.float64))
    with torch.no_grad():
        model[1].weight.copy_(w.view(1, 25))
    basis = np.eye(25).reshape(25, 1, 5, 5)
    exact = np.zeros(25)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            s = shift_np(basis, dy, dx, 2).reshape(25, 25)  # row i: the shift of basis image i
            exact += s @ w.numpy().ravel() / 25  # ∂(w·Sx)/∂x_i = Σ_j w_j S[j, i]
    chains, calls = 200, 100
    sampler = ldam.Sampler(model, "output:0", (1, 5, 5), chains=chains, transforms=[ldam.Jitter(2)])
    x = torch.randn(chains, 1, 5, 5, dtype=torch.float64)
    grads = []
    with sampler.attached():
        for _ in range(calls):
            grads.append(sampler.energy.activation(x)[1].reshape(chains, 25))
    gs = torch.cat(grads).numpy()
    se = gs.std(0) / math.sqrt(len(gs))
    assert np.all(np.abs(gs.mean(0) - exact) < 5 * se + 1e-12)
    assert np.abs(gs.mean(0) - w.numpy().ravel()).max() > 10 * se.max()  # the transforms matter here


def test_metropolis_methods_refuse_transforms_and_sgld_uses_them():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    for method in ("mala", "pmala", "hmc", ldam.HMC(leapfrog=3)):
        with pytest.raises(ValueError, match="needs the exact energy"):
            ldam.Sampler(model, "output:0", (3, 8, 8), method=method, transforms=[ldam.Jitter(1)])
    s = ldam.Sampler(model, "output:0", (3, 8, 8), transforms=[ldam.Jitter(1)])
    with pytest.raises(ValueError, match="needs the exact energy"):
        s.set_method("mala")
    res = ldam.sample(model, "output:0-2", (3, 8, 8), chains=2, steps=20, transforms=[ldam.Rotate(5)],
                      method="ascent", step_size=0.05)
    assert res.config["transforms"] == ["Rotate(degrees=5)"]
    with pytest.raises(ldam.ShapeError, match="images"):
        ldam.sample(nn.Linear(4, 2), "output:0", (4,), steps=2, transforms=[ldam.Jitter(1)])
