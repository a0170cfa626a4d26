"""ldam.atlas.topk against brute force: numpy sorts of layer outputs computed by calling the
submodules directly, the textbook receptive-field recursion, and numpy slicing and filtering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ldam.atlas.topk import ReceptiveField, TopK, crops, receptive_field, stream_topk


class IntConv(nn.Module):
    """conv → relu → conv(stride 2) → flatten → fc with weights in {-1, 0, 1} and integer biases:
    on integer inputs every value is an exact small integer, so scores and positions tie often."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 3 * 3, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randint(-1, 2, p.shape, generator=g).float())

    def forward(self, x):
        return self.fc(self.flatten(self.conv2(self.relu(self.conv1(x)))))


def direct(model: IntConv, layer: str, x: torch.Tensor) -> np.ndarray:
    """The layer's output ``[N, U, P]`` computed by calling the submodules by hand."""
    with torch.no_grad():
        a = model.relu(model.conv1(x))
        if layer in ("conv2", "fc"):
            a = model.conv2(a)
        if layer == "fc":
            a = model.fc(a.flatten(1))[:, :, None]
    return a.reshape(len(x), a.shape[1], -1).numpy()


def brute_topk(a: np.ndarray, k: int):
    """Score, index and position ``[U, min(k, N)]`` by a full sort on (−score, index)."""
    score, pos = a.max(2), a.argmax(2)
    n = len(a)
    order = [np.lexsort((np.arange(n), -score[:, u]))[:k] for u in range(a.shape[1])]
    return (np.stack([score[o, u] for u, o in enumerate(order)]), np.stack(order),
            np.stack([pos[o, u] for u, o in enumerate(order)]))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = IntConv()
    x = torch.randint(0, 3, (45, 2, 8, 8)).float()
    return model, x


def check(top: TopK, a: np.ndarray, k: int, offset: int = 0) -> None:
    score, index, position = brute_topk(a, k)
    assert top.score.shape == (a.shape[1], min(k, len(a)))
    np.testing.assert_array_equal(top.score.numpy(), score)
    np.testing.assert_array_equal(top.index.numpy(), index + offset)
    np.testing.assert_array_equal(top.position.numpy(), position)
    np.testing.assert_array_equal(top.max.numpy(), a.max((0, 2)))
    np.testing.assert_array_equal(top.min.numpy(), a.min((0, 2)))
    assert (top.count.numpy() == len(a)).all()


@pytest.mark.parametrize("layer", ["relu", "conv2", "fc"])
@pytest.mark.parametrize("k", [5, 60])
def test_stream_topk_matches_brute_force_with_ties(setup, layer, k):
    model, x = setup
    a = direct(model, layer, x)
    scores = a.max(2)
    assert all(len(np.unique(scores[:, u])) < len(x) - 5 for u in range(scores.shape[1]))
    batches = [x[:7], x[7:8], x[8:29], x[29:41], x[41:]]
    check(stream_topk(model, layer, batches, k), a, k)
    check(stream_topk(model, layer, x, k, batch_size=11), a, k)
    check(stream_topk(model, layer, [(b, torch.zeros(len(b))) for b in batches], k, progress=True), a, k)


def test_merge_of_chunks_is_one_pass(setup):
    model, x = setup
    a = direct(model, "conv2", x)
    k = 6
    cuts = [0, 10, 23, 45]
    parts = [stream_topk(model, "conv2", x[s:e], k, batch_size=4, offset=s) for s, e in zip(cuts, cuts[1:])]
    one = stream_topk(model, "conv2", x, k)
    grouped = [parts[0].merge(parts[1]).merge(parts[2]), parts[0].merge(parts[1].merge(parts[2])),
               parts[2].merge(parts[0]).merge(parts[1])]
    for top in [one] + grouped:
        check(top, a, k)
        assert top._score.shape == top._index.shape == top._position.shape == (4, k)
    small = TopK(3, 4).merge(TopK(3, 4))
    assert small.score.shape == (3, 0)


def test_update_ties_nan_and_offsets_against_lexsort():
    rng = np.random.default_rng(1)
    units, k = 3, 7
    scores = rng.integers(0, 4, (50, units)).astype(np.float32)
    scores[5, 1] = np.nan
    positions = rng.integers(0, 9, (50, units))
    top = TopK(units, k)
    start = 100
    for lo, hi in [(0, 1), (1, 20), (20, 21), (21, 50)]:
        top.update(torch.from_numpy(scores[lo:hi]), torch.from_numpy(positions[lo:hi]), start + lo)
        if hi == 1:
            assert top.score.shape == (units, 1) and top.index.tolist() == [[start]] * units
    assert top._score.shape == (units, k)
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    for u in range(units):
        order = np.lexsort((np.arange(50), -ranked[:, u]))[:k]
        np.testing.assert_array_equal(top.index[u].numpy(), order + start)
        np.testing.assert_array_equal(top.score[u].numpy(), scores[order, u])
        np.testing.assert_array_equal(top.position[u].numpy(), positions[order, u])
    np.testing.assert_array_equal(top.max.numpy(), np.nanmax(scores, 0))
    restored = TopK.from_state(top.state())
    assert torch.equal(restored.index, top.index) and torch.equal(restored.count, top.count)


def test_stream_topk_leaves_model_as_found(setup):
    model, x = setup
    model.train()
    model.conv1.weight.requires_grad_(False)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    stream_topk(model, "conv2", x, 3)
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    model.eval()
    model.conv1.weight.requires_grad_(True)


