"""Where the chains live: the input ``x`` itself, or a latent ``z`` with ``x = Φ(z)``.

With a parameterization the sampled density is stated in ``z``:

    log p(z) = ( f(Φ(z)) − Σ_i λ_i R_i(Φ(z)) ) / T − ½ ‖z‖² / σ²

The activation and the image-space regularizers see ``x = Φ(z)``; the Gaussian on ``z`` is not
divided by ``T`` (it is the prior on images that ``Φ`` induces, and stays the same when the
temperature changes). Every method moves ``z``, using ``∇_z log p = J_Φᵀ ∇_x(…)/T − z/σ²``;
results are returned as images ``x``.

``Spectral``   ``x = M · irfft2(s ⊙ z)``: 1/f^decay amplitudes and a colour-correlation square
               root ``M``; linear, so the Gaussian on ``z`` is a Gaussian process on images with
               a natural spectrum (covariance ``σ² Φ Φᵀ``).
``Generator``  ``x = G(h)`` for a generator network ``G`` (PPGN-style): Langevin in its latent
               space under the standard normal prior of a GAN or VAE.

A hard :class:`~ldam.Box` still applies to ``x``. For the linear, invertible spectral map,
unadjusted methods fold ``x`` back into the box and move ``z`` by the pre-image of that change;
Metropolis methods treat the box as the support of ``p`` (a proposal whose image leaves it is
rejected), which keeps them exact.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from .energy import Energy
from .errors import ShapeError

#: Colour covariance of scikit-image's sample photos (``ldam.data.photos``: chelsea, coffee,
#: rocket, motorcycle, astronaut at 224 px), pixel values in [0, 1], channels R, G, B. Measured
#: with :func:`color_covariance`; ``tests/test_parameterization.py`` measures it again.
PHOTO_COVARIANCE = ((0.0730, 0.0479, 0.0299),
                    (0.0479, 0.0523, 0.0460),
                    (0.0299, 0.0460, 0.0513))


def color_covariance(images: torch.Tensor) -> torch.Tensor:
    """The ``C × C`` covariance of the pixel colours of ``images`` ``[N, C, H, W]`` (float64)."""
    if images.dim() != 4:
        raise ShapeError(f"color_covariance wants images [N, C, H, W], got {list(images.shape)}")
    p = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return torch.cov(p)


def color_root(cov: torch.Tensor | Sequence[Sequence[float]], std: Sequence[float] | None = None) -> torch.Tensor:
    """A square root ``M`` of a colour covariance (``M Mᵀ ∝ C``), scaled to a mean channel variance
    of 1: ``M = U √(S / mean S)`` from ``C = U S Uᵀ``. With ``std`` (the model's per-channel
    normalization) the covariance is first put in the model's units, ``diag(1/std) C diag(1/std)``."""
    c = torch.as_tensor(cov, dtype=torch.float64)
    if std is not None:
        d = 1.0 / torch.as_tensor(std, dtype=torch.float64)
        c = d[:, None] * c * d[None, :]
    u, s, _ = torch.linalg.svd(c)
    return u * (s / s.mean()).sqrt()


