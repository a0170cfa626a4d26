"""The energy: activation, regularizers and temperature.

The sampled density is

    log p(x) = ( f(x) − Σ_i λ_i R_i(x) ) / T + const

where ``f`` is the target activation (:mod:`ldam.targets`), each regularizer is a small value
holding its weight ``λ_i``, and ``T`` is the temperature (:mod:`ldam.schedules`).

A regularizer is anything with a ``weight``, a ``value(x) -> [batch]`` and a ``grad(x)``.
Regularizers that learn while the chains run (:class:`ldam.Discriminator`) also get
``observe(x, step)`` after every step; the base class makes that a no-op. A regularizer may
also scale the activation term (``log p = (a·f − Σ λ_i R_i) / T``, the discriminator's density
mode) or, with ``method="paper"``, replace the drift by a normalized mix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .targets import TargetSet


class Regularizer:
    """Base class: ``R(x) ≥ 0`` per example, entering ``log p`` as ``−weight · R(x) / T``."""

    name: str = "regularizer"
    weight: float
    #: True when ``R`` is a fixed function of ``x`` and the regularizer's fields (no learning, no
    #: hidden state), so a sampler may reuse ``R`` and ``∇R`` computed at the same state.
    static: bool = False
    #: True when ``∇R(x) = x`` exactly, so samplers may fold ``λ∇R`` into a scalar multiply.
    identity_gradient: bool = False

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``R(x)`` for each example of the batch, shape ``[batch]``."""
        raise NotImplementedError

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``∇_x R(x)`` (autograd of :meth:`value` unless a subclass gives it in closed form)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(xr).sum(), xr)
        return g

    def observe(self, x: torch.Tensor, step: int) -> None:
        """Called with the chains' state after every step; online-trained regularizers learn here."""

    def bind(self, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> None:
        """Called once by the sampler with one example's shape, the device and the dtype."""

    def reset(self) -> None:
        """Forget per-chain state (the sampler's chains were reset)."""

    def stats(self) -> dict[str, float]:
        """Numbers to show beside the chains (e.g. a critic's scores)."""
        return {}

    @property
    def prior_weight(self) -> float | None:
        """The ``λ`` with which ``R`` enters ``Σ λ_i R_i`` (``None``: not a prior term)."""
        return self.weight

    @property
    def activation_scale(self) -> float:
        """A factor on ``f`` in ``log p``; the discriminator's density mode uses ``1 − w``."""
        return 1.0

    @property
    def mixes(self) -> bool:
        """True when the regularizer replaces the drift by a normalized mix (``method="paper"``)."""
        return False


@dataclass
class L2(Regularizer):
    """``R(x) = ½‖x‖²``. With a linear neuron ``f = w·x`` the density is exactly ``N(w/λ, (T/λ) I)``."""

    weight: float = 1.0
    static = True
    name: str = field(default="l2", init=False)
    identity_gradient = True

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class TotalVariation(Regularizer):
    """Smoothed total variation over the spatial axes (all axes after the channel axis).

    ``R(x) = Σ_p ( Σ_k (x[p + e_k] − x[p])² + δ )^(β/2)``, summed over positions ``p`` and
    channels, with forward differences along each spatial axis ``k`` (Mahendran & Vedaldi's
    ``TV^β``). ``β = 1`` is edge-preserving TV; ``β = 2`` is a quadratic smoothness prior.
    ``δ > 0`` keeps it differentiable, which MALA needs. An input of one axis, ``(L,)``, is a
    one-channel signal: its differences run along that axis.
    """

    weight: float = 1.0
    beta: float = 1.0
    delta: float = 1e-4
    static = True
    name: str = field(default="tv", init=False)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [batch, L]: one channel
            x = x.unsqueeze(1)
        spatial = x.dim() - 2
        # Crop every difference to the common [.., n-1, ..] grid so they can be added.
        crop = tuple(slice(0, s - 1) for s in x.shape[2:])
        sq = torch.zeros_like(x[(slice(None), slice(None), *crop)])
        for k in range(spatial):
            sq = sq + x.diff(dim=2 + k)[(slice(None), slice(None), *crop)].pow(2)
        return (sq + self.delta).pow(self.beta / 2).flatten(1).sum(1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """Closed form: with ``d_k(p) = x[p + e_k] − x[p]`` and ``c_k(p) = β s(p)^(β/2 − 1) d_k(p)``,
        ``s = Σ_k d_k² + δ``, each ``c_k(p)`` adds to ``x[p + e_k]`` and subtracts from ``x[p]``."""
        flat = x.dim() == 2
        if flat:
            x = x.unsqueeze(1)
        spatial = x.dim() - 2
        crop = tuple(slice(0, s - 1) for s in x.shape[2:])
        lead = (slice(None), slice(None))
        diffs = [x.diff(dim=2 + k)[lead + crop] for k in range(spatial)]
        sq = diffs[0].pow(2)
        for d in diffs[1:]:
            sq = sq + d.pow(2)
        w = (sq + self.delta).pow(self.beta / 2 - 1).mul_(self.beta)
        g = torch.zeros_like(x)
        for k, d in enumerate(diffs):
            c = w * d
            g[lead + crop] -= c
            shifted = tuple(slice(1, s) if j == k else slice(0, s - 1) for j, s in enumerate(x.shape[2:]))
            g[lead + shifted] += c
        return g.squeeze(1) if flat else g


@dataclass
class Box(Regularizer):
    """A box (pixel-range) constraint ``low ≤ x ≤ high``, per channel or scalar.

    With ``weight=None`` it is hard: Langevin samplers reflect at the walls; the Metropolis
    methods reflect their proposals too and weigh them by the reflected (folded) proposal
    density, so they stay exact (``docs/exact.md``). With a weight it is the soft penalty ``R(x) = ½ ‖x − clamp(x)‖²``.
    Use :meth:`from_normalization` for the pixel range ``[0, 1]`` of a normalized input.
    """

    low: float | Sequence[float] = 0.0
    high: float | Sequence[float] = 1.0
    weight: float | None = None
    static = True
    name: str = field(default="box", init=False)

    def __post_init__(self) -> None:
        lo, hi = torch.as_tensor(self.low, dtype=torch.float64), torch.as_tensor(self.high, dtype=torch.float64)
        if lo.shape != hi.shape or bool((lo >= hi).any()):
            raise ValueError(f"Box needs low < high with matching shapes, got low={self.low}, high={self.high}")

    @classmethod
    def from_normalization(cls, mean: Sequence[float], std: Sequence[float], weight: float | None = None) -> "Box":
        """The box that normalized inputs ``(pixel − mean) / std`` occupy when pixels lie in [0, 1]."""
        return cls([(0 - m) / s for m, s in zip(mean, std)], [(1 - m) / s for m, s in zip(mean, std)], weight)

    @property
    def hard(self) -> bool:
        return self.weight is None

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``low`` and ``high`` as tensors that broadcast against ``x``."""
        lo, hi, _ = self._layout(x)
        return lo, hi

    def _layout(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (x.dtype, x.device, x.dim(), id(self.low), id(self.high))  # new bounds are new objects
        cache = self.__dict__.setdefault("_bounds", {})
        if key not in cache:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            lo = torch.as_tensor(self.low, dtype=x.dtype, device=x.device)
            hi = torch.as_tensor(self.high, dtype=x.dtype, device=x.device)
            if lo.dim() == 1:
                if lo.numel() != x.shape[1]:
                    raise ValueError(f"Box has {lo.numel()} per-channel bounds but the input has {x.shape[1]} channels")
                lo, hi = lo.view(shape), hi.view(shape)
            cache.clear()
            cache[key] = (lo, hi, hi - lo)
        return cache[key]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return 0.5 * (x - self.clamp(x)).flatten(1).pow(2).sum(1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return torch.zeros_like(x)
        return x - self.clamp(x)

    def clamp(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` clamped into the box (written to ``out`` when given, e.g. ``x`` itself)."""
        lo, hi = self.bounds(x)
        return torch.maximum(torch.minimum(x, hi), lo, out=out)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """Per example: whether every coordinate is inside the box."""
        lo, hi = self.bounds(x)
        return ((x >= lo) & (x <= hi)).flatten(1).all(1)

    def reflect_(self, x: torch.Tensor) -> torch.Tensor:
        """Fold ``x`` back into the box by reflecting at the walls (in place)."""
        lo, _, width = self._layout(x)
        # y = (x − lo) mod 2w folds onto [0, 2w); lo + w − |y − w| reflects the upper half.
        x.sub_(lo).remainder_(2 * width).sub_(width).abs_().neg_().add_(width).add_(lo)
        return x


def _checked(r: Regularizer) -> Regularizer:
    if not isinstance(r, Regularizer):
        raise TypeError(f"regularizers must be ldam regularizer values such as ldam.L2(1.0), got {r!r}")
    return r


class Energy:
    """``log p(x) = (f(x) − Σ λ_i R_i(x)) / T`` for a :class:`~ldam.targets.TargetSet`.

    The model part ``f, ∇f`` costs one forward and backward; the prior part is evaluated
    separately so that weights and ``T`` may change between steps without re-running the model.
    """

    def __init__(self, targets: TargetSet, regularizers: Sequence[Regularizer] = ()):
        self.targets = targets
        self.regularizers = [_checked(r) for r in regularizers]

    def add_regularizer(self, regularizer: Regularizer) -> None:
        """Add a term to ``Σ λ_i R_i`` (checked as the constructor's are)."""
        self.regularizers.append(_checked(regularizer))

    @property
    def soft(self) -> list[Regularizer]:
        return [r for r in self.regularizers if r.prior_weight is not None and r.prior_weight != 0]

    @property
    def activation_scale(self) -> float:
        """The factor ``a`` on ``f``: ``log p = (a·f − Σ λ R) / T`` (1 unless a density-mode critic)."""
        a = 1.0
        for r in self.regularizers:
            a *= r.activation_scale
        return a

    @property
    def mixer(self) -> Regularizer | None:
        """The regularizer that mixes normalized gradients into the drift, if any is active."""
        return next((r for r in self.regularizers if r.mixes), None)

    @property
    def boxes(self) -> list[Box]:
        return [r for r in self.regularizers if isinstance(r, Box) and r.hard]

    def activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` per row and ``∇_x f`` (rows are independent: the model runs in eval mode)."""
        return self.targets.value_and_grad(x)

    def prior(self, x: torch.Tensor, with_value: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``Σ λ_i R_i(x)`` per row (if asked) and its gradient; ``None`` when there is no prior."""
        _, value, grad = self._prior_terms(x, with_value, False)
        return value, grad

    def prior_split(self, x: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        """``Σ λ_i ∇R_i(x)`` as ``k·x + rest``: ``k`` sums the weights of regularizers with
        ``∇R(x) = x`` (L2), ``rest`` is the other gradients (``None`` if there are none)."""
        k, _, rest = self._prior_terms(x, False, True)
        return k, rest

    def _prior_terms(self, x: torch.Tensor, with_value: bool,
                     split: bool) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
        """``(k, Σ λ_i R_i(x), gradient)``: with ``split`` the weights of the terms with ``∇R(x) = x``
        go to ``k`` and their gradients are left out of the sum, else ``k`` is 0."""
        k, value, grad = 0.0, None, None
        for r in self.soft:
            w = r.prior_weight
            if split and r.identity_gradient:
                k += w
            else:
                g = r.grad(x)
                grad = w * g if grad is None else grad.add_(g, alpha=w)
            if with_value:
                v = r.value(x)
                value = w * v if value is None else value + w * v
        return k, value, grad

    def guarded_weight(self) -> float:
        """``k`` of a quadratic term ``k/2T ‖x‖²`` whose stability an adaptive sampler must keep by
        itself (a parameterization's latent Gaussian); 0 here: an unstable L2 step is the user's
        choice, and is reported with a stable step size."""
        return 0.0

    def prior_key(self) -> tuple | None:
        """Equal between two calls exactly when ``Σ λ_i R_i`` is the same function of ``x`` (every
        term static, the same fields); ``None`` when a term learns (a critic)."""
        key = []
        for r in self.soft:
            if not r.static:
                return None
            fields = dataclasses.fields(r) if dataclasses.is_dataclass(r) else ()
            key.append((id(r), r.prior_weight, tuple(getattr(r, f.name) for f in fields)))
        return tuple(key)

    def inside(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per row, whether ``x`` satisfies every hard constraint (``None`` if there are none)."""
        ok = None
        for b in self.boxes:
            i = b.inside(x)
            ok = i if ok is None else ok & i
        return ok

    def project_(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.boxes:
            b.reflect_(x)
        return x


def log_prob(f: torch.Tensor, prior: torch.Tensor | None, temperature: float, scale: float = 1.0) -> torch.Tensor:
    """``(a·f − Σ λR) / T`` per row, ``a = scale``."""
    if scale != 1.0:
        f = scale * f
    return (f if prior is None else f - prior) / temperature


def grad_log_prob(gf: torch.Tensor, gprior: torch.Tensor | None, temperature: float, scale: float = 1.0,
                  in_place: bool = False) -> torch.Tensor:
    """``(a·∇f − Σ λ∇R) / T``, ``a = scale``; with ``in_place`` computed in ``gf``'s memory."""
    if scale != 1.0:
        gf = gf.mul_(scale) if in_place else scale * gf
    if gprior is not None:
        gf = gf.sub_(gprior) if in_place else gf - gprior
    if temperature == 1.0:
        return gf
    return gf.div_(temperature) if in_place else gf / temperature


def rms_normalized(g: torch.Tensor, acc: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """The authors' RMS normalization (BIDMach, PAPER.md §6): ``acc ← 0.9·acc + 0.1·g²`` (in place),
    then ``g / √(acc + 1e-8)`` (in ``g``'s memory with ``in_place``)."""
    acc.mul_(0.9).addcmul_(g, g, value=0.1)
    root = (acc + 1e-8).sqrt_()
    return g.div_(root) if in_place else g / root


__all__ = ["Regularizer", "L2", "TotalVariation", "Box", "Energy", "log_prob", "grad_log_prob", "rms_normalized"]
