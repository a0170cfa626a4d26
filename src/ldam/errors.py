"""Errors that name their cause and the fix.

Every error ldam raises on bad input derives from :class:`LdamError`, so the CLI can print
one line and exit non-zero instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class LdamError(Exception):
    """Base class of all errors that ldam reports to users."""


class TargetError(LdamError, ValueError):
    """A target string is malformed or does not resolve against the model."""


class ShapeError(LdamError, ValueError):
    """The model rejects the requested input shape."""


class DivergenceError(LdamError, FloatingPointError):
    """The chains left the finite numbers: the step is too large for the density."""


class NonFiniteActivationError(LdamError, FloatingPointError):
    """The model produced NaN or Inf for finite inputs."""


class DataError(LdamError, OSError):
    """A data file is missing, corrupt or fails its checksum."""


class CheckpointError(LdamError, ValueError):
    """A checkpoint cannot be loaded safely."""


class CriticWarning(UserWarning):
    """The discriminator's critic has collapsed: at chance or saturated for a long time."""
