"""Issue 10: any model, really. One regression test per defect, each on a plain module that
reproduces it, against a direct computation of the same number."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import ldam
from ldam.errors import DivergenceError, TargetError
from ldam.guard import model_guard
from ldam.targets import probe_layers, resolve


def values_and_grads(model, targets, x):
    """``f`` and ``∇f`` per row through ldam's capture, for one chain per target."""
    with model_guard(model):
        ts = resolve(model, targets, tuple(x.shape[1:]), chains=1)
        with ts.attached():
            return ts.value_and_grad(x)


# ---- 1. an in-place op after the target layer ----------------------------------------------

def bn_relu_inplace(inplace: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=inplace), nn.Flatten(),
                      nn.Linear(2 * 7 * 7, 3))
    with torch.no_grad():
        m[1].running_mean.fill_(0.3)
        m[1].running_var.fill_(0.5)
    return m.eval()


def test_inplace_op_after_the_target_does_not_change_the_captured_value():
    m = bn_relu_inplace()
    x = torch.randn(2, 1, 7, 7)
    f, g = values_and_grads(m, ["1:0@3,3", "output:0"], x)
    xr = x.clone().requires_grad_(True)
    bn = m[1](m[0](xr))  # the BatchNorm output, before any ReLU
    want = torch.stack([bn[0, 0, 3, 3], m(xr)[1, 0]])
    (g_want,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(f, want.detach())
    torch.testing.assert_close(g, g_want)
    # A negative BN output was the failing case (a ReLU after it zeroed the captured value): check the chains move.
    res = ldam.sample(m, ["1:0@3,3", "output:0"], input_shape=(1, 7, 7), chains=4, steps=40, burn_in=0,
                      step_size=0.05, regularizers=[ldam.L2(1.0)], seed=1)
    acts = res.activations[:, :4]
    assert (acts[0] < 0).any(), "some chains must start at a negative BN output"
    assert (acts[-1] - acts[0]).abs().min() > 0, "every chain's activation moves"


# ---- 2. hooks the model installs itself ----------------------------------------------------

class LazyHooks(nn.Module):
    """Registers a forward hook on its first forward (as Hugging Face Wav2Vec2 does)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.installed = False
        self.seen = 0

    def forward(self, x):
        if not self.installed:
            self.fc.register_forward_hook(self._count)
            self.installed = True
        return self.fc(x)

    def _count(self, *_):
        self.seen += 1


def test_hooks_a_model_installs_during_its_forward_survive():
    m = LazyHooks()
    ldam.sample(m, "fc:1", input_shape=(4,), chains=2, steps=5, burn_in=0)
    assert m.installed and len(m.fc._forward_hooks) == 1
    before = m.seen
    m(torch.zeros(1, 4))
    assert m.seen == before + 1, "the model's own hook still fires"
    # and ldam's own hooks are all gone
    sampler = ldam.Sampler(m, ["fc:0", "output:1"], (4,), chains=1)
    sampler.run(3)
    assert len(m.fc._forward_hooks) == 1 and not m._forward_hooks


# ---- 3. layers whose first axis is not the batch -------------------------------------------

class Folding(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.window = nn.Identity()  # sees [B*4, 2, 2, 2]: windows folded into the batch
        self.pos = PosEmbed()
        self.const = Const()
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = self.conv(x)
        b = h.shape[0]
        w = h.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(b * 4, 2, 2, 2)
        w = self.window(w)
        h = w.reshape(b, 2, 2, 2, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 2, 4, 4)
        h = h + self.pos() + self.const(b)
        return self.fc(h.flatten(1))


class PosEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, 2, 4, 4))

    def forward(self):
        return self.p  # broadcast over the batch


class Const(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.randn(2, 4, 4))

    def forward(self, b):
        return self.p.expand(b, 2, 4, 4)  # one row per example, but independent of the input


def test_layers_that_are_not_per_example_are_refused_with_the_reason():
    m = Folding().eval()
    with model_guard(m):
        layers = probe_layers(m, (1, 4, 4))
    assert layers["conv"].addressable and layers["fc"].addressable
    assert "first axis is not one row per example" in layers["window"].reason
    assert "[8, 2, 2, 2] for 2 inputs, [12, 2, 2, 2] for 3" in layers["window"].reason
    assert "first axis is not one row per example" in layers["pos"].reason
    assert "does not depend on the input" in layers["const"].reason
    for name, why in [("window", "folds examples"), ("pos", "broadcasts"), ("const", "does not depend")]:
        with pytest.raises(TargetError, match=f"layer '{name}' cannot be a target: .*{why}"):
            ldam.Sampler(m, f"{name}:0", (1, 4, 4))
    # the model's parameters keep their requires_grad flags after the probe froze them
    assert all(p.requires_grad for p in m.parameters())


# ---- 4. models that return containers, or one value per example ------------------------------

@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    score: torch.Tensor


class Returns(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 5)
        self.head = nn.Linear(5, 4)
        self.kind = kind

    def forward(self, x):
        h = torch.tanh(self.body(x))
        y = self.head(h)
        if self.kind == "dict":
            return {"hidden": h, "logits": y, "note": "text"}
        if self.kind == "tuple":
            return (h, y)
        if self.kind == "dataclass":
            return Out(h, y)
        if self.kind == "scalar":
            return y.sum(1)  # shape [B]
        return {"note": "no tensors"}


def direct(m, x):
    h = torch.tanh(m.body(x))
    return h, m.head(h)


@pytest.mark.parametrize("kind,default,other", [
    ("dict", "logits", "output.hidden"), ("tuple", "first", "output[1]"), ("dataclass", "first", "output.score"),
])
def test_container_outputs(kind, default, other):
    m = Returns(kind).eval()
    x = torch.randn(3, 6)
    f, g = values_and_grads(m, ["output:3", f"{other}:2", "body:1"], x)
    h, y = direct(m, x)
    first = y if default == "logits" else h
    second = h if kind == "dict" else y
    torch.testing.assert_close(f, torch.stack([first[0, 3], second[1, 2], m.body(x)[2, 1]]).detach())
    with model_guard(m):
        layers = probe_layers(m, (6,))
    assert layers["output"].alias_of == ("output.logits" if kind == "dict" else
                                         {"tuple": "output[0]", "dataclass": "output.hidden"}[kind])


def test_bracket_spelling_of_output_keys_and_the_scalar_output():
    m = Returns("dict").eval()
    x = torch.randn(2, 6)
    f, _ = values_and_grads(m, ["output[hidden]:4", "output.logits:0"], x)
    h, y = direct(m, x)
    torch.testing.assert_close(f, torch.stack([h[0, 4], y[1, 0]]).detach())
    s = Returns("scalar").eval()
    f, g = values_and_grads(s, ["output:0"], x[:1])
    xr = x[:1].clone().requires_grad_(True)
    torch.testing.assert_close(f, s(xr).detach())
    with pytest.raises(TargetError, match=r"unit 1 is out of range.*1 units \(0-0\)"):
        ldam.Sampler(s, "output:1", (6,))


def test_an_output_without_tensors_is_described():
    with pytest.raises(TargetError, match=r"'output' cannot be a target: the model returns a dict of 1 item\(s\), "
                                          "with no tensor"):
        ldam.Sampler(Returns("none").eval(), "output:0", (6,))


def test_inner_modules_returning_tuples_are_addressed_by_index():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x), -self.a(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.pair = Pair()

        def forward(self, x):
            p, q = self.pair(x)
            return p * q

    m = Net().eval()
    with pytest.raises(TargetError, match=r"'pair' cannot be a target: returns a tuple of 2 item\(s\); address one of its "
                                          r"tensors: pair\[0\], pair\[1\]"):
        ldam.Sampler(m, "pair:0", (4,))
    x = torch.randn(1, 4)
    f, _ = values_and_grads(m, ["pair[1]:2"], x)
    torch.testing.assert_close(f, -m.pair.a(x)[:, 2].detach())


# ---- 5. float64 and bfloat16 models ----------------------------------------------------------

def test_float64_models_are_probed_and_sampled_in_float64():
    m = bn_relu_inplace().double()
    res = ldam.sample(m, ["0:1", "output:2"], input_shape=(1, 7, 7), chains=2, steps=6, burn_in=0,
                      regularizers=[ldam.L2(1.0)])
    assert res.samples.dtype == torch.float64 and res.activations.dtype == torch.float64
    x = res.samples[:, -1]
    with torch.no_grad():
        want = torch.cat([m[0](x[:2])[:, 1].mean((1, 2)), m(x[2:])[:, 2]])
    # f at the last kept state is recorded at the next step: recompute it from the sampler's state instead
    f, _ = values_and_grads(m, ["0:1", "0:1", "output:2", "output:2"], x)
    torch.testing.assert_close(f, want, rtol=1e-12, atol=1e-12)


def test_bfloat16_models_keep_float32_chains_and_say_so():
    m = bn_relu_inplace().to(torch.bfloat16)
    with pytest.warns(ldam.PrecisionNote, match="bfloat16: the chains are kept in float32"):
        s = ldam.Sampler(m, "output:1", (1, 7, 7), chains=3, regularizers=[ldam.L2(1.0)], step_size=0.01)
    s.run(4)
    assert s.x.dtype == torch.float32 and s.config["model_dtype"] == "bfloat16"
    x = s.x.clone()
    s.run(1)
    with torch.no_grad():
        want = m(x.to(torch.bfloat16))[:, 1].float()
    torch.testing.assert_close(s.activations[-1], want)


# ---- 6. a module called twice, and a module under two names ----------------------------------

class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 5)
        self.relu = nn.ReLU()
        self.alias = self.fc2  # the same module under a second name

    def forward(self, x):
        return self.relu(self.fc2(self.relu(self.fc1(x))))


def test_a_module_called_twice_must_name_its_call():
    m = Shared().eval()
    with pytest.raises(TargetError, match=r"'relu' cannot be a target: called 2 times per forward; name one call: "
                                          r"relu#0, relu#1"):
        ldam.Sampler(m, "relu:0", (4,))
    x = torch.randn(2, 4)
    f, _ = values_and_grads(m, ["relu#0:3", "relu#1:3"], x)
    first = torch.relu(m.fc1(x))
    second = torch.relu(m.fc2(first))
    torch.testing.assert_close(f, torch.stack([first[0, 3], second[1, 3]]).detach())
    with model_guard(m):
        layers = probe_layers(m, (4,))
    assert layers["relu"].calls == 2 and "called 2 times" in layers["relu"].note
    f2, _ = values_and_grads(m, ["fc1#0:1"], x[:1])  # '#0' on a module called once is that call
    torch.testing.assert_close(f2, m.fc1(x[:1])[:, 1].detach())
    with pytest.raises(TargetError, match="'fc1' is called once per forward; drop '#1'"):
        ldam.Sampler(m, "fc1#1:0", (4,))


def test_a_module_registered_under_two_names_is_addressable_by_both():
    m = Shared().eval()
    x = torch.randn(2, 4)
    f, _ = values_and_grads(m, ["alias:2", "fc2:2"], x)
    want = m.fc2(torch.relu(m.fc1(x)))[:, 2]
    torch.testing.assert_close(f, want.detach())
    with model_guard(m):
        layers = probe_layers(m, (4,))
    assert layers["alias"].alias_of == "fc2"


# ---- 7. units of token and channels-last layers ------------------------------------------------

class Tokens(nn.Module):
    """[B, 3, 8] → Linear(8, 6) on the last axis → GELU; a channels-last block; a Conv1d on [B, C, L]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 6)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(6)
        self.conv = nn.Conv1d(3, 4, 3)

    def forward(self, x):
        h = self.norm(self.act(self.proj(x)))  # [B, 3, 6]: 3 tokens of 6 features
        return self.conv(h).flatten(1)  # Conv1d reads the tokens as channels: [B, 4, 4]


