"""Target addressing: grammar, resolution against a model, the activation read, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ldam
from ldam.errors import ShapeError, TargetError
from ldam.guard import model_guard
from ldam.targets import Target, parse, resolve
from models import SmallConvNet


def test_grammar():
    s = parse("conv1:3")
    assert (s.layer, s.first, s.last, s.position) == ("conv1", 3, 3, None)
    s = parse("features.0:2@5,7")
    assert (s.layer, s.first, s.position) == ("features.0", 2, (5, 7))
    s = parse("fc3:0-9")
    assert (s.first, s.last) == (0, 9)
    s = parse("fc:*")
    assert (s.first, s.last) == (None, None)
    assert str(Target("conv1", 2, (5, 7))) == "conv1:2@5,7"


@pytest.mark.parametrize("bad", ["conv1", "conv1:", ":3", "conv1:a", "conv1:3@", "conv1:3@1;2", "conv1:-1", "a b:1"])
def test_malformed_targets_name_the_grammar(bad):
    with pytest.raises(TargetError, match="malformed target.*LAYER:UNIT"):
        parse(bad)


def test_empty_range_is_rejected():
    with pytest.raises(TargetError, match="range 5-2 is empty"):
        parse("fc:5-2")


def resolved(targets, chains=1, shape=(1, 12, 12)):
    m = SmallConvNet()
    with model_guard(m):
        return m, resolve(m, targets, shape, chains)


def test_expansion_of_ranges_and_wildcards():
    _, ts = resolved(["conv1:*", "fc:1-3", "output:4"])
    assert [str(t) for t in ts.targets] == ["conv1:0", "conv1:1", "conv1:2", "conv1:3", "fc:1", "fc:2", "fc:3", "output:4"]


def test_unknown_layer_suggests_close_names():
    with pytest.raises(TargetError, match=r"unknown layer 'conv3'.*'conv1'.*ldam layers"):
        resolved("conv3:0")


def test_unit_out_of_range_gives_the_range():
    with pytest.raises(TargetError, match=r"unit 9 is out of range.*4 units \(0-3\)"):
        resolved("conv1:9")
    with pytest.raises(TargetError, match=r"5 units \(0-4\)"):
        resolved("output:2-5")


def test_spatial_index_on_a_non_spatial_layer():
    with pytest.raises(TargetError, match="not spatial.*drop"):
        resolved("fc:1@2,2")


def test_spatial_index_errors():
    with pytest.raises(TargetError, match="out of range.*12x12"):
        resolved("conv1:1@12,0")
    with pytest.raises(TargetError, match="gives 1 spatial indices.*2 spatial dims"):
        resolved("conv1:1@3")


def test_rejected_input_shape():
    m = SmallConvNet()
    with pytest.raises(ShapeError, match=r"rejects input shape \(3, 12, 12\)"):
        ldam.Sampler(m, "fc:0", (3, 12, 12))


def test_activation_values_equal_a_direct_computation():
    m, ts = resolved(["conv1:2", "conv1:1@4,6", "conv2:5", "fc:3", "output:0"], chains=2)
    x = torch.randn(ts.batch, 1, 12, 12)
    with model_guard(m), ts.attached():
        f = ts.activation(x)
    with torch.no_grad():
        c1 = m.conv1(x)
        c2 = m.conv2(m.pool(m.relu1(c1)))
        out = m(x)
    want = torch.stack([
        c1[0:2, 2].mean((1, 2)), c1[2:4, 1, 4, 6], c2[4:6, 5].mean((1, 2)), out[6:8, 3], out[8:10, 0],
    ]).flatten()
    torch.testing.assert_close(f.detach(), want, rtol=1e-5, atol=1e-5)


def test_truncation_stops_the_forward_after_the_last_target_layer():
    m, ts = resolved(["conv1:0", "relu1:1"], chains=3)
    m.calls.clear()
    with model_guard(m), ts.attached():
        ts.activation(torch.randn(ts.batch, 1, 12, 12))
    assert m.calls.get("conv2", 0) == 0  # nothing after relu1 ran
    _, ts2 = resolved(["conv1:0", "fc:0"], chains=3)
    m2 = ts2.model
    m2.calls.clear()
    with model_guard(m2), ts2.attached():
        ts2.activation(torch.randn(ts2.batch, 1, 12, 12))
    assert m2.calls["conv2"] == 1


def test_gradient_is_per_row():
    """Rows are independent, so ∇ of Σf gives each row its own target's gradient."""
    m, ts = resolved(["fc:0", "fc:3"], chains=1)
    x = torch.randn(2, 1, 12, 12, requires_grad=True)
    with model_guard(m), ts.attached():
        (g,) = torch.autograd.grad(ts.activation(x).sum(), x)
    for row, unit in ((0, 0), (1, 3)):
        xr = x[row:row + 1].detach().requires_grad_(True)
        (gr,) = torch.autograd.grad(m(xr)[0, unit], xr)
        torch.testing.assert_close(g[row:row + 1], gr)


