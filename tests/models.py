"""Tiny models with known answers, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearNeuron(nn.Module):
    """``f(x) = w·x + b`` on a flattened input: with L2(λ) the density is N(w/λ, (T/λ) I)."""

    def __init__(self, w: torch.Tensor, b: float = 0.3):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.fc.weight.copy_(w.reshape(1, -1))
            self.fc.bias.fill_(b)

    def forward(self, x):
        return self.fc(self.flatten(x))


class SmallConvNet(nn.Module):
    """conv1 → relu → pool → conv2 → relu → flatten → fc, on [1, 12, 12] inputs."""

    def __init__(self, in_ch: int = 1, size: int = 12):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        s = size // 2 - 2
        self.fc = nn.Linear(6 * s * s, 5)
        self.calls: dict[str, int] = {}

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        self.calls["conv2"] = self.calls.get("conv2", 0) + 1
        return self.fc(self.flatten(self.relu2(self.conv2(x))))


class Mixture(nn.Module):
    """``f(x) = A · log Σ_k exp(−‖x − μ_k‖² / (2 s²))`` on 2-D inputs: one mode per μ_k."""

    def __init__(self, centers: torch.Tensor, s: float = 0.5, amplitude: float = 1.0):
        super().__init__()
        self.register_buffer("centers", centers)
        self.s, self.amplitude = s, amplitude

    def forward(self, x):
        d2 = (x[:, None, :] - self.centers[None]).pow(2).sum(-1)
        return (self.amplitude * torch.logsumexp(-d2 / (2 * self.s**2), dim=1)).unsqueeze(1)