def test_token_layers_count_features_as_units():
    m = Tokens().eval()
    with model_guard(m):
        layers = probe_layers(m, (3, 8))
    assert (layers["proj"].units, layers["proj"].spatial, layers["proj"].unit_dim) == (6, (3,), "last")
    assert (layers["act"].units, layers["norm"].units) == (6, 6)
    assert (layers["conv"].units, layers["conv"].spatial, layers["conv"].unit_dim) == (4, (4,), "channels")
    with model_guard(m):
        ts = resolve(m, ["proj:*"], (3, 8))
    assert len(ts.targets) == 6
    x = torch.randn(3, 3, 8)
    f, g = values_and_grads(m, ["proj:2", "act:4@1", "conv:3@2"], x)
    xr = x.clone().requires_grad_(True)
    p = m.proj(xr)
    want = torch.stack([p[0, :, 2].mean(), m.act(p)[1, 1, 4], m.conv(m.norm(m.act(p)))[2, 3, 2]])
    (g_want,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(f, want.detach())
    torch.testing.assert_close(g, g_want)


def test_the_unit_axis_can_be_overridden():
    m = Tokens().eval()
    s = ldam.Sampler(m, "act:*", (3, 8), chains=1, unit_axes={"act": "channels"})
    assert len(s.targets) == 3 and s.layers["act"].layout == "override"
    assert "units axis set by unit_axes" in s.layers["act"].note
    with pytest.raises(TargetError, match="unit_axes names layers that are not addressable: 'ac'.*'act'"):
        ldam.Sampler(m, "act:0", (3, 8), unit_axes={"ac": "last"})


# ---- 8. total variation on a one-axis input ------------------------------------------------------

def test_total_variation_on_a_one_axis_signal():
    x = torch.randn(3, 10, dtype=torch.float64)
    tv = ldam.TotalVariation(1.0, beta=1.0, delta=1e-4)
    d = np.diff(x.numpy(), axis=1)
    np.testing.assert_allclose(tv.value(x).numpy(), np.sqrt(d ** 2 + 1e-4).sum(1), rtol=1e-12)
    g = tv.grad(x)
    eps = 1e-6
    e = torch.zeros_like(x)
    e[1, 4] = eps
    numeric = (tv.value(x + e) - tv.value(x - e))[1] / (2 * eps)
    assert abs(float(g[1, 4]) - float(numeric)) < 1e-6
    m = nn.Sequential(nn.Linear(10, 2))
    res = ldam.sample(m, "output:0", input_shape=(10,), chains=2, steps=10, burn_in=0,
                      regularizers=[ldam.L2(1.0), tv])
    assert torch.isfinite(res.samples).all()


# ---- 10. divergence ----------------------------------------------------------------------------

def linear(d=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 1))


