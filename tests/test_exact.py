"""The exact samplers (MALA with reflection, pMALA, HMC) against answers known in closed form.

* ``f(x) = w·x + b`` with ``L2(λ)``: ``p = N(w/λ, (T/λ) I)``, and with a hard box the product of
  truncated normals, whose moments are computed here from the normal CDF;
* the folded (reflected) Gaussian proposal density against a sum over many more images and a
  Monte Carlo histogram of folds made by ``Box.reflect_``;
* step-size adaptation in a streaming sampler without burn-in;
* each method's stability bound against the spectral radius of its linear update and the
  noiseless sampler itself;
* the ESS estimator against an AR(1) process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ldam
from ldam.analysis import ess
from ldam.samplers import folded_normal_logpdf
from conftest import require_data
from models import LinearNeuron, SmallConvNet

ROOT = Path(__file__).resolve().parent.parent
W16 = torch.linspace(-1.5, 1.5, 16).reshape(1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small operations: one thread is faster


def gaussian_run(method, step_size, T=1.0, lam=2.0, steps=3000, burn_in=600, chains=64, w=W16, box=None, seed=0):
    regs = [ldam.L2(lam)] + ([box] if box is not None else [])
    return ldam.sample(LinearNeuron(w), "output:0", input_shape=tuple(w.shape), chains=chains, steps=steps,
                       step_size=step_size, temperature=T, regularizers=regs, method=method, burn_in=burn_in, seed=seed)


def moments(res):
    s = res.samples.double().flatten(2)  # [chains, kept, D]
    return s.mean((0, 1)), s.var((0, 1))


def truncnorm_moments(mu, sigma, lo, hi):
    """Mean and variance of N(mu, sigma²) restricted to [lo, hi] (closed form, float64 numpy)."""
    mu = np.asarray(mu, dtype=float)
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    pdf = lambda z: np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))  # noqa: E731
    z = cdf(b) - cdf(a)
    r = (pdf(a) - pdf(b)) / z
    mean = mu + sigma * r
    var = sigma**2 * (1 + (a * pdf(a) - b * pdf(b)) / z - r * r)
    return mean, var


# ---- exact on the Gaussian at a large step -----------------------------------------------------

@pytest.mark.parametrize("method", ["pmala", "hmc"])
def test_exact_methods_match_the_gaussian_at_a_large_step(method):
    T, lam = 1.0, 2.0
    eps = 1.0 * T / lam  # ελ/T = 1, where SGLD's variance is off by 1/(1 − 1/4) = +33 %
    res = gaussian_run(method, eps, T=T, lam=lam)
    mean, var = moments(res)
    sigma2 = T / lam
    assert (mean - W16.double().flatten() / lam).abs().max() < 0.02 * math.sqrt(sigma2), mean
    assert (var / sigma2 - 1).abs().max() < 0.02, var / sigma2
    assert res.acceptance is not None and 0.4 < float(res.acceptance.mean()) < 0.95


def test_sgld_fails_the_same_test():
    T, lam = 1.0, 2.0
    res = gaussian_run("sgld", 1.0 * T / lam, T=T, lam=lam)
    _, var = moments(res)
    assert (var / (T / lam) - 1).min() > 0.25  # every pixel: +33 % in theory


@pytest.mark.parametrize("kind,ratio", [("rms", 2.5), ("variance", 10.0)])
def test_pmala_is_exact_on_an_anisotropic_gaussian_with_its_learned_metric(kind, ratio):
    """f = w·x − ½ Σ c_i x_i² with L2(λ): precision (λ + c_i)/T per pixel, a 21:1 range of
    variances, where the learned metric differs from the identity."""

    class Quadratic(torch.nn.Module):
        def __init__(self, w, c):
            super().__init__()
            self.register_buffer("w", w.flatten())
            self.register_buffer("c", c.flatten())

        def forward(self, x):
            x = x.flatten(1)
            return (x @ self.w - 0.5 * (self.c * x * x).sum(1)).unsqueeze(1)

    T, lam = 1.0, 1.0
    c = torch.linspace(0.0, 20.0, 16)
    w = torch.linspace(-2.0, 2.0, 16)
    res = ldam.sample(Quadratic(w, c), "output:0", input_shape=(16,), chains=64, steps=3000, burn_in=600,
                      step_size=0.2, temperature=T, regularizers=[ldam.L2(lam)],
                      method=ldam.PMALA(metric_kind=kind))
    mean, var = moments(res)
    prec = (lam + c.double()) / T
    assert ((mean - w.double() / (lam + c.double())) * prec.sqrt()).abs().max() < 0.03  # in units of σ_i
    assert (var * prec - 1).abs().max() < 0.03, var * prec
    # the metric did learn the anisotropy: larger steps along the wide directions
    s = ldam.Sampler(Quadratic(w, c), "output:0", (16,), chains=8, step_size=0.2, regularizers=[ldam.L2(lam)],
                     method=ldam.PMALA(metric_kind=kind), burn_in=300)
    s.run(400)
    g = s.method.preconditioner.mean(0)
    # RMS metric ~ 1/√precision: √21 ≈ 4.6; variance metric ~ 1/precision: 21
    assert g[0] / g[-1] > ratio, g[0] / g[-1]


# ---- reflection at hard walls ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mala", "pmala", "hmc"])
def test_reflected_samplers_match_the_truncated_gaussian(method):
    """A few pixels, box [0, 1] and means below, inside and above it: truncated normals."""
    T, lam = 0.5, 2.0
    w = torch.tensor([-1.0, 0.0, 0.6, 1.2, 2.0, 3.0]).reshape(1, 6)
    res = gaussian_run(method, 0.3, T=T, lam=lam, w=w, box=ldam.Box(0.0, 1.0), steps=3000, burn_in=600)
    assert res.samples.min() >= 0 and res.samples.max() <= 1
    mean, var = moments(res)
    want_mean, want_var = truncnorm_moments(w.flatten().double().numpy() / lam, math.sqrt(T / lam), 0.0, 1.0)
    np.testing.assert_allclose(mean.numpy(), want_mean, atol=0.01)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=0.05)
    assert float(res.acceptance.mean()) > 0.3


def test_reflected_mala_moves_in_784_dimensions_where_rejecting_outside_proposals_cannot():
    """Half the mass of every pixel at the lower wall: the old MALA rejected any proposal with
    one pixel outside, which is every proposal here; the reflected MALA accepts most."""
    T, lam, eps = 0.18, 2.0, 0.004  # σ = 0.3 per pixel, box [0, 1]
    w = torch.linspace(-0.6, 0.6, 784).reshape(1, 28, 28)  # means w/λ in [−0.3, 0.3]
    box = ldam.Box(0.0, 1.0)
    s = ldam.Sampler(LinearNeuron(w), "output:0", (1, 28, 28), chains=16, step_size=eps, temperature=T,
                     regularizers=[ldam.L2(lam), box], method=ldam.MALA(adapt=False), burn_in=300, init_scale=0.3)
    s.run(2300)
    res = s.result()
    assert float(res.acceptance.mean()) > 0.3
    # the proposals the old sampler would have judged: x + (ε/2)∇log p + √ε ξ at the kept states
    x = res.samples[:, ::100].flatten(0, 1).double()
    grad = (w.double() - lam * x) / T
    prop = x + eps / 2 * grad + math.sqrt(eps) * torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                                               dtype=torch.float64)
    inside = ((prop >= 0) & (prop <= 1)).flatten(1).all(1).double().mean()
    assert float(inside) < 0.01  # so its acceptance would have been below 1 %
    mean, var = moments(res)
    want_mean, want_var = truncnorm_moments(w.flatten().double().numpy() / lam, math.sqrt(T / lam), 0.0, 1.0)
    assert np.abs(mean.numpy() - want_mean).mean() < 0.01
    assert abs(var.numpy().mean() / want_var.mean() - 1) < 0.03


# ---- the folded proposal density ---------------------------------------------------------------

def _images_reference(y, m, s, lo, hi, k=400):
    w = hi - lo
    ks = torch.arange(-k, k + 1, dtype=torch.float64).view(-1, 1)
    z = torch.cat([y + 2 * ks * w, 2 * lo - y + 2 * ks * w])
    return torch.logsumexp(-0.5 * ((z - m) / s) ** 2, 0) - math.log(s) - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("s", [0.003, 0.05, 0.25, 0.4, 0.6, 1.2, 8.0])  # closed form, images, cosine series
def test_folded_density_against_a_sum_over_many_images(s):
    lo, hi = -0.5, 1.0
    g = torch.Generator().manual_seed(1)
    y = torch.rand(3000, generator=g, dtype=torch.float64) * (hi - lo) + lo
    y[:20], y[20:40] = lo, hi  # on the walls
    m = torch.randn(3000, generator=g, dtype=torch.float64) * 3 + 0.2  # means in and far outside the box
    got = folded_normal_logpdf(y, m, s, lo, hi)
    ref = _images_reference(y, m, s, lo, hi)
    assert torch.isfinite(ref).all() and (ref > -5).sum() > 20  # some near the mode, others far in the tails
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-9)


def test_folded_density_with_mixed_widths_in_one_call():
    lo = torch.tensor([[0.0, -1.0, 0.0, 2.0]])
    hi = torch.tensor([[1.0, 1.0, 0.1, 3.0]])
    s = torch.tensor([[0.02, 0.3, 0.2, 0.7]])  # s/W = 0.02, 0.15, 2, 0.7
    y = torch.tensor([[0.01, 0.9, 0.05, 2.99]])
    m = torch.tensor([[-0.3, 1.4, 0.3, 1.0]])
    got = folded_normal_logpdf(y, m, s, lo, hi)
    for i in range(4):
        ref = _images_reference(y[0, i:i + 1].double(), m[0, i].double(), float(s[0, i]), float(lo[0, i]), float(hi[0, i]))
        assert float(got[0, i]) == pytest.approx(float(ref), abs=1e-9)


@pytest.mark.parametrize("m,s", [(0.05, 0.1), (-0.2, 0.3), (1.3, 0.5), (0.5, 2.0)])
def test_folded_density_against_a_monte_carlo_histogram_of_reflected_draws(m, s):
    lo, hi, n, bins = 0.0, 1.0, 400_000, 40
    z = torch.randn(1, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * s + m
    y = ldam.Box(lo, hi).reflect_(z)[0]  # the sampler's own fold, independent of the density code
    counts = torch.histc(y, bins, lo, hi)
    per_bin = 200
    grid = torch.linspace(lo, hi, bins * per_bin + 1, dtype=torch.float64)
    dens = folded_normal_logpdf(grid, torch.tensor(m), s, lo, hi).exp()
    mass = torch.stack([torch.trapezoid(dens[i * per_bin:(i + 1) * per_bin + 1], grid[i * per_bin:(i + 1) * per_bin + 1])
                        for i in range(bins)])
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-6)  # a density on [lo, hi]
    expected = mass * n
    z_scores = (counts.double() - expected) / expected.sqrt()
    assert z_scores.abs().max() < 4.5, z_scores


# ---- adaptation in a streaming sampler ---------------------------------------------------------

def test_streaming_adaptation_reaches_the_target_acceptance_and_restarts():
    lam = 2.0
    s = ldam.Sampler(LinearNeuron(W16), "output:0", (1, 4, 4), chains=32, step_size=20.0, temperature=1.0,
                     regularizers=[ldam.L2(lam)], method="mala", burn_in=0)
    m = s.method
    s.run(3)
    assert float(m.recent_acceptance.mean()) < 0.1  # ε 40x too large: all rejected at first
    fixed = ldam.Sampler(LinearNeuron(W16), "output:0", (1, 4, 4), chains=32, step_size=20.0, temperature=1.0,
                         regularizers=[ldam.L2(lam)], method=ldam.MALA(adapt=False), burn_in=0)
    fixed.run(m.adapt_steps)
    assert float(fixed.method.recent_acceptance.mean()) < 0.05  # and so it stays without adaptation
    s.run(m.adapt_steps - 3)
    assert not m.adapting
    s.run(1)  # the first step after the window takes the averaged scale
    scale = m.step_scale().clone()
    s.run(300)
    torch.testing.assert_close(m.step_scale(), scale)  # frozen after the window: the chain is exact
    rate = float(m.recent_acceptance.mean())
    assert 0.45 < rate < 0.7, rate
    # cool by 100x: the learned step is now far too large; a restarted window re-learns it
    s.temperature = 0.01
    s.run(100)
    assert float(m.recent_acceptance.mean()) < 0.15
    m.restart_adaptation()
    assert m.adapting
    s.run(m.adapt_steps + 300)
    rate = float(m.recent_acceptance.mean())
    assert 0.45 < rate < 0.7, rate
    assert float(m.step_scale().mean()) < float(scale.mean()) / 20


def test_adaptation_also_runs_through_a_long_burn_in_then_freezes():
    s = ldam.Sampler(LinearNeuron(W16), "output:0", (1, 4, 4), chains=8, step_size=0.5, regularizers=[ldam.L2(2.0)],
                     method=ldam.HMC(adapt_steps=50), burn_in=200)
    s.run(199)
    assert s.method._n_adapt == 199  # beyond adapt_steps: burn-in still lasts
    s.run(2)  # burn-in ends at step 200, the averaged scale is taken at step 201
    frozen = s.method.step_scale().clone()
    s.run(20)
    torch.testing.assert_close(s.method.step_scale(), frozen)


def test_warmup_steps_are_sgld_steps_then_exact_ones():
    kw = dict(chains=4, step_size=0.05, temperature=0.5, regularizers=[ldam.L2(1.0), ldam.Box(-1.0, 0.5)], burn_in=30)
    warm = ldam.Sampler(LinearNeuron(W16), "output:0", (1, 4, 4), method=ldam.HMC(warmup=20), **kw)
    sgld = ldam.Sampler(LinearNeuron(W16), "output:0", (1, 4, 4), method="sgld", **kw)
    warm.run(20)
    sgld.run(20)
    assert torch.equal(warm.x, sgld.x)  # the same noise, the same unadjusted moves
    assert warm.method.recent_acceptance is None and warm.method._n_adapt == 0
    warm.run(10)
    assert warm.method._proposed == 10 and warm.method._n_adapt == 10
    assert not torch.allclose(warm.x, sgld.x)


# ---- stability bounds --------------------------------------------------------------------------

class ZeroNoise:
    """Stands in for the chains' noise: the noiseless update."""

    def __init__(self, noise):
        self._noise = noise

    def normal(self):
        return torch.zeros(self._noise.batch, *self._noise.shape)

    def uniform(self):
        return self._noise.uniform()


