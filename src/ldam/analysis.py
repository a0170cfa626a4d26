"""Numbers about a set of chains: how diverse they are, how many modes they found, and where the
neuron's gradient responds.

Every function takes the per-chain means of one target, ``means`` ``[K, *shape]`` (``K`` chains),
so that the statistics of two models can be compared on equal terms.

* **Diversity**: the mean pairwise distance between chains,
  ``(2 / K(K−1)) Σ_{i<j} d(m_i, m_j)``, both Euclidean and cosine, ``d_cos = 1 − ⟨m_i, m_j⟩ /
  (‖m_i‖‖m_j‖)``. The cosine form ignores overall scale, which differs between models.
* **Modes**: chains are clustered by average linkage on cosine distance and the tree is cut at
  ``threshold``; the number of clusters is the number of distinct modes.
* **Modes in feature space**: the same two numbers on the activations of an inner layer
  (``feature_layer``, e.g. the penultimate one) instead of pixels. Pixel distances count two
  copies of the same pattern at different positions as different; the features of a
  translation-tolerant network do not.
* **Distance to real data**: the kernel distance (KID, Bińkowski et al. 2018), the unbiased
  estimate of the squared MMD between two sets of features with the cubic kernel
  ``k(a, b) = (⟨a, b⟩/d + 1)³``; 0 in expectation for samples of the same distribution and
  unbiased at small sample sizes, where a Fréchet distance is not.
* **Gradient regions**: for each chain mean, the saliency ``s = Σ_c (∂f/∂x_c)²`` normalized to sum
  to 1 over positions. Its effective area is the participation ratio ``1 / Σ s²`` (in pixels: the
  number of equally weighted pixels with the same concentration), and the spread of the regions
  across chains is the RMS distance of each chain's saliency centroid from their mean centroid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .guard import model_guard
from .targets import LayerInfo, Target, capture, probe_layers, resolve


def _flat(means: torch.Tensor) -> torch.Tensor:
    return means.detach().double().reshape(len(means), -1)


def cosine_distances(means: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` matrix of ``1 − cos(m_i, m_j)``."""
    x = _flat(means)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (1 - x @ x.T).clamp_min(0)


