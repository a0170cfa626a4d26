"""``ldam.compare`` / ``ldam compare``: two models sampled with the same seeds, compared unit by unit.

Every number is checked against an independent recomputation (numpy / scipy / plain autograd on
the returned chain means), and the models are checked to be left exactly as found."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist
from torch import nn

import ldam
from ldam.cli import main
from ldam.comparison import GAP, LABEL_HEIGHT, MARGIN, METRICS, PAD
from ldam.errors import ShapeError

SHAPE = (1, 8, 8)
SETTINGS = dict(chains=4, steps=120, burn_in=40, step_size=0.01, temperature=0.05, l2=1.0)
SEEDS = (0, 1, 2)
CHANGED = 2  # the unit whose weights model B replaces


class Net(nn.Module):
    """conv → relu → flatten → fc with 4 output units, on [1, 8, 8]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.conv(x))))


def replaced_unit(model: Net, unit: int) -> Net:
    """A copy of ``model`` whose output ``unit`` responds to a very different pattern: a
    checkerboard on every channel, ten times the size of the original weights' pattern."""
    other = copy.deepcopy(model)
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    with torch.no_grad():
        other.fc.weight[unit] = board.repeat(4, 1, 1).flatten() * 3.0
    return other


def snapshot(model: nn.Module) -> dict:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad for p in model.parameters()]}


def assert_same(model: nn.Module, before: dict) -> None:
    now = model.state_dict()
    assert set(now) == set(before["state"])
    for k, v in before["state"].items():
        assert torch.equal(now[k], v), k
    assert [m.training for m in model.modules()] == before["training"]
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert all(p.grad is g for p, g in zip(model.parameters(), before["grads"]))


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    """A vs B with unit 2 replaced; A is left in train mode with one frozen parameter and a stored
    gradient on another, B as it comes, so that the guard has something to restore."""
    a = Net()
    b = replaced_unit(a, CHANGED)
    a.train()
    a.conv.bias.requires_grad_(False)
    a.fc.bias.grad = torch.ones(4)
    before = (snapshot(a), snapshot(b))
    out = tmp_path_factory.mktemp("cmp")
    cmp = ldam.compare(a, b, "fc:0-3", SHAPE, out, seeds=SEEDS, names=("net", "net-changed"), **SETTINGS)
    return a, b, before, cmp, out


def test_the_changed_unit_is_ranked_first_and_the_others_do_not_move(changed):
    a, b, _, cmp, _ = changed
    ranked = cmp.ranked()
    assert ranked[0].target == f"fc:{CHANGED}"
    assert ranked[0].score > 1  # moved more than a new seed moves it
    for u in cmp.units:
        if u.target == f"fc:{CHANGED}":
            continue
        # only row 2 of fc differs, and unit k's chains see row k alone: bitwise the same chains
        assert torch.equal(u.means_a, u.means_b), u.target
        assert u.score == 0.0 and all(s == 0.0 for s in u.shift)
        assert all(u.difference(m) == (0.0, 0.0) for m in METRICS)


def test_models_are_left_exactly_as_found(changed):
    a, b, before, _, _ = changed
    assert_same(a, before[0])
    assert_same(b, before[1])
    assert a.training and not a.conv.bias.requires_grad


def _upgma_clusters(d: np.ndarray, cut: float) -> int:
    """Average-linkage clusters of a distance matrix, merging while the closest pair of clusters
    is at most ``cut`` apart (a plain re-implementation, no scipy)."""
    clusters = [[i] for i in range(len(d))]
    while len(clusters) > 1:
        best = min(((np.mean([d[p, q] for p in clusters[i] for q in clusters[j]]), i, j)
                    for i in range(len(clusters)) for j in range(i + 1, len(clusters))))
        if best[0] > cut:
            break
        _, i, j = best
        clusters[i] = clusters[i] + clusters[j]
        del clusters[j]
    return len(clusters)


