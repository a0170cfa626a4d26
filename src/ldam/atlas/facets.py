"""Facets: the distinct kinds of image that drive one unit (Nguyen et al. 2016, *Multifaceted
Feature Visualization*).

A unit's top-``N`` dataset images (``N`` ≈ 50-100) are embedded by a late layer of the same model
(:func:`default_feature_layer`), each embedding is scaled to unit length, and the embeddings are
clustered by k-means (:func:`kmeans`). The number of clusters is chosen by the silhouette
(:func:`silhouette`, :func:`choose_facets`): a unit gets several facets only when its top images
really split into well separated groups of a fair size, and one otherwise. Each facet's mean image
is the starting point of that facet's chains (:func:`facet_starts`).

All clustering runs in float64 on the CPU (``N`` is small); results are deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..analysis import layer_activations
from ..errors import TargetError
from ..guard import model_guard
from ..targets import OUTPUT, LayerInfo, probe_layers

#: Below this mean silhouette a split is not taken as real structure (Kaufman & Rousseeuw 1990:
#: ≤ 0.25 "no substantial structure", 0.26-0.50 "weak", 0.51-0.70 "reasonable").
MIN_SILHOUETTE = 0.25


@dataclass(frozen=True)
class KMeans:
    """A k-means partition of ``N`` rows: ``labels`` ``[N]`` (int64, canonical order: cluster ``j``
    is the ``j``-th to appear going down the rows), ``centers`` ``[k, D]`` (float64) and
    ``inertia`` ``Σ_i ‖x_i − c_{labels_i}‖²``."""

    labels: Tensor
    centers: Tensor
    inertia: float


@dataclass(frozen=True)
class Facets:
    """The facets of one unit's top-``N`` images.

    ``labels`` ``[N]``: the facet of each image (canonical order: facet 0 holds the best-ranked
    image, facet 1 the best-ranked image outside facet 0, ...); ``count``: the number of facets
    ``F``; ``silhouette``: the mean silhouette of the chosen partition (``None`` for one facet);
    ``sizes``: images per facet; ``scores``: the silhouette of every ``k`` tried (``nan`` where the
    partition had a facet smaller than the minimum size).
    """

    labels: Tensor
    count: int
    silhouette: float | None
    sizes: tuple[int, ...]
    scores: dict[int, float] = field(default_factory=dict)


def _as_points(x: Tensor) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected points [N, D], got shape {list(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("the points hold NaN or infinite values")
    return x


def _dists(x: Tensor, c: Tensor) -> Tensor:
    """``[N, k]`` Euclidean distances ``‖x_i − c_j‖``, summed coordinate by coordinate (the
    ``‖x‖² − 2⟨x, c⟩ + ‖c‖²`` shortcut loses the digits of near neighbours)."""
    return torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist")


def _sq_dists(x: Tensor, c: Tensor) -> Tensor:
    return _dists(x, c).pow(2)


def _plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first center is a uniformly drawn row,
    each next one a row drawn with probability ``D(x)² / Σ D²``, ``D(x)`` the distance to the
    nearest center so far (uniformly when every row sits on a center)."""
    n = len(x)
    idx = [int(torch.randint(n, (1,), generator=gen))]
    d2 = _sq_dists(x, x[idx]).squeeze(1)
    for _ in range(1, k):
        total = float(d2.sum())
        w = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        j = int(torch.multinomial(w, 1, generator=gen))
        idx.append(j)
        d2 = torch.minimum(d2, _sq_dists(x, x[j:j + 1]).squeeze(1))
    return x[idx].clone()


