"""The atlas run: per-unit records against analytic answers, kill -9 and resume, configuration pinning, Ray."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ldam
from ldam.atlas import AtlasConfigError, AtlasStore, atlas
from ldam.atlas import run as atlas_run
from conftest import require_data, require_module
from models import SmallConvNet

HERE = Path(__file__).parent


def _state(model: nn.Module) -> dict:
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "grad": [p.requires_grad for p in model.parameters()], "training": [m.training for m in model.modules()],
            "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()]}


def _same_state(a: dict, b: dict) -> bool:
    return (a["grad"] == b["grad"] and a["training"] == b["training"] and a["hooks"] == b["hooks"]
            and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"]))


class ThreeUnits(nn.Module):
    """``f_u(x) = w_u · x`` for three orthogonal ``w_u``: with L2(λ) at temperature T each unit's
    density is N(w_u/λ, (T/λ) I), so a unit's chain means must sit at w_u/λ."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 3, bias=False)
        w = torch.zeros(3, 16)
        w[0, :4], w[1, 4:8], w[2, 8:12] = 1.0, -1.0, 2.0
        with torch.no_grad():
            self.fc.weight.copy_(w)

    def forward(self, x):
        return self.fc(self.flatten(x))


def test_each_units_chains_sample_its_own_gaussian(tmp_path):
    model = ThreeUnits()
    before = _state(model)
    lam, temp = 1.0, 0.01
    store = atlas(model, ["fc"], (1, 4, 4), tmp_path / "a", steps=1200, chains=3, l2=lam, temperature=temp,
                  step_size=0.02, block=2, progress=False, site=False)
    assert _same_state(before, _state(model))
    w = model.fc.weight.detach().reshape(3, 1, 4, 4)
    for u in range(3):
        rec = store.read_unit("fc", u)
        assert rec.chain_means.shape == (1, 3, 1, 4, 4) and rec.trace.shape == (1200, 3)
        # mean of 900 kept states of SGLD (a linear drift: the chain's stationary mean is exactly w/λ) per chain;
        # the standard error of a chain mean is below √(T/λ)·√(τ/900) ≈ 0.1·0.2 = 0.02
        err = (rec.chain_means[0] - w[u] / lam).abs().max()
        assert err < 0.08, (u, float(err))
        # the recorded trace is that unit's activation: f_u at stationarity has mean |w_u|²/λ
        tail = rec.trace[300:].mean()
        assert abs(float(tail) - float(w[u].pow(2).sum()) / lam) < 0.1 * float(w[u].pow(2).sum())
        d = rec.diagnostics
        assert d["dead"] is None and d["facets"] == 1 and math.isfinite(d["rhat"]) and d["rhat"] < 1.1


def _small_data(n: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, 12, generator=g)


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from models import SmallConvNet
    from ldam.atlas import atlas
    g = torch.Generator().manual_seed(0)
    data = torch.randn(96, 1, 12, 12, generator=g)
    atlas(SmallConvNet(), ["conv1", "conv2", "fc"], (1, 12, 12), sys.argv[1], data=data, steps=40, chains=2,
          block=2, k=4, top_n=24, max_facets=2, progress=False, site=False)
