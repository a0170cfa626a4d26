"""Errors that must not mislead (issue 14): a bug inside the model is not called a shape mismatch,
a bug in ldam is not printed as the user's mistake, and the zoo never leaves a half-written file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ldam
import ldam.cli as cli
from ldam.errors import LdamError, ShapeError
from ldam.zoo import ModelInfo, save_checkpoint


class Buggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) + {"a": 1}["missing"]  # a bug in the model's code, whatever the input


def test_a_bug_in_the_models_forward_is_not_reported_as_a_shape():
    with pytest.raises(LdamError) as info:
        ldam.Sampler(Buggy(), "fc:0", (4,))
    assert not isinstance(info.value, ShapeError)
    assert "KeyError" in str(info.value) and "not a shape mismatch" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)  # the traceback is kept
    with pytest.raises(ShapeError, match="rejects input shape"):
        ldam.Sampler(nn.Sequential(nn.Linear(4, 2)), "0:0", (5,))


def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(cli, "cmd_zoo", broken)
    assert cli.main(["zoo"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "ldam: internal error (TypeError: unsupported operand type(s))" in err
    with pytest.raises(TypeError):
        cli.main(["--debug", "zoo"])

    def user_error(args):
        raise ValueError("--steps must be positive")

    monkeypatch.setattr(cli, "cmd_zoo", user_error)
    assert cli.main(["zoo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "ldam: error: --steps must be positive (ldam --debug ... shows where)"


def test_the_zoo_writes_checkpoints_atomically(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(3, 2))
    info = ModelInfo("toy", "toy", (3,), None, (0.0,), (1.0,), None)
    path = save_checkpoint(model, "mlp", tmp_path / "model.pt", info)
    before = path.read_bytes()

    def dies(obj, f, *args, **kwargs):  # torch.save takes a path or a file object
        if hasattr(f, "write"):
            f.write(b"half a file")
        else:
            with open(f, "wb") as fh:
                fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(nn.Sequential(nn.Linear(3, 2)), "mlp", path, info)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # and no temporary file is left
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["arch"] == "mlp"


def test_atomic_files_have_the_permissions_of_an_ordinary_file(tmp_path):
    # a temporary file from mkstemp is private (0600); once renamed into place it must be as
    # readable as a file opened the ordinary way (the atlas site and compare reports are shared)
    from ldam.io import atomic_save, atomic_write_bytes

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    want = plain.stat().st_mode & 0o777
    assert (atomic_write_bytes(tmp_path / "a.bin", b"x").stat().st_mode & 0o777) == want
    assert (atomic_save({"w": torch.zeros(1)}, tmp_path / "b.pt").stat().st_mode & 0o777) == want
