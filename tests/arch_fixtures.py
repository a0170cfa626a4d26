"""Factories for the ``--arch`` tests, imported by name as ``arch_fixtures:make`` (tests/ is on sys.path)."""

from __future__ import annotations

from torch import nn

LONG = "vision_encoder_block_with_a_rather_long_descriptive_name"  # > 40 characters, like Hugging Face names


class Net(nn.Module):
    """A small CNN whose first layer's width and output count come from its arguments."""

    def __init__(self, width: int = 8, classes: int = 10, channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        setattr(self, LONG, nn.Sequential(nn.Conv2d(width, 4, 3, padding=1), nn.Tanh()))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 14 * 14, classes)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        return self.fc(self.flatten(getattr(self, LONG)(x)))

    @classmethod
    def from_config(cls, config: dict) -> "Net":
        return cls(**config)


class Twice(nn.Module):
    """Calls ``act`` twice per forward: ``act`` alone is ambiguous, ``act#0`` and ``act#1`` are targets."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.act(self.a(self.act(x))))


def make(width: int = 8, classes: int = 10, channels: int = 1) -> Net:
    return Net(width, classes, channels)


def lenet() -> nn.Module:
    from ldam.zoo import LeNet5

    return LeNet5()


def not_a_module() -> dict:
    return {"conv": 1}


def broken() -> nn.Module:
    raise RuntimeError("the factory failed on purpose")


CONSTANT = 3