def _reference_metrics(model: nn.Module, unit: int, means: torch.Tensor) -> dict[str, float]:
    """Diversity, modes, activation at the means and the gradient-region numbers, recomputed with
    numpy and plain autograd."""
    x = means.double().numpy().reshape(len(means), -1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = 1 - xn @ xn.T
    k = len(x)
    diversity = cos[np.triu_indices(k, 1)].mean()
    d = np.clip(cos, 0, None)
    np.fill_diagonal(d, 0)
    modes = _upgma_clusters((d + d.T) / 2, 0.5)
    inp = means.clone().requires_grad_(True)
    with torch.enable_grad():
        f = model.eval()(inp)[:, unit]
        (g,) = torch.autograd.grad(f.sum(), inp)  # no parameter gradients are stored
    sal = (g.double().numpy() ** 2).sum(1)
    sal = sal / sal.sum((1, 2), keepdims=True)
    area = (1 / (sal ** 2).sum((1, 2))).mean()
    ys, xs = np.mgrid[0:sal.shape[1], 0:sal.shape[2]]
    c = np.stack([(sal * ys).sum((1, 2)), (sal * xs).sum((1, 2))], 1)
    spread = np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean())
    return {"cosine_distance": diversity, "modes": modes, "activation": f.detach().double().mean().item(),
            "saliency_area": area, "saliency_spread": spread}


def _energy(x: torch.Tensor, y: torch.Tensor) -> float:
    """The energy distance with scipy's Euclidean distances between unit-length rows."""
    def unit(m):
        m = m.double().numpy().reshape(len(m), -1)
        return m / np.linalg.norm(m, axis=1, keepdims=True)
    x, y = unit(x), unit(y)
    return 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()


def test_every_number_against_an_independent_recomputation(changed):
    a, b, _, cmp, _ = changed
    a_eval, b_eval = copy.deepcopy(a).eval(), copy.deepcopy(b).eval()
    for i, u in enumerate(cmp.units):
        for s in range(len(SEEDS)):
            for side, model, means in (("a", a_eval, u.means_a[s]), ("b", b_eval, u.means_b[s])):
                ref = _reference_metrics(model, i, means)
                got = getattr(u, side)
                for m, want in ref.items():
                    assert got[m][s] == pytest.approx(want, rel=1e-6, abs=1e-9), (u.target, side, s, m)
        # B − A: mean and standard error of the paired differences, with numpy
        for m in METRICS:
            diff = np.asarray(u.b[m]) - np.asarray(u.a[m])
            mean, se = u.difference(m)
            assert mean == pytest.approx(diff.mean(), abs=1e-12)
            assert se == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)), abs=1e-12)
            sp = np.sqrt((np.var(u.a[m], ddof=1) + np.var(u.b[m], ddof=1)) / 2)
            if diff.mean() == 0:
                assert u.effect(m) == 0
            elif sp > 0:
                assert u.effect(m) == pytest.approx(diff.mean() / sp, rel=1e-9)
        # the change score from scipy's distances
        shift = [_energy(u.means_a[s], u.means_b[s]) for s in range(3)]
        pairs = [(0, 1), (0, 2), (1, 2)]
        null = [0.5 * (_energy(u.means_a[p], u.means_a[q]) + _energy(u.means_b[p], u.means_b[q])) for p, q in pairs]
        assert u.shift == pytest.approx(shift, abs=1e-9)
        assert u.null == pytest.approx(null, abs=1e-9)
        if max(shift) > 1e-12:
            assert u.score == pytest.approx(np.mean(shift) / np.mean(null), rel=1e-6)
    # the averages over units: per seed, then mean ± s.e. over seeds
    for m in METRICS:
        per_seed = np.nanmean(np.array([np.asarray(u.b[m]) - np.asarray(u.a[m]) for u in cmp.units]), 0)
        mean, se = cmp.overall(m)["difference"]
        assert mean == pytest.approx(per_seed.mean(), abs=1e-12)
        assert se == pytest.approx(per_seed.std(ddof=1) / np.sqrt(3), abs=1e-12)