def _growth(method, step, lam=0.5, T=0.2, steps=300, warm=None):
    """max |x| after / before ``steps`` noiseless steps on λ/2‖x‖² (the neuron's weights are 0)."""
    s = ldam.Sampler(LinearNeuron(torch.zeros(1, 3, 3)), "output:0", (1, 3, 3), chains=4, step_size=step,
                     temperature=T, regularizers=[ldam.L2(lam)], method=method, burn_in=0)
    s.noise = ZeroNoise(s.noise)
    if warm is not None:
        warm(s)
    x0 = s.x.abs().amax().item()
    try:
        s.run(steps)
    except ldam.DivergenceError:
        return math.inf  # the sampler's own check saw the chains blow up
    return s.x.abs().amax().item() / x0


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9, 0.99])
def test_paper_bound_is_where_the_linear_update_turns_unstable(mu):
    lam, s = 0.7, 3.0
    bound = ldam.Paper(momentum=mu, scale=s).stable_step(lam, 1.0)

    def radius(eta):  # [x, m] ← A [x, m] on the quadratic alone
        c = 2 * eta * lam * (1 - mu)
        a = np.array([[1 - c, s * eta * mu], [-(1 - mu) * 2 * lam / s, mu]])
        return max(abs(np.linalg.eigvals(a)))

    assert radius(0.999 * bound) < 1 < radius(1.001 * bound)