@pytest.mark.parametrize("method,bound", [("sgld", 4 * 1.0 / 10.0), ("paper", (1 + 0.9) / (10.0 * (1 - 0.9)))])
def test_divergence_bound_and_a_suggestion_below_it(method, bound):
    with pytest.raises(DivergenceError) as e:
        ldam.sample(linear(), "output:0", input_shape=(4,), steps=300, burn_in=0, step_size=200.0,
                    regularizers=[ldam.L2(10.0)], method=method)
    err = e.value
    assert err.bound == pytest.approx(bound, rel=1e-9)
    assert 0 < err.suggested_step < err.bound
    assert f"= {bound:.3g}" in str(err)
    assert f"step_size={err.suggested_step:g}" in str(err) and "--step-size" not in str(err)
    assert f"--step-size {err.suggested_step:g}" in err.cli_message() and "step_size=" not in err.cli_message()


def test_psgld_quotes_its_own_bound():
    with pytest.raises(DivergenceError) as e:
        ldam.sample(linear(), "output:0", input_shape=(4,), steps=300, burn_in=0, step_size=50.0,
                    regularizers=[ldam.L2(10.0)], method="psgld")
    assert "4·T/(λ·max G)" in str(e.value) and "4·T/λ =" not in str(e.value)
    assert e.value.suggested_step < e.value.bound


