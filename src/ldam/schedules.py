"""Schedules for the temperature ``T_t`` and the step size ``ε_t``.

Anywhere ldam takes a temperature or step size it accepts a float (constant) or any callable
from the 0-based step index ``t`` to a float. Two schedules ship with the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

Schedule = Union[float, Callable[[int], float]]


@dataclass(frozen=True)
class PolynomialDecay:
    """``a · (b + t)^(−γ)``, the decay of Welling & Teh (2011). ``γ ∈ (0.5, 1]`` keeps SGLD consistent."""

    a: float
    b: float = 1.0
    gamma: float = 0.55

    def __post_init__(self) -> None:
        if self.a <= 0 or self.b <= 0:
            raise ValueError(f"PolynomialDecay needs a > 0 and b > 0, got a={self.a}, b={self.b}")

    def __call__(self, t: int) -> float:
        return self.a * (self.b + t) ** (-self.gamma)


@dataclass(frozen=True)
class CyclicAnnealing:
    """Repeating hot/cold cycles, to cross between modes and then settle in one.

    Each cycle lasts ``period`` steps. For the first ``hot_fraction`` of it the value is
    ``hot``; it then decays to ``cold`` along a half cosine over the next ``ramp_fraction``,
    and stays at ``cold`` for the rest of the cycle (where samples are worth keeping).
    """

    hot: float
    cold: float
    period: int
    hot_fraction: float = 0.3
    ramp_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError(f"CyclicAnnealing needs period >= 1, got {self.period}")
        if not 0 <= self.hot_fraction + self.ramp_fraction <= 1:
            raise ValueError("CyclicAnnealing needs hot_fraction + ramp_fraction within [0, 1]")

    def __call__(self, t: int) -> float:
        phase = (t % self.period) / self.period
        if phase < self.hot_fraction:
            return self.hot
        r = (phase - self.hot_fraction) / self.ramp_fraction if self.ramp_fraction > 0 else 1.0
        if r >= 1.0:
            return self.cold
        return self.cold + (self.hot - self.cold) * 0.5 * (1 + math.cos(math.pi * r))

    def is_cold(self, t: int) -> bool:
        """True in the settled part of the cycle."""
        return (t % self.period) / self.period >= self.hot_fraction + self.ramp_fraction


def evaluate(schedule: Schedule, t: int, what: str) -> float:
    """The schedule's value at step ``t``, checked to be a positive finite float."""
    v = schedule(t) if callable(schedule) else schedule
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{what} must be a positive finite number, got {v} at step {t}")
    return v