def test_every_bound_against_the_noiseless_sampler():
    lam, T = 0.5, 0.2
    sgld = ldam.SGLD().stable_step(lam, T)
    assert sgld == pytest.approx(4 * T / lam)
    assert _growth("sgld", 0.97 * sgld, lam, T) < 1e-3 < 1e3 < _growth("sgld", 1.03 * sgld, lam, T)
    paper = ldam.Paper().stable_step(lam, T)
    assert _growth(ldam.Paper(), 0.97 * paper, lam, T, steps=1500) < 1e-3
    assert _growth(ldam.Paper(), 1.03 * paper, lam, T, steps=1500) > 1e3

    # pSGLD: the bound uses the current preconditioner, which the first step creates
    assert ldam.PSGLD().stable_step(lam, T) is None

    def psgld(factor):
        m = ldam.PSGLD()

        def warm(s):
            s.run(1)
            s.step_size = factor * m.stable_step(lam, T)
        return _growth(m, 1e-6, lam, T, steps=600, warm=warm)

    # only the pixel with the largest G moves at the edge: compare each run's largest pixel
    assert psgld(1.03) > 10 * psgld(0.97)
    assert psgld(0.97) <= 1.0 + 1e-6 and psgld(1.03) > 10
    for m in (ldam.SGLD(), ldam.PSGLD(), ldam.Paper(), ldam.MALA(), ldam.PMALA(), ldam.HMC()):
        assert m.stable_step(0.0, T) is None
    for m in (ldam.MALA(), ldam.PMALA(), ldam.HMC()):
        assert m.stable_step(lam, T) is None  # they reject overshooting moves


