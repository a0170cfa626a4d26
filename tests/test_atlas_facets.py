"""ldam.atlas.facets against planted partitions, numpy re-computations and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ldam.atlas.facets import (choose_facets, default_feature_layer, default_min_size, facet_starts, kmeans,
                               silhouette)
from ldam.targets import probe_layers
from ldam.zoo.lenet import LeNet5
from ldam.zoo.vgg import VGGCifar
from models import SmallConvNet


def first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels in order of first appearance down the rows (the canonical order)."""
    order = {}
    for z in labels:
        order.setdefault(int(z), len(order))
    return np.array([order[int(z)] for z in labels])


def blobs(sizes: list[int], dim: int = 16, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around orthogonal unit directions (scaled by 3), rows shuffled: points and planted labels."""
    rng = np.random.default_rng(seed)
    dirs = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = 3 * dirs[labels] + spread * 3 * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm], labels[perm]


def numpy_silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    s = []
    for i in range(len(x)):
        same = [np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if labels[j] == labels[i] and j != i]
        if not same:
            s.append(0.0)
            continue
        a = np.mean(same)
        b = min(np.mean([np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if labels[j] == c])
                for c in set(labels.tolist()) if c != labels[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


# ---- kmeans -------------------------------------------------------------------------------

def test_kmeans_inertia_and_assignment_match_numpy():
    x, _ = blobs([20, 15, 9], dim=5, spread=0.6, seed=3)
    km = kmeans(torch.from_numpy(x), 3, seed=1)
    labels, centers = km.labels.numpy(), km.centers.numpy()
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(1))
    assert km.inertia == pytest.approx(sum(((x[labels == j] - centers[j]) ** 2).sum() for j in range(3)), rel=1e-12)
    for j in range(3):
        np.testing.assert_allclose(centers[j], x[labels == j].mean(0), atol=1e-12)
    np.testing.assert_array_equal(labels, first_appearance(labels))


def test_kmeans_reaches_the_brute_force_optimum():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(c, 0.8, size=(3, 2)) for c in ((0, 0), (3, 0), (0, 3))])
    best = min(
        sum(((x[np.array(z) == j] - x[np.array(z) == j].mean(0)) ** 2).sum() for j in range(3) if j in z)
        for z in itertools.product(range(3), repeat=len(x)) if len(set(z)) == 3)
    assert kmeans(torch.from_numpy(x), 3, seed=0).inertia == pytest.approx(best, rel=1e-12)


def test_kmeans_is_deterministic_for_a_seed_and_canonical_across_seeds():
    x, planted = blobs([12, 25, 7], seed=5)
    t = torch.from_numpy(x)
    a, b = kmeans(t, 3, seed=4), kmeans(t, 3, seed=4)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers) and a.inertia == b.inertia
    for seed in range(5):
        np.testing.assert_array_equal(kmeans(t, 3, seed=seed).labels.numpy(), first_appearance(planted))


def test_kmeans_on_repeated_points_puts_a_center_on_each():
    pts = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = pts[[0, 1, 2, 0, 0, 1, 2, 2, 1, 0]]
    km = kmeans(torch.from_numpy(x), 3, seed=2)
    assert km.inertia == 0.0
    np.testing.assert_array_equal(km.centers.numpy(), pts)
    same = kmeans(torch.zeros(6, 3), 2, seed=0)
    assert same.inertia == 0.0 and same.labels.tolist() == [0] * 6


def test_kmeans_refuses_more_clusters_than_points():
    with pytest.raises(ValueError, match="1 ≤ k ≤ N"):
        kmeans(torch.zeros(2, 3), 3)


# ---- silhouette ---------------------------------------------------------------------------

def test_silhouette_matches_a_double_loop():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(17, 4))
    labels = np.array([5, 5, 2, 2, 2, 9, 5, 2, 9, 9, 5, 2, 9, 5, 2, 7, 5])  # 7 is a singleton
    assert silhouette(torch.from_numpy(x), torch.from_numpy(labels)) == pytest.approx(numpy_silhouette(x, labels),
                                                                                      rel=1e-12)
    x, planted = blobs([10, 6], dim=3, spread=0.5, seed=2)
    assert silhouette(torch.from_numpy(x), torch.from_numpy(planted)) == pytest.approx(
        numpy_silhouette(x, planted), rel=1e-12)


def test_silhouette_needs_two_clusters():
    with pytest.raises(ValueError, match="2 ≤ clusters"):
        silhouette(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))


# ---- choose_facets ------------------------------------------------------------------------

def test_two_planted_blobs_give_two_facets_with_the_planted_partition():
    x, planted = blobs([38, 14], seed=0)
    f = choose_facets(torch.from_numpy(x), max_facets=3)
    assert f.count == 2
    np.testing.assert_array_equal(f.labels.numpy(), first_appearance(planted))
    assert f.sizes == tuple(np.bincount(first_appearance(planted)))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert f.silhouette == pytest.approx(numpy_silhouette(unit, planted), rel=1e-12)


def test_one_blob_gives_one_facet():
    rng = np.random.default_rng(1)
    x = 3 * rng.normal(size=16) + rng.normal(size=(60, 16))
    f = choose_facets(torch.from_numpy(x), max_facets=3)
    assert f.count == 1 and f.sizes == (60,) and f.labels.tolist() == [0] * 60
    assert all(s < 0.25 for s in f.scores.values())


def test_three_planted_blobs_give_three_facets():
    x, planted = blobs([20, 30, 12], seed=4)
    f = choose_facets(torch.from_numpy(x), max_facets=3)
    assert f.count == 3
    np.testing.assert_array_equal(f.labels.numpy(), first_appearance(planted))
    assert choose_facets(torch.from_numpy(x), max_facets=2).count == 2


def test_a_few_outliers_do_not_make_a_facet():
    x, planted = blobs([48, 2], spread=0.05, seed=6)
    assert default_min_size(50) == 5
    assert choose_facets(torch.from_numpy(x)).count == 1
    f = choose_facets(torch.from_numpy(x), min_size=2)
    assert f.count == 2
    np.testing.assert_array_equal(f.labels.numpy(), first_appearance(planted))


def test_scale_does_not_split_a_direction():
    rng = np.random.default_rng(2)
    d = rng.normal(size=16)
    x = np.repeat([[1.0], [10.0]], 20, axis=0) * (d + 0.1 * rng.normal(size=(40, 16)))
    assert choose_facets(torch.from_numpy(x)).count == 1


# ---- feature layer ------------------------------------------------------------------------

class SequentialHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.head(self.body(x))


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return {"hidden": h, "logits": self.fc2(h)}


@pytest.mark.parametrize("model, shape, want", [
    (LeNet5(), (1, 28, 28), "relu4"),
    (VGGCifar(), (3, 32, 32), "classifier.3"),
    (SmallConvNet(), (1, 12, 12), "flatten"),
    (SequentialHead(), (1, 4, 4), "head.1"),
    (DictOutput(), (16,), "act"),
])
def test_default_feature_layer_is_the_penultimate_layer(model, shape, want):
    assert default_feature_layer(probe_layers(model, shape)) == want


# ---- facet_starts -------------------------------------------------------------------------

class Planted(nn.Module):
    """flatten → feat (the identity, as a Linear) → dropout → head: the features are the inputs."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.feat = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.feat.weight.copy_(torch.eye(16))
            self.feat.bias.zero_()

    def forward(self, x):
        return self.head(self.drop(self.feat(self.flatten(x))))


def test_facet_starts_are_the_means_of_the_planted_groups_and_the_model_is_untouched():
    rng = np.random.default_rng(0)
    patterns = np.zeros((2, 16))
    patterns[0, :8], patterns[1, 8:] = 1.0, 1.0
    planted = rng.permutation(np.repeat([0, 1], [13, 7]))
    images = (patterns[planted] + 0.1 * rng.normal(size=(20, 16))).reshape(20, 1, 4, 4).astype(np.float32)

    model = Planted().train()
    model.head.weight.requires_grad_(False)
    model.feat.bias.grad = torch.ones(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    grads = [p.grad for p in model.parameters()]

    facets, starts = facet_starts(model, torch.from_numpy(images), max_facets=3, seed=0)

    canon = first_appearance(planted)
    assert facets.count == 2
    np.testing.assert_array_equal(facets.labels.numpy(), canon)
    assert starts.shape == (2, 1, 4, 4) and starts.dtype == torch.float32
    for f in range(2):
        np.testing.assert_allclose(starts[f].numpy(), images[canon == f].mean(0), atol=1e-6)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_facet_starts_with_one_facet_starts_from_the_mean_image():
    rng = np.random.default_rng(3)
    images = (np.ones(16) + 0.1 * rng.normal(size=(20, 16))).reshape(20, 1, 4, 4)
    model = Planted()
    layers = probe_layers(model, (1, 4, 4))
    facets, starts = facet_starts(model, torch.from_numpy(images).float(), "feat", layers=layers)
    assert facets.count == 1
    np.testing.assert_allclose(starts[0].numpy(), images.mean(0), atol=1e-6)
