"""Compare two models through their samples, unit by unit: base vs parameter-averaged, epoch 5 vs
epoch 10, before vs after fine-tuning.

Both models are sampled with the same targets, the same sampler settings and the same seeds, so
chain ``k`` of unit ``u`` under seed ``s`` starts from the same state and sees the same noise in
``A`` and in ``B``; whatever differs between the two sets of chain means comes from the models.
Every seed ``s`` gives, for every unit ``u``, the ``K`` per-chain means after burn-in,
``A_{u,s} = {a_1..a_K}`` and ``B_{u,s} = {b_1..b_K}``, and from them (see :mod:`ldam.analysis`):

* **diversity**: the mean pairwise cosine distance of the chain means,
  ``(2 / K(K−1)) Σ_{i<j} (1 − ⟨a_i, a_j⟩ / (‖a_i‖‖a_j‖))``;
* **modes**: clusters among the chain means (average linkage on cosine distance, cut at
  ``threshold``);
* **final activation**: ``f`` averaged over the unit's chains and the last 10 % of the steps;
* **activation at the chain means**: ``(1/K) Σ_k f(a_k)``;
* **gradient-region spread**: the RMS distance (pixels) of the chains' saliency centroids from
  their mean, the saliency of a chain mean being ``s = Σ_c (∂f/∂x_c)²`` normalized to sum to 1;
* **effective area**: the participation ratio ``1 / Σ s²`` of the saliency (pixels), averaged
  over chains.

Each metric's change is the paired difference ``Δ_s = m(B_{u,s}) − m(A_{u,s})``, reported as
mean ± standard error over the seeds (:func:`ldam.analysis.summarize`), with the standardized
effect ``d = mean_s Δ_s / σ_pooled``, ``σ_pooled = √((var_s m(A) + var_s m(B)) / 2)``.

**The change score** ranks the units. With the chain means scaled to unit length (``â = a/‖a‖``,
so a model that only rescales its inputs' optimum does not count as changed) and
``d(x, y) = ‖x − y‖ = √(2 (1 − cos(x, y)))``, the energy distance (Székely & Rizzo) between two
sets ``X``, ``Y`` of ``K`` chain means is::

    E(X, Y) = (2/K²) Σ_ij d(x_i, y_j) − (1/K²) Σ_ij d(x_i, x_j) − (1/K²) Σ_ij d(y_i, y_j)   ≥ 0,

zero exactly when the two sets coincide. The shift of unit ``u`` between the models is
``E(A_{u,s}, B_{u,s})`` for the same seed ``s``; how far a fresh sampler seed moves the chains of
one model is ``E_null = mean_{s<s'} ½ (E(A_{u,s}, A_{u,s'}) + E(B_{u,s}, B_{u,s'}))``. The score is::

    score_u = mean_s E(A_{u,s}, B_{u,s}) / E_null,u

(0 when the shift is 0, ``inf`` when the shift is positive but ``E_null`` is 0). Below 1, the
model change moved the unit's samples less than changing the seed does; about 1, as much (the
chains no longer track each other, but the unit's sample distribution is not visibly different);
well above 1, the unit now responds to something else. Two identical models score exactly 0 for
every unit, since the same seeds give bitwise the same chains.

Both models are only read: each run holds :func:`ldam.guard.model_guard`, and their parameter
fingerprints are checked before and after.
"""

from __future__ import annotations

import copy
import html
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .analysis import chain_stats, summarize
from .energy import L2, Box, Regularizer
from .errors import LdamError, ShapeError, TargetError
from .guard import model_guard
from .io import atomic_write_bytes
from .render import batch_grid, png_bytes
from .sampler import model_fingerprint, sample
from .targets import Target, probe_layers, resolve
from .zoo import sampling_defaults

#: The metrics, in the report's order: key → title.
METRICS: dict[str, str] = {
    "cosine_distance": "diversity (mean pairwise cosine distance)",
    "modes": "modes",
    "final_activation": "final activation (last 10% of steps)",
    "activation": "activation at the chain means",
    "saliency_spread": "gradient-region spread (px)",
    "saliency_area": "effective area (px)",
}

# The layout of a unit's picture (pixels): a label strip on top, a margin on the left for the seed
# labels, A's grid (rows: seeds, columns: chains), a gap, then B's grid laid out the same way.
LABEL_HEIGHT = 14
MARGIN = 52
GAP = 16
PAD = 2  # the gutter of ldam.render.grid