def test_a_slowly_exploding_chain_is_caught_long_before_overflow():
    """|1 − ελ/2T| = 1.1: the chain grows ~10 % a step; at 190 steps |x| ≈ 1e8, far under the old 1e12."""
    m = linear()
    with torch.no_grad():
        m[1].weight.zero_()
    with pytest.raises(DivergenceError, match=r"past the limit") as e:
        ldam.sample(m, "output:0", input_shape=(4,), steps=190, burn_in=0, step_size=4.2,
                    regularizers=[ldam.L2(1.0)])
    assert e.value.magnitude < 1e12
    assert e.value.limit == pytest.approx(1e4 * max(1.0, e.value.limit / 1e4))


def test_the_divergence_limit_follows_the_box_and_the_l2_spread():
    s = ldam.Sampler(linear(), "output:0", (4,), chains=2, regularizers=[ldam.Box(-300.0, 5.0)], init=torch.zeros(1, 4))
    assert s.divergence_limit(1.0) == pytest.approx(3e6)
    s = ldam.Sampler(linear(), "output:0", (4,), chains=2, regularizers=[ldam.L2(0.01)], init=torch.zeros(1, 4))
    assert s.divergence_limit(4.0) == pytest.approx(1e4 * math.sqrt(4.0 / 0.01))


