"""Transformation robustness: the activation averaged over small random transformations.

With transforms ``τ ~ q(τ)`` the activation term of the energy becomes

    f̄(x) = E_τ f(τ(x))

and each evaluation is estimated with ``k`` random transformations per chain:
``f̂(x) = (1/k) Σ_j f(τ_j(x))``, ``∇f̂(x) = (1/k) Σ_j J_τjᵀ ∇f(τ_j(x))``, an unbiased estimate of
``∇f̄``. SGLD with this stochastic gradient targets ``p(x) ∝ exp((f̄(x) − Σλ R(x)) / T)`` as
``ε → 0`` (Welling & Teh 2011), with an extra ``O(ε)`` bias from the gradient's variance.
Metropolis methods (MALA, pMALA, HMC) need the exact, deterministic energy: a random ``f̂`` in the
acceptance ratio would target a different density, so they refuse transforms.

A transform is an affine map of the image plane, applied by bilinear resampling
(``grid_sample``, edges reflected): ``Jitter(d)`` shifts by whole pixels in ``[−d, d]``,
``Scale((lo, hi))`` zooms by a factor in ``[lo, hi]``, ``Rotate(deg)`` turns by an angle in
``[−deg, deg]``; a list of them is composed into one map per chain and draw. The draws come from a
counter-based generator (Philox4x32-10 of ``(chain seed, evaluation, draw)``), so a chain's
transformations do not depend on which other chains share the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ShapeError
from .noise import _keys, philox4x32, words_to_uniform


class Transform:
    """Base class: an affine map of pixel coordinates drawn from two uniforms per chain."""

    def matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 3]`` maps (in pixel units, about the image centre) for uniforms ``u, v`` ``[B]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Jitter(Transform):
    """A shift by ``(dy, dx)`` whole pixels, each uniform on ``{−pixels, …, pixels}``."""

    pixels: int = 8

    def matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = 2 * int(self.pixels) + 1
        dy = (u * n).floor().clamp(max=n - 1) - self.pixels
        dx = (v * n).floor().clamp(max=n - 1) - self.pixels
        m = _eye(u)
        m[:, 0, 2], m[:, 1, 2] = dx, dy
        return m


@dataclass(frozen=True)
class Scale(Transform):
    """A zoom by a factor uniform on ``[low, high]`` about the centre."""

    factors: tuple[float, float] = (0.9, 1.1)

    def matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lo, hi = self.factors
        s = lo + (hi - lo) * u
        m = _eye(u)
        m[:, 0, 0], m[:, 1, 1] = 1 / s, 1 / s
        return m


@dataclass(frozen=True)
class Rotate(Transform):
    """A rotation by an angle uniform on ``[−degrees, degrees]`` about the centre."""

    degrees: float = 10.0

    def matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = math.radians(self.degrees) * (2 * u - 1)
        c, s = a.cos(), a.sin()
        m = _eye(u)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
        return m


def _eye(u: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=u.dtype, device=u.device).repeat(u.shape[0], 1, 1)


def apply(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Resample images ``x`` ``[B, C, H, W]``: output pixel ``p`` reads ``x`` at ``maps[b] · p`` (pixel
    coordinates about the centre; bilinear, edges reflected). Differentiable in ``x``."""
    b, _, h, w = x.shape
    # pixel units → grid_sample's normalized units (align_corners=False): p_norm = p_pix · 2/size
    d = torch.tensor([2.0 / w, 2.0 / h, 1.0], dtype=maps.dtype, device=maps.device)
    theta = (d[:, None] * maps / d[None, :])[:, :2]
    grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Transformed:
    """A target set whose activation is averaged over random transforms of its input.

    Wraps a :class:`~ldam.targets.TargetSet` (everything but :meth:`value_and_grad` passes
    through). ``seeds`` gives one key per row; ``k`` transformations are drawn per row and
    evaluation.
    """

    stochastic = True

    def __init__(self, targets, transforms: Sequence[Transform], seeds: Sequence[int], k: int = 1):
        if not transforms:
            raise ValueError("Transformed needs at least one transform, e.g. [ldam.Jitter(8)]")
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"transforms must be ldam transform values such as ldam.Jitter(8), got {t!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.inner = targets
        self.transforms = list(transforms)
        self.k = int(k)
        self._seeds = [(int(s) ^ 0x5DEECE66D) % 2**64 for s in seeds]
        self._keys: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _maps(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        if device not in self._keys:
            self._keys[device] = _keys(self._seeds, device)
        k0, k1 = self._keys[device]
        n = self.calls
        self.calls += 1
        maps = []
        for j in range(self.k):
            m = None
            for i, t in enumerate(self.transforms):
                w = philox4x32((n & 0xFFFFFFFF, n >> 32, j, i), (k0, k1))
                u = words_to_uniform(w[0], w[1]).to(dtype)
                v = words_to_uniform(w[2], w[3]).to(dtype)
                mi = t.matrix(u, v)
                m = mi if m is None else m @ mi
            maps.append(m)
        return maps

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ShapeError(f"transforms act on images [B, C, H, W]; this input is {list(x.shape)}")
        f_sum = g_sum = None
        for m in self._maps(x.device, torch.float64):
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                xt = apply(xr, m)
                f, gt = self.inner.value_and_grad(xt.detach())
                (g,) = torch.autograd.grad(xt, xr, gt)
            f_sum = f if f_sum is None else f_sum + f
            g_sum = g if g_sum is None else g_sum + g
        assert f_sum is not None and g_sum is not None
        return f_sum / self.k, g_sum / self.k


__all__ = ["Transform", "Jitter", "Scale", "Rotate", "Transformed", "apply"]
