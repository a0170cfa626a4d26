"""Small classifiers of other architectures, used as independent judges of what samples show."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """``[B, 1, 28, 28]`` → 10 logits through two hidden layers (512, 256) with ReLU."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 512)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(512, 256)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """``[B, 3, 32, 32]`` → 10 logits: three 3×3 conv-BN-ReLU stages (32, 64, 128 channels), each
    max-pooled, then a 3×3 conv (128), global average pooling and one FC layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 32), nn.MaxPool2d(2),
            _block(32, 64), nn.MaxPool2d(2),
            _block(64, 128), nn.MaxPool2d(2),
            _block(128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))
