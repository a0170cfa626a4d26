"""ldam.analysis against numpy re-implementations and constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ldam.analysis import (activation_gradients, centroid_spread, chain_stats, cosine_distances, count_modes,
                           effective_area, layer_activations, mean_pairwise, saliency, summarize)


def test_cosine_distances_and_their_mean_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 2, 5, 5))
    flat = a.reshape(6, -1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    want = 1 - unit @ unit.T
    got = cosine_distances(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(got, np.clip(want, 0, None), atol=1e-12)
    iu = np.triu_indices(6, 1)
    assert mean_pairwise(torch.from_numpy(want)) == pytest.approx(want[iu].mean())
    e = np.linalg.norm(flat[:, None] - flat[None], axis=2)
    assert mean_pairwise(torch.cdist(torch.from_numpy(flat), torch.from_numpy(flat))) == pytest.approx(e[iu].mean())


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_count_modes_finds_k_separated_directions(k):
    g = torch.Generator().manual_seed(k)
    centres = torch.linalg.qr(torch.randn(64, 64, generator=g))[0][:k]  # orthogonal: cosine distance 1
    x = centres.repeat_interleave(4, 0) + 0.05 * torch.randn(4 * k, 64, generator=g)
    assert count_modes(x, 0.5) == k
    assert count_modes(x, 1.5) == 1  # above every distance: one cluster
    assert count_modes(x, 1e-6) == 4 * k  # below every distance: every chain alone


def test_effective_area_of_a_flat_region_is_its_size():
    s = torch.zeros(3, 10, 10)
    s[0, :2, :3] = 1.0  # 6 pixels
    s[1, 5, 5] = 1.0  # 1 pixel
    s[2] = 1.0  # 100 pixels
    s = s / s.flatten(1).sum(1).view(-1, 1, 1)
    torch.testing.assert_close(effective_area(s.double()), torch.tensor([6.0, 1.0, 100.0], dtype=torch.double))


def test_a_zero_gradient_has_no_saliency_and_is_left_out():
    g = torch.zeros(3, 1, 9, 9)
    g[0, 0, 1, 1] = 2.0
    g[1, 0, 1, 7] = 1.0
    s = saliency(g)
    assert s[2].isnan().all() and not s[:2].isnan().any()
    assert effective_area(s)[:2].tolist() == [1.0, 1.0] and effective_area(s)[2].isnan()
    assert centroid_spread(s) == pytest.approx(3.0)


def test_centroid_spread_is_the_rms_distance_from_the_mean_centroid():
    s = torch.zeros(2, 9, 9, dtype=torch.double)
    s[0, 1, 1] = 1.0
    s[1, 1, 7] = 1.0  # centroids (1,1) and (1,7): each 3 px from (1,4)
    assert centroid_spread(s) == pytest.approx(3.0)


def test_saliency_and_gradients_of_a_linear_neuron():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(5, 2, 4, 4)
    f, g = activation_gradients(lin, "1:2", x)
    w = lin[1].weight[2].detach().view(2, 4, 4)
    torch.testing.assert_close(g, w.expand(5, 2, 4, 4))
    torch.testing.assert_close(f, lin(x)[:, 2].detach())
    s = saliency(g)
    want = (w ** 2).sum(0) / (w ** 2).sum()
    torch.testing.assert_close(s[0], want.double())
    assert lin.training and all(p.grad is None for p in lin.parameters())  # the model is left as found


def test_chain_stats_on_a_linear_neuron():
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    # planted: 6 chains in k = 3 orthogonal directions (cosine distance 1 between groups), 2 chains each,
    # each perturbed by 1 % noise (cosine distance ~1e-4 within a group)
    k = 3
    g = torch.Generator().manual_seed(1)
    centres = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:k]
    means = (centres.repeat_interleave(2, 0) * 3 + 0.03 * torch.randn(2 * k, 16, generator=g)).view(6, 1, 4, 4)
    st = chain_stats(lin, "output:1", means)
    assert st.chains == 6 and st.silent == 0
    assert st.modes == k
    # numpy: the neuron w·x + b, the mean pairwise Euclidean and cosine distances
    x = means.double().numpy().reshape(6, 16)
    w, b = lin[1].weight.detach().double().numpy()[1], float(lin[1].bias.detach()[1])
    assert st.activation == pytest.approx((x @ w + b).mean(), rel=1e-6)
    iu = np.triu_indices(6, 1)
    assert st.distance == pytest.approx(np.linalg.norm(x[:, None] - x[None], axis=2)[iu].mean(), rel=1e-9)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert st.cosine_distance == pytest.approx((1 - unit @ unit.T)[iu].mean(), rel=1e-9)
    # the gradient of a linear neuron is w for every chain: saliency w²/Σw², area 1/Σ s², no spread
    sal = w**2 / (w**2).sum()
    assert st.saliency_area == pytest.approx(1 / (sal**2).sum(), rel=1e-9)
    assert st.saliency_spread == pytest.approx(0.0, abs=1e-9)
    # one planted direction: one mode; every chain in its own direction: six
    assert chain_stats(lin, "output:1", centres[:1].repeat(6, 1).view(6, 1, 4, 4) + 0.01 * means).modes == 1
    assert chain_stats(lin, "output:1", torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:6].view(6, 1, 4, 4)).modes == 6


def test_layer_activations_and_feature_modes():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).train()
    w1, b1 = net[1].weight.detach().double().numpy(), net[1].bias.detach().double().numpy()
    x = torch.randn(5, 1, 4, 4)
    h = layer_activations(net, "2", x)
    # the ReLU layer's output written out in numpy: max(0, W₁x + b₁)
    want = np.maximum(x.double().numpy().reshape(5, 16) @ w1.T + b1, 0)
    np.testing.assert_allclose(h.double().numpy(), want, rtol=1e-5, atol=1e-6)
    assert net.training and not net[2]._forward_hooks  # left as found
    # planted feature modes: inputs whose hidden features are 2 disjoint (orthogonal after the ReLU) patterns,
    # 3 chains each. W₁ (8×16) has full row rank, so x = W₁⁺(h − b₁) + n gives exactly the features h for
    # any n in W₁'s null space; a large common n makes all six inputs one mode in input space.
    feats = np.full((6, 8), -2.0)  # the pre-activations; the ReLU zeroes the -2 entries
    feats[:3, :4] = [[1.0, 2.0, 1.5, 1.0], [1.1, 2.0, 1.4, 1.0], [1.0, 1.9, 1.5, 1.1]]
    feats[3:, 4:] = [[2.0, 1.0, 1.0, 0.5], [2.1, 1.0, 0.9, 0.5], [2.0, 1.1, 1.0, 0.6]]
    null = np.linalg.svd(w1)[2][-1]  # a unit vector with W₁ n = 0
    xs = torch.from_numpy((feats - b1) @ np.linalg.pinv(w1).T + 50 * null).view(6, 1, 4, 4)
    st = chain_stats(net.double(), "output:0", xs, feature_layer="2")
    assert st.modes == 1 and st.feature_modes == 2
    relu = np.maximum(feats, 0)
    unit = relu / np.linalg.norm(relu, axis=1, keepdims=True)
    iu = np.triu_indices(6, 1)
    assert st.feature_cosine_distance == pytest.approx((1 - unit @ unit.T)[iu].mean(), rel=1e-4)
    with pytest.raises(ValueError, match="no layer named 'fc9'"):
        layer_activations(net, "fc9", x)


def test_summarize():
    m, e = summarize([1.0, 2.0, 3.0, 6.0])
    assert m == pytest.approx(3.0) and e == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    assert np.isnan(summarize([4.0])[1])


def test_kid_against_a_loop_and_its_expectations():
    from ldam.analysis import kid

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g).double(), torch.randn(5, 3, generator=g).double() + 0.5
    k = lambda x, y: (float(x @ y) / 3 + 1) ** 3  # noqa: E731
    ref = (sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / 42
           + sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
           - 2 * sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35)
    assert abs(kid(a, b) - ref) < 1e-10
    # Unbiased: for two samples of one distribution it averages to 0; a shift makes it positive.
    same = [kid(torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)) for _ in range(200)]
    shifted = [kid(torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 1) for _ in range(50)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(200)
    assert min(shifted) > 0 and np.mean(shifted) > 20 * np.std(same) / np.sqrt(200)
