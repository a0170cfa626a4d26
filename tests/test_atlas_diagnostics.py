"""ldam.atlas.diagnostics against direct-loop numpy references and known values: the ESS of AR(1)
chains, R̂ of iid chains and of chains with planted offsets, and dead or unconverged units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ldam.analysis import ess
from ldam.atlas.diagnostics import split_ess, split_rhat, unit_diagnostics
from ldam.atlas.topk import stream_topk


def ref_split(x: np.ndarray) -> np.ndarray:
    n, m = x.shape
    half = n // 2
    return np.array([[x[t, j] for j in range(m)] + [x[n - half + t, j] for j in range(m)] for t in range(half)])


def ref_rhat(x: np.ndarray) -> float:
    """Split-R̂ by loops (BDA3 §11.4)."""
    s = ref_split(x)
    n, m = s.shape
    means = [sum(s[t, j] for t in range(n)) / n for j in range(m)]
    w = sum(sum((s[t, j] - means[j]) ** 2 for t in range(n)) / (n - 1) for j in range(m)) / m
    grand = sum(means) / m
    b = n * sum((mu - grand) ** 2 for mu in means) / (m - 1)
    return math.sqrt(((n - 1) / n * w + b / n) / w)


def ref_ess(x: np.ndarray) -> float:
    """Stan's pooled ESS with autocovariances by direct sums and Geyer's initial monotone sequence."""
    n, m = x.shape
    means = x.mean(0)
    acov = np.array([[np.sum((x[: n - t, j] - means[j]) * (x[t:, j] - means[j])) / n for j in range(m)]
                     for t in range(n)])
    w = acov[0].mean() * n / (n - 1)
    b_over_n = np.var(means, ddof=1) if m > 1 else 0.0
    var_plus = (n - 1) / n * w + b_over_n
    rho = [1.0] + [1 - (w - acov[t].mean()) / var_plus for t in range(1, n)]
    tau, prev = -1.0, math.inf
    for k in range(n // 2):
        pair = rho[2 * k] + rho[2 * k + 1]
        if pair <= 0:
            break
        prev = min(prev, pair)
        tau += 2 * prev
    return n * m / max(tau, 1 / math.log10(n * m))


def ar1(n: int, m: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, m))
    x[0] = rng.standard_normal(m)
    e = rng.standard_normal((n, m)) * math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


@pytest.mark.parametrize("shape,phi,seed", [((301, 4), 0.5, 0), ((200, 3), 0.9, 1), ((157, 1), 0.2, 2)])
def test_rhat_and_ess_match_loop_references(shape, phi, seed):
    x = ar1(*shape, phi, seed) + np.linspace(0, 0.5, shape[1])
    assert split_rhat(x) == pytest.approx(ref_rhat(x), rel=1e-12)
    assert split_rhat(torch.from_numpy(x)) == pytest.approx(ref_rhat(x), rel=1e-12)
    assert ess(x) == pytest.approx(ref_ess(x), rel=1e-9)
    assert split_ess(x) == pytest.approx(ref_ess(ref_split(x)), rel=1e-9)


def test_ess_of_ar1_is_nm_times_1_minus_phi_over_1_plus_phi():
    # Over 20 seeds at n = 4000, m = 4, ESS / (n·m/3) had mean 0.98 and standard deviation 0.04
    # (range 0.91-1.05): 15% per seed is ~4 sd, 6% on the mean of five is ~3 sd of that mean.
    n, m, phi = 4000, 4, 0.5
    expected = n * m * (1 - phi) / (1 + phi)
    ratios = []
    for seed in range(5):
        x = ar1(n, m, phi, seed)
        for value in (ess(x), split_ess(x)):
            assert value == pytest.approx(expected, rel=0.15)
        ratios.append(ess(x) / expected)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.06)


def test_rhat_of_iid_chains_is_one():
    rng = np.random.default_rng(7)
    for _ in range(3):
        assert split_rhat(rng.standard_normal((5000, 4))) == pytest.approx(1.0, abs=0.01)


def test_rhat_with_planted_offsets_matches_analytic_value():
    rng = np.random.default_rng(8)
    n, mu = 20000, np.array([0.0, 0.4, 0.8, 1.6])
    x = rng.standard_normal((n, len(mu))) + mu
    half = n // 2
    between_over_n = np.var(np.repeat(mu, 2), ddof=1)
    expected = math.sqrt((half - 1) / half + between_over_n)
    assert split_rhat(x) == pytest.approx(expected, abs=0.01)
    assert expected > 1.15


def test_degenerate_traces():
    assert math.isnan(split_rhat(np.ones((3, 4))))
    assert math.isnan(split_rhat(np.full((100, 4), 2.5)))
    assert split_rhat(np.repeat([[0.0, 1.0]], 100, 0)) == math.inf
    assert math.isnan(ess(np.full((100, 4), 2.5)))


class DeadChannel(nn.Module):
    """conv → ReLU whose channel 1 has zero weights and bias −1, so it is always 0 after the ReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.conv = nn.Conv2d(1, 3, 3)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight[1] = 0
            self.conv.bias[1] = -1

    def forward(self, x):
        return self.relu(self.conv(x)).mean((2, 3))


