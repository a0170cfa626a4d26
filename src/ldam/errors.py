"""Errors that name their cause and the fix.

Every error ldam raises on bad input derives from :class:`LdamError`, so the CLI can print
one line and exit non-zero instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import math


class LdamError(Exception):
    """Base class of all errors that ldam reports to users."""


class TargetError(LdamError, ValueError):
    """A target string is malformed or does not resolve against the model."""


class ShapeError(LdamError, ValueError):
    """The model rejects the requested input shape."""


class DivergenceError(LdamError, FloatingPointError):
    """The chains left the finite numbers (or ran past a limit): the step is too large for the density.

    The message names the method's stability bound for the L2 part of the energy, when it has
    one, and a step size below it; ``str(e)`` spells the fix for Python and :meth:`cli_message`
    for the command line.
    """

    def __init__(self, method: str, step_size: float, temperature: float, l2: float, bound: float | None,
                 start: int, end: int, magnitude: float, limit: float, prior: bool):
        self.method, self.step_size, self.temperature, self.l2, self.bound = method, step_size, temperature, l2, bound
        self.start, self.end, self.magnitude, self.limit, self.prior = start, end, magnitude, limit, prior
        self.suggested_step = _round2(min(step_size / 10, 0.5 * bound) if bound else step_size / 10)
        super().__init__(self._message(cli=False))

    def cli_message(self) -> str:
        return self._message(cli=True)

    def _message(self, cli: bool) -> str:
        step = f"--step-size {self.suggested_step:g}" if cli else f"step_size={self.suggested_step:g}"
        exact = "--method mala" if cli else 'method="mala"'
        what = "are not finite" if not math.isfinite(self.magnitude) else f"reached |x| = {self.magnitude:.3g}, past the limit {self.limit:.3g}"
        text = (f"the chains diverged between steps {self.start} and {self.end} (inputs {what}): step_size "
                f"{self.step_size:g} is too large for this density at temperature {self.temperature:g} with "
                f"method {self.method!r}.")
        if self.bound is not None:
            text += (f" For the L2 weight λ={self.l2:g}, {self.method} is stable only when step_size < "
                     f"{_BOUNDS.get(self.method, 'its bound')} = {self.bound:.3g}.")
        text += f" Try {step}"
        if self.method in _METROPOLIS:
            text += ("; this method rejects moves that overshoot, so the density itself may be improper: add an "
                     "L2 weight or a pixel-range box" if not self.prior else "")
        else:
            text += f", or {exact}, which rejects moves that overshoot"
        if not self.prior and self.method not in _METROPOLIS:
            text += "; with no L2 weight and no box the density may have no maximum, so add one"
        return text + "."


_BOUNDS = {"sgld": "4·T/λ", "psgld": "4·T/(λ·max G)", "paper": "(1+μ)/(λ(1−μ))"}
_METROPOLIS = {"mala", "pmala", "hmc"}


def _round2(v: float) -> float:
    """``v`` rounded down to two significant digits (so a suggestion stays below a bound)."""
    if v <= 0 or not math.isfinite(v):
        return v
    e = math.floor(math.log10(v)) - 1
    return math.floor(round(v / 10**e, 9)) * 10**e


class NonFiniteActivationError(LdamError, FloatingPointError):
    """The model produced NaN or Inf for finite inputs."""


class DataError(LdamError, OSError):
    """A data file is missing, corrupt or fails its checksum."""


class CheckpointError(LdamError, ValueError):
    """A checkpoint cannot be loaded safely."""


class DeviceError(LdamError, ValueError):
    """The device asked for (``--device``) is malformed or not present on this machine."""


class CriticWarning(UserWarning):
    """The discriminator's critic has collapsed: at chance or saturated for a long time."""


class PrecisionNote(UserWarning):
    """The model runs in half precision (bfloat16 or float16); the chains are kept in float32."""
