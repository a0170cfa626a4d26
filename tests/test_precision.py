"""Mixed precision (issue 11): ``amp="bf16"`` runs the model under autocast while the chains,
the noise and the energy stay float32."""

from __future__ import annotations

import torch

import ldam
from models import LinearNeuron, SmallConvNet

W = torch.linspace(-1.5, 1.5, 16).reshape(1, 4, 4)


def run(amp, steps=6000, burn_in=1000, T=1.0, lam=2.0):
    return ldam.sample(LinearNeuron(W), "output:0", input_shape=(1, 4, 4), chains=64, steps=steps,
                       step_size=0.02 * T / lam, temperature=T, regularizers=[ldam.L2(lam)], burn_in=burn_in,
                       seed=0, amp=amp)


def test_amp_off_is_the_float32_sampler_bit_for_bit():
    a = ldam.sample(SmallConvNet(), ["conv1:1", "fc:2"], input_shape=(1, 12, 12), chains=3, steps=20, burn_in=5)
    b = ldam.sample(SmallConvNet(), ["conv1:1", "fc:2"], input_shape=(1, 12, 12), chains=3, steps=20, burn_in=5,
                    amp=None)
    assert torch.equal(a.samples, b.samples) and a.samples.dtype == torch.float32


def test_amp_bf16_activation_is_the_autocast_forward_and_the_state_stays_float32():
    m = SmallConvNet()
    s = ldam.Sampler(m, ["fc:2", "conv2:1"], (1, 12, 12), chains=2, amp="bf16", regularizers=[ldam.L2(1.0)])
    s.run(3)
    x = s.x.clone()
    s.run(1)
    assert s.x.dtype == torch.float32 and s.activations.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        c2 = m.conv2(m.pool(m.relu1(m.conv1(x))))
    want = torch.cat([out[:2, 2].float(), c2[2:, 1].float().mean((1, 2))])
    torch.testing.assert_close(s.activations[-1], want)
    full = ldam.Sampler(m, ["fc:2", "conv2:1"], (1, 12, 12), chains=2, regularizers=[ldam.L2(1.0)])
    full.x = x.clone()
    full.run(1)
    assert not torch.equal(full.activations[-1], s.activations[-1]), "autocast must change the forward's rounding"


def test_amp_bf16_still_samples_the_analytic_gaussian():
    T, lam = 1.0, 2.0
    res = run("bf16")
    s = res.samples.double().flatten(2)
    mean, var = s.mean((0, 1)), s.var((0, 1))
    # the same tolerances as the float32 test in test_analytic.py
    assert torch.allclose(mean, W.double().flatten() / lam, atol=0.05), mean
    assert abs(var.mean().item() / (T / lam) - 1) < 0.04, var.mean()
    assert (var / (T / lam) - 1).abs().max() < 0.15