def mean_pairwise(d: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a symmetric distance matrix."""
    k = d.shape[0]
    if k < 2:
        return float("nan")
    return float(d.triu(1).sum() / (k * (k - 1) / 2))


def count_modes(means: torch.Tensor, threshold: float = 0.5) -> int:
    """Clusters among the chains: average linkage on cosine distance, cut at ``threshold``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(means) < 2:
        return len(means)
    d = cosine_distances(means).numpy()
    np.fill_diagonal(d, 0.0)
    d = (d + d.T) / 2
    tree = linkage(squareform(d, checks=False), method="average")
    return int(fcluster(tree, t=threshold, criterion="distance").max())


def activation_gradients(model: nn.Module, target: str | Target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x_i)`` and ``∇_x f(x_i)`` for every row of ``x`` and one target (the model is left as found).

    ``x`` goes to the model's device for the pass; both come back on the CPU."""
    with model_guard(model):
        ts = resolve(model, target, tuple(x.shape[1:]), chains=len(x))
        if len(ts.targets) != 1:
            raise ValueError(f"activation_gradients takes one target, {target!r} names {len(ts.targets)}")
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        ts = ts.to(device, x.dtype)
        with ts.attached():
            f, g = ts.value_and_grad(x.to(device))
        return f.cpu(), g.cpu()


def layer_activations(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int | None = None,
                      layers: dict[str, LayerInfo] | None = None) -> torch.Tensor:
    """The output of ``layer`` (an entry of ``ldam layers``: a module name, ``relu#1``, ``output``,
    ``output.logits``, ...) for every row of ``x``, flattened ``[K, D]``, ``batch_size`` rows at a
    time (eval mode, no gradients; the model is left as found). Pass ``layers`` (from
    :func:`~ldam.targets.probe_layers`) to skip probing the model again. Each batch goes to the
    model's device; the result comes back on the CPU."""
    with model_guard(model):
        if layers is None:
            layers = probe_layers(model, tuple(x.shape[1:]))
        if layer not in layers:
            raise ValueError(f"no layer named {layer!r} in {type(model).__name__}; run `ldam layers` to list them")
        if not layers[layer].addressable:
            raise ValueError(f"layer {layer!r} cannot be read: {layers[layer].reason}")
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        step = batch_size or max(1, len(x))
        out = torch.cat([capture(model, [layers[layer]], x[i:i + step].to(device), None)[layer].cpu()
                         for i in range(0, len(x), step)])
    return out.flatten(1)


def saliency(grads: torch.Tensor) -> torch.Tensor:
    """``[K, C, *spatial]`` gradients → ``[K, *spatial]`` saliency ``Σ_c g_c²``, each summing to 1.

    A row whose gradient is exactly 0 (every path to the neuron switched off) has no saliency
    and comes back as NaN.
    """
    s = grads.detach().double().pow(2).sum(1)
    total = s.flatten(1).sum(1).view(-1, *([1] * (s.dim() - 1)))
    return s / total.where(total > 0, torch.full_like(total, float("nan")))


def effective_area(sal: torch.Tensor) -> torch.Tensor:
    """Participation ratio ``1 / Σ s²`` of each normalized saliency map (pixels; NaN without saliency)."""
    return 1.0 / sal.flatten(1).pow(2).sum(1)


def centroid_spread(sal: torch.Tensor) -> float:
    """RMS distance (pixels) of the chains' saliency centroids from their mean centroid (2-D maps);
    maps without saliency (NaN) are left out."""
    if sal.dim() != 3:
        raise ValueError("centroid_spread needs 2-D saliency maps [K, H, W]")
    sal = sal[~sal.flatten(1).isnan().any(1)]
    if len(sal) == 0:
        return float("nan")
    _, h, w = sal.shape
    ys = torch.arange(h, dtype=sal.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=sal.dtype).view(1, 1, w)
    c = torch.stack([(sal * ys).sum((1, 2)), (sal * xs).sum((1, 2))], 1)
    return float((c - c.mean(0)).pow(2).sum(1).mean().sqrt())


@dataclass
class ChainStats:
    """The statistics of one target's chains."""

    chains: int
    silent: int  # chain means at which the gradient is exactly 0 (left out of the saliency numbers)
    distance: float
    cosine_distance: float
    modes: int
    activation: float
    saliency_area: float
    saliency_spread: float
    feature_cosine_distance: float = float("nan")
    feature_modes: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def chain_stats(model: nn.Module, target: str | Target, means: torch.Tensor, threshold: float = 0.5,
                feature_layer: str | None = None) -> ChainStats:
    """All of the module's statistics for the chain means of one target; the feature-space ones
    only when ``feature_layer`` names an inner layer."""
    f, g = activation_gradients(model, target, means)
    sal = saliency(g)
    spread = centroid_spread(sal) if sal.dim() == 3 else float("nan")
    area = effective_area(sal)
    feats = {}
    if feature_layer is not None:
        h = layer_activations(model, feature_layer, means)
        feats = {"feature_cosine_distance": mean_pairwise(cosine_distances(h)),
                 "feature_modes": count_modes(h, threshold)}
    return ChainStats(
        chains=len(means),
        silent=int(area.isnan().sum()),
        distance=mean_pairwise(torch.cdist(_flat(means), _flat(means))),
        cosine_distance=mean_pairwise(cosine_distances(means)),
        modes=count_modes(means, threshold),
        activation=float(f.double().mean()),
        saliency_area=float(area.nanmean()) if not area.isnan().all() else float("nan"),
        saliency_spread=spread,
        **feats,
    )


def kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased ``MMD²`` between feature sets ``a`` ``[m, d]`` and ``b`` ``[n, d]`` with the kernel
    ``k(x, y) = (⟨x, y⟩/d + 1)³``:
    ``Σ_{i≠j} k(a_i, a_j)/(m(m−1)) + Σ_{i≠j} k(b_i, b_j)/(n(n−1)) − 2 Σ_{i,j} k(a_i, b_j)/(mn)``."""
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    m, n, d = len(a), len(b), a.shape[1]
    if m < 2 or n < 2 or b.shape[1] != d:
        raise ValueError(f"kid needs at least 2 rows on each side with equal widths, got {list(a.shape)}, {list(b.shape)}")
    kaa, kbb, kab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    return float((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
                 - 2 * kab.mean())


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``nan`` error for a single value)."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float("nan")
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a)))


def ess(trace: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Effective sample size of a scalar trace ``[n]`` or of ``m`` chains ``[n, m]``.

    The chains are pooled as in Stan (Vehtari et al. 2021, without rank normalization or
    splitting): with ``W`` the mean within-chain variance, ``B/n`` the variance of the chain
    means and ``var⁺ = (n−1)/n·W + B/n``, the autocorrelation at lag ``t`` is
    ``ρ_t = 1 − (W − mean_j γ_j(t)) / var⁺`` (``γ_j`` chain ``j``'s autocovariance, by FFT). Chains
    that sit in different places lower ``ρ``'s decay, so a set of chains that do not mix with one
    another gets a small ESS. Geyer's initial monotone sequence truncates the sum: pairs
    ``P_k = ρ_2k + ρ_2k+1`` are summed up to the first that is not positive, each capped by the
    previous one, and ``ESS = n·m / τ`` with ``τ = −1 + 2 Σ P_k`` (at most ``n·m·log10(n·m)``, as
    Stan caps it). ``nan`` for fewer than 4 steps or a constant trace.
    """
    x = np.asarray(trace.detach().cpu().double() if isinstance(trace, torch.Tensor) else trace, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"ess takes a trace [n] or [n, chains], got shape {list(x.shape)}")
    n, m = x.shape
    if n < 4:
        return float("nan")
    centered = x - x.mean(0)
    size = 1 << int(2 * n - 1).bit_length()
    spec = np.fft.rfft(centered, size, axis=0)
    acov = np.fft.irfft(spec * np.conj(spec), size, axis=0)[:n] / n  # biased γ_j(t), [n, m]
    within = acov[0].mean() * n / (n - 1)
    between = x.mean(0).var(ddof=1) * n if m > 1 else 0.0
    var_plus = (n - 1) / n * within + between / n
    if not var_plus > 0:
        return float("nan")
    rho = 1 - (within - acov.mean(1)) / var_plus
    rho[0] = 1.0
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(1)
    positive = np.flatnonzero(pairs <= 0)
    pairs = pairs[: positive[0] if len(positive) else len(pairs)]
    tau = -1 + 2 * np.minimum.accumulate(pairs).sum()
    total = n * m
    return float(total / max(tau, 1 / np.log10(total)))


__all__ = ["cosine_distances", "mean_pairwise", "count_modes", "activation_gradients", "layer_activations", "saliency",
           "effective_area", "centroid_spread", "ChainStats", "chain_stats", "kid", "summarize", "ess"]
