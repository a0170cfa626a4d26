"""The samplers: one update rule per method, and per-chain noise.

Each method moves the chains ``x`` (in place) one step towards samples of
``log p(x) = (f(x) − Σ λ_i R_i(x)) / T`` and returns ``f`` at the state it started from.

``SGLD``   ``x ← x + (ε/2) ∇log p(x) + √ε · ξ``                    (Welling & Teh 2011)
``MALA``   the SGLD move as a proposal, accepted with the Metropolis–Hastings ratio, so the
           chain is exact for ``p`` at any ``ε``; at hard box walls the proposal is reflected
           and the ratio uses the folded Gaussian's density.
``PMALA``  MALA with a diagonal metric ``G`` (pSGLD's RMS preconditioner, learned while adapting,
           then frozen): ``x' = x + (ε/2) G ∇log p + √(εG) ξ``, exact as MALA is.
``HMC``    Hamiltonian Monte Carlo: a few leapfrog steps (mass ``G⁻¹``) per proposal, reflected
           at hard walls, with the Metropolis correction.
``PSGLD``  ``x ← x + (ε/2) G ∇log p + √(ε G) · ξ`` with the RMSProp preconditioner
           ``G = 1 / (δ + √V)``, ``V ← α V + (1 − α) (∇log p)²``   (Li et al. 2016)
``Paper``  the authors' BIDMach update (PAPER.md §6): RMS-normalized activation gradient, noise
           ``σ_t = T / (1 + τ²)`` with ``τ`` the step within a frame, L2 pull ``2λx/s``,
           momentum 0.9 and step ``s·η·m``.
``Ascent`` gradient ascent on the same ``log p`` (Adam or plain steps, no noise): the
           optimizer-based baseline, for comparisons on identical objectives.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .energy import Energy, grad_log_prob, log_prob, rms_normalized


def _state(default: Any = None) -> Any:
    """A dataclass field for a method's own running state (moments, caches, counts): it starts at
    ``default``, is not an argument of ``__init__`` and is left out of ``repr``."""
    return field(default=default, init=False, repr=False)


def chain_seeds(seed: int, keys: Sequence[str], chains: int) -> list[int]:
    """One 63-bit seed per chain, derived from ``(seed, target key, chain index)``.

    A chain's seed does not depend on which other targets share the batch, so sampling
    ``fc3:7`` alone or within ``fc3:0-9`` gives that chain the same noise.
    """
    seeds = []
    seen: dict[str, int] = {}
    for key in keys:
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        digest = int.from_bytes(hashlib.sha256(f"{key}#{occurrence}".encode()).digest()[:4], "little")
        for c in range(chains):
            ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, digest, c])
            seeds.append(int(ss.generate_state(2, np.uint32).astype(np.uint64) @ np.array([1, 2**31], np.uint64)))
    return seeds


class ChainNoise:
    """Per-chain standard-normal and uniform streams, drawn in blocks to keep steps cheap.

    Chain ``j`` owns two generators seeded from its seed; the block length depends only on the
    per-chain input size, so a chain's stream is the same whatever the batch holds. Blocks
    are kept small (about 8K numbers per chain) so the buffer stays in cache.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: torch.device, dtype: torch.dtype):
        self.shape = tuple(shape)
        self.device, self.dtype = device, dtype
        self._normal = [torch.Generator().manual_seed(s) for s in seeds]
        self._uniform = [torch.Generator().manual_seed((s * 6364136223846793005 + 1) % 2**63) for s in seeds]
        numel = max(1, math.prod(self.shape))
        self.block = int(min(64, max(1, 2**13 // numel)))
        self._u = None
        self._i = self._j = self.block
        self._buf: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return len(self._normal)

    def initial(self) -> torch.Tensor:
        """A standard-normal starting point per chain (its first draw from its own stream)."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self._normal]).to(self.device, self.dtype)

    def normal(self) -> torch.Tensor:
        """The next ``[batch, *shape]`` standard-normal draw (a strided view into the block)."""
        if self._i == self.block:
            if self._buf is None:
                self._buf = torch.empty((self.batch, self.block, *self.shape))
            for j, g in enumerate(self._normal):
                torch.randn((self.block, *self.shape), generator=g, out=self._buf[j])
            self._dev = self._buf.to(self.device, self.dtype)
            self._i = 0
        self._i += 1
        return self._dev.select(1, self._i - 1)

    def uniform(self) -> torch.Tensor:
        if self._j == self.block:
            buf = torch.stack([torch.rand(self.block, generator=g, dtype=torch.float64) for g in self._uniform], 1)
            self._u, self._j = buf.to(self.device), 0
        self._j += 1
        return self._u[self._j - 1]


@dataclass
class StepContext:
    """What a method needs for one step: the energy, ``ε``, ``T``, the noise and the step index."""

    energy: Energy
    step_size: float
    temperature: float
    noise: ChainNoise
    t: int
    adapting: bool = False


class Method:
    """Base class of the update rules. Subclasses hold their own per-chain state."""

    name = "method"

    def reset(self) -> None:
        """Forget per-chain state (after the chains are reset or moved by hand)."""

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Move ``x`` in place; return ``f`` at the state it started from."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        return {}

    def stable_step(self, l2: float, temperature: float) -> float | None:
        """The largest step size at which the update is stable on the quadratic part ``λ/2‖x‖²``
        of the energy (``l2`` is ``λ``); ``None`` when there is no such bound or it is unknown."""
        return None


@dataclass
class SGLD(Method):
    """Unadjusted Langevin: ``x ← x + (ε/2)∇log p(x) + √ε·ξ``. Biased by O(ε); use a small ε or MALA."""

    name = "sgld"

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps, temp = ctx.step_size, ctx.temperature
        f, gf = ctx.energy.activation(x)
        k, rest = ctx.energy.prior_split(x)
        g = grad_log_prob(gf, rest, 1.0, ctx.energy.activation_scale, in_place=True)  # T∇log p but −k·x
        # x + (ε/2T)(a·∇f − k·x − rest) + √ε ξ, with the L2 part as one scalar multiply
        if k:
            x.mul_(1 - eps * k / (2 * temp))
        x.add_(g, alpha=eps / (2 * temp)).add_(ctx.noise.normal(), alpha=math.sqrt(eps))
        ctx.energy.project_(x)
        return f

    def stable_step(self, l2: float, temperature: float) -> float | None:
        """``x ← (1 − ελ/2T) x + …`` is stable iff ``|1 − ελ/2T| < 1``: ``ε < 4T/λ``."""
        return 4 * temperature / l2 if l2 > 0 else None


# ---- hard walls: reflection and the folded Gaussian proposal ---------------------------------


def hard_bounds(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The intersection of the energy's hard boxes as ``(low, high)`` broadcasting against ``x``
    (``None`` without a hard box)."""
    boxes = energy.boxes
    if not boxes:
        return None
    lo, hi = boxes[0].bounds(x)
    if len(boxes) == 1:
        return lo, hi  # Box checked low < high when it was made
    for b in boxes[1:]:
        lo_b, hi_b = b.bounds(x)
        lo, hi = torch.maximum(lo, lo_b), torch.minimum(hi, hi_b)
    if bool((lo >= hi).any()):
        raise ValueError("the hard boxes do not intersect: no input satisfies all of them")
    return lo, hi


def fold(z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflect ``z`` into ``[lo, hi]`` at the walls (the fold of :meth:`ldam.Box.reflect_`).

    Returns the folded point and, per coordinate, 1 where it was reflected an odd number of
    times, else 0 (HMC negates those momentum components). Coordinates inside are returned
    unchanged, bit for bit. (Arithmetic only: boolean tensors are slow on CPU.)
    """
    width = hi - lo
    r = (z - lo).div_(width)
    n = r.floor()
    r.sub_(n)  # where in its cell of width W, in [0, 1)
    odd = n * 0.5
    odd.sub_(odd.floor()).mul_(2)  # 1 where n is odd
    # lo + W·(r + odd·(1 − 2r)): lo + W·r in even cells, hi − W·r in odd ones. In-place operations
    # throughout: a fresh tensor per operation costs more than the arithmetic here.
    y = r.mul(-2).add_(1).mul_(odd).add_(r).mul_(width).add_(lo)
    y = torch.clamp(y, lo, hi)
    out = n.abs_().clamp_(max=1)  # 1 where z is outside (or exactly on the upper wall)
    return y.sub_(z).mul_(out).add_(z), odd


#: Terms are kept until the omitted ones are below exp(−_TAIL) of the largest: negligible in float64.
_TAIL = 40.0
#: Up to this ratio std / width the five nearest images suffice (see :func:`_near_images_logpdf`).
_NEAR_RATIO = math.sqrt(1.5 / _TAIL)
#: Above this ratio the cosine series converges faster than the sum over images.
_COSINE_RATIO = 0.5


def _near_images_logpdf(y, m, s, lo, hi, w):
    """The folded density for ``m ∈ [lo, hi]`` and ``s ≤ 0.19 W`` in closed form.

    Relative to the direct term ``φ_s(y − m)``, the images ``2lo − y``, ``2hi − y`` and
    ``y − sign(y−m)·2W`` weigh ``exp(−2(y−lo)(m−lo)/s²)``, ``exp(−2(hi−y)(hi−m)/s²)`` and
    ``exp(−2W(W − |y−m|)/s²)``, all at most 1. The other shift by ``2W`` weighs at most
    ``exp(−2W²/s²) < e^−53``, and every other image lies at least ``2W`` from ``m`` while the
    direct one lies within ``W``, so each weighs less than ``exp(−1.5 W²/s²) ≤ e^−40``.
    """
    d = y - m
    k = (s * s).reciprocal_().mul_(-2)
    # Exponents are floored at −60 (a weight of 1e−26, nothing in log1p) so that exp never meets
    # the subnormals, which are many times slower.
    e = (y - lo).clamp_min_(0).mul_(m - lo).mul_(k).clamp_min_(-60.0).exp_()
    e += (hi - y).clamp_min_(0).mul_(hi - m).mul_(k).clamp_min_(-60.0).exp_()
    e += d.abs().neg_().add_(w).mul_(w).mul_(k).clamp_min_(-60.0).exp_()
    return e.log1p_().sub_(d.div_(s).pow_(2).mul_(0.5)).sub_(s.log()).sub_(0.5 * math.log(2 * math.pi))


def _images_logpdf(y, m, s, lo, hi, w):
    """``log Σ_k [φ_s(y + 2kW − m) + φ_s(2lo − y + 2kW − m)]`` over the images nearest to ``m``.

    With ``k_c`` the image nearest to ``m`` of each family (``|d| ≤ W``), the images ``k_c + j``,
    ``|j| > K``, lie at least ``(2K+1)W`` from ``m``, while the nearest of all lies within ``W``; so
    the omitted mass is below ``4·exp(−((2K+1)² − 1)W²/2s²)`` of the kept, and
    ``(2K+1)² ≥ 1 + 2·_TAIL·(s/W)²`` makes it ``< 4e−40``.
    """
    ratio = float((s / w).max())
    k = max(1, math.ceil((math.sqrt(1 + 2 * _TAIL * ratio * ratio) - 1) / 2))
    two_w = 2 * w
    k_direct = torch.round((m - y) / two_w)
    k_mirror = torch.round((m - 2 * lo + y) / two_w)
    j = torch.arange(-k, k + 1, dtype=y.dtype, device=y.device).view(-1, *([1] * y.dim()))
    d = torch.cat([y + (k_direct + j) * two_w - m, 2 * lo - y + (k_mirror + j) * two_w - m])
    return torch.logsumexp(-0.5 * (d / s).pow(2), 0) - s.log() - 0.5 * math.log(2 * math.pi)


def _cosine_logpdf(y, m, s, lo, hi, w):
    """The same density as its Fourier (cosine) series, which converges fast when ``s`` is not small:
    ``(1/W)[1 + 2 Σ_n exp(−(nπs/W)²/2) cos(nπ(y−lo)/W) cos(nπ(m−lo)/W)]`` (the reflecting heat
    kernel on ``[lo, hi]``). Terms stop once ``exp(−(nπs/W)²/2) < exp(−_TAIL)``."""
    ratio = float((s / w).min())
    n_max = max(1, math.ceil(math.sqrt(2 * _TAIL) / (math.pi * ratio)))
    n = torch.arange(1, n_max + 1, dtype=y.dtype, device=y.device).view(-1, *([1] * y.dim()))
    k = n * math.pi / w
    series = (torch.exp(-0.5 * (k * s).pow(2)) * torch.cos(k * (y - lo)) * torch.cos(k * (m - lo))).sum(0)
    return torch.log1p(2 * series) - w.log()


def folded_normal_logpdf(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float,
                         lo: torch.Tensor | float, hi: torch.Tensor | float, narrow: bool | None = None) -> torch.Tensor:
    """Per coordinate, the log density at ``y ∈ [lo, hi]`` of ``fold(mean + std·ξ)``: a Gaussian
    proposal reflected into the box at its walls.

    The fold maps every ``z = y + 2kW`` and ``z = 2·lo − y + 2kW`` (``W = hi − lo``, ``k ∈ ℤ``) to
    ``y``, so ``q(y) = Σ_k [φ_s(y + 2kW − m) + φ_s(2lo − y + 2kW − m)]``. The sum is unchanged when
    ``m`` is itself folded into the box (it is ``2W``-periodic and symmetric about ``lo`` in
    ``m``), which is done first. Computed in float64: in closed form over the five nearest images
    when ``s ≤ 0.19 W`` (the usual case), as a log-sum-exp over more images when
    ``s ≤ W/2``, and as the equivalent cosine series beyond; each is truncated where the rest is
    below ``e^−40`` of the total. Returns float64, broadcast over the inputs. ``narrow`` may say
    whether every ``std ≤ 0.19·(hi − lo)`` (one device sync fewer when the caller knows).
    """
    y, m, s, lo, hi = (torch.as_tensor(t, dtype=torch.float64, device=y.device) for t in (y, mean, std, lo, hi))
    y = y.expand(torch.broadcast_shapes(y.shape, m.shape, s.shape, lo.shape, hi.shape))
    w = hi - lo
    m = fold(m, lo, hi)[0]
    ratio = s / w
    if narrow if narrow is not None else float(ratio.max()) <= _NEAR_RATIO:
        return _near_images_logpdf(y, m, s, lo, hi, w)
    y, m, s, lo, hi, w, ratio = torch.broadcast_tensors(y, m, s, lo, hi, w, ratio)
    out = torch.empty_like(y)
    near, far = ratio <= _NEAR_RATIO, ratio > _COSINE_RATIO
    for mask, fn in ((near, _near_images_logpdf), (~near & ~far, _images_logpdf), (far, _cosine_logpdf)):
        if bool(mask.any()):
            out[mask] = fn(y[mask], m[mask], s[mask], lo[mask], hi[mask], w[mask])
    return out


class DiagonalMetric:
    """A per-chain diagonal metric ``G`` learned while adapting and frozen after.

    ``kind="rms"`` is pSGLD's RMS preconditioner: ``V ← α V + (1 − α) g²`` (``g = ∇log p`` at the
    chain's state), ``G = 1 / (δ + √V)``. ``kind="variance"`` is the chain's own per-coordinate
    variance (Stan's choice of inverse mass): exponential moving mean ``μ`` and variance ``S`` of
    the states, ``G = S + 10⁻³·mean(S)``. Either is divided by its mean over the coordinates of
    each chain (so that ``ε`` stays the mean proposal variance per coordinate) and clipped to
    ``[1/max_ratio, max_ratio]``. A fixed ``G`` keeps the Metropolis chain exact.
    """

    def __init__(self, alpha: float, delta: float, max_ratio: float, kind: str = "rms"):
        if kind not in ("rms", "variance"):
            raise ValueError(f"metric kind must be 'rms' or 'variance', got {kind!r}")
        self.alpha, self.delta, self.max_ratio, self.kind = alpha, delta, max_ratio, kind
        self.v: torch.Tensor | None = None
        self.mu: torch.Tensor | None = None
        self.g: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, learn: bool) -> torch.Tensor:
        if self.v is None or self.v.shape != grad.shape:
            self.v = grad * grad if self.kind == "rms" else torch.zeros_like(x)
            self.mu, self.g = x.clone(), None
        elif learn:
            if self.kind == "rms":
                self.v.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
            else:  # West's update of an exponentially weighted mean and variance
                assert self.mu is not None
                d = x - self.mu
                self.mu.add_(d, alpha=1 - self.alpha)
                self.v.addcmul_(d, d, value=1 - self.alpha).mul_(self.alpha)
            self.g = None
        if self.g is None:
            view = (-1,) + (1,) * (self.v.dim() - 1)
            if self.kind == "rms":
                g = (self.v.sqrt() + self.delta).reciprocal_()
            else:
                g = self.v + (1e-3 * self.v.flatten(1).mean(1) + 1e-30).view(view)
            g.div_(g.flatten(1).mean(1).view(view))
            self.g = g.clamp_(1 / self.max_ratio, self.max_ratio)
        return self.g


@dataclass
class Metropolis(Method):
    """Base class of the exact methods: a proposal accepted with the Metropolis–Hastings ratio.

    Holds what MALA, pMALA and HMC share:

    * **per-chain step size** ``ε_j = ε · exp(ℓ_j)``, adapted by Robbins–Monro steps on ``ℓ_j``,
      ``ℓ ← ℓ + γ_n (a − target_accept)`` with ``a = min(1, e^{log α})`` the chain's acceptance
      probability and ``γ_n = min(1, 2 (n+1)^−0.6)``, a diminishing rate. Adaptation runs while the
      sampler's burn-in lasts *and* for the method's own first ``adapt_steps`` steps, so a
      streaming sampler without burn-in adapts too; when it stops, ``ℓ`` is set to its running
      average (weights ``n^−0.75``, as in Hoffman & Gelman's dual averaging) and frozen.
      :meth:`restart_adaptation` starts a new window (after a change of ``T`` or ``ε``);
    * **acceptance bookkeeping**: :attr:`acceptance` since the counts were last reset (at the
      end of burn-in) and :attr:`recent_acceptance` over the last ``window`` proposals;
    * an optional **warm-up**: the method's first ``warmup`` steps are unadjusted Langevin (SGLD)
      steps at the sampler's ``ε``, which climb towards the mode much faster than exact moves
      with their smaller steps. Those states are not exact: keep them inside the burn-in.
      Adaptation starts with the first exact step.
    """

    adapt: bool = True
    target_accept: float = 0.574
    adapt_steps: int = 500
    window: int = 50
    warmup: int = 0
    name = "metropolis"
    _log_scale: torch.Tensor | None = _state()
    _log_scale_avg: torch.Tensor | None = _state()
    _accepted: torch.Tensor | None = _state()
    _proposed: int = _state(0)
    _n_adapt: int = _state(0)
    _was_adapting: bool = _state(False)
    _recent: torch.Tensor | None = _state()
    _recent_n: int = _state(0)
    _n_steps: int = _state(0)
    _cache: tuple[torch.Tensor, torch.Tensor] | None = _state()  # (f, ∇f) at the chains' current states

    def reset(self) -> None:
        """Forget what is cached about the chains' current states: ``(f, ∇f)`` and the prior terms
        (stale once the chains move outside a Metropolis step). Adaptation and counts are kept."""
        self._cache = None
        self.__dict__["_prior_cache"] = None

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._n_steps += 1
        if self._n_steps <= self.warmup:
            self.reset()  # cached gradients would be stale after an unadjusted move
            return SGLD().step(x, ctx)
        return self._metropolis_step(x, ctx)

    def _metropolis_step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """One proposal and its acceptance; returns ``f`` at the state it started from."""
        raise NotImplementedError

    def reset_counts(self) -> None:
        """Restart the acceptance count behind :attr:`acceptance` (the sampler does at burn-in)."""
        self._accepted, self._proposed = None, 0

    def restart_adaptation(self, reset_scale: bool = False) -> None:
        """Adapt again for the next ``adapt_steps`` steps at a fresh (large) rate, e.g. after the
        temperature or the step size changed. The learned per-chain scales are the starting point
        unless ``reset_scale``; a learned metric keeps learning from where it is."""
        self._n_adapt = 0
        if reset_scale:
            self._log_scale = self._log_scale_avg = None

    @property
    def adapting(self) -> bool:
        """Whether the method is inside its own adaptation window."""
        return self.adapt and self._n_adapt < self.adapt_steps

    @property
    def acceptance(self) -> torch.Tensor | None:
        """Per-chain acceptance rate since the counts were last reset (at burn-in)."""
        if self._accepted is None or self._proposed == 0:
            return None
        return self._accepted / self._proposed

    @property
    def recent_acceptance(self) -> torch.Tensor | None:
        """Per-chain acceptance rate over the last ``window`` proposals (fewer at the start)."""
        if self._recent is None or self._recent_n == 0:
            return None
        return self._recent[: min(self._recent_n, self.window)].mean(0)

    def step_scale(self) -> torch.Tensor | None:
        """The per-chain factor on the sampler's step size learned by adaptation."""
        return None if self._log_scale is None else self._log_scale.exp()

    def stable_step(self, l2: float, temperature: float) -> float | None:
        return None  # an overshooting proposal is rejected, never followed

    def stats(self) -> dict[str, float]:
        a = self.acceptance
        return {} if a is None else {"acceptance": float(a.mean())}

    # ---- for subclasses ----
    def _begin(self, ctx: StepContext, b: int, device: torch.device) -> tuple[bool, torch.Tensor]:
        """Whether this step adapts, and the per-chain step sizes ``ε_j`` (float64, ``[b]``)."""
        if self._log_scale is None or self._log_scale.shape[0] != b:
            self._log_scale = torch.zeros(b, dtype=torch.float64, device=device)
            self._log_scale_avg = self._log_scale.clone()
        adapting = self.adapt and (ctx.adapting or self._n_adapt < self.adapt_steps)
        if self._was_adapting and not adapting and self._log_scale_avg is not None:
            self._log_scale.copy_(self._log_scale_avg)
        self._was_adapting = adapting
        return adapting, ctx.step_size * self._log_scale.exp()

    def _decide(self, x: torch.Tensor, prop: torch.Tensor, now: tuple[torch.Tensor, torch.Tensor],
                then: tuple[torch.Tensor, torch.Tensor], log_alpha: torch.Tensor, ctx: StepContext,
                adapting: bool) -> torch.Tensor:
        """Accept each chain's proposal with probability ``min(1, exp(log_alpha))``: move ``x`` in
        place, keep ``(f, ∇f)`` of the state each chain ends in, and count and adapt."""
        accept = ctx.noise.uniform().log() < log_alpha
        view = (x.shape[0],) + (1,) * (x.dim() - 1)
        x.copy_(torch.where(accept.view(view), prop, x))
        self._cache = (torch.where(accept, then[0], now[0]), torch.where(accept.view(view), then[1], now[1]))
        self._finish(accept, log_alpha, adapting)
        return accept

    def _prior(self, energy: Energy, x: torch.Tensor) -> tuple[tuple | None, torch.Tensor | None, torch.Tensor | None]:
        """``Σ λR`` and its gradient at the current state: reused from the last step when every
        term is static and unchanged (the accepted side of the last step computed them)."""
        key = energy.prior_key()
        cached = self.__dict__.get("_prior_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached
        return (key, *energy.prior(x))

    def _keep_prior(self, key: tuple | None, accept: torch.Tensor, now: tuple, then: tuple) -> None:
        if key is None or now[0] is None or then[0] is None:
            self.__dict__["_prior_cache"] = None
            return
        view = (accept.shape[0],) + (1,) * (now[1].dim() - 1)
        self.__dict__["_prior_cache"] = (key, torch.where(accept, then[0], now[0]),
                                         torch.where(accept.view(view), then[1], now[1]))

    def _finish(self, accept: torch.Tensor, log_alpha: torch.Tensor, adapting: bool) -> None:
        acc = accept.to(torch.float64)
        self._accepted = acc if self._accepted is None else self._accepted + acc
        self._proposed += 1
        b = acc.shape[0]
        if self._recent is None or self._recent.shape != (self.window, b):
            self._recent, self._recent_n = torch.zeros(self.window, b, dtype=torch.float64, device=acc.device), 0
        self._recent[self._recent_n % self.window] = acc
        self._recent_n += 1
        if adapting:
            assert self._log_scale is not None and self._log_scale_avg is not None
            self._n_adapt += 1
            n = self._n_adapt
            prob = log_alpha.clamp(max=0).exp()
            self._log_scale += min(1.0, 2.0 * (1 + n) ** -0.6) * (prob - self.target_accept)
            self._log_scale_avg.lerp_(self._log_scale, n ** -0.75)


def _log_alpha(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x.double(), nan=-math.inf, posinf=-math.inf)


@dataclass
class MALA(Metropolis):
    """Metropolis-adjusted Langevin: exact for ``p`` at any step size.

    The SGLD move ``x' = x + (ε/2)∇log p(x) + √ε ξ`` is accepted with probability
    ``min(1, p(x') q(x|x') / (p(x) q(x'|x)))``, ``q(b|a) = N(b; a + (ε/2)∇log p(a), ε I)``.
    With a hard :class:`~ldam.Box` the proposal is reflected into the box at its walls and ``q``
    is the folded Gaussian (:func:`folded_normal_logpdf`), so every proposal is a valid state
    and the chain stays exact for ``p`` restricted to the box. Each chain's ε is adapted towards
    the acceptance rate ``target_accept`` (0.574 is optimal for MALA); see :class:`Metropolis`.
    """

    name = "mala"

    def _metric(self, x: torch.Tensor, g: torch.Tensor, learn: bool) -> torch.Tensor | None:
        return None

    def _metropolis_step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        energy, T = ctx.energy, ctx.temperature
        a = energy.activation_scale
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)
        adapting, eps = self._begin(ctx, b, x.device)
        eps = eps.to(x.dtype)
        if self._cache is None:
            self._cache = energy.activation(x)
        f, gf = self._cache
        key, pv, gp = self._prior(energy, x)
        logp = log_prob(f, pv, T, a)
        g = grad_log_prob(gf, gp, T, a)
        metric = self._metric(x, g, adapting)
        xi = ctx.noise.normal()
        bounds = hard_bounds(energy, x)
        if metric is None:
            mean = x + (eps / 2).view(view) * g
            std = eps.sqrt().view(view)
        else:
            mean = x + (eps / 2).view(view) * metric * g
            std = (eps.view(view) * metric).sqrt()
        prop = mean + std * xi
        if bounds is not None:
            prop = fold(prop, *bounds)[0]
        f2, gf2 = energy.activation(prop)
        pv2, gp2 = energy.prior(prop)
        logp2 = log_prob(f2, pv2, T, a)
        g2 = grad_log_prob(gf2, gp2, T, a)
        drift2 = (eps / 2).view(view) * (g2 if metric is None else metric * g2)
        if bounds is not None:
            narrow = float((std / (bounds[1] - bounds[0])).max()) <= _NEAR_RATIO  # one sync for both
            log_q_fwd = folded_normal_logpdf(prop, mean, std, *bounds, narrow=narrow).flatten(1).sum(1)
            log_q_back = folded_normal_logpdf(x, prop + drift2, std, *bounds, narrow=narrow).flatten(1).sum(1)
        elif metric is None:
            back = x - prop - drift2
            log_q_back = -back.flatten(1).pow(2).sum(1) / (2 * eps)
            log_q_fwd = -0.5 * xi.flatten(1).pow(2).sum(1)
        else:  # the normalizers of N(·, εG) cancel: G is the same both ways
            back = (x - prop - drift2) / std
            log_q_back = -0.5 * back.flatten(1).pow(2).sum(1)
            log_q_fwd = -0.5 * xi.flatten(1).pow(2).sum(1)
        log_alpha = _log_alpha(logp2 - logp + log_q_back - log_q_fwd)
        accept = self._decide(x, prop, (f, gf), (f2, gf2), log_alpha, ctx, adapting)
        self._keep_prior(key, accept, (pv, gp), (pv2, gp2))
        return f


@dataclass
class PMALA(MALA):
    """Preconditioned MALA: ``x' = x + (ε/2) G ∇log p(x) + √(εG) ξ``, accepted by Metropolis–Hastings
    with the matching Gaussian densities (per-coordinate variance ``εG``; folded at hard walls).

    ``G`` is a per-chain :class:`DiagonalMetric` (pSGLD's RMS preconditioner normalized to mean 1),
    learned during adaptation and frozen afterwards, so the kept chain is exact. With
    ``adapt=False`` nothing adapts: ``G`` is the RMS metric of the first state's gradient.
    """

    alpha: float = 0.99
    delta: float = 1e-5
    max_ratio: float = 100.0
    metric_kind: str = "rms"
    name = "pmala"
    _rms: DiagonalMetric | None = _state()

    @property
    def preconditioner(self) -> torch.Tensor | None:
        """The current diagonal metric ``G`` per chain (``None`` before the first step)."""
        return None if self._rms is None else self._rms.g

    def _metric(self, x: torch.Tensor, g: torch.Tensor, learn: bool) -> torch.Tensor:
        if self._rms is None:
            self._rms = DiagonalMetric(self.alpha, self.delta, self.max_ratio, self.metric_kind)
        return self._rms(x, g, learn)


@dataclass
class HMC(Metropolis):
    """Hamiltonian Monte Carlo: ``leapfrog`` steps per proposal and a Metropolis correction.

    Momentum ``p ~ N(0, G⁻¹)`` (mass matrix ``M = G⁻¹``, ``G`` the learned :class:`DiagonalMetric`
    when ``metric=True``, else ``I``), leapfrog step ``h = √ε`` (so one leapfrog step is exactly
    the MALA proposal), accepted with ``min(1, exp(H(x, p) − H(x', p')))``,
    ``H = −log p(x) + ½ pᵀ G p``. Each proposal draws its chain's ``h`` uniformly from
    ``h·[1 − jitter, 1 + jitter]``, which breaks the resonance of a fixed trajectory length with
    the target's periods (on a Gaussian, ``L`` steps can bring a chain back where it started;
    Neal 2011, §5.4.2.2). At a hard wall the position is reflected and that momentum
    component negated (Neal 2011, §5.5.1.5): volume preserving and reversible, so the usual
    acceptance stays exact. One sampler step costs ``leapfrog`` forward and backward passes.
    """

    target_accept: float = 0.7
    adapt_steps: int = 200
    leapfrog: int = 5
    metric: bool = True
    jitter: float = 0.5
    alpha: float = 0.99
    delta: float = 1e-5
    max_ratio: float = 100.0
    metric_kind: str = "rms"
    name = "hmc"
    _rms: DiagonalMetric | None = _state()

    def __post_init__(self) -> None:
        if self.leapfrog < 1:
            raise ValueError(f"HMC needs leapfrog >= 1 steps per proposal, got {self.leapfrog}")

    def _metropolis_step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        energy, T = ctx.energy, ctx.temperature
        a = energy.activation_scale
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)
        adapting, eps = self._begin(ctx, b, x.device)
        if self.jitter:  # a random step per chain and proposal, from the chain's own stream
            eps = eps * (1 + self.jitter * (2 * ctx.noise.uniform() - 1)).square()
        h = eps.sqrt().to(x.dtype).view(view)
        if self._cache is None:
            self._cache = energy.activation(x)
        f, gf = self._cache
        key, pv, gp = self._prior(energy, x)
        logp = log_prob(f, pv, T, a)
        g = grad_log_prob(gf, gp, T, a)
        metric = None
        if self.metric:
            if self._rms is None:
                self._rms = DiagonalMetric(self.alpha, self.delta, self.max_ratio, self.metric_kind)
            metric = self._rms(x, g, adapting)
        xi = ctx.noise.normal()
        p = xi / metric.sqrt() if metric is not None else xi.clone()
        kinetic = 0.5 * xi.double().flatten(1).pow(2).sum(1)
        bounds = hard_bounds(energy, x)
        q = x.clone()
        p.add_(h / 2 * g)
        f2 = gf2 = pv2 = None
        for i in range(self.leapfrog):
            q.add_(h * p if metric is None else h * metric * p)
            if bounds is not None:
                q, odd = fold(q, *bounds)
                p.mul_(1 - 2 * odd)
            last = i == self.leapfrog - 1
            f2, gf2 = energy.activation(q)
            pv2, gp2 = energy.prior(q, with_value=last)
            p.add_((h / 2 if last else h) * grad_log_prob(gf2, gp2, T, a))
        assert f2 is not None and gf2 is not None
        logp2 = log_prob(f2, pv2, T, a)
        pd = p.double()
        kinetic2 = 0.5 * (pd.pow(2) if metric is None else pd.pow(2) * metric.double()).flatten(1).sum(1)
        log_alpha = _log_alpha(logp2.double() - kinetic2 - logp.double() + kinetic)
        accept = self._decide(x, q, (f, gf), (f2, gf2), log_alpha, ctx, adapting)
        self._keep_prior(key, accept, (pv, gp), (pv2, gp2))
        return f

    @property
    def preconditioner(self) -> torch.Tensor | None:
        """The current diagonal metric ``G`` (the inverse mass) per chain, if one is learned."""
        return None if self._rms is None else self._rms.g


@dataclass
class PSGLD(Method):
    """RMSProp-preconditioned SGLD (Li et al. 2016), without the small Γ correction term.

    ``V ← α V + (1 − α) g²``, ``G = 1 / (δ + √V)``, ``x ← x + (ε/2) G g + √(ε G) ξ``, where
    ``g = ∇log p(x)``. Every coordinate moves at a similar rate whatever its gradient scale.
    Under a parameterization ``G`` is capped at ``2T/(εk)``, half the stability bound of the latent
    Gaussian ``k/2T ‖z‖²`` (``k = T/σ²``): latent coordinates that ``f`` does not see have vanishing
    gradients, and an uncapped ``1/√V`` would take unstable steps there.

    A preconditioner that keeps tracking the state biases the chain (it moves slower where
    gradients are large). With ``freeze=True`` (the default) ``V`` adapts during burn-in only;
    afterwards ``G`` is a fixed diagonal metric and the chain samples ``p`` up to the usual
    O(ε) discretization error.
    """

    alpha: float = 0.99
    delta: float = 1e-5
    freeze: bool = True
    name = "psgld"
    _v: torch.Tensor | None = _state()
    _g: tuple[torch.Tensor, torch.Tensor, float | None] | None = _state()

    def reset(self) -> None:
        self._v = self._g = None

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps = ctx.step_size
        f, gf = ctx.energy.activation(x)
        _, gp = ctx.energy.prior(x, with_value=False)
        g = grad_log_prob(gf, gp, ctx.temperature, ctx.energy.activation_scale)
        if self._v is None or self._v.shape != g.shape:
            self._v = g * g
            self._g = None
        elif ctx.adapting or not self.freeze:
            self._v.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
            self._g = None
        k = ctx.energy.guarded_weight()
        cap = 2 * ctx.temperature / (eps * k) if k > 0 else None
        if self._g is None or self._g[2] != cap:
            precond = (self._v.sqrt() + self.delta).reciprocal_()
            if cap is not None:
                # where the gradient vanishes (a latent coordinate at the prior's centre) 1/√V would
                # take a step past the prior's stability bound ε·G·k/2T < 2: stay at half of it
                precond.clamp_(max=cap)
            self._g = (precond, precond.sqrt(), cap)
        precond, root, _ = self._g
        x.addcmul_(precond, g, value=eps / 2).addcmul_(root, ctx.noise.normal(), value=math.sqrt(eps))
        ctx.energy.project_(x)
        return f

    def stable_step(self, l2: float, temperature: float) -> float | None:
        """Per coordinate ``x ← (1 − εGλ/2T) x + …``: stable iff ``ε < 4T/(λ·max G)`` with the current
        preconditioner ``G`` (``None`` before the first step, when there is none yet)."""
        if l2 <= 0 or self._v is None:
            return None
        g_max = float(self._g[0].max()) if self._g is not None else 1.0 / (float(self._v.sqrt().min()) + self.delta)
        return 4 * temperature / (l2 * g_max)


@dataclass
class Paper(Method):
    """The authors' update (BIDMach ``viz/Synthesis.scala``, PAPER.md §6), for comparison.

    Per step: ``acc ← 0.9 acc + 0.1 g_f²``; ``ĝ = g_f / √(acc + 1e-8)``; with a discriminator in
    ``"mix"`` mode, ``ĝ ← (1 − w) ĝ + w ĝ_D`` (:class:`ldam.Discriminator`);
    ``ĝ += σ_τ ξ`` with ``σ_τ = T / (1 + τ²)`` and ``τ = t mod frame``;
    ``ĝ −= (2/s) Σ λ_i ∇R_i(x)``; ``m ← 0.9 m + 0.1 ĝ``; ``x ← x + s·ε·m``; clamp to any box.
    Here the temperature plays the noise slider ``σ`` and the step size the learning rate ``η``;
    ``scale`` is ``s`` (256 for the authors' 0–255 pixels; 1 for inputs of unit range).
    """

    frame: int = 10
    scale: float = 1.0
    momentum: float = 0.9
    name = "paper"
    _acc: torch.Tensor | None = _state()
    _m: torch.Tensor | None = _state()

    def reset(self) -> None:
        self._acc = self._m = None

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        f, gf = ctx.energy.activation(x)
        if self._acc is None or self._acc.shape != gf.shape:
            self._acc = torch.zeros_like(gf)
            self._m = torch.zeros_like(gf)
        assert self._m is not None
        g = rms_normalized(gf, self._acc)
        a = ctx.energy.activation_scale
        if a != 1.0:
            g.mul_(a)
        mixer = ctx.energy.mixer
        if mixer is not None:
            g = mixer.mix(g, x)  # type: ignore[attr-defined]
        tau = ctx.t % self.frame
        g.add_(ctx.noise.normal(), alpha=ctx.temperature / (1 + tau * tau))
        _, gp = ctx.energy.prior(x, with_value=False)
        if gp is not None:
            g.add_(gp, alpha=-2.0 / self.scale)
        self._m.mul_(self.momentum).add_(g, alpha=1 - self.momentum)
        x.add_(self._m, alpha=self.scale * ctx.step_size)
        for b in ctx.energy.boxes:
            b.clamp(x, out=x)
        if not ctx.energy.boxes:
            ctx.energy.project_(x)  # a box on the images of a parameterization (a no-op otherwise)
        return f

    def stable_step(self, l2: float, temperature: float) -> float | None:
        """On ``λ/2‖x‖²`` the update is linear: ``m' = μm − (1−μ)(2λ/s)x``, ``x' = x + sηm'``, a
        matrix with trace ``1 + μ − c`` and determinant ``μ`` (``c = 2ηλ(1−μ)``). By the Jury
        criterion its eigenvalues lie inside the unit circle iff ``0 < c < 2(1 + μ)`` (for
        ``0 ≤ μ < 1``): ``η < (1 + μ) / (λ(1 − μ))``, whatever ``s`` and the noise level ``T``."""
        if l2 <= 0:
            return None
        if self.momentum >= 1:
            return 0.0
        return (1 + self.momentum) / (l2 * (1 - self.momentum))


@dataclass
class Ascent(Method):
    """Gradient ascent on the same ``log p`` (no noise): the optimizer-based baseline.

    ``optimizer="adam"``: ``x ← x + ε · m̂ / (√v̂ + δ)`` with Adam's bias-corrected moments of
    ``∇log p`` (``β₁, β₂``), per coordinate and so per chain; ``ε`` is the sampler's step size
    (a learning rate such as 0.05). ``optimizer="gd"``: ``x ← x + (ε/2) ∇log p``, SGLD's drift.
    It climbs to a mode of ``p`` (a maximum of ``f − Σ λR`` in pixel space); the chains differ only
    by where they started. Hard boxes are kept by folding, as in SGLD.
    """

    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    delta: float = 1e-8
    name = "ascent"
    _m: torch.Tensor | None = _state()
    _v: torch.Tensor | None = _state()
    _n: int = _state(0)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "gd"):
            raise ValueError(f"Ascent's optimizer must be 'adam' or 'gd', got {self.optimizer!r}")

    def reset(self) -> None:
        self._m = self._v = None
        self._n = 0

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        f, gf = ctx.energy.activation(x)
        _, gp = ctx.energy.prior(x, with_value=False)
        g = grad_log_prob(gf, gp, ctx.temperature, ctx.energy.activation_scale)
        if self.optimizer == "gd":
            x.add_(g, alpha=ctx.step_size / 2)
        else:
            b1, b2 = self.betas
            if self._m is None or self._m.shape != g.shape:
                self._m, self._v, self._n = torch.zeros_like(g), torch.zeros_like(g), 0
            assert self._v is not None
            self._n += 1
            self._m.lerp_(g, 1 - b1)
            self._v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = self._m / (1 - b1**self._n)
            v_hat = self._v / (1 - b2**self._n)
            x.add_(m_hat / (v_hat.sqrt() + self.delta), alpha=ctx.step_size)
        ctx.energy.project_(x)
        return f


METHODS: dict[str, type[Method]] = {"sgld": SGLD, "mala": MALA, "pmala": PMALA, "hmc": HMC, "psgld": PSGLD,
                                     "paper": Paper, "ascent": Ascent}


def make_method(method: str | Method) -> Method:
    """A method value from its name (``"sgld"``, ``"mala"``, ``"pmala"``, ``"hmc"``, ``"psgld"``,
    ``"paper"``, ``"ascent"``) or as given."""
    if isinstance(method, Method):
        return method
    try:
        return METHODS[method]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown sampler method {method!r}: choose one of {', '.join(METHODS)}, "
            "or pass a value such as ldam.MALA(adapt=False)"
        ) from None
