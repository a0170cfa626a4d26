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

    The activation of each chain is averaged over blocks of ``window`` steps: ``m_k``. With
    ``M = max_{i≤k} m_i`` (the running maximum), ``r = M − m_0`` (how far the chain rose) and
    ``s`` the standard deviation of ``f`` within block ``k``, a chain is *settled* at block
    ``k ≥ 2`` when

        M − m_k ≤ tol·r + s     (near its running maximum)   and
        m_k − m_{k−1} ≤ tol·r + s/√window   (no longer rising).

    Burn-in ends at the end of the first block where at least ``fraction`` of the chains are
    settled, or after ``max_steps`` (with a warning from the sampler) if that never happens.
    """

    window: int = 50
    tol: float = 0.05
    fraction: float = 0.9
    max_steps: int | None = None
    _sum: torch.Tensor | None = field(default=None, init=False, repr=False)
    _sq: torch.Tensor | None = field(default=None, init=False, repr=False)
    _means: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _done: bool = field(default=False, init=False, repr=False)
    timed_out: bool = field(default=False, init=False)

    def ready(self, t: int) -> bool:
        if not self._done and self.max_steps is not None and t >= self.max_steps:
            self._done = self.timed_out = True
        return self._done

    def observe(self, t: int, f: torch.Tensor) -> None:
        f = f.detach().double()
        self._sum = f.clone() if self._sum is None else self._sum + f
        self._sq = f * f if self._sq is None else self._sq + f * f
        if (t + 1) % self.window:
            return
        m = self._sum / self.window
        s = (self._sq / self.window - m * m).clamp_min(0).sqrt()
        self._sum = self._sq = None
        self._means.append(m)
        if len(self._means) < 3:
            return
        means = torch.stack(self._means)
        top = means.max(0).values
        rise = (top - means[0]).clamp_min(0)
        near = top - m <= self.tol * rise + s
        flat = m - means[-2] <= self.tol * rise + s / self.window**0.5
        settled = (near & flat).double().mean().item()
        self._done = settled >= self.fraction


def make_burn_in(burn_in: int | str | BurnIn) -> BurnIn:
    if isinstance(burn_in, BurnIn):
        return burn_in
    if burn_in == "auto":
        return AutoBurnIn()
    if isinstance(burn_in, int) and not isinstance(burn_in, bool):
        return FixedBurnIn(burn_in)
    raise ValueError(f"burn_in must be a number of steps, 'auto', or an ldam.AutoBurnIn(...), got {burn_in!r}")
