"""Parameterizations (issue 12): the spectral map against a numpy re-implementation, its inverse,
and the exact density in the latent checked against the analytic Gaussian of a linear neuron;
the generator prior on a linear generator; gradient ascent against the analytic optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ldam
from ldam.parameterization import PHOTO_COVARIANCE, color_root

CPU = torch.device("cpu")


def np_spectral_matrix(c: int, h: int, w: int, decay: float, mix: np.ndarray) -> np.ndarray:
    """Φ as a matrix ``[n_latent, c·h·w]`` built with numpy's FFT, normalized to trace c·h·w."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    s = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** decay
    wf = w // 2 + 1
    n = c * h * wf * 2
    rows = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        z = e.reshape(c, h, wf, 2)
        spec = (z[..., 0] + 1j * z[..., 1]) * s
        for col in [0] + ([w // 2] if w % 2 == 0 else []):
            v = spec[:, :, col].copy()
            spec[:, :, col] = 0.5 * (v + np.conj(np.roll(v[:, ::-1], 1, axis=1)))
        y = np.fft.irfft2(spec, s=(h, w), norm="ortho")
        rows.append(np.einsum("dc,chw->dhw", mix, y).ravel())
    phi = np.array(rows)
    return phi * np.sqrt(c * h * w / (phi**2).sum())


@pytest.mark.parametrize("shape,decay,decorrelate", [((3, 6, 6), 1.0, True), ((3, 7, 6), 1.5, False),
                                                     ((1, 5, 8), 1.0, True), ((3, 6, 5), 0.0, True)])
def test_spectral_matches_numpy_and_inverts(shape, decay, decorrelate):
    c, h, w = shape
    sp = ldam.Spectral(decay=decay, decorrelate=decorrelate)
    zs = sp.bind(shape, CPU, torch.float64)
    assert zs == (c, h, w // 2 + 1, 2)
    mix = sp._mix.numpy()
    if decorrelate and c == 3:  # M Mᵀ is the photo covariance scaled to a mean channel variance of 1
        cov = np.array(PHOTO_COVARIANCE)
        np.testing.assert_allclose(mix @ mix.T, cov / np.trace(cov) * 3, rtol=1e-10)
    else:
        np.testing.assert_array_equal(mix, np.eye(c))
    phi = np_spectral_matrix(c, h, w, decay, mix)
    z = torch.randn(4, *zs, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = sp.forward(z)
    np.testing.assert_allclose(x.reshape(4, -1).numpy(), z.reshape(4, -1).numpy() @ phi, atol=1e-12)
    # on CPU the inverse real FFT already projects onto the Hermitian part (the probe says so), so the
    # forward map skips it; the explicit symmetrization that other backends use gives the same map
    assert sp._projects
    sp._projects = False
    np.testing.assert_allclose(sp.forward(z).reshape(4, -1).numpy(), z.reshape(4, -1).numpy() @ phi, atol=1e-12)
    sp._projects = True
    # a white z gives unit mean pixel variance exactly
    assert (phi**2).sum() / (c * h * w) == pytest.approx(1.0, rel=1e-12)
    # inverse: Φ(Φ⁻(x)) = x, and Φ⁻ is the minimum-norm pre-image (orthogonal to Φ's null space)
    xi = torch.randn(3, c, h, w, dtype=torch.float64)
    zi = sp.inverse(xi)
    np.testing.assert_allclose(sp.forward(zi).numpy(), xi.numpy(), atol=1e-10)
    zmin = np.linalg.lstsq(phi.T, xi.reshape(3, -1).numpy().T, rcond=None)[0].T
    np.testing.assert_allclose(zi.reshape(3, -1).numpy(), zmin, atol=1e-9)
    # the closed-form adjoint (no autograd graph) is the numpy matrix's transpose: Φᵀ g = φ g
    g = torch.randn(4, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gz = sp.pullback(z, g)
    assert gz.shape == z.shape
    np.testing.assert_allclose(gz.reshape(4, -1).numpy(), g.reshape(4, -1).numpy() @ phi.T, atol=1e-12)


def test_color_covariance_of_the_photos():
    """The stated constant is what the sample photos measure."""
    pytest.importorskip("skimage")
    from ldam.data.photos import load_photo, photo_names
    from ldam.parameterization import color_covariance

    cov = color_covariance(torch.stack([load_photo(n) for n in photo_names()]))
    np.testing.assert_allclose(cov.numpy(), np.array(PHOTO_COVARIANCE), atol=6e-5)


def test_color_root_in_model_units():
    std = [0.229, 0.224, 0.225]
    m = color_root(PHOTO_COVARIANCE, std).numpy()
    d = np.diag(1 / np.array(std))
    c = d @ np.array(PHOTO_COVARIANCE) @ d
    np.testing.assert_allclose(m @ m.T, c / np.trace(c) * 3, rtol=1e-10)


class Linear(nn.Module):
    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(int(np.prod(shape)), 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(1, int(np.prod(shape)), generator=g, dtype=torch.float64) * 0.5)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("l2", [0.0, 2.0])
def test_spectral_linear_neuron_is_the_analytic_gaussian(l2):
    """``log p(z) = (w·Φz − λ/2 ‖Φz‖²)/T − ½‖z‖²/σ²`` is Gaussian with precision
    ``A = λΦᵀΦ/T + I/σ²`` and mean ``A⁻¹Φᵀw/T``; MALA in z must sample it."""
    shape, temp, sigma = (3, 4, 4), 0.5, 0.8
    model = Linear(shape)
    sp = ldam.Spectral(sigma=sigma)
    regs = [ldam.L2(l2)] if l2 else []
    res = ldam.sample(model, "output:0", input_shape=shape, chains=400, steps=600, burn_in=599, method="mala",
                      step_size=0.3, temperature=temp, regularizers=regs, parameterization=sp, seed=3,
                      keep_samples=False, ema_tau=None)
    sp_ref = ldam.Spectral(sigma=sigma)
    zs = sp_ref.bind(shape, CPU, torch.float64)
    phi = np_spectral_matrix(*shape, 1.0, sp_ref._mix.numpy())
    w = model.fc.weight.detach().numpy().ravel()
    a = l2 * phi @ phi.T / temp + np.eye(len(phi)) / sigma**2
    cov_z = np.linalg.inv(a)
    mean_z = cov_z @ phi @ w / temp
    # the images: x = Φᵀ-layout of z, so x ~ N(phiᵀ mean_z, phiᵀ cov_z phi)
    mean_x, cov_x = mean_z @ phi, phi.T @ cov_z @ phi
    x = res.last.reshape(400, -1).numpy()  # one independent state per chain
    se = np.sqrt(np.diag(cov_x) / 400)
    assert np.all(np.abs(x.mean(0) - mean_x) < 5 * se + 1e-9), np.max(np.abs(x.mean(0) - mean_x) / se)
    var_ratio = x.var(0, ddof=1).mean() / np.diag(cov_x).mean()
    assert var_ratio == pytest.approx(1.0, abs=0.08)
    assert zs == (3, 4, 3, 2)


def test_spectral_box_keeps_images_inside():
    shape = (3, 6, 6)
    model = Linear(shape, seed=2)
    for method in ("sgld", "mala", "psgld", "paper", "ascent"):
        res = ldam.sample(model, "output:0", input_shape=shape, chains=4, steps=80, step_size=0.05, method=method,
                          regularizers=[ldam.Box(-0.5, 0.5)], parameterization=ldam.Spectral(), temperature=0.1)
        assert float(res.samples.abs().max()) <= 0.5 + 1e-9, method
        assert float(res.activations[-1].mean()) > float(res.activations[0].mean())


def test_generator_prior_on_a_linear_generator():
    """``x = A h + b`` with a linear neuron: ``log p(h) = w·(Ah + b)/T − ½‖h‖²/σ²``, so
    ``h ~ N(σ²Aᵀw/T, σ² I)`` and ``x ~ N(A mean_h + b, σ² A Aᵀ)``; the generator is left as found."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(5, 12, dtype=torch.float64), nn.Unflatten(1, (3, 2, 2)), nn.Dropout(0.5))
    gen.train()
    model = Linear((3, 2, 2), seed=4)
    temp, sigma = 0.7, 1.3
    flags = [p.requires_grad for p in gen.parameters()]
    res = ldam.sample(model, "output:0", input_shape=(3, 2, 2), chains=500, steps=400, burn_in=399, method="mala",
                      step_size=0.5, temperature=temp, parameterization=ldam.Generator(gen, (5,), sigma=sigma),
                      keep_samples=False, ema_tau=None, seed=1)
    assert gen.training and [p.requires_grad for p in gen.parameters()] == flags
    a = gen[0].weight.detach().numpy()
    b = gen[0].bias.detach().numpy()
    w = model.fc.weight.detach().numpy().ravel()
    mean_x = a @ (sigma**2 * a.T @ w / temp) + b
    cov_x = sigma**2 * a @ a.T
    x = res.last.reshape(500, -1).numpy()
    se = np.sqrt(np.diag(cov_x) / 500)
    assert np.all(np.abs(x.mean(0) - mean_x) < 5 * se)
    assert x.var(0, ddof=1).mean() / np.diag(cov_x).mean() == pytest.approx(1.0, abs=0.1)


def test_generator_refuses_a_hard_box_and_a_wrong_shape():
    gen = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="hard Box cannot be kept"):
        ldam.Sampler(model, "output:0", (3, 2, 2), regularizers=[ldam.Box(0, 1)],
                     parameterization=ldam.Generator(gen, (4,)))
    with pytest.raises(ldam.ShapeError, match="latent_shape"):
        ldam.Sampler(model, "output:0", (3, 2, 2), parameterization=ldam.Generator(gen, (5,)))
    with pytest.raises(ldam.ShapeError, match=r"images \[C, H, W\]"):
        ldam.Sampler(nn.Linear(6, 2), "output:0", (6,), parameterization=ldam.Spectral())


@pytest.mark.parametrize("spectral", [False, True])
def test_ascent_reaches_the_analytic_optimum(spectral):
    """A linear neuron with an L2 prior is concave; its maximum is ``w/λ`` in pixels, and
    ``A⁻¹Φᵀw/T`` (``A = λΦᵀΦ/T + I/σ²``) in the spectral latent."""
    shape, lam, temp = (3, 4, 4), 2.0, 0.5
    model = Linear(shape, seed=5)
    w = model.fc.weight.detach().numpy().ravel()
    kw = dict(parameterization=ldam.Spectral()) if spectral else {}
    for method, step in ((ldam.Ascent("gd"), 0.05), (ldam.Ascent("adam"), 0.01)):
        res = ldam.sample(model, "output:0", input_shape=shape, chains=3, steps=3000, step_size=step, method=method,
                          temperature=temp, regularizers=[ldam.L2(lam)], **kw)
        if spectral:
            sp = ldam.Spectral()
            sp.bind(shape, CPU, torch.float64)
            phi = np_spectral_matrix(*shape, 1.0, sp._mix.numpy())
            a = lam * phi @ phi.T / temp + np.eye(len(phi))
            want = np.linalg.solve(a, phi @ w / temp) @ phi
        else:
            want = w / lam
        got = res.last.reshape(3, -1).numpy()
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=2e-3, err_msg=method.optimizer)


def test_the_denoising_autoencoder_prior_uses_the_denoisers_score():
    """The optimal denoiser of ``N(0, I)`` latents under ``N(0, σ_d²)`` noise is ``D(h) = h/(1 + σ_d²)``,
    so its score estimate ``(D(h) − h)/σ_d²`` is that of ``N(0, (1 + σ_d²) I)``. With a linear generator
    and a linear neuron, SGLD must then sample ``h ~ N((1 + σ_d²) Aᵀw/T, (1 + σ_d²) I)`` (not the
    ``N(0, I)`` prior's ``N(Aᵀw/T, I)``); Metropolis methods refuse the prior."""
    torch.manual_seed(0)
    sd = 1.0
    gen = nn.Sequential(nn.Linear(4, 12, dtype=torch.float64), nn.Unflatten(1, (3, 2, 2)))
    den = nn.Linear(4, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        den.weight.copy_(torch.eye(4, dtype=torch.float64) / (1 + sd**2))
    den.train()
    model = Linear((3, 2, 2), seed=6)
    temp = 2.0
    param = ldam.Generator(gen, (4,), denoiser=den, denoiser_noise=sd)
    res = ldam.sample(model, "output:0", (3, 2, 2), chains=2000, steps=600, burn_in=599, step_size=0.02,
                      temperature=temp, parameterization=param, keep_samples=False, ema_tau=None, seed=2)
    assert den.training and all(p.requires_grad for p in den.parameters())
    a, b = gen[0].weight.detach().numpy(), gen[0].bias.detach().numpy()
    w = model.fc.weight.detach().numpy().ravel()
    var_h = 1 + sd**2
    mean_x = a @ (var_h * a.T @ w / temp) + b
    cov_x = var_h * a @ a.T
    x = res.last.reshape(2000, -1).numpy()
    se = np.sqrt(np.diag(cov_x) / 2000)
    assert np.all(np.abs(x.mean(0) - mean_x) < 5 * se + 0.02 * np.abs(mean_x))  # SGLD's O(ε) bias is ~1 %
    assert x.var(0, ddof=1).mean() / np.diag(cov_x).mean() == pytest.approx(1.0, abs=0.06)
    for method in ("mala", "hmc"):
        with pytest.raises(ValueError, match="only its gradient"):
            ldam.Sampler(model, "output:0", (3, 2, 2), method=method, parameterization=param)


def test_psgld_stays_stable_on_the_latent_coordinates_f_does_not_see():
    """The imaginary parts at self-conjugate frequencies feel only the latent Gaussian; started at 0
    their gradient vanishes and an uncapped RMS preconditioner 1/√V = 1/δ took steps ~10⁵ times too
    long (the chains diverged within a few steps; found with the README's spectral CLI example)."""
    shape = (3, 6, 6)
    model = Linear(shape, seed=7)
    zs = (3, 6, 4, 2)
    res = ldam.sample(model, "output:0", input_shape=shape, chains=3, steps=60, burn_in=1, step_size=0.05, method="psgld",
                      temperature=5e-4, regularizers=[ldam.Box(-1, 1)], parameterization=ldam.Spectral(),
                      init=torch.zeros(1, *zs, dtype=torch.float64))
    assert torch.isfinite(res.last).all() and float(res.samples.abs().max()) <= 1 + 1e-9


def test_spectral_on_a_backend_whose_inverse_fft_does_not_project(monkeypatch):
    """A backend may build the conjugate half of the self-conjugate columns from their upper rows
    instead of projecting (cuFFT leaves it undefined); the probe must notice, and the forward map
    must then symmetrize explicitly and still be the numpy matrix."""
    real_irfft2 = torch.fft.irfft2

    def upper_rows_irfft2(spec, s=None, norm=None):
        h, w = s
        spec = spec.clone()
        rev = (-torch.arange(h)) % h
        for col in [0] + ([w // 2] if w % 2 == 0 else []):
            upper = torch.arange(h) <= h // 2
            spec[..., ~upper, col] = spec[..., rev, col][..., ~upper].conj()
            spec[..., 0, col] = spec[..., 0, col].real
        return real_irfft2(spec, s=s, norm=norm)

    c, h, w = 3, 6, 6
    z = torch.randn(4, c, h, w // 2 + 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    honest = ldam.Spectral()
    honest.bind((c, h, w), CPU, torch.float64)
    assert honest._projects
    monkeypatch.setattr(torch.fft, "irfft2", upper_rows_irfft2)
    sp = ldam.Spectral()
    sp.bind((c, h, w), CPU, torch.float64)
    assert not sp._projects
    phi = np_spectral_matrix(c, h, w, 1.0, sp._mix.numpy())
    np.testing.assert_allclose(sp.forward(z).reshape(4, -1).numpy(), z.reshape(4, -1).numpy() @ phi, atol=1e-12)
    sp._projects = True  # skipping the symmetrization on such a backend would be wrong
    assert not np.allclose(sp.forward(z).reshape(4, -1).numpy(), z.reshape(4, -1).numpy() @ phi, atol=1e-6)