# ---- 11. defaults that work for short runs ---------------------------------------------------------

def test_sample_defaults_work_for_any_number_of_steps():
    for steps in (1, 7, 100):
        res = ldam.sample(linear(), "output:0", input_shape=(4,), steps=steps)
        assert res.burn_in == steps // 4
        assert res.samples.shape[1] == steps - steps // 4


def test_the_cli_spells_the_divergence_fix_as_flags(tmp_path, capsys):
    from ldam.cli import main

    rc = main(["sample", "--model", "zoo:lenet-mnist", "--target", "output:0", "--chains", "2", "--steps", "60",
               "--step-size", "500", "--l2", "1", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ldam: error: the chains diverged")
    assert "--step-size" in err and "step_size=" not in err
    assert "--method mala" in err and 'method="mala"' not in err


@pytest.mark.parametrize("shape,beta", [((3, 10), 1.0), ((2, 3, 6, 7), 1.0), ((2, 2, 9), 2.0), ((2, 1, 4, 5, 3), 1.5)])
def test_total_variation_closed_form_gradient_equals_autograd(shape, beta):
    x = torch.randn(*shape, dtype=torch.float64)
    tv = ldam.TotalVariation(1.0, beta=beta, delta=1e-3)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(tv.value(xr).sum(), xr)
    torch.testing.assert_close(tv.grad(x), want, rtol=1e-10, atol=1e-12)


def test_the_cli_lists_and_overrides_the_units_axis(tmp_path, capsys, monkeypatch):
    import sys

    from ldam.cli import main

    (tmp_path / "tok_models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Flatten(), nn.Linear(18, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tok_models", None)
    assert main(["layers", "random", "--arch", "tok_models:make", "--input-shape", "3", "8"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["0"].split()[2:4] == ["[3,", "6]"] and rows["0"].split()[4] == "6" and "units: last axis" in rows["0"]
    assert main(["layers", "random", "--arch", "tok_models:make", "--input-shape", "3", "8", "--unit-axis", "1=channels"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["1"].split()[4] == "3" and "set by unit_axes" in rows["1"]
