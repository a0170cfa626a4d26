"""Burn-in: when the chains have forgotten their start and samples are worth keeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class BurnIn:
    """Decides, step by step, when burn-in is over. Once over it stays over."""

    def ready(self, t: int) -> bool:
        """True if the state ``x_t`` (before step ``t``) and all later ones are kept."""
        raise NotImplementedError

    def observe(self, t: int, f: torch.Tensor) -> None:
        """Take ``f(x_t)`` for every chain, while burn-in lasts."""


@dataclass
class FixedBurnIn(BurnIn):
    """Discard the first ``steps`` states."""

    steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"burn_in must be >= 0 steps or 'auto', got {self.steps}")

    def ready(self, t: int) -> bool:
        return t >= self.steps


@dataclass
class AutoBurnIn(BurnIn):
    """Burn-in ends when the activation is near its running maximum and no longer rising.

    For each target, ``f`` is averaged over its chains and over blocks of ``window`` steps:
    ``m_k``, with standard error ``e_k`` (from the spread of the chains' block means). With
    ``M = max_{i≤k} m_i`` the running maximum and ``r = M − m_0`` how far the target rose,
    the target is *settled* at block ``k`` when

        M − m̄ ≤ tol·r + 2·ē         (near its running maximum)   and
        m̄ − m̄' ≤ tol·r + 2·ē        (no longer rising),

    where ``m̄`` is the mean of the last ``patience`` blocks, ``m̄'`` that of the ``patience``
    blocks before them, and ``ē`` the standard error of ``m̄``. Burn-in ends at the first block
    where every target is settled, or at ``max_steps`` (the sampler then warns).
    """

    window: int = 50
    tol: float = 0.02
    patience: int = 3
    max_steps: int | None = None
    _sum: torch.Tensor | None = field(default=None, init=False, repr=False)
    _sq: torch.Tensor | None = field(default=None, init=False, repr=False)
    _means: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _errs: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _done: bool = field(default=False, init=False, repr=False)
    timed_out: bool = field(default=False, init=False)

    def ready(self, t: int) -> bool:
        if not self._done and self.max_steps is not None and t >= self.max_steps:
            self._done = self.timed_out = True
        return self._done

    def observe(self, t: int, f: torch.Tensor) -> None:
        """``f`` is ``[n_targets, chains]`` (or ``[batch]``, read as one target)."""
        f = f.detach().double().reshape(-1, f.shape[-1]) if f.dim() > 1 else f.detach().double()[None]
        self._sum = f.clone() if self._sum is None else self._sum + f
        self._sq = f * f if self._sq is None else self._sq + f * f
        if (t + 1) % self.window:
            return
        chain_means = self._sum / self.window  # [targets, chains]
        chains = chain_means.shape[1]
        m = chain_means.mean(1)
        if chains > 1:
            err = chain_means.std(1) / chains**0.5
        else:  # one chain: fall back on the spread within the block
            err = (self._sq[:, 0] / self.window - m * m).clamp_min(0).sqrt() / self.window**0.5
        self._sum = self._sq = None
        self._means.append(m)
        self._errs.append(err)
        p = self.patience
        if len(self._means) < 2 * p:
            return
        means = torch.stack(self._means)
        top = means.max(0).values
        recent, before = means[-p:].mean(0), means[-2 * p:-p].mean(0)
        slack = self.tol * (top - means[0]).clamp_min(0) + 2 * torch.stack(self._errs[-p:]).mean(0) / p**0.5
        near = top - recent <= slack
        flat = recent - before <= slack
        self._done = bool((near & flat).all())


def make_burn_in(burn_in: int | str | BurnIn) -> BurnIn:
    if isinstance(burn_in, BurnIn):
        return burn_in
    if burn_in == "auto":
        return AutoBurnIn()
    if isinstance(burn_in, int) and not isinstance(burn_in, bool):
        return FixedBurnIn(burn_in)
    raise ValueError(f"burn_in must be a number of steps, 'auto', or an ldam.AutoBurnIn(...), got {burn_in!r}")