class Signal(nn.Module):
    """A 1-D signal model on [C, L] inputs."""

    def __init__(self, channels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(channels, 3, 5)
        self.fc = nn.Linear(3 * 12, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _conv1d_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, C, L] ⊛ [O, C, K] + b → [N, O, L − K + 1], the sum written out."""
    k = w.shape[2]
    windows = np.stack([x[:, :, i:i + k] for i in range(x.shape[2] - k + 1)], 2)  # [N, C, L', K]
    return np.einsum("nclk,ock->nol", windows, w) + b[None, :, None]


def _conv2d_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, C, H, W] ⊛ [O, C, K, K] + b → [N, O, H − K + 1, W − K + 1]."""
    k = w.shape[2]
    h, v = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = np.zeros((x.shape[0], w.shape[0], h, v))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + h, j:j + v], w[:, :, i, j])
    return out + b[None, :, None, None]


def test_one_dimensional_signals_and_n_channel_inputs():
    sig = Signal()
    res = ldam.sample(sig, ["conv:1@4", "conv:2", "output:0-3"], input_shape=(2, 16), chains=2, steps=30,
                      burn_in=10, regularizers=[ldam.L2(1.0), ldam.TotalVariation(0.1)])
    assert res.samples.shape == (12, 20, 2, 16) and res.burn_in == 10
    # the trace at step burn_in + k is the target's value on kept sample k, recomputed in numpy:
    # Conv1d written out, ReLU, the Linear layer as a matrix product
    x = res.samples.double().numpy().reshape(12 * 20, 2, 16)
    cw, cb = sig.conv.weight.detach().double().numpy(), sig.conv.bias.detach().double().numpy()
    fw, fb = sig.fc.weight.detach().double().numpy(), sig.fc.bias.detach().double().numpy()
    conv = _conv1d_numpy(x, cw, cb).reshape(12, 20, 3, 12)
    out = np.maximum(conv, 0).reshape(12, 20, 36) @ fw.T + fb  # [batch, kept, 4]
    want = np.concatenate([conv[0:2, :, 1, 4], conv[2:4, :, 2].mean(-1),
                           *[out[4 + 2 * u:6 + 2 * u, :, u] for u in range(4)]])  # [12, 20]
    got = res.activations[10:].double().numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # n-channel 2-D inputs: a Conv2d channel's mean, and a Linear unit after it
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(5, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    res = ldam.sample(m, ["0:1", "2:2"], input_shape=(5, 8, 8), chains=3, steps=20, burn_in=5)
    assert res.mean.shape == (6, 5, 8, 8) and res.samples.shape == (6, 15, 5, 8, 8)
    x = res.samples.double().numpy().reshape(6 * 15, 5, 8, 8)
    conv = _conv2d_numpy(x, m[0].weight.detach().double().numpy(), m[0].bias.detach().double().numpy())
    lin = conv.reshape(6 * 15, 72) @ m[2].weight.detach().double().numpy().T + m[2].bias.detach().double().numpy()
    conv, lin = conv.reshape(6, 15, 2, 6, 6), lin.reshape(6, 15, 3)
    want = np.concatenate([conv[0:3, :, 1].mean((-1, -2)), lin[3:6, :, 2]])
    np.testing.assert_allclose(res.activations[5:].double().numpy().T, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dense", [True, False])
def test_value_and_grad_equals_autograd_of_the_direct_expression(dense, monkeypatch):
    import ldam.targets as targets_module

    if not dense:
        monkeypatch.setattr(targets_module, "_DENSE_SEED_LIMIT", 0)
    m, ts = resolved(["conv1:2", "conv1:1@4,6", "conv2:5", "fc:3", "output:0"], chains=2)
    assert (ts._seeds is not None) == dense
    x = torch.randn(ts.batch, 1, 12, 12)
    with model_guard(m), ts.attached():
        f, g = ts.value_and_grad(x)
    xr = x.clone().requires_grad_(True)
    c1 = m.conv1(xr)
    c2 = m.conv2(m.pool(m.relu1(c1)))
    out = m(xr)
    want = torch.cat([c1[0:2, 2].mean((1, 2)), c1[2:4, 1, 4, 6], c2[4:6, 5].mean((1, 2)), out[6:8, 3], out[8:10, 0]])
    (g_want,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(f, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_want, rtol=1e-5, atol=1e-6)
