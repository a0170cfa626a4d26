"""ldam.Monitor: TensorBoard logs read back with TensorBoard's own reader and checked against direct
recomputations; the trained model untouched; warm starts as continued chains; the budget; the
background worker; the Lightning callback; `ldam train --monitor`; missing optional packages."""

from __future__ import annotations

import copy
import io
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ldam
from ldam.callbacks import Callback
from ldam.errors import LdamError, TargetError
from ldam.monitor import Monitor, Pictures
from conftest import require_module

SHAPE = (1, 12, 12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small operations: one thread is faster
TARGETS = ["fc:0-2", "conv2:1"]
KNOBS = dict(step_size=0.02, temperature=0.05, regularizers=[ldam.L2(1.0)])


class Net(nn.Module):
    """conv1 → batch norm → relu → pool → conv2 → relu → dropout → fc, on [1, 12, 12]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def features(self, x):
        return self.conv2(self.pool(self.relu(self.bn(self.conv1(x)))))

    def forward(self, x):
        return self.fc(self.drop(self.relu2(self.features(x))).flatten(1))


def fussy_net() -> Net:
    """A model mid-training: train mode, one frozen parameter, a stale .grad, a user hook, BN statistics."""
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    m.conv1.bias.requires_grad_(False)
    m.fc.weight.grad = torch.full_like(m.fc.weight, 0.5)
    m.seen = []
    m.fc.register_forward_hook(lambda mod, i, o: m.seen.append(o.shape[0]))
    return m.train()


def reference_activations(model: nn.Module, x: torch.Tensor, chains: int) -> torch.Tensor:
    """``f`` per target for the batch ``x`` laid out as the monitor's chains (targets fc:0, fc:1, fc:2,
    conv2:1), computed directly with a plain eval-mode forward of a copy, in float64."""
    m = copy.deepcopy(model).double().eval()
    x = x.double()
    with torch.no_grad():
        out, feat = m(x), m.features(x)
    f = torch.empty(len(x), dtype=torch.float64)
    for t, unit in enumerate((0, 1, 2)):
        f[t * chains:(t + 1) * chains] = out[t * chains:(t + 1) * chains, unit]
    f[3 * chains:] = feat[3 * chains:, 1].mean((1, 2))
    return f


def snapshot(m: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in m.state_dict().items()},
        "modes": [mod.training for mod in m.modules()],
        "flags": [p.requires_grad for p in m.parameters()],
        "grads": [None if p.grad is None else (id(p.grad), p.grad.clone()) for p in m.parameters()],
        "hooks": [(list(mod._forward_hooks), list(mod._forward_pre_hooks), list(mod._backward_hooks))
                  for mod in m.modules()],
    }


def assert_untouched(m: nn.Module, before: dict) -> None:
    after = snapshot(m)
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    assert before["modes"] == after["modes"] and before["flags"] == after["flags"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or (a[0] == b[0] and torch.equal(a[1], b[1]))


def read_events(log_dir) -> "EventAccumulator":  # noqa: F821 - tensorboard is imported lazily
    from tensorboard.backend.event_processing.event_accumulator import DEFAULT_SIZE_GUIDANCE, EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={k: 0 for k in DEFAULT_SIZE_GUIDANCE})
    ea.Reload()
    return ea


def scalar(ea, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in ea.Scalars(tag)}


def train_a_little(model: nn.Module, seed: int) -> None:
    """One SGD step on random data, as a training loop would between two monitor calls."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, *SHAPE, generator=g), torch.randint(0, 5, (16,), generator=g)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


class States(Callback):
    """Every state the chains pass through (after each step), recorded independently of the monitor."""

    def __init__(self):
        self.states: list[torch.Tensor] = []

    def on_step(self, sampler, info):
        self.states.append(info.images().clone())


