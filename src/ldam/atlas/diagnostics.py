"""Convergence and liveness of one unit's chains.

**Split-R̂** (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4; Vehtari et al. 2021,
"Rank-normalization, folding, and localization", eq. 1-4, *without* their rank normalization or
folding): each of the ``m`` chains of length ``n`` is cut into its first and last ``n' = ⌊n/2⌋``
draws (the middle draw of an odd ``n`` is dropped), giving ``2m`` chains ``θ_{ij}`` of length
``n'``. With the within-chain variance ``W = mean_j s_j²`` (``s_j²`` chain ``j``'s sample variance,
divisor ``n' − 1``) and the between-chain variance ``B = n' · var_j(θ̄_j)`` (divisor ``2m − 1``),

    var⁺ = (n' − 1)/n' · W + B/n',        R̂ = √(var⁺ / W).

R̂ near 1 means the chains (and the halves of each chain, which catches a trend) agree; a chain
stuck away from the others makes ``B`` and R̂ large.

**ESS** is :func:`ldam.analysis.ess` (Stan's pooled estimator with Geyer's initial monotone
sequence); :func:`split_ess` applies it to the split chains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..analysis import ess

#: Default minimum ESS for a unit to count as converged: the chains' mean activation is then known
#: to about ±0.1 of its posterior standard deviation (1/√100).
MIN_ESS = 100.0


def _as_chains(trace: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    x = np.asarray(trace.detach().cpu().double() if isinstance(trace, Tensor) else trace, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"a trace is [steps] or [steps, chains], got shape {list(x.shape)}")
    return x


def split_chains(trace: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """``[n, m]`` → ``[⌊n/2⌋, 2m]``: the first and last ``⌊n/2⌋`` draws of every chain, as separate chains."""
    x = _as_chains(trace)
    half = x.shape[0] // 2
    return np.concatenate([x[:half], x[x.shape[0] - half:]], axis=1)


def split_rhat(trace: Tensor | np.ndarray | Sequence[float]) -> float:
    """Split-R̂ of ``m`` chains ``[n, m]`` (or one chain ``[n]``), module docstring for the formula.

    ``nan`` for fewer than 4 steps, a non-finite value, or a trace whose every value is equal;
    ``inf`` when every chain half is constant but not all at the same value.
    """
    x = split_chains(trace)
    n = x.shape[0]
    if n < 2 or not np.isfinite(x).all():
        return float("nan")
    within = x.var(0, ddof=1).mean()
    between = n * x.mean(0).var(ddof=1)
    if within <= 0:
        return float("nan") if between <= 0 else math.inf
    var_plus = (n - 1) / n * within + between / n
    return float(math.sqrt(var_plus / within))


def split_ess(trace: Tensor | np.ndarray | Sequence[float]) -> float:
    """:func:`ldam.analysis.ess` of the split chains (:func:`split_chains`): a chain whose two
    halves sit at different levels lowers it, as it raises split-R̂."""
    return ess(split_chains(trace))


def is_dead(data_max: float | None, data_min: float | None, nonnegative_layer: bool) -> bool | None:
    """Whether a unit never activates on the dataset: ``data_max ≤ 0`` in a non-negative (e.g.
    post-ReLU) layer, ``data_max == data_min`` (a constant output) in any other; ``None`` without
    a dataset."""
    if data_max is None:
        return None
    if nonnegative_layer:
        return bool(data_max <= 0)
    return None if data_min is None else bool(data_max == data_min)


def unit_diagnostics(trace: Tensor, facets: int, burn_in: int, acceptance: Tensor | None, data_max: float | None,
                     data_min: float | None, nonnegative_layer: bool, rhat_limit: float = 1.1,
                     min_ess: float = MIN_ESS) -> dict[str, Any]:
    """Diagnostics of one unit sampled by ``facets`` groups of chains, as plain Python values.

    ``trace [steps, F · chains]`` is the unit's activation per step and chain, facet-major (facet
    ``f`` owns columns ``f·chains … (f+1)·chains − 1``); the first ``burn_in`` steps are dropped
    for ``rhat``, ``rhat_facet`` and ``ess``. Keys:

    - ``rhat``: :func:`split_rhat` of all chains together. Facets start from different images and
      may rightly settle in different modes, so this one is informative only.
    - ``rhat_facet``: the largest :func:`split_rhat` of one facet's chains (``nan`` if any is).
    - ``ess``: :func:`split_ess` of all chains.
    - ``acceptance``: the mean of ``acceptance`` (``None`` without one).
    - ``activation``: the mean over chains and over the last ``⌈steps/4⌉`` steps.
    - ``data_max``: the unit's largest value on the dataset (``None`` without a dataset).
    - ``dead``: the unit never activates on the dataset: ``data_max ≤ 0`` for a layer whose values
      are never negative (after a ReLU), else ``data_max == data_min`` (constant). ``None`` when
      there is no dataset to judge by.
    - ``converged``: ``rhat_facet ≤ rhat_limit`` and ``ess ≥ min_ess`` (false when either is nan).
    """
    x = _as_chains(trace)
    steps, columns = x.shape
    if facets < 1 or columns % facets:
        raise ValueError(f"a trace with {columns} chains cannot be split into {facets} facets")
    if not 0 <= burn_in < steps:
        raise ValueError(f"burn_in={burn_in} must be in [0, {steps}) for a trace of {steps} steps")
    kept = x[burn_in:]
    chains = columns // facets
    per_facet = [split_rhat(kept[:, f * chains:(f + 1) * chains]) for f in range(facets)]
    rhat_facet = math.nan if any(math.isnan(r) for r in per_facet) else max(per_facet)
    ess_all = split_ess(kept)
    dead = is_dead(data_max, data_min, nonnegative_layer)
    return {
        "rhat": split_rhat(kept),
        "rhat_facet": float(rhat_facet),
        "ess": float(ess_all),
        "acceptance": None if acceptance is None else float(torch.as_tensor(acceptance, dtype=torch.float64).mean()),
        "activation": float(x[-math.ceil(steps / 4):].mean()),
        "data_max": None if data_max is None else float(data_max),
        "dead": dead,
        "converged": bool(rhat_facet <= rhat_limit and ess_all >= min_ess),
    }


__all__ = ["split_chains", "split_rhat", "split_ess", "ess", "unit_diagnostics", "MIN_ESS"]