# ---- receptive fields --------------------------------------------------------------------

def analytic_fields(spec, size):
    """Per layer of a conv/pool stack ``[(kernel, stride, padding)]`` on an axis of ``size`` pixels:
    (positions, [start + jump·i, start + jump·i + r) unclipped), by r ← r + (k−1)·j, start ← start − p·j,
    j ← j·s."""
    r, j, start, n, out = 1, 1, 0, size, []
    for k, s, p in spec:
        r, start, j = r + (k - 1) * j, start - p * j, j * s
        n = (n + 2 * p - k) // s + 1
        out.append((n, [(start + j * i, start + j * i + r) for i in range(n)]))
    return out


class Stack(nn.Module):
    def __init__(self, pool: bool):
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y = self.conv3(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("pool", [False, True])
def test_receptive_field_matches_textbook_recursion(pool):
    model = Stack(pool)
    model.train()
    model.conv2.bias.requires_grad_(False)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    spec = [(3, 1, 1), (3, 2, 1)] + ([(2, 2, 0)] if pool else []) + [(3, 1, 1)]
    names = ["conv1", "conv2"] + (["pool"] if pool else []) + ["conv3"]
    height, width = 23, 29
    rows, cols = analytic_fields(spec, height), analytic_fields(spec, width)
    for name, (h, row_boxes), (w, col_boxes) in zip(names, rows, cols):
        rf = receptive_field(model, name, (2, height, width))
        assert rf.grid == (h, w)
        for y in range(h):
            for x in range(w):
                (y0, y1), (x0, x1) = row_boxes[y], col_boxes[x]
                assert rf.box(y * w + x, clip=False) == (y0, y1, x0, x1), (name, y, x)
                assert rf.box(y * w + x) == (max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
        assert rf.size == (row_boxes[0][1] - row_boxes[0][0], col_boxes[0][1] - col_boxes[0][0])
    whole = receptive_field(model, "head", (2, height, width))
    assert whole.box(0) == whole.box(0, clip=False) == (0, height, 0, width)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()].count(False) == 1 and not model.conv2.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_receptive_field_larger_than_image_is_the_image():
    layers = [nn.Conv2d(1, 4, 5, padding=2)] + [m for _ in range(4) for m in (nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2))]
    torch.manual_seed(2)
    model = nn.Sequential(*layers)
    rf = receptive_field(model, "8", (1, 9, 9))
    assert rf.start == (-math.inf, -math.inf) and rf.stop == (math.inf, math.inf)
    assert all(rf.box(p) == (0, 9, 0, 9) for p in range(81))


# ---- crops -------------------------------------------------------------------------------

def test_crops_interior_exact_and_grey_at_borders():
    rng = np.random.default_rng(5)
    pictures = rng.integers(0, 256, (4, 3, 20, 24), dtype=np.uint8)
    images = torch.from_numpy(pictures)
    interior = crops(images, [2, 0], [(3, 10, 5, 12), (11, 18, 0, 7)], size=32)
    assert interior.dtype == torch.uint8 and interior.shape == (2, 3, 7, 7)
    np.testing.assert_array_equal(interior[0].numpy(), pictures[2, :, 3:10, 5:12])
    np.testing.assert_array_equal(interior[1].numpy(), pictures[0, :, 11:18, 0:7])

    rf = ReceptiveField((20, 24), (10, 12), (2.0, 2.0), (-4.0, -4.0), (5.0, 5.0))
    top_left = 0
    bottom = 9 * 12 + 5
    clipped = rf.boxes([top_left, bottom])
    assert clipped.tolist() == [[0, 5, 0, 5], [14, 20, 6, 15]]
    expected_bottom = np.full((3, 9, 9), 128, np.uint8)
    expected_bottom[:, :6, :] = pictures[1, :, 14:20, 6:15]
    got = crops(images, [1], clipped[1:], size=9)
    np.testing.assert_array_equal(got[0].numpy(), expected_bottom)
    expected_corner = np.full((3, 9, 9), 128, np.uint8)
    expected_corner[:, 4:, 4:] = pictures[3, :, 0:5, 0:5]
    got = crops(images, [3, 1], rf.boxes([top_left, bottom], clip=False), size=9)
    np.testing.assert_array_equal(got[0].numpy(), expected_corner)
    np.testing.assert_array_equal(got[1].numpy(), expected_bottom)

    gray = crops(images[:, 0], [1], [(14, 20, 6, 15)], size=9)
    assert gray.shape == (1, 1, 9, 9)
    np.testing.assert_array_equal(gray[0, 0].numpy(), expected_bottom[0])


def test_crops_downscale_is_antialiased_triangle_filter():
    rng = np.random.default_rng(6)
    pictures = rng.integers(0, 256, (1, 2, 16, 16), dtype=np.uint8)
    got = crops(torch.from_numpy(pictures), [0], [(2, 14, 3, 15)], size=6).numpy()[0]
    block = pictures[0, :, 2:14, 3:15].astype(float)
    # halving with a triangle filter of half-width 2 input pixels: taps at distances 1.5, 0.5, 0.5, 1.5
    # weigh 1, 3, 3, 1; taps that fall outside the crop are dropped and the rest renormalized
    w = np.zeros((6, 12))
    for i in range(6):
        for t, wt in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)):
            if 0 <= t < 12:
                w[i, t] = wt
    w /= w.sum(1, keepdims=True)
    expected = np.einsum("ij,cjk,lk->cil", w, block, w)
    assert np.abs(got.astype(float) - expected).max() <= 0.5 + 1e-3