def test_the_logs_match_a_direct_recomputation_and_the_model_is_untouched(tmp_path):
    model, seen, chains, steps = fussy_net(), States(), 3, 40
    pics = Pictures(chains=2, frames=4, zoom=2)
    mon = Monitor(TARGETS, SHAPE, steps=steps, chains=chains, log_dir=tmp_path, pictures=pics, trace_every=5,
                  callbacks=[seen], seed=3, **KNOBS)
    frozen = []
    for epoch in range(2):
        train_a_little(model, epoch)
        before, rng = snapshot(model), torch.get_rng_state()
        frozen.append(copy.deepcopy(model))
        record = mon(model, step=epoch)
        assert_untouched(model, before)
        assert torch.equal(torch.get_rng_state(), rng)  # the training's random numbers are not consumed
        assert record.steps == steps and record.step == epoch
    mon.close()
    assert model.seen[:1] == [16]  # its own hook is still there (the copy runs it too: see the docs)

    names = ["fc:0", "fc:1", "fc:2", "conv2:1"]
    ea = read_events(tmp_path)
    per_call = ["activation", "activation_of_means", "diversity", "modes"]
    want = {f"ldam/{n}/{s}" for n in names for s in per_call + ["trace"]} | {"ldam/monitor/steps", "ldam/monitor/seconds"}
    assert set(ea.Tags()["scalars"]) == want
    for n in names:
        for s in per_call:
            assert sorted(scalar(ea, f"ldam/{n}/{s}")) == [0, 1]
        assert sorted(scalar(ea, f"ldam/{n}/trace")) == list(range(0, 2 * steps, 5))
    assert scalar(ea, "ldam/monitor/steps") == {0: steps, 1: steps}

    # the states of the second call, recorded by a callback of our own: the chain means are the
    # means of its states after the discarded first quarter; the final states are the last ones
    states = torch.stack(seen.states)  # [80, batch, 1, 12, 12]
    assert len(states) == 2 * steps
    last, means = mon.last.last, mon.last.means
    assert torch.equal(last, states[-1])
    skip = steps // 4
    torch.testing.assert_close(means.double(), states[steps + skip:].double().mean(0), rtol=1e-5, atol=1e-6)

    # the logged activation at the final states, recomputed with a plain forward of the model as it was
    f = reference_activations(frozen[1], last, chains).view(4, chains).mean(1)
    f_means = reference_activations(frozen[1], means, chains).view(4, chains).mean(1)
    for i, n in enumerate(names):
        assert scalar(ea, f"ldam/{n}/activation")[1] == pytest.approx(float(f[i]), rel=1e-5, abs=1e-6)
        assert scalar(ea, f"ldam/{n}/activation_of_means")[1] == pytest.approx(float(f_means[i]), rel=1e-5, abs=1e-6)
    # the trace at chain step 45 is f(x_45) (the state after 45 steps) under the second call's weights
    f45 = reference_activations(frozen[1], states[44], chains).view(4, chains).mean(1)
    for i, n in enumerate(names):
        assert scalar(ea, f"ldam/{n}/trace")[45] == pytest.approx(float(f45[i]), rel=1e-5, abs=1e-6)

    # diversity: the mean over pairs of 1 − cos between the chain means, in numpy
    for i, n in enumerate(names):
        m = means[i * chains:(i + 1) * chains].double().reshape(chains, -1).numpy()
        u = m / np.linalg.norm(m, axis=1, keepdims=True)
        d = 1 - u @ u.T
        div = d[np.triu_indices(chains, 1)].mean()
        assert scalar(ea, f"ldam/{n}/diversity")[1] == pytest.approx(div, rel=1e-5)
        assert 1 <= scalar(ea, f"ldam/{n}/modes")[1] <= chains

    # pictures: per target a row of chain means and a chains × frames grid, and one overview; the first
    # tile of a means picture is the paper's signed display of the chain mean, computed in numpy
    want_images = {f"ldam/{n}/{k}" for n in names for k in ("means", "chains")} | {"ldam/overview"}
    assert set(ea.Tags()["images"]) == want_images
    for tag in want_images:
        assert [e.step for e in ea.Images(tag)] == [0, 1]
    pad, zoom, side = 2, 2, 12 * 2
    png = {tag: np.asarray(Image.open(io.BytesIO(ea.Images(tag)[1].encoded_image_string))) for tag in want_images}
    assert png["ldam/fc:0/means"].shape[:2] == (pad + side + pad, pad + chains * (side + pad))
    assert png["ldam/fc:0/chains"].shape[:2] == (pad + 2 * (side + pad), pad + 4 * (side + pad))
    assert png["ldam/overview"].shape[:2] == (pad + 4 * (side + pad), pad + chains * (side + pad))
    for i, n in enumerate(names):
        for c in range(chains):
            m = means[i * chains + c, 0].double().numpy()
            expect = np.clip(np.round(m * 127 / np.abs(m).max() + 128), 0, 255).astype(np.uint8)
            x0 = pad + c * (side + pad)
            tile = png[f"ldam/{n}/means"][pad:pad + side:zoom, x0:x0 + side:zoom, 0]
            np.testing.assert_array_equal(tile, expect)
    # the last column of the chains picture is the final state of chain 0 of fc:0
    s = last[0, 0].double().numpy()
    expect = np.clip(np.round(s * 127 / np.abs(s).max() + 128), 0, 255).astype(np.uint8)
    x0 = pad + 3 * (side + pad)
    np.testing.assert_array_equal(png["ldam/fc:0/chains"][pad:pad + side:zoom, x0:x0 + side:zoom, 0], expect)