# ---- ESS -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("phi", [0.0, 0.6, 0.9, -0.5])
def test_ess_of_an_ar1_process(phi):
    """x_t = φ x_{t−1} + e_t: τ = (1 + φ)/(1 − φ), so ESS = n·m·(1 − φ)/(1 + φ)."""
    rng = np.random.default_rng(3)
    n, m = 20000, 4
    e = rng.normal(size=(n, m))
    x = np.empty((n, m))
    x[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    want = n * m * (1 - phi) / (1 + phi)
    assert ess(x) == pytest.approx(want, rel=0.1)
    assert ess(torch.from_numpy(x[:, 0])) == pytest.approx(n * (1 - phi) / (1 + phi), rel=0.15)


def test_ess_counts_chains_stuck_in_different_places_as_few_samples():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 4)) * 0.1 + np.array([0.0, 5.0, 10.0, 15.0])  # iid within, apart between
    assert ess(x) < 0.01 * x.size
    assert sum(ess(x[:, j]) for j in range(4)) == pytest.approx(x.size, rel=0.15)
    assert math.isnan(ess(np.ones((100, 2))))


# ---- the live UI and the benchmark -------------------------------------------------------------

@pytest.mark.parametrize("method", ["pmala", "hmc"])
def test_the_live_session_shows_acceptance_and_restarts_adaptation(method):
    from ldam.web.session import LiveSession, ModelEntry

    entry = ModelEntry.from_model("lin", LinearNeuron(W16), (1, 4, 4))
    frames: list[dict] = []
    session = LiveSession({"lin": entry}, frames.append, max_fps=0)
    try:
        session.submit("set", {"method": method, "steps_per_frame": 5})
        session.submit("start", {"model": "lin", "layer": "output", "unit": 0, "chains": 4})
        deadline = time.time() + 30
        while time.time() < deadline and not any(f.get("stats", {}).get("acceptance") is not None for f in frames):
            time.sleep(0.05)
        shown = [f["stats"]["acceptance"] for f in frames if f.get("stats", {}).get("acceptance") is not None]
        assert shown and 0.0 <= shown[-1] <= 1.0
        s = session.sampler
        assert s.method.name == method
        while time.time() < deadline and s.method._n_adapt < s.method.adapt_steps:
            time.sleep(0.05)
        assert not s.method.adapting
        session.submit("set", {"temperature": 0.5})
        while time.time() < deadline and not s.method.adapting:
            time.sleep(0.01)
        assert s.method.adapting  # the temperature change restarted adaptation
    finally:
        session.stop()