# ---- the numbers ---------------------------------------------------------------------------


def _unit_rows(means: torch.Tensor) -> torch.Tensor:
    """``[K, *shape]`` → ``[K, D]`` float64 rows scaled to unit length (a zero row stays zero)."""
    x = means.detach().double().reshape(len(means), -1)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _mean_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``(1/(|x||y|)) Σ_ij ‖x_i − y_j‖``, from the differences themselves (not ``2 − 2⟨x, y⟩``, whose
    rounding leaves ``√ε``-sized distances between equal rows)."""
    return float(torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").mean())


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The energy distance between two sets of chain means ``[K, *shape]`` (any ``K`` each), on the
    unit sphere: ``2·mean d(a_i, b_j) − mean d(a_i, a_j) − mean d(b_i, b_j)``, with
    ``d(x, y) = ‖x/‖x‖ − y/‖y‖‖`` and every mean over all pairs (diagonals included). It is ``≥ 0``,
    ``0`` for identical sets (bitwise: the three means are computed the same way), and at most 4."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("energy_distance needs at least one chain mean on each side")
    if a[0].numel() != b[0].numel():
        raise ShapeError(f"energy_distance compares inputs of one shape, got {list(a.shape[1:])} and {list(b.shape[1:])}")
    x, y = _unit_rows(a), _unit_rows(b)
    return max(0.0, 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


def change_score(shift: Sequence[float], null: Sequence[float]) -> float:
    """``mean(shift) / mean(null)``: the models' shift in units of the seed-to-seed shift; 0 when the
    shift is 0, ``inf`` when only the null is 0, ``nan`` when either is undefined."""
    num, den = float(np.mean(shift)), float(np.mean(null))
    if math.isnan(num) or math.isnan(den):
        return float("nan")
    if num == 0.0:
        return 0.0
    return float("inf") if den == 0.0 else num / den


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def standardized_effect(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's ``d`` of the per-seed values: ``mean(b − a) / √((var a + var b)/2)`` (``ddof = 1``,
    seeds where either value is NaN left out); 0 when the mean difference is 0, ``±inf`` when it is
    not but neither model's value moves with the seed, ``nan`` with fewer than 2 usable seeds."""
    x, y = _finite_pairs(a, b)
    if len(x) < 2:
        return float("nan")
    diff = float(np.mean(y - x))
    if diff == 0.0:
        return 0.0
    spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    return diff / spread if spread > 0 else math.copysign(float("inf"), diff)


@dataclass
class UnitComparison:
    """One unit's numbers in both models.

    Attributes:
        target: the unit, e.g. ``"fc3:4"``.
        label: its class name, when known.
        a, b: each metric's value per seed (keys of :data:`METRICS`).
        shift: ``E(A_s, B_s)`` per seed.
        null: ``E`` between two seeds of one model, for every pair of seeds and each model.
        means_a, means_b: the chain means ``[seeds, K, *input_shape]`` (CPU).
        silent: chain means (over all seeds) whose gradient is exactly 0, in A and in B; they are
            left out of the gradient-region numbers.
        picture: the file name of the side-by-side picture, once the report is written.
    """

    target: str
    label: str | None
    a: dict[str, list[float]]
    b: dict[str, list[float]]
    shift: list[float]
    null: list[float]
    means_a: torch.Tensor
    means_b: torch.Tensor
    silent: tuple[int, int] = (0, 0)
    picture: str | None = None

    def difference(self, metric: str) -> tuple[float, float]:
        """``B − A`` for ``metric``: mean ± standard error over the seeds of the paired differences
        (seeds where either value is NaN are left out; NaN when none is left)."""
        x, y = _finite_pairs(self.a[metric], self.b[metric])
        if len(x) == 0:
            return float("nan"), float("nan")
        return summarize(list(y - x))

    def effect(self, metric: str) -> float:
        """The standardized change of ``metric`` (:func:`standardized_effect`)."""
        return standardized_effect(self.a[metric], self.b[metric])

    @property
    def score(self) -> float:
        """``mean_s E(A_s, B_s) / E_null`` (:func:`change_score`)."""
        return change_score(self.shift, self.null)

    @property
    def score_error(self) -> float:
        """The score's standard error over seeds, ``s.e.(shift) / E_null`` (the null's own
        uncertainty left out); 0 when the shift is 0 at every seed."""
        den = float(np.mean(self.null))
        se = summarize(self.shift)[1]
        if all(s == 0.0 for s in self.shift):
            return 0.0
        return se / den if den > 0 else float("nan")

    @property
    def strongest(self) -> tuple[str, float]:
        """The metric whose standardized effect is largest in size, and that effect (``("", 0.0)``
        when no metric changed)."""
        best, size = "", 0.0
        for m in METRICS:
            d = self.effect(m)
            if not math.isnan(d) and abs(d) > abs(size):
                best, size = m, d
        return best, size

    def as_dict(self) -> dict[str, Any]:
        """The numbers (no tensors), for ``compare.json``."""
        return {
            "target": self.target, "label": self.label, "score": self.score, "score_error": self.score_error,
            "shift": self.shift, "null": self.null, "silent": list(self.silent), "picture": self.picture,
            "a": self.a, "b": self.b,
            "difference": {m: list(self.difference(m)) for m in METRICS},
            "effect": {m: self.effect(m) for m in METRICS},
        }


