"""The command line, end to end: demo, sample, layers, eval, errors and --help."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ldam
from ldam.cli import main
from ldam.zoo import LeNet5, ModelInfo, save_checkpoint


def test_demo_writes_its_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "60", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in ("grid.png", "targets.png", "chains.gif", "result.pt", "config.json"):
        assert (out / name).exists() and str(out / name) in printed
    res = ldam.Result.load(out / "result.pt")
    assert [str(t) for t in res.targets] == [f"output:{i}" for i in range(10)]
    assert res.mean.shape == (100, 1, 28, 28) and res.activations.shape == (60, 100)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_spec"] == "zoo:lenet-mnist" and cfg["steps"] == 60
    # the grid's layout, computed independently: one row per target, one column per chain, each tile the
    # 28x28 input enlarged twice, a 2-px gutter before every tile and around the edge
    chains, n_targets, side, zoom, pad = res.chains, 10, 28, 2, 2
    assert chains == 10
    expected = (pad + chains * (side * zoom + pad), pad + n_targets * (side * zoom + pad))
    picture = np.asarray(Image.open(out / "grid.png"))
    assert picture.shape[::-1] == expected == (582, 582)
    # every tile is the paper's signed display of that chain's mean (numpy re-implementation)
    mean = res.mean.double().numpy()
    for k in (0, 37, 99):
        r, c = divmod(k, chains)
        peak = np.abs(mean[k]).max()
        want = np.clip(np.rint(mean[k, 0] * 127.0 / peak + 128.0), 0, 255).astype(np.uint8)
        want = want.repeat(zoom, 0).repeat(zoom, 1)
        y, x = pad + r * (side * zoom + pad), pad + c * (side * zoom + pad)
        assert np.array_equal(picture[y:y + side * zoom, x:x + side * zoom], want), k
    # the per-target picture: 10 tiles in one row, enlarged 4 times
    assert Image.open(out / "targets.png").size == (pad + 10 * (side * 4 + pad), pad + side * 4 + pad)
    # the pixel-range box is on in the demo: every kept sample is a valid image
    lo, hi = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    assert res.samples.min() >= lo - 1e-5 and res.samples.max() <= hi + 1e-5


def test_sample_with_a_checkpoint_and_several_targets(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(LeNet5(), "lenet5", tmp_path / "m.pt", ModelInfo("m", "lenet5", (1, 28, 28)))
    out = tmp_path / "run"
    code = main(["sample", "--model", str(ckpt), "--target", "conv2:3", "--target", "fc1:0-1", "--chains", "2",
                 "--steps", "40", "--method", "mala", "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "MALA acceptance rate" in text and "conv2:3" in text
    res = ldam.Result.load(out / "result.pt")
    assert res.samples.shape[0] == 6


def test_layers_lists_shapes_and_units(capsys):
    assert main(["layers", "zoo:lenet-mnist"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["conv1"][2:4] == ["[6,", "28,"] and rows["conv1"][-2] == "6"
    assert rows["fc3"][-2] == "10" and rows["output"][-2] == "10"


@pytest.mark.parametrize("argv,match", [
    (["sample", "--model", "zoo:lenet-mnist", "--target", "fc9:0", "--steps", "5"], "unknown layer 'fc9'.*'fc3'"),
    (["sample", "--model", "zoo:lenet-mnist", "--target", "fc3:12", "--steps", "5"], r"10 units \(0-9\)"),
    (["sample", "--model", "zoo:lenet", "--target", "fc3:1"], "no zoo model named 'lenet'.*lenet-mnist"),
    (["sample", "--model", "nowhere.pt", "--target", "fc3:1"], "checkpoint nowhere.pt does not exist"),
    (["layers", "zoo:lenet-mnist", "--input-shape", "3", "32", "32"], r"rejects input shape \(3, 32, 32\)"),
])
def test_errors_are_one_line_with_exit_code_2(argv, match, capsys, tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert list(tmp_path.iterdir()) == []  # no empty output folder left behind
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ldam: error: ")
    assert re.search(match, err), err


def test_a_pickled_object_checkpoint_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"arch": "lenet5", "state_dict": Evil()}, bad)
    assert main(["layers", str(bad)]) == 2
    assert "cannot load" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["sample"], ["demo"], ["layers"], ["train"], ["eval"]])
def test_help_for_every_command(cmd):
    p = subprocess.run([sys.executable, "-m", "ldam.cli", *cmd, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: ldam" in p.stdout


def test_the_installed_entry_point_runs():
    p = subprocess.run([sys.executable, "-m", "ldam.cli", "sample", "--model", "zoo:lenet-mnist", "--target", "x"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "malformed target 'x'" in p.stderr


def test_zoo_command_lists_every_entry_with_its_recorded_accuracy(capsys):
    import json

    import ldam.zoo as zoo

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in zoo.names():
        assert f"zoo:{name}" in out
    rec = json.loads((zoo.WEIGHTS / "lenet-mnist-avg.json").read_text())
    line = next(ln for ln in out.splitlines() if ln.startswith("zoo:lenet-mnist-avg "))
    assert f"{rec['test_accuracy']:.4f}" in line


def test_sample_with_an_online_discriminator_then_reuse_its_critic(tmp_path, capsys):
    from conftest import require_data

    require_data("mnist/train-images-idx3-ubyte.gz")
    first = tmp_path / "a"
    assert main(["sample", "--model", "zoo:lenet-mnist", "--target", "output:3", "--chains", "2", "--steps", "20",
                 "--method", "paper", "--disc-weight", "0.5", "--disc-every", "5", "--out", str(first), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "discriminator (w = 0.5, mix, 4 critic updates" in text
    cfg = json.loads((first / "config.json").read_text())
    assert any("Discriminator(weight=0.5, mode='mix'" in r for r in cfg["regularizers"])
    saved = ldam.Discriminator.load(first / "critic.pt")
    assert saved.training is None
    second = tmp_path / "b"
    assert main(["sample", "--model", "zoo:lenet-mnist", "--target", "output:3", "--chains", "2", "--steps", "10",
                 "--disc-weight", "1", "--disc-checkpoint", str(first / "critic.pt"), "--out", str(second),
                 "--quiet"]) == 0
    assert "density, 0 critic updates" in capsys.readouterr().out  # no real data given: the critic stays frozen


def test_discriminator_options_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--model", "zoo:lenet-mnist", "--target", "output:3", "--disc-weight", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err
    torch.manual_seed(0)
    ckpt = save_checkpoint(LeNet5(), "lenet5", tmp_path / "m.pt", ModelInfo("m", "lenet5", (1, 28, 28)))
    assert main(["sample", "--model", str(ckpt), "--target", "fc3:1", "--disc-weight", "0.5", "--out",
                 str(tmp_path / "x")]) == 2
    assert "needs real images: pass --disc-data" in capsys.readouterr().err
    assert main(["sample", "--model", "zoo:lenet-mnist", "--target", "fc3:1", "--disc-weight", "0.5",
                 "--method", "sgld", "--disc-mode", "mix", "--disc-checkpoint", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