def test_benchmark_runs_in_quick_mode(tmp_path):
    require_data("mnist/train-images-idx3-ubyte.gz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_exact.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| hmc | 2x |" in proc.stdout and (tmp_path / "results-quick.json").exists()


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_the_prior_at_the_current_state_is_reused_exactly(method, monkeypatch):
    """Issue 11: the accepted side of the last step already computed Σ λR and its gradient.
    Reusing it gives bit-identical chains with one prior evaluation fewer per step; a critic
    (not static) is never reused."""
    from ldam.energy import Energy

    def run(cache: bool):
        calls = []
        real = Energy.prior

        def counted(self, x, with_value=True):
            calls.append(with_value)
            return real(self, x, with_value)

        monkeypatch.setattr(Energy, "prior", counted)
        if not cache:
            monkeypatch.setattr(Energy, "prior_key", lambda self: None)
        res = ldam.sample(SmallConvNet(), ["fc:1", "conv2:0"], input_shape=(1, 12, 12), chains=3, steps=25,
                          burn_in=5, step_size=0.01, method=method,
                          regularizers=[ldam.L2(0.5), ldam.TotalVariation(0.2), ldam.Box(-2.0, 2.0, weight=1.0)])
        monkeypatch.undo()
        return res, len(calls)

    cached, n_cached = run(True)
    fresh, n_fresh = run(False)
    assert torch.equal(cached.samples, fresh.samples) and torch.equal(cached.activations, fresh.activations)
    assert n_fresh - n_cached == 25 - 1  # every step but the first reuses the current state's prior