def test_unit_diagnostics_flags_dead_and_unconverged_units():
    model = DeadChannel()
    data = torch.randn(40, 1, 8, 8)
    top = stream_topk(model, "relu", data, 3)
    with torch.no_grad():
        values = model.relu(model.conv(data))
    np.testing.assert_array_equal(top.max.numpy(), values.amax((0, 2, 3)).numpy())
    nonnegative = bool((top.min >= 0).all())
    assert nonnegative

    rng = np.random.default_rng(10)
    steps, burn, chains = 2000, 200, 4
    good = torch.from_numpy(rng.standard_normal((steps, 2 * chains)))
    split_levels = good.clone()
    split_levels[:, chains + 2:] += 3.0
    acceptance = torch.tensor([0.5, 0.7])
    for u, trace in enumerate([good, torch.zeros(steps, 2 * chains), split_levels]):
        d = unit_diagnostics(trace, 2, burn, acceptance, float(top.max[u]), float(top.min[u]), nonnegative)
        assert set(d) == {"rhat", "rhat_facet", "ess", "acceptance", "activation", "data_max", "dead", "converged"}
        kept = trace[burn:].numpy()
        assert d["dead"] is (u == 1)
        assert d["data_max"] == float(values[:, u].max())
        assert d["acceptance"] == pytest.approx(0.6)
        assert d["activation"] == pytest.approx(trace[-steps // 4:].mean().item(), rel=1e-12)
        if u == 1:
            assert math.isnan(d["rhat"]) and math.isnan(d["rhat_facet"]) and not d["converged"]
            continue
        per_facet = [ref_rhat(kept[:, f * chains:(f + 1) * chains]) for f in range(2)]
        assert d["rhat"] == pytest.approx(ref_rhat(kept), rel=1e-12)
        assert d["rhat_facet"] == pytest.approx(max(per_facet), rel=1e-12)
        assert d["ess"] == pytest.approx(ref_ess(ref_split(kept)), rel=1e-9)
        assert d["converged"] is (u == 0)
    assert unit_diagnostics(good, 2, burn, acceptance, float(top.max[0]), float(top.min[0]), nonnegative,
                            rhat_limit=1.1)["rhat_facet"] < 1.01

    d = unit_diagnostics(good, 1, 0, None, None, None, False)
    assert d["dead"] is None and d["acceptance"] is None and d["data_max"] is None and d["converged"]
    assert unit_diagnostics(good, 1, 0, None, 2.0, 2.0, False)["dead"] is True
    assert unit_diagnostics(good, 1, 0, None, 2.0, -1.0, False)["dead"] is False