@pytest.mark.parametrize("method", ["sgld", "mala"])
def test_a_warm_start_is_a_continued_chain(method):
    model, steps = fussy_net(), 15
    mon = Monitor(TARGETS, SHAPE, steps=steps, chains=2, seed=7, method=method, pictures=None, **KNOBS)
    for epoch in range(2):
        mon(model, step=epoch)
    ref = ldam.Sampler(model, TARGETS, SHAPE, chains=2, seed=7, method=method, **KNOBS)
    ref.run(2 * steps)
    assert torch.equal(mon.sampler.x, ref.x)
    assert torch.equal(mon.last.last, ref.x)
    assert mon.sampler.t == 2 * steps
    if method == "mala":
        assert mon.last.acceptance is not None and all(0 <= a <= 1 for a in mon.last.acceptance)
    mon.close()


def test_an_exact_method_measures_the_new_weights_after_a_warm_start():
    """MALA caches f and ∇f at the chains' states; after the weights change, the first step of the next
    call must start from f under the new weights (the trace's first row), not the cached old values."""
    model, steps = fussy_net(), 6
    mon = Monitor(TARGETS, SHAPE, steps=steps, chains=2, seed=2, method="mala", trace_every=1, pictures=None, **KNOBS)
    mon(model, step=0)
    x = mon.last.last
    train_a_little(model, 5)
    mon(model, step=1)
    want = reference_activations(model, x, 2).view(4, 2).mean(1)
    torch.testing.assert_close(mon.last.trace[0], want, rtol=1e-5, atol=1e-6)
    mon.close()


def test_a_cold_start_begins_every_call_from_the_same_noise():
    model, steps = fussy_net(), 12
    mon = Monitor(TARGETS, SHAPE, steps=steps, chains=2, seed=7, warm_start=False, pictures=None, **KNOBS)
    first = mon(model, step=0).last
    second = mon(model, step=1).last
    ref = ldam.Sampler(model, TARGETS, SHAPE, chains=2, seed=7, **KNOBS)
    ref.run(steps)
    assert torch.equal(first, ref.x) and torch.equal(second, ref.x)
    assert [r.chain_step for r in mon.history] == [0, steps]