def test_final_activation_and_chain_means_match_a_plain_sampling_run(changed):
    """One seed, rerun by hand with ldam.sample: the chain means are bitwise those of the comparison
    (same seed, same settings), and the final activation is the mean of the last 10 % of the trace."""
    a, _, _, cmp, _ = changed
    s = 1
    r = ldam.sample(a, "fc:0-3", SHAPE, chains=4, steps=120, burn_in=40, step_size=0.01, temperature=0.05,
                    regularizers=[ldam.L2(1.0)], seed=SEEDS[s], keep_samples=False, ema_tau=None)
    acts = r.activations.double().numpy()
    for i, u in enumerate(cmp.units):
        assert torch.equal(u.means_a[s], r.mean[4 * i:4 * (i + 1)])
        assert u.a["final_activation"][s] == pytest.approx(acts[-12:, 4 * i:4 * (i + 1)].mean(), rel=1e-12)


def test_identical_models_change_nothing_exactly(tmp_path):
    a = Net()
    b = copy.deepcopy(a)
    cmp = ldam.compare(a, b, "fc:0-3", SHAPE, tmp_path, seeds=(3, 4), **SETTINGS)
    assert cmp.config["identical"]
    for u in cmp.units:
        assert torch.equal(u.means_a, u.means_b)  # the same seeds give bitwise the same samples
        assert u.shift == [0.0, 0.0] and u.score == 0.0
        for m in METRICS:
            assert u.a[m] == u.b[m] or all(math.isnan(x) for x in u.a[m] + u.b[m])
            assert u.difference(m) == (0.0, 0.0), m
            assert u.effect(m) == 0.0
        assert all(n > 0 for n in u.null)  # two seeds do differ
    assert all(cmp.overall(m)["difference"] == (0.0, 0.0) for m in METRICS)
    assert "nothing changed" in (tmp_path / "report.md").read_text()


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _pm(cell: str) -> tuple[float, float]:
    m, e = cell.split("±")
    return float(m), float(e)