@dataclass
class Comparison:
    """What :func:`compare` returns: every unit's :class:`UnitComparison` in the targets' order, the
    settings, and the report's files (empty without ``out``)."""

    units: list[UnitComparison]
    seeds: list[int]
    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def ranked(self) -> list[UnitComparison]:
        """The units from the most changed to the least (by :attr:`UnitComparison.score`; NaN last;
        ties keep the targets' order)."""
        return sorted(self.units, key=lambda u: (math.isnan(u.score), -u.score if not math.isnan(u.score) else 0.0))

    def unit(self, target: str) -> UnitComparison:
        for u in self.units:
            if u.target == target:
                return u
        raise KeyError(f"no unit {target!r} in this comparison; have {[u.target for u in self.units]}")

    def _per_seed(self, side: str, metric: str) -> list[float]:
        """The unit average of ``metric`` (NaN units left out) for each seed."""
        rows = np.array([getattr(u, side)[metric] for u in self.units], float)  # [units, seeds]
        return [float(np.nanmean(c)) if np.isfinite(c).any() else float("nan") for c in rows.T]

    def overall(self, metric: str) -> dict[str, tuple[float, float]]:
        """The unit average of ``metric`` in A, in B, and of ``B − A`` (per seed, then mean ± s.e.
        over seeds): the numbers ``experiments/param_averaging.py`` reports per model pair."""
        a, b = self._per_seed("a", metric), self._per_seed("b", metric)
        x, y = _finite_pairs(a, b)
        diff = summarize(list(y - x)) if len(x) else (float("nan"), float("nan"))
        return {"a": summarize(a), "b": summarize(b), "difference": diff}

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config, "seeds": self.seeds, "units": [u.as_dict() for u in self.units],
                "overall": {m: self.overall(m) for m in METRICS},
                "ranking": [u.target for u in self.ranked()]}


# ---- running -------------------------------------------------------------------------------


def _check_models(model_a: nn.Module, model_b: nn.Module, targets: Any, input_shape: tuple[int, ...],
                  names: Sequence[str]) -> list[str]:
    """Both models accept ``input_shape`` and resolve ``targets`` to the same units; returns them."""
    resolved = []
    for which, model, name in (("A", model_a, names[0]), ("B", model_b, names[1])):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {which} must be a torch.nn.Module, got {type(model).__name__}")
        with model_guard(model):
            try:
                layers = probe_layers(model, input_shape)
            except ShapeError as e:
                raise ShapeError(f"model {which} ({name}) does not accept inputs of shape {list(input_shape)}: models A "
                                 f"and B must take the same input shape, so that the same chains run in both. {e}") from e
            try:
                resolved.append(resolve(model, targets, input_shape, 1, layers).describe())
            except (TargetError, ShapeError) as e:
                raise type(e)(f"model {which} ({name}): {e}") from e
    if resolved[0] != resolved[1]:
        raise LdamError(f"the targets name different units in A ({', '.join(resolved[0])}) and B "
                        f"({', '.join(resolved[1])}); give explicit units, e.g. fc3:0-9")
    return resolved[0]


