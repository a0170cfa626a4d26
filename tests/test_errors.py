"""Bad input gets a clear error that names the cause and the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ldam
from conftest import integrated_autocorrelation_time
from models import LinearNeuron, SmallConvNet


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return torch.log(self.fc(x) - 1e6)  # log of a negative number: NaN for every input


def test_nan_activation_names_the_model():
    with pytest.raises(ldam.NonFiniteActivationError, match="NaN or Inf activation.*property of the model"):
        ldam.sample(NaNModel(), "output:0", input_shape=(4,), steps=20, burn_in=0)


def test_divergence_suggests_a_smaller_step():
    m = LinearNeuron(torch.ones(1, 4, 4))
    # The suggestion must satisfy the bound it prints (issue 10); the CLI spelling is tested in test_any_model.
    with pytest.raises(ldam.DivergenceError, match=r"diverged.*step_size 10 is too large.*4·T/λ = 0.4.*step_size=0.2"):
        ldam.sample(m, "output:0", input_shape=(1, 4, 4), steps=200, burn_in=0, step_size=10.0,
                    regularizers=[ldam.L2(10.0)])


def test_mala_does_not_diverge_at_the_same_step():
    # f(x) = Σx with L2(λ=10), T=1: p = N(w/λ, (T/λ) I) = N(0.1, 0.1) in each of the 16 pixels
    m = LinearNeuron(torch.ones(1, 4, 4))
    res = ldam.sample(m, "output:0", input_shape=(1, 4, 4), steps=200, burn_in=50, step_size=10.0,
                      regularizers=[ldam.L2(10.0)], method="mala", seed=0)
    s = res.samples.double().flatten(2).numpy()  # [chains, kept, 16]
    assert np.isfinite(s).all()
    # it moves: a positive acceptance rate (a MALA that rejects everything would sit at its start)
    acc = res.acceptance
    assert acc is not None and acc.shape == (res.chains,)
    assert ((acc > 0.2) & (acc <= 1.0)).all(), acc
    # and it samples the Gaussian: mean and variance within 5 standard errors, the standard errors
    # from the number of effectively independent samples (N / τ_int)
    n_eff = s.size / integrated_autocorrelation_time(s)
    mu, var = 0.1, 0.1
    assert abs(s.mean() - mu) < 5 * math.sqrt(var / n_eff), (s.mean(), n_eff)
    assert abs(s.var() / var - 1) < 5 * math.sqrt(2 / n_eff), (s.var(), n_eff)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "nuts"}, "unknown sampler method 'nuts'.*sgld, mala, "),
    ({"burn_in": "soon"}, "burn_in must be a number of steps, 'auto'"),
    ({"burn_in": 100, "steps": 50}, r"burn_in \(100\) must be smaller than steps \(50\)"),
    ({"temperature": -1.0}, "temperature must be a positive finite number"),
    ({"step_size": lambda t: float("nan")}, "step_size must be a positive finite number"),
    ({"chains": 0}, "chains must be >= 1"),
    ({"thin": 0}, "thin must be >= 1"),
])
def test_bad_arguments(kwargs, match):
    args = dict(input_shape=(1, 12, 12), steps=20, burn_in=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ldam.sample(SmallConvNet(), "fc:0", **args)


def test_regularizers_must_be_values():
    with pytest.raises(TypeError, match=r"ldam.L2\(1.0\)"):
        ldam.sample(SmallConvNet(), "fc:0", input_shape=(1, 12, 12), regularizers=[1.0], steps=5, burn_in=0)


def test_box_errors():
    with pytest.raises(ValueError, match="low < high"):
        ldam.Box(1.0, 0.0)
    with pytest.raises(ValueError, match="2 per-channel bounds but the input has 1 channels"):
        ldam.sample(SmallConvNet(), "fc:0", input_shape=(1, 12, 12), steps=5, burn_in=0,
                    regularizers=[ldam.Box([0, 0], [1, 1])])
