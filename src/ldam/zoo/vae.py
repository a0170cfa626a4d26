"""A small convolutional VAE: the generator prior of :class:`ldam.Generator` for MNIST and CIFAR-10.

Encoder: three 4×4 stride-2 convolutions (32, 64, 128 channels, ReLU) and two linear heads for
``μ`` and ``log σ²`` of ``q(h|x)``. Decoder ``G``: a linear layer to ``128 × s × s`` and three 4×4
stride-2 transposed convolutions back to the image, with a sigmoid: pixels in [0, 1]. For 28-px
MNIST ``s = 4`` and the last layer crops 32 to 28.
"""

from __future__ import annotations

import torch
from torch import nn


class Decoder(nn.Module):
    """``G``: ``[B, latent]`` → pixels ``[B, C, size, size]`` in [0, 1]."""

    def __init__(self, channels: int, size: int, latent: int):
        super().__init__()
        self.channels, self.size, self.latent = channels, size, latent
        self.fc = nn.Linear(latent, 128 * 4 * 4)
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.net(self.fc(h).view(-1, 128, 4, 4))
        if self.size != y.shape[-1]:
            off = (y.shape[-1] - self.size) // 2
            y = y[..., off:off + self.size, off:off + self.size]
        return torch.sigmoid(y)


class VAE(nn.Module):
    """Encoder ``q(h|x) = N(μ(x), diag σ²(x))`` and :class:`Decoder`; images of 28 or 32 px."""

    def __init__(self, channels: int = 1, size: int = 28, latent: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.Flatten(),
        )
        feat = 128 * (size // 8) ** 2
        self.mu = nn.Linear(feat, latent)
        self.logvar = nn.Linear(feat, latent)
        self.decoder = Decoder(channels, size, latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.encoder(x)
        return self.mu(e), self.logvar(e)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        h = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(h), mu, logvar


class Normalized(nn.Module):
    """``G`` followed by a model's input normalization: ``(G(h) − mean) / std``."""

    def __init__(self, decoder: Decoder, mean, std):
        super().__init__()
        self.decoder = decoder
        self.latent = decoder.latent
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.decoder(h) - self.mean.to(h.dtype)) / self.std.to(h.dtype)