def _lloyd(x: Tensor, centers: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations from ``centers``: assign every row to its nearest center (ties to the
    lower index), move each center to the mean of its rows; a center left without rows moves to
    the row farthest from its own center. Stops when no assignment changes or after ``iters``
    updates; the labels returned are always the nearest centers of the centers returned."""
    k = len(centers)
    labels = _sq_dists(x, centers).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        centers = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None], centers)
        d2 = _sq_dists(x, centers)
        own = d2.gather(1, labels[:, None]).squeeze(1)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = int(own.argmax())
            centers[j] = x[far]
            own[far] = 0.0
        new = _sq_dists(x, centers).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, centers


def _canonical(labels: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Renumber clusters in order of first appearance down the rows (empty clusters last)."""
    k = len(centers)
    order: list[int] = []
    for j in labels.tolist():
        if j not in order:
            order.append(j)
            if len(order) == k:
                break
    order += [j for j in range(k) if j not in order]
    rank = torch.empty(k, dtype=torch.int64)
    rank[torch.tensor(order)] = torch.arange(k)
    return rank[labels], centers[order]


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 50, restarts: int = 4) -> KMeans:
    """k-means on the rows of ``x`` ``[N, D]``: minimize ``Σ_i ‖x_i − c_{z_i}‖²`` over labels ``z``
    and centers ``c``.

    Each of ``restarts`` runs seeds ``k`` centers by k-means++ and runs at most ``iters`` Lloyd
    iterations; the run with the least inertia wins (the earliest on ties). Every draw comes from one
    ``torch.Generator`` seeded with ``seed``, so a seed fixes the result. Labels are in canonical
    order (see :class:`KMeans`), which makes them comparable between runs and seeds.
    """
    x = _as_points(x)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 ≤ k ≤ N, got k={k} for N={n} points")
    if restarts < 1 or iters < 0:
        raise ValueError(f"restarts must be ≥ 1 and iters ≥ 0, got {restarts} and {iters}")
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(restarts):
        labels, centers = _lloyd(x, _plus_plus(x, k, gen), iters)
        inertia = float((x - centers[labels]).pow(2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    assert best is not None
    labels, centers = _canonical(best[1], best[2])
    return KMeans(labels, centers, best[0])


def silhouette(x: Tensor, labels: Tensor) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) of a partition of the rows of ``x`` ``[N, D]``,
    with Euclidean distances ``d``.

    For row ``i`` in cluster ``A``: ``a_i = mean_{j∈A, j≠i} d(x_i, x_j)``, ``b_i = min_{B≠A}
    mean_{j∈B} d(x_i, x_j)`` and ``s_i = (b_i − a_i) / max(a_i, b_i)`` (``0`` when ``A = {i}`` or
    ``max(a_i, b_i) = 0``); the result is ``mean_i s_i`` ∈ [−1, 1]. Needs at least 2 non-empty
    clusters and at most ``N − 1``. On rows of unit length (as :func:`choose_facets` passes them)
    ``d² = 2(1 − cos)``, so the ranking is that of cosine distance.
    """
    x = _as_points(x)
    labels = labels.detach().cpu().long().flatten()
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} points")
    ids, z = torch.unique(labels, return_inverse=True)
    k, n = len(ids), len(x)
    if not 2 <= k <= n - 1:
        raise ValueError(f"the silhouette needs 2 ≤ clusters ≤ N − 1, got {k} clusters of {n} points")
    d = _dists(x, x)
    onehot = torch.nn.functional.one_hot(z, k).double()
    sizes = onehot.sum(0)
    sums = d @ onehot
    own = sizes[z]
    a = sums.gather(1, z[:, None]).squeeze(1) / (own - 1).clamp_min(1)
    other = (sums / sizes).scatter(1, z[:, None], math.inf)
    b = other.min(1).values
    top = torch.maximum(a, b)
    s = torch.where((own > 1) & (top > 0), (b - a) / top.where(top > 0, torch.ones_like(top)), torch.zeros_like(a))
    return float(s.mean())


def default_min_size(n: int) -> int:
    """``max(3, ⌈N/10⌉)``: the fewest images a facet may hold among ``N``."""
    return max(3, -(-n // 10))


def choose_facets(features: Tensor, max_facets: int = 3, seed: int = 0, min_silhouette: float = MIN_SILHOUETTE,
                  min_size: int | None = None) -> Facets:
    """Split a unit's top-``N`` images into facets from their features ``[N, D]`` (best first).

    Rows are scaled to unit length ``u_i = h_i / ‖h_i‖`` (the direction of a feature vector, not its
    magnitude, says what kind of image it is; a magnitude mostly says how strongly the unit fires).
    For ``k = 2..max_facets`` (and ``k ≤ N − 1``) the rows are clustered by :func:`kmeans` (same
    ``seed``); a partition qualifies when every cluster has at least ``min_size`` rows and its mean
    :func:`silhouette` is at least ``min_silhouette``. The qualifying partition with the greatest
    silhouette wins (the smaller ``k`` on ties); without one, all rows form a single facet.

    Defaults: ``min_silhouette = 0.25``, the bottom of the "weak structure" band of Kaufman &
    Rousseeuw's scale (below it, "no substantial structure"): a single blob split in two by
    k-means scores well under it in the dimensions of a late layer, while groups whose separation
    exceeds their spread score above it (in 2-3 dimensions a single blob can score 0.4-0.6, so the
    threshold is meant for feature layers of ≳ 8 units). ``min_size = max(3, ⌈N/10⌉)`` (:func:`default_min_size`):
    a facet's start is the mean of its images, and k-means will happily wall off one or two
    outliers with a high silhouette; requiring a tenth of the top images (and never fewer than 3)
    makes each facet a real share of what drives the unit.
    """
    feats = _as_points(features)
    n = len(feats)
    if n == 0:
        raise ValueError("choose_facets needs at least one row of features")
    if max_facets < 1:
        raise ValueError(f"max_facets must be ≥ 1, got {max_facets}")
    min_size = default_min_size(n) if min_size is None else min_size
    unit = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-300)
    best: tuple[float, KMeans] | None = None
    scores: dict[int, float] = {}
    for k in range(2, min(max_facets, n - 1) + 1):
        km = kmeans(unit, k, seed=seed)
        sizes = torch.bincount(km.labels, minlength=k)
        if int(sizes.min()) < max(min_size, 1):
            scores[k] = float("nan")
            continue
        scores[k] = silhouette(unit, km.labels)
        if scores[k] >= min_silhouette and (best is None or scores[k] > best[0]):
            best = (scores[k], km)
    if best is None:
        return Facets(torch.zeros(n, dtype=torch.int64), 1, None, (n,), scores)
    labels = best[1].labels
    sizes = tuple(int(s) for s in torch.bincount(labels))
    return Facets(labels, len(sizes), best[0], sizes, scores)


def _inside(child: str, parent: str) -> bool:
    return child.startswith(parent + ".")


def default_feature_layer(layers: Mapping[str, LayerInfo]) -> str:
    """The penultimate layer of a model, from its :func:`~ldam.targets.probe_layers` listing.

    The listing is in the order the model's modules finished their forward, containers after
    what they hold, and the model's ``output`` entries last. Walking back from the end, past the
    ``output`` entries: the first module entry produced the output, and so did the entry just
    before it if that entry is a submodule of it (a ``Sequential`` returns its last child's value),
    and so on down. The answer is the nearest addressable entry before that chain that is not a
    second name of an earlier one: ``relu4`` for LeNet-5 (``fc1, relu3, fc2, relu4, fc3``),
    ``classifier.3`` for a VGG whose head is ``classifier = Sequential(..., ReLU, Dropout, Linear)``,
    ``avgpool`` for a torchvision ResNet. A module called several times is listed where its first
    call ended, so a shared activation after the last hidden layer gives way to the layer itself.
    """
    entries = [li for li in layers.values() if li.module is not None]
    if not entries:
        raise TargetError("the model has no named layer before its output; pass a feature layer by name")
    i = len(entries) - 1
    while i > 0 and _inside(entries[i - 1].module or "", entries[i].module or ""):
        i -= 1
    for li in reversed(entries[:i]):
        if li.addressable and li.alias_of is None and li.module != entries[i].module:
            return li.name
    names = [n for n, li in layers.items() if li.addressable and n != OUTPUT]
    raise TargetError(
        f"found no addressable layer before the model's last module {entries[i].module!r}; pass a feature layer "
        f"by name (addressable: {', '.join(names[:6]) or 'none'})")


def facet_starts(model: nn.Module, images: Tensor, feature_layer: str | None = None, max_facets: int = 3,
                 seed: int = 0, layers: Mapping[str, LayerInfo] | None = None,
                 min_silhouette: float = MIN_SILHOUETTE, min_size: int | None = None) -> tuple[Facets, Tensor]:
    """The facets of a unit and each facet's starting image.

    ``images`` ``[N, *input_shape]`` are the unit's top-``N`` dataset rows in model units, best
    first. Their features ``h_i`` are the flattened output of ``feature_layer`` (default:
    :func:`default_feature_layer`) read by :func:`~ldam.analysis.layer_activations` in eval mode;
    :func:`choose_facets` splits them, and facet ``f`` starts from the mean of its members,
    ``s_f = (1/|F_f|) Σ_{i∈F_f} x_i`` (``[F, *input_shape]``, in ``images``' dtype and device).
    The model is left exactly as found. ``layers`` (from :func:`~ldam.targets.probe_layers`) skips
    probing the model again.
    """
    if images.dim() < 2 or len(images) == 0:
        raise ValueError(f"expected images [N, *input_shape] with N ≥ 1, got shape {list(images.shape)}")
    with model_guard(model):
        if layers is None:
            layers = probe_layers(model, tuple(images.shape[1:]))
        name = default_feature_layer(layers) if feature_layer is None else feature_layer
        feats = layer_activations(model, name, images, layers=dict(layers))
    facets = choose_facets(feats, max_facets=max_facets, seed=seed, min_silhouette=min_silhouette,
                           min_size=min_size)
    labels = facets.labels.to(images.device)
    flat = images.detach().double().flatten(1)
    sums = torch.zeros(facets.count, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=facets.count).to(flat.dtype)
    starts = (sums / counts[:, None]).to(images.dtype).reshape(facets.count, *images.shape[1:])
    return facets, starts


__all__ = ["KMeans", "Facets", "MIN_SILHOUETTE", "kmeans", "silhouette", "default_min_size", "choose_facets",
           "default_feature_layer", "facet_starts"]