class FakeClock:
    """Time that moves only when told: by the test (the epochs) and by a callback (1/64 s per chain step)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    def __init__(self, clock: FakeClock, cost: float):
        self.clock, self.cost = clock, cost

    def on_step(self, sampler, info):
        self.clock.now += self.cost


def test_the_budget_runs_the_steps_that_fit_the_time_since_the_previous_call():
    clock, cost, budget = FakeClock(), 1 / 64, 0.25
    mon = Monitor(TARGETS, SHAPE, steps=200, min_steps=10, chains=2, budget=budget, clock=clock, pictures=None,
                  callbacks=[Tick(clock, cost)], **KNOBS)
    expected = []
    for epoch, seconds in enumerate([8.0, 2.0, 0.015625, 1000.0, 4.0]):
        clock.now += seconds  # the epoch's training
        r = mon(ldam_model, step=epoch)
        assert r.interval == seconds
        expected.append(max(10, min(200, int(budget * seconds / cost))))  # ⌊b·interval / cost⌋ in [10, 200]
        assert r.steps == expected[-1]
        assert r.seconds == r.steps * cost  # nothing but the chain steps moved this clock
    assert expected == [128, 32, 10, 200, 64]
    assert mon.sampler.t == sum(expected)


ldam_model = Net()


def test_every_samples_only_at_multiples_of_every():
    mon = Monitor(TARGETS, SHAPE, steps=5, chains=2, every=3, pictures=None, **KNOBS)
    got = [mon(ldam_model, step=s) is not None for s in range(7)]
    assert got == [True, False, False, True, False, False, True]
    assert [r.step for r in mon.history] == [0, 3, 6]
    counted = Monitor(TARGETS, SHAPE, steps=5, chains=2, every=2, pictures=None, **KNOBS)
    for _ in range(5):
        counted(ldam_model)  # no step: the number of earlier calls
    assert [r.step for r in counted.history] == [0, 2, 4]


def test_background_logs_what_the_foreground_logs_and_copies_the_weights_at_the_call(tmp_path):
    model = fussy_net()
    common = dict(steps=20, chains=2, seed=1, trace_every=4, pictures=Pictures(chains=1, frames=2), **KNOBS)
    fg = Monitor(TARGETS, SHAPE, log_dir=tmp_path / "fg", **common)
    bg = Monitor(TARGETS, SHAPE, log_dir=tmp_path / "bg", background=True, **common)
    for epoch in range(3):
        fg(model, step=epoch)
        before = snapshot(model)
        assert bg(model, step=epoch) is None
        assert_untouched(model, before)
        train_a_little(model, 10 + epoch)  # at once, while the worker may still be sampling
    fg.close()
    bg.close()
    a, b = read_events(tmp_path / "fg"), read_events(tmp_path / "bg")
    assert a.Tags()["scalars"] == b.Tags()["scalars"] and a.Tags()["images"] == b.Tags()["images"]
    for tag in a.Tags()["scalars"]:
        if tag != "ldam/monitor/seconds":
            assert scalar(a, tag) == scalar(b, tag), tag
    for tag in a.Tags()["images"]:
        assert [e.encoded_image_string for e in a.Images(tag)] == [e.encoded_image_string for e in b.Images(tag)]
    assert [r.step for r in bg.history] == [0, 1, 2]


class Gate(Callback):
    """Holds the worker's first step until released (to make it busy), or raises."""

    def __init__(self, fail: bool = False):
        self.open, self.started, self.fail = threading.Event(), threading.Event(), fail

    def on_step(self, sampler, info):
        self.started.set()
        if self.fail:
            raise RuntimeError("boom from a callback")
        assert self.open.wait(30)


def test_a_call_while_the_worker_is_busy_is_skipped_or_waits():
    gate = Gate()
    mon = Monitor(TARGETS, SHAPE, steps=5, chains=2, background=True, busy="skip", pictures=None, callbacks=[gate],
                  **KNOBS)
    mon(ldam_model, step=0)
    assert gate.started.wait(30)
    assert mon(ldam_model, step=1) is None  # busy: skipped
    gate.open.set()
    assert mon.wait().step == 0
    mon(ldam_model, step=2)
    mon.close()
    assert mon.skipped == [1] and [r.step for r in mon.history] == [0, 2]


def test_a_background_error_is_raised_by_the_next_call_and_the_chains_restart():
    gate = Gate(fail=True)
    mon = Monitor(TARGETS, SHAPE, steps=5, chains=2, background=True, pictures=None, callbacks=[gate], **KNOBS)
    mon(ldam_model, step=0)
    with pytest.raises(RuntimeError, match="boom from a callback"):
        mon.wait()
    assert mon.sampler is None  # the next call starts fresh chains
    gate.fail = False
    gate.open.set()
    mon(ldam_model, step=1)
    mon.close()
    assert [r.step for r in mon.history] == [1]


