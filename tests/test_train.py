"""Training: determinism under a seed, and --resume equal to an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from ldam.errors import CheckpointError
from ldam.train import TrainConfig, train


def toy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (256,), generator=g)
    x = torch.randn(256, 1, 28, 28, generator=g) * 0.5
    for i in range(256):  # a learnable signal: a bright band whose row encodes the label
        x[i, 0, 2 * y[i] + 2:2 * y[i] + 5, 4:24] += 2.0
    return x[:192], y[:192], x[192:], y[192:]


def weights(rec):
    return {k: v.clone() for k, v in rec["model"].state_dict().items()}


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, seed=5)
    full = weights(train(cfg, tmp_path / "a", data=toy(), progress=False))
    part = train(cfg, tmp_path / "b", data=toy(), stop_after=1, progress=False)
    assert part["epochs_done"] == 1 and not (tmp_path / "b" / "model.pt").exists()
    resumed = train(cfg, tmp_path / "b", data=toy(), resume=True, progress=False)
    assert resumed["epochs_done"] == 3
    for k, v in full.items():
        assert torch.equal(weights(resumed)[k], v), k
    assert (tmp_path / "b" / "model.pt").exists()


def test_same_seed_same_weights_and_learning_happens(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-3, seed=1)
    a = train(cfg, tmp_path / "a", data=toy(), progress=False)
    b = train(cfg, tmp_path / "b", data=toy(), progress=False)
    for k, v in weights(a).items():
        assert torch.equal(weights(b)[k], v)
    assert a["test_accuracy"] > 0.5  # chance is 0.1


def test_resume_with_another_config_is_refused(tmp_path):
    train(TrainConfig(epochs=1, batch_size=32, seed=1), tmp_path, data=toy(), progress=False)
    with pytest.raises(CheckpointError, match="different config"):
        train(TrainConfig(epochs=2, batch_size=32, seed=2), tmp_path, data=toy(), resume=True, progress=False)
