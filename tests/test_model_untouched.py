"""The user's model is exactly as found after sample() returns, raises, or is interrupted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ldam


class Fussy(nn.Module):
    """BatchNorm, dropout, a frozen layer, a user hook, stale .grad, and a trap in forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.conv.weight.requires_grad_(False)
        self.fc.bias.grad = torch.ones(3)
        self.trap_after: int | None = None
        self.calls = 0
        self.modes_seen: set[bool] = set()

    def forward(self, x):
        self.calls += 1
        self.modes_seen.add(self.training)
        if self.trap_after is not None and self.calls > self.trap_after:
            raise KeyboardInterrupt
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def snapshot(m: nn.Module):
    return {
        "state": {k: v.clone() for k, v in m.state_dict().items()},
        "modes": [mod.training for mod in m.modules()],
        "flags": [p.requires_grad for p in m.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in m.parameters()],
        "grad_ids": [id(p.grad) for p in m.parameters()],
        "hooks": [(dict(mod._forward_hooks), dict(mod._forward_pre_hooks), dict(mod._backward_hooks))
                  for mod in m.modules()],
    }


def assert_same(m: nn.Module, before):
    after = snapshot(m)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    assert before["modes"] == after["modes"]
    assert before["flags"] == after["flags"]
    assert before["grad_ids"] == after["grad_ids"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert [tuple(map(len, h)) for h in before["hooks"]] == [tuple(map(len, h)) for h in after["hooks"]]


def make():
    m = Fussy()
    m.train()
    m.bn.eval()  # mixed modes must come back mixed
    m.fc.register_forward_hook(lambda *a: None)
    return m


@pytest.mark.parametrize("target", ["output:1", "bn:2", "conv:0@2,2"])
@pytest.mark.parametrize("method", ["sgld", "mala", "psgld", "paper"])
def test_untouched_after_sampling(target, method):
    m = make()
    before = snapshot(m)
    ldam.sample(m, target, input_shape=(1, 8, 8), chains=3, steps=20, burn_in=5, method=method,
                regularizers=[ldam.L2(1.0), ldam.TotalVariation(0.1)])
    assert_same(m, before)
    assert m.modes_seen == {False}, "sampling must run the model in eval mode"


def test_untouched_after_an_interrupt_inside_forward():
    m = make()
    before = snapshot(m)
    m.trap_after = 7
    with pytest.raises(KeyboardInterrupt):
        ldam.sample(m, "output:0", input_shape=(1, 8, 8), chains=2, steps=50, burn_in=5)
    m.trap_after = None
    assert_same(m, before)


def test_untouched_after_an_error():
    m = make()
    before = snapshot(m)
    with pytest.raises(ldam.TargetError):
        ldam.sample(m, "fc:7", input_shape=(1, 8, 8))
    with pytest.raises(ldam.DivergenceError):
        ldam.sample(m, "output:0", input_shape=(1, 8, 8), steps=100, burn_in=0, step_size=50.0,
                    regularizers=[ldam.L2(10.0)])
    assert_same(m, before)


def test_streaming_sampler_leaves_no_hooks_between_calls():
    m = make()
    before = snapshot(m)
    s = ldam.Sampler(m, ["conv:1", "bn:0"], (1, 8, 8), chains=2)
    for _ in range(3):
        s.run(4)
        assert_same(m, before)


def test_a_session_block_holds_the_guard_across_runs_and_restores_on_exit():
    m = make()
    s = ldam.Sampler(m, ["fc:1", "output:0"], (1, 8, 8), chains=2, regularizers=[ldam.L2(1.0)])
    before = snapshot(m)
    with s.attached():
        s.run(2)
        assert not m.training and len(m.fc._forward_hooks) == 2  # the user's hook and ldam's
        s.run(2)
    assert_same(m, before)
    ref = ldam.Sampler(make(), ["fc:1", "output:0"], (1, 8, 8), chains=2, regularizers=[ldam.L2(1.0)])
    ref.run(4)
    assert torch.equal(ref.x, s.x)
