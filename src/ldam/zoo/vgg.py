"""A small VGG-style CIFAR-10 classifier: three blocks of two 3×3 conv + BN + ReLU, then max-pool."""

from __future__ import annotations

from torch import nn


class VGGCifar(nn.Module):
    """``[B, 3, 32, 32]`` → 10 logits. Layers are addressable as ``features.N`` and ``classifier.N``;
    ``features.0`` is the first convolution and ``classifier.4`` the logits."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 256, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 4 * 4, hidden), nn.ReLU(), nn.Dropout(0.3),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
