"""Training: determinism, --resume, parameter and prediction averaging, BN recomputation, augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldam.errors import CheckpointError
from ldam.train import TrainConfig, augment, recompute_batchnorm, train


def toy(n=256, n_test=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n + n_test,), generator=g)
    x = torch.randn(n + n_test, 1, 28, 28, generator=g) * 0.5
    for i in range(n + n_test):  # a learnable signal: a bright band whose row encodes the label
        x[i, 0, 2 * y[i] + 2:2 * y[i] + 5, 4:24] += 2.0
    return {"x_train": x[:n], "y_train": y[:n], "x_val": x[n:n + 32], "y_val": y[n:n + 32],
            "x_test": x[n:], "y_test": y[n:]}


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, seed=5, average_last=2)
    full = train(cfg, tmp_path / "a", data=toy(), progress=False)
    part = train(cfg, tmp_path / "b", data=toy(), stop_after=2, progress=False)  # inside the averaging window
    assert part["epochs_done"] == 2 and not (tmp_path / "b" / "model.pt").exists()
    resumed = train(cfg, tmp_path / "b", data=toy(), resume=True, progress=False)
    assert resumed["epochs_done"] == 3
    for name in ("model", "model_avg"):
        for k, v in weights(full[name]).items():
            assert torch.equal(weights(resumed[name])[k], v), (name, k)
    assert resumed["test_accuracy_pred_avg"] == full["test_accuracy_pred_avg"]
    assert (tmp_path / "b" / "model.pt").exists() and (tmp_path / "b" / "model-avg.pt").exists()


def test_same_seed_same_weights_and_learning_happens(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-3, seed=1, average_last=2)
    a = train(cfg, tmp_path / "a", data=toy(), progress=False)
    b = train(cfg, tmp_path / "b", data=toy(), progress=False)
    for k, v in weights(a["model"]).items():
        assert torch.equal(weights(b["model"])[k], v)
    assert a["test_accuracy"] > 0.5  # chance is 0.1


def test_parameter_average_is_the_mean_of_the_per_step_weights(tmp_path):
    seen = []
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=2, average_last=2)
    rec = train(cfg, tmp_path, data=toy(), progress=False, on_step=lambda m: seen.append(weights(m)))
    steps_per_epoch = 256 // 64
    window = seen[steps_per_epoch:]  # the last 2 of 3 epochs
    assert rec["averaged_steps"] == len(window) == 2 * steps_per_epoch
    for k, p in rec["model_avg"].named_parameters():
        want = torch.stack([w[k] for w in window]).double().mean(0)
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_prediction_averaging_uses_the_end_of_epoch_snapshots(tmp_path):
    snaps = []
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=3, average_last=2)
    step = [0]

    def keep(m):
        step[0] += 1
        if step[0] % 4 == 0:
            snaps.append(weights(m))

    data = toy()
    rec = train(cfg, tmp_path, data=data, progress=False, on_step=keep)
    from ldam.zoo import LeNet5

    probs = 0
    for s in snaps:
        m = LeNet5()
        m.load_state_dict(s)
        probs = probs + F.softmax(m.eval()(data["x_test"]), 1)
    assert rec["test_accuracy_pred_avg"] == pytest.approx(float((probs.argmax(1) == data["y_test"]).double().mean()))


def test_batchnorm_recomputation_averages_the_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    net[1].running_mean.fill_(5.0)
    x = torch.randn(700, 2, 6, 6) * 2 + 1
    recompute_batchnorm(net, x, batch_size=128)
    h = net[0](x).detach().double()
    batches = [h[i:i + 128] for i in range(0, 700, 128)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(net[1].running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[1].running_var.double(), var, rtol=1e-4, atol=1e-5)
    assert net[1].momentum == 0.1 and net.training


def test_augment_crops_and_flips_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, pad=2)
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (2,), generator=g)
    dx = torch.randint(0, 5, (2,), generator=g)
    flip = torch.rand(2, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        want = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)


def test_resume_with_another_config_is_refused(tmp_path):
    train(TrainConfig(epochs=1, batch_size=32, seed=1, average_last=0), tmp_path, data=toy(), progress=False)
    with pytest.raises(CheckpointError, match="different config"):
        train(TrainConfig(epochs=2, batch_size=32, seed=2, average_last=0), tmp_path, data=toy(), resume=True,
              progress=False)


def test_learning_rate_schedule():
    from ldam.train import learning_rate

    const = TrainConfig(epochs=10, average_last=5, lr=0.1, lr_drop=0.5)
    assert [learning_rate(const, t) for t in (0.0, 4.99, 5.0, 9.5)] == [0.1, 0.1, 0.05, 0.05]
    warm = TrainConfig(epochs=10, average_last=4, lr=0.2, lr_drop=0.1, warmup=2)
    # rises linearly to 0.2 over 2 epochs, falls linearly to 0.02 at epoch 6, then stays
    for t, want in ((0.0, 0.0), (1.0, 0.1), (2.0, 0.2), (4.0, 0.11), (6.0, 0.02), (9.9, 0.02)):
        assert learning_rate(warm, t) == pytest.approx(want)


def test_sgd_and_bf16_runs_learn_and_the_optimizer_is_the_one_asked_for(tmp_path):
    from ldam.train import make_optimizer

    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=3, average_last=1, optimizer="sgd", warmup=1,
                      label_smoothing=0.1, bf16=True)
    rec = train(cfg, tmp_path, data=toy(), progress=False)
    assert rec["test_accuracy"] > 0.5
    opt = make_optimizer(cfg, nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert isinstance(make_optimizer(TrainConfig(), nn.Linear(2, 2)), torch.optim.RMSprop)
    with pytest.raises(Exception, match="unknown optimizer 'adamw'"):
        make_optimizer(TrainConfig(optimizer="adamw"), nn.Linear(2, 2))