""")


def _run_script(tmp_path: Path, out: Path, kill_when=None) -> int:
    script = tmp_path / "run_atlas.py"
    script.write_text(SCRIPT.format(tests=str(HERE)))
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if kill_when is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_when(out):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9
        time.sleep(0.002)
    proc.wait()
    return proc.returncode


def _shards(out: Path) -> dict[str, dict]:
    found = {}
    for p in sorted((out / "shards").rglob("*.pt")):
        found[str(p.relative_to(out))] = torch.load(p, weights_only=True)
    return found


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.mark.slow
def test_kill_minus_nine_and_resume_gives_the_uninterrupted_atlas(tmp_path):
    ref = tmp_path / "ref"
    _run_script(tmp_path, ref)
    want = _shards(ref)
    units = sum(1 for k in want if not k.endswith("topk.pt"))
    assert units == 4 + 6 + 5

    def units_written(n):
        return lambda out: len(list((out / "shards").rglob("[0-9]*.pt"))) >= n if (out / "shards").exists() else False

    def pending(out):
        return (out / "shards").exists() and any((out / "shards").rglob("*.pending.pt"))

    out = tmp_path / "killed"
    kills = 0
    for when in (units_written(1), pending, units_written(9)):
        kills += _run_script(tmp_path, out, kill_when=when) == -9
    _run_script(tmp_path, out)
    assert kills >= 2  # the run was really interrupted (more than once)
    got = _shards(out)
    assert got.keys() == want.keys()
    for name in want:
        assert _equal(got[name], want[name]), name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.pending.pt"))


def test_a_block_killed_between_its_shards_is_finished_from_its_pending_file(tmp_path, monkeypatch):
    data = _small_data()
    kw = dict(data=data, steps=20, chains=2, block=3, k=4, top_n=16, max_facets=2, progress=False, site=False)
    ref = atlas(SmallConvNet(), ["conv2"], (1, 12, 12), tmp_path / "ref", **kw)
    writes = {"n": 0}
    real_write = AtlasStore.write_unit

    def dying_write(self, rec):
        writes["n"] += 1
        if writes["n"] == 2:  # the second unit of the first block: its pending file and one shard are on disk
            raise KeyboardInterrupt
        return real_write(self, rec)

    monkeypatch.setattr(AtlasStore, "write_unit", dying_write)
    with pytest.raises(KeyboardInterrupt):
        atlas(SmallConvNet(), ["conv2"], (1, 12, 12), tmp_path / "cut", **kw)
    monkeypatch.setattr(AtlasStore, "write_unit", real_write)
    store = AtlasStore(tmp_path / "cut")
    assert store.done_units("conv2") == {0} and list(store.layer_dir("conv2").glob("block-0.pending.pt"))
    sampled: list[list[int]] = []
    real_sample = atlas_run.sample_block

    def counting(model, cfg, task, shape):
        sampled.append(task.units)
        return real_sample(model, cfg, task, shape)

    monkeypatch.setattr(atlas_run, "sample_block", counting)
    atlas(SmallConvNet(), ["conv2"], (1, 12, 12), tmp_path / "cut", **kw)
    assert sampled == [[3, 4, 5]]  # block 0 came from its pending file, not recomputed
    for u in range(6):
        assert _equal(store.read_unit("conv2", u).to_dict(), ref.read_unit("conv2", u).to_dict())


def test_another_configuration_is_refused_unless_forced(tmp_path):
    kw = dict(steps=10, chains=1, block=8, progress=False, site=False)
    atlas(ThreeUnits(), ["fc"], (1, 4, 4), tmp_path, **kw)
    with pytest.raises(AtlasConfigError, match=r"another configuration.*sampler.*--force"):
        atlas(ThreeUnits(), ["fc"], (1, 4, 4), tmp_path, **{**kw, "steps": 12})
    other = ThreeUnits()
    with torch.no_grad():
        other.fc.weight.mul_(2)
    with pytest.raises(AtlasConfigError, match="model_sha256"):
        atlas(other, ["fc"], (1, 4, 4), tmp_path, **kw)
    store = atlas(ThreeUnits(), ["fc"], (1, 4, 4), tmp_path, force=True, **{**kw, "steps": 12})
    assert store.read_unit("fc", 0).trace.shape[0] == 12


def test_wrong_layer_names_are_named(tmp_path):
    with pytest.raises(ldam.LdamError, match=r"no layer named 'conv3'.*Did you mean conv1, conv2|no layer named 'conv3'.*conv"):
        atlas(SmallConvNet(), ["conv3"], (1, 12, 12), tmp_path, steps=5, progress=False)
    assert not (tmp_path / "manifest.json").exists()


def test_dead_units_are_flagged_and_topk_matches_the_data(tmp_path):
    model = SmallConvNet()
    with torch.no_grad():  # unit 1 of conv1 can never fire after its ReLU: weights 0, bias -1
        model.conv1.weight[1].zero_()
        model.conv1.bias[1] = -1.0
    data = _small_data(64)
    store = atlas(model, ["relu1"], (1, 12, 12), tmp_path, data=data, steps=20, chains=2, k=5, top_n=16,
                  progress=False, site=False)
    flags = [store.read_unit("relu1", u).diagnostics["dead"] for u in range(4)]
    assert flags[1] is True and flags.count(True) == 1
    # a dead unit's top images are ties at zero: it gets one facet, started from zero, not their mean
    dead = store.read_unit("relu1", 1)
    assert dead.facets == 1 and torch.equal(dead.facet_starts, torch.zeros(1, 1, 12, 12))
    assert dead.topk_score.eq(0).all()
    # the top-5 rows of unit 0: a numpy max over positions of relu(conv1(x)) directly
    with torch.no_grad():
        a = torch.relu(model.conv1(data)).numpy()
    score = a[:, 0].reshape(len(data), -1).max(1)
    order = np.lexsort((np.arange(len(data)), -score))[:5]
    rec = store.read_unit("relu1", 0)
    assert rec.topk_index.tolist() == order.tolist()
    np.testing.assert_allclose(rec.topk_score.numpy(), score[order], rtol=1e-6)


@pytest.mark.slow
def test_ray_runs_the_same_blocks_as_the_process(tmp_path):
    ray = require_module("ray", "the atlas extra is not installed")

    data = _small_data()
    kw = dict(data=data, steps=30, chains=2, block=2, k=4, top_n=16, max_facets=2, progress=False, site=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the Ray workers, so the two runs do the same arithmetic
    try:
        local = atlas(SmallConvNet(), ["conv2", "fc"], (1, 12, 12), tmp_path / "local", **kw)
    finally:
        torch.set_num_threads(threads)
    # the workers import the test's model class from tests/ as this process does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}})
    try:
        assert ray.cluster_resources().get("CPU") == 2
        remote = atlas(SmallConvNet(), ["conv2", "fc"], (1, 12, 12), tmp_path / "ray", ray=True, workers=2, **kw)
    finally:
        ray.shutdown()
    for layer, n in (("conv2", 6), ("fc", 5)):
        for u in range(n):
            assert _equal(remote.read_unit(layer, u).to_dict(), local.read_unit(layer, u).to_dict()), (layer, u)


def test_the_command_line_writes_resumes_and_refuses(tmp_path, capsys):
    from ldam.cli import main

    require_data("mnist/t10k-images-idx3-ubyte.gz")
    out = tmp_path / "atlas"
    argv = ["atlas", "zoo:lenet-mnist", "--layers", "fc3", "--out", str(out), "--steps", "12", "--limit", "200",
            "--no-progress", "--data", "test"]
    assert main(argv) == 0
    assert (out / "index.html").exists() and len(list((out / "shards").rglob("[0-9]*.pt"))) == 10
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.pt")}
    assert main(argv) == 0  # resumed: nothing recomputed or rewritten
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.pt")} == stamps
    capsys.readouterr()
    assert main(argv[:-5] + ["--steps", "13", "--limit", "200", "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["serve", "--atlas", str(tmp_path / "missing"), "--port", str(port)]) == 2
    assert "no atlas folder" in capsys.readouterr().err


def test_a_pending_file_left_after_the_last_shard_is_removed_on_resume(tmp_path):
    # killed between writing a block's last shard and removing its pending file
    from ldam.io import atomic_save

    kw = dict(steps=8, chains=1, block=2, progress=False, site=False)
    store = atlas(ThreeUnits(), ["fc"], (1, 4, 4), tmp_path, **kw)
    recs = [store.read_unit("fc", u) for u in (0, 1)]
    leftover = store.layer_dir("fc") / "block-0.pending.pt"
    atomic_save([r.to_dict() for r in recs], leftover)
    stamps = {p: p.stat().st_mtime_ns for p in store.layer_dir("fc").glob("[0-9]*.pt")}
    atlas(ThreeUnits(), ["fc"], (1, 4, 4), tmp_path, **kw)
    assert not leftover.exists()
    assert {p: p.stat().st_mtime_ns for p in store.layer_dir("fc").glob("[0-9]*.pt")} == stamps
