"""The samplers: one update rule per method, and per-chain noise.

Each method moves the chains ``x`` (in place) one step towards samples of
``log p(x) = (f(x) − Σ λ_i R_i(x)) / T`` and returns ``f`` at the state it started from.

``SGLD``   ``x ← x + (ε/2) ∇log p(x) + √ε · ξ``                    (Welling & Teh 2011)
``MALA``   the SGLD move as a proposal, accepted with the Metropolis–Hastings ratio, so the
           chain is exact for ``p`` at any ``ε``.
``PSGLD``  ``x ← x + (ε/2) G ∇log p + √(ε G) · ξ`` with the RMSProp preconditioner
           ``G = 1 / (δ + √V)``, ``V ← α V + (1 − α) (∇log p)²``   (Li et al. 2016)
``Paper``  the authors' BIDMach update (PAPER.md §6): RMS-normalized activation gradient, noise
           ``σ_t = T / (1 + τ²)`` with ``τ`` the step within a frame, L2 pull ``2λx/s``,
           momentum 0.9 and step ``s·η·m``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .energy import Energy, grad_log_prob, log_prob


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


@dataclass
class SGLD(Method):
    """Unadjusted Langevin: ``x ← x + (ε/2)∇log p(x) + √ε·ξ``. Biased by O(ε); use a small ε or MALA."""

    name = "sgld"

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps, temp = ctx.step_size, ctx.temperature
        f, gf = ctx.energy.activation(x)
        k, rest = ctx.energy.prior_split(x)
        a = ctx.energy.activation_scale
        if a != 1.0:
            gf.mul_(a)
        if rest is not None:
            gf.sub_(rest)
        # x + (ε/2T)(a·∇f − k·x − rest) + √ε ξ, with the L2 part as one scalar multiply
        if k:
            x.mul_(1 - eps * k / (2 * temp))
        x.add_(gf, alpha=eps / (2 * temp)).add_(ctx.noise.normal(), alpha=math.sqrt(eps))
        ctx.energy.project_(x)
        return f


@dataclass
class MALA(Method):
    """Metropolis-adjusted Langevin: exact for ``p`` at any step size.

    The SGLD move ``x' = x + (ε/2)∇log p(x) + √ε ξ`` is accepted with probability
    ``min(1, p(x') q(x|x') / (p(x) q(x'|x)))``, ``q(b|a) = N(b; a + (ε/2)∇log p(a), ε I)``.
    With ``adapt=True`` each chain's ε is scaled during burn-in by Robbins–Monro steps on
    ``log ε`` towards the acceptance rate ``target_accept`` (0.574 is optimal for MALA).
    """

    adapt: bool = True
    target_accept: float = 0.574
    name = "mala"
    _cache: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)
    _log_scale: torch.Tensor | None = field(default=None, init=False, repr=False)
    _accepted: torch.Tensor | None = field(default=None, init=False, repr=False)
    _proposed: int = field(default=0, init=False, repr=False)
    _n_adapt: int = field(default=0, init=False, repr=False)

    def reset(self) -> None:
        self._cache = None

    def reset_counts(self) -> None:
        self._accepted, self._proposed = None, 0

    @property
    def acceptance(self) -> torch.Tensor | None:
        """Per-chain acceptance rate since the counts were last reset (at burn-in)."""
        if self._accepted is None or self._proposed == 0:
            return None
        return self._accepted / self._proposed

    def step_scale(self) -> torch.Tensor | None:
        return None if self._log_scale is None else self._log_scale.exp()

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        energy, T = ctx.energy, ctx.temperature
        a = energy.activation_scale
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)
        if self._log_scale is None or self._log_scale.shape[0] != b:
            self._log_scale = torch.zeros(b, dtype=torch.float64, device=x.device)
        eps = (ctx.step_size * self._log_scale.exp()).to(x.dtype)
        if self._cache is None:
            self._cache = energy.activation(x)
        f, gf = self._cache
        pv, gp = energy.prior(x)
        logp = log_prob(f, pv, T, a)
        g = grad_log_prob(gf, gp, T, a)
        xi = ctx.noise.normal()
        prop = x + (eps / 2).view(view) * g + eps.sqrt().view(view) * xi
        f2, gf2 = energy.activation(prop)
        pv2, gp2 = energy.prior(prop)
        logp2 = log_prob(f2, pv2, T, a)
        g2 = grad_log_prob(gf2, gp2, T, a)
        back = x - prop - (eps / 2).view(view) * g2
        log_q_back = -back.flatten(1).pow(2).sum(1) / (2 * eps)
        log_q_fwd = -0.5 * xi.flatten(1).pow(2).sum(1)
        log_alpha = (logp2 - logp + log_q_back - log_q_fwd).double()
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf, posinf=-math.inf)
        inside = energy.inside(prop)
        if inside is not None:
            log_alpha = torch.where(inside, log_alpha, torch.full_like(log_alpha, -math.inf))
        accept = ctx.noise.uniform().log() < log_alpha
        x.copy_(torch.where(accept.view(view), prop, x))
        self._cache = (torch.where(accept, f2, f), torch.where(accept.view(view), gf2, gf))
        acc = accept.to(torch.float64)
        self._accepted = acc if self._accepted is None else self._accepted + acc
        self._proposed += 1
        if self.adapt and ctx.adapting:
            self._n_adapt += 1
            rate = min(1.0, 2.0 * (1 + self._n_adapt) ** -0.6)
            self._log_scale += rate * (acc - self.target_accept)
        return f

    def stats(self) -> dict[str, float]:
        a = self.acceptance
        return {} if a is None else {"acceptance": float(a.mean())}


@dataclass
class PSGLD(Method):
    """RMSProp-preconditioned SGLD (Li et al. 2016), without the small Γ correction term.

    ``V ← α V + (1 − α) g²``, ``G = 1 / (δ + √V)``, ``x ← x + (ε/2) G g + √(ε G) ξ``, where
    ``g = ∇log p(x)``. Every coordinate moves at a similar rate whatever its gradient scale.

    A preconditioner that keeps tracking the state biases the chain (it moves slower where
    gradients are large). With ``freeze=True`` (the default) ``V`` adapts during burn-in only;
    afterwards ``G`` is a fixed diagonal metric and the chain samples ``p`` up to the usual
    O(ε) discretization error.
    """

    alpha: float = 0.99
    delta: float = 1e-5
    freeze: bool = True
    name = "psgld"
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)
    _g: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

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
        if self._g is None:
            precond = (self._v.sqrt() + self.delta).reciprocal_()
            self._g = (precond, precond.sqrt())
        precond, root = self._g
        x.addcmul_(precond, g, value=eps / 2).addcmul_(root, ctx.noise.normal(), value=math.sqrt(eps))
        ctx.energy.project_(x)
        return f


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
    _acc: torch.Tensor | None = field(default=None, init=False, repr=False)
    _m: torch.Tensor | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        self._acc = self._m = None

    def step(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        f, gf = ctx.energy.activation(x)
        if self._acc is None or self._acc.shape != gf.shape:
            self._acc = torch.zeros_like(gf)
            self._m = torch.zeros_like(gf)
        assert self._m is not None
        self._acc.mul_(0.9).addcmul_(gf, gf, value=0.1)
        g = gf / (self._acc + 1e-8).sqrt()
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
            lo, hi = b.bounds(x)
            torch.maximum(torch.minimum(x, hi), lo, out=x)
        return f


METHODS: dict[str, type[Method]] = {"sgld": SGLD, "mala": MALA, "psgld": PSGLD, "paper": Paper}


def make_method(method: str | Method) -> Method:
    """A method value from its name (``"sgld"``, ``"mala"``, ``"psgld"``, ``"paper"``) or as given."""
    if isinstance(method, Method):
        return method
    try:
        return METHODS[method]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown sampler method {method!r}: choose one of {', '.join(METHODS)}, "
            "or pass a value such as ldam.MALA(adapt=False)"
        ) from None