def _describe(r: Regularizer) -> str:
    """A regularizer in a few words: ``L2 λ=0.3``, ``box [-0.424, 2.82]`` (hard), or its repr."""
    if isinstance(r, L2):
        return f"L2 λ={r.weight:g}"
    if isinstance(r, Box):
        lo, hi = (np.atleast_1d(np.asarray(v, float)) for v in (r.low, r.high))
        side = "hard" if r.weight is None else f"soft, weight {r.weight:g}"
        return "box " + ", ".join(f"[{a:.3g}, {b:.3g}]" for a, b in zip(lo, hi)) + f" ({side})"
    return repr(r)


def _run(model: nn.Module, units: list[str], shape: tuple[int, ...], seed: int, regularizers: Sequence[Regularizer],
         run: dict[str, Any], threshold: float, tail: int, sha: str, side: str
         ) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Sample every unit of one model with one seed (its own copy of the regularizers) and measure
    each unit's chains: target → metric → value (plus ``silent``), and the chain means
    ``[units, K, *shape]``."""
    res = sample(model, list(units), shape, regularizers=copy.deepcopy(list(regularizers)), seed=seed,
                 keep_samples=False, ema_tau=None, **run)
    if res.config.get("model_sha256") != sha:
        raise LdamError(f"model {side.upper()} changed during the comparison (its parameters' fingerprint moved)")
    k = run["chains"]
    final = res.activations[-tail:].double().mean(0)  # [units·K]
    out: dict[str, dict[str, float]] = {}
    for i, t in enumerate(res.targets):
        rows = slice(i * k, (i + 1) * k)
        st = chain_stats(model, t, res.mean[rows], threshold)
        out[str(t)] = {"cosine_distance": st.cosine_distance, "modes": float(st.modes),
                       "final_activation": float(final[rows].mean()), "activation": st.activation,
                       "saliency_spread": st.saliency_spread, "saliency_area": st.saliency_area,
                       "silent": float(st.silent)}
    return out, res.mean.view(len(units), k, *shape).clone()


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    targets: str | Target | Iterable[str | Target],
    input_shape: Sequence[int],
    out: str | Path | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    dataset: str | None = None,
    chains: int | None = None,
    steps: int = 1000,
    burn_in: int | None = None,
    step_size: float | None = None,
    temperature: float | None = None,
    l2: float | None = None,
    pixel_range: bool = False,
    regularizers: Sequence[Regularizer] | None = None,
    method: str = "sgld",
    threshold: float = 0.5,
    names: Sequence[str] = ("A", "B"),
    unit_names: Mapping[str, str] | None = None,
    display: str = "signed",
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    **options: Any,
) -> Comparison:
    """Sample the same ``targets`` of ``model_a`` and ``model_b`` with the same seeds and settings,
    compare them unit by unit (the module's docstring gives every formula) and, with ``out``, write
    the report there.

    Args:
        model_a, model_b: any two ``nn.Module`` taking inputs of ``input_shape``; only read.
        targets: e.g. ``"fc3:0-9"`` or a list; they must name the same units in both models.
        input_shape: one example's shape without the batch dimension, e.g. ``(1, 28, 28)``.
        out: the report's folder (``report.md``, ``report.html``, ``compare.json`` and one PNG per
            unit, each file written atomically); ``None`` to write nothing.
        seeds: sampler seeds, at least 2 distinct (each number gets a standard error over them,
            and the score's seed-to-seed baseline needs a pair).
        dataset: the models' dataset (``"mnist"``, ``"cifar10"``, ``"imagenet"``): the defaults of
            ``chains``, ``step_size``, ``temperature`` and ``l2`` come from
            :data:`ldam.zoo.SAMPLING_DEFAULTS` for it (the MNIST ones for ``None`` or another).
        chains, steps, burn_in, step_size, temperature, l2, method: as :func:`ldam.sample`
            (``burn_in`` defaults to a quarter of ``steps``).
        pixel_range: add the box of pixels in [0, 1], in the units ``(pixel − mean) / std``.
        regularizers: replace the L2 prior (and the box) by these; each run gets its own copy.
        threshold: the cosine-distance cut of the mode count.
        names: how the report calls A and B (e.g. ``"zoo:lenet-mnist"``).
        unit_names: a label per target string, e.g. ``{"fc3:4": "4"}``.
        display, mean, std: how chain means are drawn (:func:`ldam.render.to_image`): ``"signed"``
            (the paper's grey display) or ``"pixel"`` (undo ``(pixel − mean) / std``).
        log: called with a line of progress after each run.
        command: the command line that made the comparison, for the report.
        options: further keyword arguments of :func:`ldam.sample` (``unit_axes``, ``noise``, ...),
            the same for both models.
    """
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in input_shape)
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"compare needs at least 2 distinct seeds (each number gets a standard error over them), "
                         f"got {seeds}")
    if len(names) != 2:
        raise ValueError(f"names must give 2 names (A and B), got {list(names)}")
    if display not in ("signed", "pixel"):
        raise ValueError(f"display must be 'signed' or 'pixel', got {display!r}")
    for key in ("keep_samples", "ema_tau", "seed"):
        if key in options:
            raise TypeError(f"compare sets {key} itself; it cannot be passed on to ldam.sample")
    knobs = sampling_defaults(dataset)
    chains = int(chains if chains is not None else knobs["chains"])
    step_size = step_size if step_size is not None else knobs["step_size"]
    temperature = temperature if temperature is not None else knobs["temperature"]
    l2 = l2 if l2 is not None else knobs["l2"]
    if chains < 2:
        raise ValueError(f"compare needs at least 2 chains per unit (diversity and modes compare chains), got {chains}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    burn_in = steps // 4 if burn_in is None else int(burn_in)
    if regularizers is None:
        regularizers = ([L2(l2)] if l2 else []) + ([Box.from_normalization(mean, std)] if pixel_range else [])
    units = _check_models(model_a, model_b, targets, shape, names)
    sha = {"a": model_fingerprint(model_a), "b": model_fingerprint(model_b)}
    tail = max(1, steps // 10)
    run = dict(chains=chains, steps=steps, burn_in=burn_in, step_size=step_size, temperature=temperature,
               method=method, **options)
    values: dict[str, list[dict[str, dict[str, float]]]] = {"a": [], "b": []}  # side → seed → unit → metric → value
    chain_means: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    silent: dict[str, dict[str, int]] = {"a": dict.fromkeys(units, 0), "b": dict.fromkeys(units, 0)}
    for seed in seeds:
        for side, model in (("a", model_a), ("b", model_b)):
            t1 = time.perf_counter()
            per_unit, means = _run(model, units, shape, seed, regularizers, run, threshold, tail, sha[side], side)
            values[side].append(per_unit)
            chain_means[side].append(means)
            for t in units:
                silent[side][t] += int(per_unit[t].pop("silent"))
            if log is not None:
                log(f"{side.upper()} ({names[side == 'b']}) seed {seed}: {steps} steps of {len(units)} unit(s) "
                    f"x {chains} chains in {time.perf_counter() - t1:.1f} s")
    for side, model in (("a", model_a), ("b", model_b)):
        if model_fingerprint(model) != sha[side]:
            raise LdamError(f"model {side.upper()} changed during the comparison (its parameters' fingerprint moved)")
    means = {side: torch.stack(chain_means[side], 0) for side in ("a", "b")}  # [seeds, units, K, *shape]
    results = []
    pairs = [(i, j) for i in range(len(seeds)) for j in range(i + 1, len(seeds))]
    for u, target in enumerate(units):
        ma, mb = means["a"][:, u].contiguous(), means["b"][:, u].contiguous()
        results.append(UnitComparison(
            target=target, label=(unit_names or {}).get(target),
            a={m: [values["a"][s][target][m] for s in range(len(seeds))] for m in METRICS},
            b={m: [values["b"][s][target][m] for s in range(len(seeds))] for m in METRICS},
            shift=[energy_distance(ma[s], mb[s]) for s in range(len(seeds))],
            null=[0.5 * (energy_distance(ma[i], ma[j]) + energy_distance(mb[i], mb[j])) for i, j in pairs],
            means_a=ma, means_b=mb, silent=(silent["a"][target], silent["b"][target]),
        ))
    config = {
        "names": list(names), "targets": units, "input_shape": list(shape), "seeds": seeds, "chains": chains,
        "steps": steps, "burn_in": burn_in, "step_size": step_size, "temperature": temperature,
        "regularizers": [_describe(r) for r in regularizers], "method": method, "threshold": threshold,
        "dataset": dataset, "final_activation_steps": tail, "display": display, "mean": list(mean), "std": list(std),
        "sha256": sha, "identical": sha["a"] == sha["b"], "options": {k: repr(v) for k, v in options.items()},
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "device": str(next(iter(model_a.parameters()), torch.empty(0)).device),
        "command": command, "seconds": round(time.perf_counter() - t0, 1),
    }
    result = Comparison(results, seeds, config)
    if out is not None:
        write_report(result, out)
    return result


# ---- the report ----------------------------------------------------------------------------


def _zoom(shape: Sequence[int], chains: int, width: int = 1100) -> int:
    """Enlargement of the tiles: about 64 pixels a tile, at most 4 times, at least once, and no more
    than keeps the two grids side by side within ``width`` pixels."""
    side = max(shape[-2:])
    fit = width // max(1, 2 * chains * (side + PAD))
    return int(max(1, min(4, 64 // side, fit)))


def unit_picture(unit: UnitComparison, config: Mapping[str, Any]) -> Image.Image | None:
    """A's chain means (rows: seeds, columns: chains) beside B's, each mean on its own display scale
    (:func:`ldam.render.batch_grid`); ``None`` for inputs that are not images (fewer than 2 dims)."""
    shape = tuple(config["input_shape"])
    if len(shape) < 2:
        return None
    seeds, k = unit.means_a.shape[:2]
    zoom = _zoom(shape, k)
    norm = {"mean": tuple(config["mean"]), "std": tuple(config["std"])}
    grids = [batch_grid(m.reshape(seeds * k, *shape), k, config["display"], zoom=zoom, **norm)
             for m in (unit.means_a, unit.means_b)]
    mode = "RGB" if any(g.mode == "RGB" for g in grids) else "L"
    white, ink = ((255, 255, 255), (0, 0, 0)) if mode == "RGB" else (255, 0)
    w, h = grids[0].size
    canvas = Image.new(mode, (MARGIN + 2 * w + GAP, LABEL_HEIGHT + h), white)
    canvas.paste(grids[0].convert(mode), (MARGIN, LABEL_HEIGHT))
    canvas.paste(grids[1].convert(mode), (MARGIN + w + GAP, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    chars = max(4, w // 6 - 3)
    for i, name in enumerate(config["names"]):
        draw.text((MARGIN + i * (w + GAP) + PAD, 1), f"{'AB'[i]}: {name}"[:chars], fill=ink)
    tile = (h - PAD) // seeds
    for s, seed in enumerate(config["seeds"]):
        draw.text((2, LABEL_HEIGHT + PAD + s * tile + max(0, tile // 2 - 6)), f"seed {seed}", fill=ink)
    return canvas


def _file_name(index: int, target: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in target)
    return f"unit_{index:03d}_{safe}.png"


def _f(v: float, digits: int = 4, sign: bool = False) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != v:
        return "nan"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _pm(pair: tuple[float, float], sign: bool = False) -> str:
    m, e = pair
    return f"{_f(m, sign=sign)} ± {_f(e)}"


def _title(u: UnitComparison) -> str:
    return u.target + (f" ({u.label})" if u.label else "")


SCORE_TEXT = (
    "**Change score.** With each chain mean scaled to unit length and d(x, y) = ‖x − y‖ = √(2(1 − cos)), the "
    "energy distance between two sets X, Y of K chain means is E(X, Y) = (2/K²) Σ d(xᵢ, yⱼ) − (1/K²) Σ d(xᵢ, xⱼ) "
    "− (1/K²) Σ d(yᵢ, yⱼ) ≥ 0 (0 when the sets coincide). A unit's **shift** is E(A_s, B_s), the same seed s in "
    "both models (mean ± s.e. over seeds); its **seed-to-seed** E is the mean over pairs of seeds s < s′ of "
    "½(E(A_s, A_s′) + E(B_s, B_s′)). **score = mean shift / seed-to-seed E**: below 1 the model change moved the "
    "unit's samples less than a new sampler seed does, about 1 as much, well above 1 the unit responds to "
    "something else; its ± is s.e.(shift) / seed-to-seed E (the seed-to-seed E's own uncertainty left out). The largest metric change is the metric with the largest standardized effect "
    "d = mean(B − A) / √((var A + var B)/2) over seeds.")


def _summary_rows(cmp: Comparison) -> list[list[str]]:
    rows = []
    for rank, u in enumerate(cmp.ranked(), 1):
        metric, d = u.strongest
        big = (f"{METRICS[metric]}: {_f(u.difference(metric)[0], sign=True)} (d = {_f(d, 2, sign=True)})"
               if metric else "none")
        rows.append([str(rank), _title(u), f"{_f(u.score, 3)} ± {_f(u.score_error, 3)}", _pm(summarize(u.shift)),
                     _f(float(np.mean(u.null))), big])
    return rows


def _verdict(cmp: Comparison) -> str:
    scores = [u.score for u in cmp.units]
    if all(s == 0 for s in scores):
        return ("Every unit gave bitwise the same chain means in A and B: nothing changed"
                + (" (the two models have the same parameters)." if cmp.config.get("identical") else "."))
    top = [u for u in cmp.ranked() if u.score > 0][:3]
    above = sum(s > 1 for s in scores if not math.isnan(s))
    text = "Changed most: " + ", ".join(f"`{_title(u)}` (score {_f(u.score, 2)})" for u in top) + ". "
    text += (f"{above} of {len(scores)} units score above 1 (their samples moved more than a new sampler seed moves "
             "them)" if above else f"No unit scores above 1: for all {len(scores)} units the change between the models "
             "moved the samples less than a new sampler seed does")
    zero = sum(s == 0 for s in scores)
    if zero:
        text += f"; {zero} unit(s) gave bitwise the same chain means in A and B"
    return text + "."


def _overall_rows(cmp: Comparison) -> list[list[str]]:
    rows = []
    for m, title in METRICS.items():
        o = cmp.overall(m)
        rows.append([title, _pm(o["a"]), _pm(o["b"]), _pm(o["difference"], sign=True)])
    return rows


def _unit_rows_table(u: UnitComparison) -> list[list[str]]:
    return [[title, _pm(summarize(u.a[m])), _pm(summarize(u.b[m])), _pm(u.difference(m), sign=True),
             _f(u.effect(m), 2, sign=True)] for m, title in METRICS.items()]


SUMMARY_HEAD = ["rank", "unit", "change score", "shift E(A, B)", "seed-to-seed E", "largest metric change"]
OVERALL_HEAD = ["metric (average over units)", "A", "B", "B − A"]
UNIT_HEAD = ["metric", "A", "B", "B − A", "d"]


def _settings(cmp: Comparison) -> list[str]:
    c = cmp.config
    sha = c["sha256"]
    lines = [
        f"- **A**: `{c['names'][0]}` (parameters sha256 {sha['a'][:12]}); **B**: `{c['names'][1]}` "
        f"(sha256 {sha['b'][:12]}){' — the same parameters' if c['identical'] else ''}.",
        f"- Input shape {c['input_shape']}; {len(c['targets'])} unit(s); seeds {c['seeds']} (the same in A and B).",
        f"- {c['chains']} chains per unit, {c['steps']} {c['method'].upper()} steps (ε = {c['step_size']}, "
        f"T = {c['temperature']}), the first {c['burn_in']} discarded; energy terms: "
        f"{'; '.join(c['regularizers']) or 'none'}; modes cut at cosine distance {c['threshold']}; final activation "
        f"over the last {c['final_activation_steps']} steps.",
        f"- Every number is per unit and seed, then mean ± standard error over the {len(c['seeds'])} seeds; B − A is "
        "the paired difference (same seed). Gradient-region numbers leave out chain means whose gradient is exactly 0.",
        f"- Made on {c['machine']}, torch {c['torch']}, {c['threads']} threads, device {c['device']}, in "
        f"{c['seconds']:.0f} s" + (f" by `{c['command']}`" if c.get("command") else "") + ".",
    ]
    silent = [(u.target, u.silent) for u in cmp.units if any(u.silent)]
    if silent:
        lines.append("- Chain means with an exactly-0 gradient (A, B over all seeds): "
                     + ", ".join(f"{t} {a}, {b}" for t, (a, b) in silent) + ".")
    return lines


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _markdown(cmp: Comparison) -> str:
    c = cmp.config
    lines = [f"# {c['names'][0]} (A) vs {c['names'][1]} (B): LDAM samples unit by unit", "", *_settings(cmp), "",
             "## Which units changed most", "", _verdict(cmp), "", *_md_table(SUMMARY_HEAD, _summary_rows(cmp)),
             SCORE_TEXT, "", "## Averages over the units", "",
             "Each metric averaged over the units for each seed, then mean ± s.e. over seeds.", "",
             *_md_table(OVERALL_HEAD, _overall_rows(cmp)), "## Unit by unit", "",
             "Each picture: the chain means of A (left) and B (right), one row per seed, one column per chain; "
             "chain k of seed s starts from the same state and sees the same noise in both. "
             + ("Each mean is shown on its own scale (grey 0, white positive, black negative)."
                if c["display"] == "signed" else "Shown as pixels (the normalization undone, clipped to [0, 1]).")
             + " d: the standardized change mean(B − A) / pooled s.d. over seeds.", ""]
    for u in cmp.units:
        lines += [f"### {_title(u)}", "",
                  f"Change score {_f(u.score, 3)} ± {_f(u.score_error, 3)}; shift E(A, B) {_pm(summarize(u.shift))}; seed-to-seed E "
                  f"{_f(float(np.mean(u.null)))}.", ""]
        if u.picture:
            lines += [f"![{u.target}: chain means of A (left) and B (right)]({u.picture})", ""]
        lines += _md_table(UNIT_HEAD, _unit_rows_table(u))
    return "\n".join(lines)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Markdown's ``**bold**`` and ```code``` as HTML (after escaping)."""
    out, parts = [], html.escape(text).split("**")
    for i, p in enumerate(parts):
        segs = p.split("`")
        p = "".join(f"<code>{s}</code>" if j % 2 else s for j, s in enumerate(segs))
        out.append(f"<b>{p}</b>" if i % 2 else p)
    return "".join(out)


CSS = ("body{font:14px/1.45 system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
       "img{image-rendering:pixelated;max-width:100%}code{background:#f3f3f3;padding:0 3px}"
       "section{border-top:1px solid #ddd;margin-top:1.5em}")


def _html(cmp: Comparison) -> str:
    c = cmp.config
    title = f"{c['names'][0]} (A) vs {c['names'][1]} (B): LDAM samples unit by unit"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li>{_inline(line[2:])}</li>" for line in _settings(cmp)]
    parts += ["</ul><h2>Which units changed most</h2>", f"<p>{_inline(_verdict(cmp))}</p>",
              _html_table(SUMMARY_HEAD, _summary_rows(cmp)), f"<p>{_inline(SCORE_TEXT)}</p>",
              "<h2>Averages over the units</h2>", _html_table(OVERALL_HEAD, _overall_rows(cmp)),
              "<h2>Unit by unit</h2><p>Each picture: the chain means of A (left) and B (right), one row per seed, one "
              "column per chain, the same seeds in both.</p>"]
    for u in cmp.units:
        parts.append(f"<section id='{html.escape(u.target)}'><h3>{html.escape(_title(u))}</h3>"
                     f"<p>Change score {_f(u.score, 3)} ± {_f(u.score_error, 3)}; shift E(A, B) {html.escape(_pm(summarize(u.shift)))}; "
                     f"seed-to-seed E {_f(float(np.mean(u.null)))}.</p>")
        if u.picture:
            parts.append(f"<img src='{html.escape(u.picture)}' alt='{html.escape(u.target)}: A left, B right'>")
        parts.append(_html_table(UNIT_HEAD, _unit_rows_table(u)) + "</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _plain(v: Any) -> Any:
    """JSON-safe numbers: NaN → null, ±inf → "inf"/"-inf"."""
    if isinstance(v, float):
        return None if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_report(cmp: Comparison, out: str | Path) -> dict[str, Path]:
    """Write the pictures, ``compare.json``, ``report.md`` and ``report.html`` to ``out``, each file
    atomically and the pictures first, so a report never points at a missing picture. Returns (and
    stores in ``cmp.files``) what each file is → its path."""
    out = Path(out)
    files: dict[str, Path] = {}
    for i, u in enumerate(cmp.units):
        im = unit_picture(u, cmp.config)
        if im is None:
            continue
        u.picture = _file_name(i, u.target)
        files[f"picture {u.target}"] = atomic_write_bytes(out / u.picture, png_bytes(im, optimize=True))
    files["numbers"] = atomic_write_bytes(out / "compare.json",
                                     (json.dumps(_plain(cmp.as_dict()), indent=1, default=repr) + "\n").encode())
    files["markdown"] = atomic_write_bytes(out / "report.md", _markdown(cmp).encode())
    files["html"] = atomic_write_bytes(out / "report.html", _html(cmp).encode())
    cmp.files = files
    return files


__all__ = ["compare", "Comparison", "UnitComparison", "METRICS", "energy_distance", "change_score",
           "standardized_effect", "unit_picture", "write_report"]
