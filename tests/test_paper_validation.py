"""PAPER.md §3/§4.1: the L2 mean of a first-layer conv neuron equals its filter, and 0 elsewhere."""

from __future__ import annotations

import pytest
import torch

import ldam
import ldam.zoo


@pytest.mark.parametrize("unit,method,step", [(0, "sgld", 1e-3), (3, "mala", 1e-2)])
def test_l2_mean_of_a_conv1_neuron_is_its_filter(unit, method, step):
    model, info = ldam.zoo.load("lenet-mnist")
    lam, T, y, x = 1.0, 0.01, 14, 9
    res = ldam.sample(model, f"conv1:{unit}@{y},{x}", input_shape=info.input_shape, chains=16, steps=1500,
                      burn_in=300, step_size=step, temperature=T, regularizers=[ldam.L2(lam)], method=method)
    mean = res.target_mean[0, 0].double()
    w = model.conv1.weight[unit, 0].detach().double() / lam
    # conv1 is 5x5 with padding 2: output (y, x) sees input rows y-2..y+2, cols x-2..x+2
    patch = mean[y - 2:y + 3, x - 2:x + 3]
    cos = torch.nn.functional.cosine_similarity(patch.flatten(), w.flatten(), dim=0)
    assert cos >= 0.99, cos
    torch.testing.assert_close(patch, w, atol=0.03, rtol=0.1)
    outside = mean.clone()
    outside[y - 2:y + 3, x - 2:x + 3] = 0
    assert outside.abs().max() < 0.1 * w.abs().max()