def test_the_lightning_callback_logs_each_epoch(tmp_path):
    pl = require_module("lightning.pytorch", "the lightning extra is not installed")
    from ldam.lightning import LDAMMonitor

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 5, (32,), generator=g))
    module = Module()
    mon = Monitor(["net.fc:0", "net.conv2:1"], SHAPE, steps=10, chains=2, log_dir=tmp_path, pictures=None, **KNOBS)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[LDAMMonitor(mon, close=True)])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    ea = read_events(tmp_path)
    assert sorted(scalar(ea, "ldam/net.fc:0/activation")) == [0, 1]
    assert sorted(scalar(ea, "ldam/net.conv2:1/diversity")) == [0, 1]
    # the second call sampled the weights at the end of epoch 1, which are the module's final weights
    f = reference_activations(module.net, torch.cat([mon.last.last[:2]] * 3 + [mon.last.last[2:]]), 2)
    assert scalar(ea, "ldam/net.fc:0/activation")[1] == pytest.approx(float(f[:2].mean()), rel=1e-5, abs=1e-6)
    with pytest.raises(TypeError, match="ldam.Monitor"):
        LDAMMonitor("not a monitor")


def test_missing_optional_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r"pip install 'ldam\[monitor\]'"):
        Monitor(TARGETS, SHAPE, log_dir=tmp_path)
    Monitor(TARGETS, SHAPE, log_dir=None)  # without a log dir no TensorBoard is needed
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "ldam.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'ldam\[lightning\]'"):
        import ldam.lightning  # noqa: F401


def test_clear_errors():
    with pytest.raises(TypeError, match="discard="):
        Monitor(TARGETS, SHAPE, burn_in=10)
    with pytest.raises(TypeError, match="unknown argument 'stepsize'"):
        Monitor(TARGETS, SHAPE, stepsize=0.1)
    with pytest.raises(ValueError, match="budget"):
        Monitor(TARGETS, SHAPE, budget=0)
    mon = Monitor(TARGETS, SHAPE, steps=3, chains=2, pictures=None, **KNOBS)
    with pytest.raises(TargetError):
        Monitor(["fc:9"], SHAPE).check(ldam_model)
    assert mon.check(ldam_model) == ["fc:0", "fc:1", "fc:2", "conv2:1"]

    class Locked(Net):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    with pytest.raises(LdamError, match="deep-copyable"):
        mon(Locked())
    mon(ldam_model)
    with pytest.raises(LdamError, match="create a new Monitor"):
        mon(nn.Sequential(nn.Flatten(), nn.Linear(144, 5)))
    mon.close()
    with pytest.raises(LdamError, match="closed"):
        mon(ldam_model)


def toy(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n + 32,), generator=g)
    x = torch.randn(n + 32, 1, 28, 28, generator=g)
    return {"x_train": x[:n], "y_train": y[:n], "x_val": x[n:n + 16], "y_val": y[n:n + 16],
            "x_test": x[n:], "y_test": y[n:]}


def test_train_calls_on_epoch_after_each_epoch_and_ldam_train_monitor_builds_the_monitor(tmp_path):
    from ldam.cli import build_parser
    from ldam.train import TrainConfig, monitor_from_args, train
    from ldam.zoo import SAMPLING_DEFAULTS

    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--monitor", "fc3:0-1", "conv2:0",
                                      "--monitor-steps", "8", "--monitor-chains", "2"])
    mon = monitor_from_args(args)
    assert (mon.steps, mon.chains, mon.targets) == (8, 2, ["fc3:0-1", "conv2:0"])
    knobs = SAMPLING_DEFAULTS["mnist"]
    assert (mon.sampler_options["step_size"], mon.sampler_options["temperature"]) == (knobs["step_size"], knobs["temperature"])
    assert mon.sampler_options["regularizers"][0].weight == knobs["l2"]
    seen, weights = [], []

    def on_epoch(model, epoch):
        seen.append(epoch)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        mon(model, step=epoch)

    steps = []
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, average_last=0)
    rec = train(cfg, tmp_path, data=toy(), progress=False, on_epoch=on_epoch, on_step=lambda m: steps.append(1))
    mon.close()
    assert seen == [0, 1] and len(steps) == 2 * 2  # per epoch, after its two batches
    for k, v in rec["model"].state_dict().items():
        assert torch.equal(weights[-1][k], v)
    ea = read_events(tmp_path / "tb")
    assert sorted(scalar(ea, "ldam/conv2:0/activation")) == [0, 1]
    bad = build_parser().parse_args(["train", "--out", str(tmp_path), "--monitor", "fc3:10"])
    with pytest.raises(TargetError):
        monitor_from_args(bad)  # before any training