class Parameterization:
    """Base class: ``x = Φ(z)`` with a Gaussian ``N(0, σ² I)`` on ``z``.

    Subclasses give :meth:`bind` (the latent shape for an input shape) and :meth:`forward`;
    :meth:`pullback` (``J_Φᵀ g``) defaults to autograd. An invertible linear map also gives
    :meth:`lift` (a change of ``x`` as a change of ``z``), used to keep a hard box.
    """

    name = "pixel"
    sigma: float = 1.0
    linear: bool = False

    def bind(self, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pullback(self, z: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
        """``J_Φ(z)ᵀ gx`` per row (a vector–Jacobian product)."""
        with torch.enable_grad():
            zr = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(zr), zr, gx)
        return g

    def lift(self, dx: torch.Tensor) -> torch.Tensor | None:
        """A ``dz`` with ``Φ(z + dz) = Φ(z) + dx``, or ``None`` when there is none to give."""
        return None

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Held while the chains run (a generator network is put in eval mode and restored)."""
        yield

    def describe(self) -> str:
        return repr(self)


@dataclass
class Spectral(Parameterization):
    """``x = M · irfft2(s ⊙ z)``: chains in the Fourier coefficients of the image.

    ``z`` has shape ``[C, H, W//2 + 1, 2]`` (real and imaginary parts of the half spectrum);
    ``s(k) = 1 / max(|k|, 1/max(H, W))^decay`` with ``|k|`` in cycles per pixel, scaled so that
    a white ``z`` gives images of unit mean pixel variance (:func:`spectral_scale`). Columns the real transform cannot
    hold (the imaginary parts at self-conjugate frequencies, the conjugate half of the first and
    Nyquist columns) are symmetrized away before the transform, so the map is the same on every
    FFT backend; those coordinates of ``z`` are not seen by ``f`` and stay ``N(0, σ²)``.

    ``M`` mixes the channels: the identity for ``decorrelate=False`` or a single channel, else
    :func:`color_root` of ``color`` (a covariance, default :data:`PHOTO_COVARIANCE`) in the
    model's units when ``std`` (its per-channel normalization) is given.
    """

    decay: float = 1.0
    decorrelate: bool = True
    sigma: float = 1.0
    color: Sequence[Sequence[float]] | torch.Tensor | None = None
    std: Sequence[float] | None = None
    name = "spectral"
    linear = True
    _scale: torch.Tensor | None = field(default=None, init=False, repr=False)
    _inv_scale: torch.Tensor | None = field(default=None, init=False, repr=False)
    _adj_scale: torch.Tensor | None = field(default=None, init=False, repr=False)
    _conj_sign: torch.Tensor | None = field(default=None, init=False, repr=False)
    _projects: bool = field(default=False, init=False, repr=False)
    _mix_t: torch.Tensor | None = field(default=None, init=False, repr=False)
    _mix: torch.Tensor | None = field(default=None, init=False, repr=False)
    _mix_inv: torch.Tensor | None = field(default=None, init=False, repr=False)
    _hw: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    _identity: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"Spectral needs sigma > 0, got {self.sigma}")
        if self.decay < 0:
            raise ValueError(f"Spectral needs decay >= 0, got {self.decay}")

    def bind(self, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ShapeError(
                f"Spectral parameterizes images [C, H, W]; this model's input is {list(input_shape)}. "
                "Use the pixel parameterization (the default) for other inputs"
            )
        c, h, w = (int(v) for v in input_shape)
        self._hw = (h, w)
        scale = spectral_scale(h, w, self.decay)
        # scales on the real view [h, w//2+1, 2], stored dense: a stride-0 broadcast over the last
        # dimension is several times slower than an elementwise product
        pair = scale[..., None].expand(h, w // 2 + 1, 2)
        self._scale = pair.to(device, dtype).contiguous()
        self._inv_scale = (1.0 / pair).to(device, dtype).contiguous()
        # the adjoint counts twice each coefficient whose conjugate the real transform implies
        last = w // 2 if w % 2 == 0 else w // 2 + 1
        weight = torch.ones(h, w // 2 + 1, 1, dtype=torch.float64)
        weight[:, 1:last] = 2.0
        self._adj_scale = (pair * weight).to(device, dtype).contiguous()
        self._conj_sign = torch.tensor([1.0, -1.0], device=device, dtype=dtype)
        self._projects = _c2r_projects(h, w, device, dtype)
        mix = torch.eye(c, dtype=torch.float64)
        if self.decorrelate and c > 1:
            cov = self.color if self.color is not None else PHOTO_COVARIANCE
            cov_t = torch.as_tensor(cov, dtype=torch.float64)
            if cov_t.shape != (c, c):
                raise ShapeError(f"Spectral's colour covariance is {list(cov_t.shape)} but the input has {c} channels")
            mix = color_root(cov_t, self.std)
        self._identity = bool(torch.equal(mix, torch.eye(c, dtype=torch.float64)))
        self._mix = mix.to(device, dtype)
        self._mix_inv = torch.linalg.inv(mix).to(device, dtype)
        self._mix_t = mix.t().contiguous().to(device, dtype)
        return (c, h, w // 2 + 1, 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert self._scale is not None and self._mix is not None, "bind() first"
        h, w = self._hw
        spec = z * self._scale
        if not self._projects:
            _hermitian_(spec, w, self._conj_sign)
        y = torch.fft.irfft2(torch.view_as_complex(spec), s=(h, w), norm="ortho")
        return y if self._identity else _mix_channels(self._mix, y)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """The minimum-norm ``z`` with ``Φ(z) = x`` (no part in the coordinates ``Φ`` does not see)."""
        assert self._scale is not None and self._mix_inv is not None, "bind() first"
        h, w = self._hw
        y = x if self._identity else _mix_channels(self._mix_inv, x)
        spec = torch.fft.rfft2(y, s=(h, w), norm="ortho")
        # rfft2 already gives the Hermitian-consistent half spectrum hermitian() produces
        return torch.view_as_real(spec).mul_(self._inv_scale)

    def pullback(self, z: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
        """``J_Φᵀ g`` in closed form (``Φ`` is linear, so no graph is built): ``g ↦ Mᵀ g``, then the
        adjoint of the orthonormal inverse real FFT, ``rfft2`` with the columns whose conjugates are
        implied counted twice (each such coefficient sets two entries of the full spectrum); the
        adjoint of :func:`hermitian` is itself (a projection), and ``rfft2`` of a real image is
        already Hermitian in those columns; last ``s ⊙ ·``."""
        assert self._scale is not None and self._mix is not None, "bind() first"
        h, w = self._hw
        gy = gx if self._identity else _mix_channels(self._mix_t, gx)
        spec = torch.fft.rfft2(gy, s=(h, w), norm="ortho")
        return torch.view_as_real(spec).mul_(self._adj_scale)

    def lift(self, dx: torch.Tensor) -> torch.Tensor:
        return self.inverse(dx)


def spectral_scale(h: int, w: int, decay: float) -> torch.Tensor:
    """``s(k) = 1 / max(|k|, 1/max(h, w))^decay`` on the ``[h, w//2 + 1]`` half spectrum (``|k|`` in
    cycles per pixel), normalized so that a white ``z`` gives a mean pixel variance of exactly 1.

    After :func:`hermitian`, by Parseval (``norm="ortho"``) the variance of the image is the sum
    over the half spectrum of ``s(k)²·n(k)``: ``n = 4`` in the columns whose conjugates are
    implied (real and imaginary parts each count twice), ``n = 1`` elsewhere (a pair of rows of an
    edge column share one conjugate pair; a self-conjugate entry keeps its real part only).
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    s = 1.0 / torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(h, w)) ** decay
    n = torch.full_like(s, 4.0)
    n[:, 0] = 1.0
    if w % 2 == 0:
        n[:, -1] = 1.0
    return s / ((s**2 * n).sum() / (h * w)).sqrt()


def hermitian(spec: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Make the columns of a half spectrum ``[..., h, w//2+1]`` that must be Hermitian on their own
    (the first column, and the last when ``w`` is even) Hermitian: ``X[k] ← (X[k] + conj X[−k]) / 2``
    along the rows. The real transform is then the same linear map on every backend."""
    if spec.shape[-2] != h:
        raise ShapeError(f"hermitian: the spectrum has {spec.shape[-2]} rows, not {h}")
    out = torch.view_as_real(spec.clone())
    _hermitian_(out, w, torch.tensor([1.0, -1.0], dtype=out.dtype, device=out.device))
    return torch.view_as_complex(out)


def _mix_channels(m: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``m`` applied to the channels of ``y [B, C, H, W]`` (a broadcast matmul: no permuted copies)."""
    return torch.matmul(m, y.reshape(y.shape[0], y.shape[1], -1)).reshape(y.shape)


def _c2r_projects(h: int, w: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this device's inverse real FFT already gives ``irfft2(X) = irfft2(hermitian(X))``
    for every ``X`` (true where the transform along the rows is complex and the last one keeps the
    real part of the self-conjugate columns, as pocketfft does); then :meth:`Spectral.forward` can
    skip the symmetrization. Probed on a random spectrum and its Hermitian projection."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, h, w // 2 + 1, 2, generator=gen, dtype=torch.float64).to(device, dtype)
    try:
        a = torch.fft.irfft2(torch.view_as_complex(x), s=(h, w), norm="ortho")
        b = torch.fft.irfft2(hermitian(torch.view_as_complex(x), h, w), s=(h, w), norm="ortho")
    except RuntimeError:  # a dtype the device's FFT lacks: keep the explicit symmetrization
        return False
    # the pixels are ~N(0, 1); a transform that used the non-Hermitian part differs by O(1)
    return bool(torch.allclose(a, b, atol=1e-3, rtol=0))


def _hermitian_(spec: torch.Tensor, w: int, conj_sign: torch.Tensor) -> torch.Tensor:
    """:func:`hermitian` in place on the real view ``[..., h, w//2+1, 2]``. Row ``−k`` of a column is
    row ``h − k``: row 0 pairs with itself and rows ``1..h−1`` with their reverse."""
    cols = spec[..., :: w // 2, :] if w % 2 == 0 else spec[..., 0:1, :]  # columns 0 and w/2, or 0
    tail = cols[..., 1:, :, :]
    tail.add_(tail.flip(-3).mul_(conj_sign)).mul_(0.5)
    cols[..., 0, :, 1] = 0.0
    return spec


@dataclass
class Generator(Parameterization):
    """``x = G(h)``: chains in the latent space of a generator network (PPGN-style).

    ``log p(h) = (f(G(h)) − Σλ R(G(h))) / T − ½‖h‖²/σ²``, the standard normal prior of a GAN or a
    VAE decoder for ``σ = 1``. ``G`` maps ``[B, *latent_shape]`` to the model's input (put any
    output range and normalization inside ``G``). ``G`` is run in eval mode and left as found.
    A hard :class:`~ldam.Box` cannot be kept in ``h`` (``G`` has no inverse): give ``G`` the range.

    **PPGN's denoising-autoencoder prior** (``denoiser=D``, ``denoiser_noise=σ_d``): a network ``D``
    trained to remove ``N(0, σ_d² I)`` noise from latents of real images estimates the score of
    their density, ``∇log p(h) ≈ (D(h) − h) / σ_d²`` (Alain & Bengio 2014), which replaces
    ``−h/σ²``. The prior is then known only through its gradient: unadjusted methods (SGLD, pSGLD,
    ascent) use it; Metropolis methods, which need ``log p`` itself, refuse it.
    """

    generator: nn.Module
    latent_shape: Sequence[int]
    sigma: float = 1.0
    denoiser: nn.Module | None = None
    denoiser_noise: float = 0.1
    name = "generator"

    def __post_init__(self) -> None:
        if not isinstance(self.generator, nn.Module):
            raise TypeError(f"Generator wants a torch.nn.Module, got {type(self.generator).__name__}")
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        if self.sigma <= 0:
            raise ValueError(f"Generator needs sigma > 0, got {self.sigma}")
        if self.denoiser is not None and not isinstance(self.denoiser, nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module, got {type(self.denoiser).__name__}")
        if self.denoiser_noise <= 0:
            raise ValueError(f"denoiser_noise must be > 0, got {self.denoiser_noise}")

    @property
    def implicit(self) -> bool:
        """True when the latent prior is known only through its score (a denoiser)."""
        return self.denoiser is not None

    def latent_score_penalty(self, h: torch.Tensor) -> torch.Tensor:
        """``−∇log p(h)`` as the denoiser estimates it: ``(h − D(h)) / σ_d²``."""
        assert self.denoiser is not None
        with torch.no_grad():
            return (h - self.denoiser(h)) / self.denoiser_noise**2

    def bind(self, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
        try:
            with self.guard(), torch.no_grad():
                out = self.generator(torch.zeros((2, *self.latent_shape), device=device, dtype=dtype))
        except RuntimeError as e:
            raise ShapeError(
                f"the generator failed on a latent batch [2, *{list(self.latent_shape)}] ({e}): check latent_shape"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != tuple(input_shape) or out.shape[0] != 2:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ShapeError(
                f"the generator maps [2, *{list(self.latent_shape)}] to {got}, but the model wants inputs "
                f"[batch, *{list(input_shape)}]: check latent_shape and the generator's output"
            )
        return self.latent_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    @contextmanager
    def guard(self) -> Iterator[None]:
        from .guard import model_guard

        nets = [self.generator] + ([self.denoiser] if self.denoiser is not None else [])
        with contextlib.ExitStack() as stack:
            for net in nets:
                stack.enter_context(model_guard(net))
            params = [p for net in nets for p in net.parameters()]
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(False)
            try:
                yield
            finally:
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)

    def __repr__(self) -> str:
        prior = (f"denoiser={type(self.denoiser).__name__}, denoiser_noise={self.denoiser_noise}"
                 if self.denoiser is not None else f"sigma={self.sigma}")
        return f"Generator({type(self.generator).__name__}, latent_shape={list(self.latent_shape)}, {prior})"


class LatentEnergy(Energy):
    """The energy of ``z`` for an image-space :class:`~ldam.energy.Energy` and a parameterization:
    ``log p(z) = (a·f(Φ(z)) − Σ λ R(Φ(z))) / T − ½‖z‖²/σ²``.

    It presents itself to the methods as an ordinary energy: :meth:`prior` returns ``T`` times the
    untempered Gaussian term plus the pulled-back image prior, so ``(a·f − prior) / T`` is
    ``log p(z)``. The sampler sets :attr:`temperature` before each step.
    """

    def __init__(self, inner: Energy, param: Parameterization):
        self.inner = inner
        self.param = param
        self.targets = inner.targets
        self.temperature = 1.0
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None
        if inner.boxes and not param.linear:
            raise ValueError(
                f"a hard Box cannot be kept by the {param.name} parameterization (it has no inverse): give "
                "the generator the input range itself, or use a soft box, ldam.Box(low, high, weight=...)"
            )
        if inner.mixer is not None:
            raise ValueError("a discriminator in mode='mix' works on pixels; with a parameterization use mode='density'")

    @property
    def regularizers(self):  # type: ignore[override]
        return self.inner.regularizers

    @regularizers.setter
    def regularizers(self, value) -> None:
        self.inner.regularizers = value

    @property
    def soft(self):  # type: ignore[override]
        return self.inner.soft

    @property
    def activation_scale(self) -> float:
        return self.inner.activation_scale

    @property
    def mixer(self):  # type: ignore[override]
        return None

    @property
    def boxes(self):  # type: ignore[override]
        return []  # the box is on x: kept by project_ and by the support in prior()

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """``Φ(z)``, remembered for the tensor it was computed from and its version counter (any
        in-place change of ``z`` makes it stale), so the box check after a step and the sampler's
        averaging share one evaluation."""
        last = self._last
        if last is not None and last[0] is z and last[1] == z._version:
            return last[2]
        with torch.no_grad():
            x = self.param.forward(z)
        self._last = (z, z._version, x)  # holding z keeps its storage from being reused by another tensor
        return x

    def activation(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.param.linear:  # x is usually cached (the box check or the average after the last step)
            f, gx = self.inner.activation(self.images(z))
            return f, self.param.pullback(z, gx)
        with torch.enable_grad():
            zr = z.detach().requires_grad_(True)
            x = self.param.forward(zr)
            f, gx = self.inner.activation(x.detach())
            (gz,) = torch.autograd.grad(x, zr, gx)
        return f, gz

    @property
    def implicit(self) -> bool:
        """True when the latent prior is known only through its score (no ``log p`` value)."""
        return bool(getattr(self.param, "implicit", False))

    def _latent_weight(self) -> float:
        return self.temperature / self.param.sigma**2

    def prior(self, z: torch.Tensor, with_value: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.implicit:  # T·(−score), so that (a·f − prior)/T has the denoiser's score; no value
            grad = self.param.latent_score_penalty(z).mul_(self.temperature)  # type: ignore[attr-defined]
            if self.inner.soft:
                _, gx = self.inner.prior(self.images(z), with_value=False)
                grad = grad + self.param.pullback(z, gx)
            return None, grad
        k = self._latent_weight()
        grad = z * k
        value = 0.5 * k * z.flatten(1).pow(2).sum(1) if with_value else None
        if self.inner.soft or (with_value and self.inner.boxes):
            x = self.images(z)
            if self.inner.soft:
                v, gx = self.inner.prior(x, with_value)
                grad = grad + self.param.pullback(z, gx)
                if with_value and v is not None:
                    value = value + v
            if with_value and self.inner.boxes:
                inside = self.inner.inside(x)
                value = torch.where(inside, value, torch.full_like(value, math.inf))
        return value, grad

    def prior_split(self, z: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        if self.implicit:
            return 0.0, self.prior(z, with_value=False)[1]
        rest = None
        if self.inner.soft:
            _, gx = self.inner.prior(self.images(z), with_value=False)
            rest = self.param.pullback(z, gx)
        return self._latent_weight(), rest

    def guarded_weight(self) -> float:
        """The latent Gaussian's ``T/σ²`` (curvature ``1/σ²`` in ``log p``): coordinates that ``f`` does
        not see feel only this term, so pSGLD keeps its steps stable there; 0 for a denoiser."""
        return 0.0 if self.implicit else self._latent_weight()

    def prior_key(self) -> tuple | None:
        if self.implicit:
            return None
        key = self.inner.prior_key()
        return None if key is None else (key, self.temperature, self.param.sigma)

    def inside(self, z: torch.Tensor) -> torch.Tensor | None:
        return self.inner.inside(self.images(z)) if self.inner.boxes else None

    def project_(self, z: torch.Tensor) -> torch.Tensor:
        if not self.inner.boxes:
            return z
        x = self.images(z)
        folded = self.inner.project_(x.clone())
        dx = folded - x
        if bool(dx.any()):
            z.add_(self.param.lift(dx))
            self._last = (z, z._version, folded)  # Φ is linear: Φ(z + lift(dx)) = x + dx
        return z


__all__ = ["Parameterization", "Spectral", "Generator", "LatentEnergy", "color_covariance", "color_root",
           "spectral_scale", "hermitian", "PHOTO_COVARIANCE"]