def test_the_report_files_and_their_numbers(changed):
    _, _, _, cmp, out = changed
    for name in ("report.md", "report.html", "compare.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    md = (out / "report.md").read_text()
    # the summary: rank order, scores and shifts as returned
    summary = md.split("## Which units changed most")[1].split("**Change score.**")[0]
    rows = [_cells(ln) for ln in summary.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert [r[1] for r in rows] == [u.target for u in cmp.ranked()]
    for r, u in zip(rows, cmp.ranked()):
        score, err = _pm(r[2])
        assert score == pytest.approx(u.score, abs=5.1e-4)
        assert err == pytest.approx(np.std(u.shift, ddof=1) / np.sqrt(3) / np.mean(u.null), abs=5.1e-4)
        mean, se = _pm(r[3])
        assert mean == pytest.approx(np.mean(u.shift), abs=5.1e-5)
        assert se == pytest.approx(np.std(u.shift, ddof=1) / np.sqrt(3), abs=5.1e-5)
    # each unit's table
    for u in cmp.units:
        section = md.split(f"### {u.target}\n")[1].split("###")[0]
        table = {(c := _cells(ln))[0]: c for ln in section.splitlines() if ln.startswith("| ") and "±" in ln}
        assert len(table) == len(METRICS)
        for m, title in METRICS.items():
            row = table[title]
            a_vals, b_vals = np.asarray(u.a[m]), np.asarray(u.b[m])
            for cell, vals in ((row[1], a_vals), (row[2], b_vals)):
                mean, se = _pm(cell)
                assert mean == pytest.approx(vals.mean(), abs=5.1e-5)
                assert se == pytest.approx(vals.std(ddof=1) / np.sqrt(3), abs=5.1e-5)
            mean, se = _pm(row[3])
            assert (mean, se) == pytest.approx(u.difference(m), abs=5.1e-5)
        assert (out / u.picture).exists() and f"]({u.picture})" in md
        assert f"src='{u.picture}'" in (out / "report.html").read_text()
    # the numbers file holds the same values
    blob = json.loads((out / "compare.json").read_text())
    assert blob["ranking"] == [u.target for u in cmp.ranked()]
    for u, v in zip(cmp.units, blob["units"]):
        assert v["target"] == u.target and v["shift"] == pytest.approx(u.shift)
        assert v["a"]["modes"] == u.a["modes"] and v["b"]["final_activation"] == pytest.approx(u.b["final_activation"])


def test_the_pictures_show_the_chain_means_of_a_and_b_side_by_side(changed):
    """Every tile is the paper's signed display of one chain mean (numpy re-implementation), A's
    grid on the left, B's on the right, one row per seed."""
    _, _, _, cmp, out = changed
    u = cmp.unit(f"fc:{CHANGED}")
    pic = np.asarray(Image.open(out / u.picture))
    zoom, side, k, seeds = 4, 8, 4, 3  # 8-pixel inputs are drawn 4 times enlarged
    tile = side * zoom
    grid_w, grid_h = PAD + k * (tile + PAD), PAD + seeds * (tile + PAD)
    assert pic.shape == (LABEL_HEIGHT + grid_h, MARGIN + 2 * grid_w + GAP)
    for left, means in ((MARGIN, u.means_a), (MARGIN + grid_w + GAP, u.means_b)):
        for s in range(seeds):
            for c in range(k):
                m = means[s, c, 0].double().numpy()
                want = np.clip(np.rint(m * 127.0 / np.abs(m).max() + 128.0), 0, 255).astype(np.uint8)
                want = want.repeat(zoom, 0).repeat(zoom, 1)
                y, x = LABEL_HEIGHT + PAD + s * (tile + PAD), left + PAD + c * (tile + PAD)
                assert np.array_equal(pic[y:y + tile, x:x + tile], want), (left, s, c)


def test_a_small_change_everywhere_and_a_large_one_in_one_unit():
    """Every weight of B moved by 2 %, and unit 1 replaced: unit 1 still changed most."""
    a = Net()
    b = replaced_unit(a, 1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1 + 0.02 * torch.randn(p.shape, generator=g))
    cmp = ldam.compare(a, b, "fc:0-3", SHAPE, seeds=SEEDS, **SETTINGS)
    ranked = cmp.ranked()
    assert ranked[0].target == "fc:1"
    assert ranked[0].score > 3 * ranked[1].score > 0


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_different_input_shape_is_a_clear_error():
    with pytest.raises(ShapeError, match=r"model B \(wide\) does not accept inputs of shape \[1, 8, 8\].*same input shape"):
        ldam.compare(Net(), Wide(), "fc:0", SHAPE, names=("net", "wide"), **SETTINGS)


def test_one_seed_is_refused():
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        ldam.compare(Net(), Net(), "fc:0", SHAPE, seeds=(0,), **SETTINGS)


def test_the_command_line(tmp_path, capsys):
    from ldam.zoo import LeNet5, ModelInfo, save_checkpoint

    paths = []
    for s in (0, 1):
        torch.manual_seed(s)
        paths.append(save_checkpoint(LeNet5(), "lenet5", tmp_path / f"m{s}.pt", ModelInfo(f"m{s}", "lenet5", (1, 28, 28))))
    out = tmp_path / "report"
    code = main(["compare", str(paths[0]), str(paths[1]), "--targets", "fc3:0-1", "--chains", "2", "--steps", "12",
                 "--seeds", "0", "1", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    blob = json.loads((out / "compare.json").read_text())
    assert blob["config"]["targets"] == ["fc3:0", "fc3:1"] and blob["config"]["seeds"] == [0, 1]
    assert blob["config"]["temperature"] == ldam.zoo.SAMPLING_DEFAULTS["mnist"]["temperature"]
    first = blob["ranking"][0]
    score = next(u["score"] for u in blob["units"] if u["target"] == first)
    assert f"1. {first}: change score {score:.3f}" in printed
    assert (out / "report.md").exists() and (out / "report.html").exists()


def test_the_command_line_refuses_models_of_different_input_shapes(tmp_path, capsys):
    code = main(["compare", "zoo:lenet-mnist", "zoo:vgg-cifar10", "--targets", "output:0", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "zoo:lenet-mnist takes inputs of shape [1, 28, 28] but zoo:vgg-cifar10 takes [3, 32, 32]" in err
    assert not (tmp_path / "x").exists()
