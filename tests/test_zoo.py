"""The zoo's committed weights, and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

import ldam.zoo as zoo
from conftest import require_data
from ldam.cli import main
from ldam.errors import CheckpointError, LdamError


def test_lenet_weights_match_their_record():
    rec = json.loads((zoo.WEIGHTS / "lenet-mnist.json").read_text())
    assert hashlib.sha256((zoo.WEIGHTS / "lenet-mnist.pt").read_bytes()).hexdigest() == rec["sha256"]
    assert rec["recipe"].startswith("ldam train ") and "--seed" in rec["recipe"]
    assert rec["test_accuracy"] >= 0.99


def test_lenet_reaches_its_recorded_accuracy_on_real_mnist(capsys):
    require_data("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")
    rec = json.loads((zoo.WEIGHTS / "lenet-mnist.json").read_text())
    assert main(["eval", "zoo:lenet-mnist"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("accuracy: ")
    assert abs(float(last.split()[1]) - rec["test_accuracy"]) <= 0.0005


def test_unknown_zoo_name_suggests():
    with pytest.raises(LdamError, match="no zoo model named 'lenet-mnst'.*Did you mean lenet-mnist"):
        zoo.load_model("zoo:lenet-mnst")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    m = zoo.LeNet5()
    p = zoo.save_checkpoint(m, "lenet5", tmp_path / "c.pt", zoo.ModelInfo("c", "lenet5", (1, 28, 28), ["a"] * 10))
    back, info = zoo.load_checkpoint(p)
    assert info.input_shape == (1, 28, 28) and info.class_names == ["a"] * 10
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_bad_checkpoints(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"arch": "lenet5", "state_dict": Evil()}, fh)
    with pytest.raises(CheckpointError, match="cannot load .* safely"):
        zoo.load_checkpoint(p)
    torch.save({"arch": "resnet999", "state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet999'.*lenet5"):
        zoo.load_checkpoint(p)
    sd = zoo.LeNet5().state_dict()
    sd["fc3.weight"] = torch.zeros(11, 84)
    torch.save({"arch": "lenet5", "state_dict": sd}, p)
    with pytest.raises(CheckpointError, match="does not fit architecture LeNet5"):
        zoo.load_checkpoint(p)
    torch.save(zoo.LeNet5().state_dict(), p)
    with pytest.raises(CheckpointError, match="not an ldam checkpoint"):
        zoo.load_checkpoint(p)
