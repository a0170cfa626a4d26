"""The model zoo: ready models to explore, named ``zoo:NAME`` wherever a model is accepted.

Each entry knows its input shape, its preprocessing (model input = (pixel − mean) / std with
pixels in [0, 1]), its class names, and its weights, which the project's own ``ldam train``
produced (recipe and measured accuracy in ``weights/NAME.json``).

Checkpoints are loaded safely: ``torch.load(weights_only=True)`` (:func:`ldam.io.safe_load`) of a
state dict plus the name of an architecture from :data:`ARCHITECTURES`, or plus
``arch="pkg.mod:factory"``, code the user names (:mod:`ldam.zoo.arch`); no arbitrary object is
ever unpickled.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.cifar10 import CLASSES as CIFAR10_CLASSES
from ..data.pixels import to_model_units
from ..errors import CheckpointError, LdamError
from ..io import atomic_save, load_weights, safe_load
from . import efficientnet
from .lenet import LeNet5
from .resnet import ResNet50
from .small import MLP, SmallCNN
from .vgg import VGGCifar

WEIGHTS = Path(__file__).parent / "weights"

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "lenet5": LeNet5, "vgg-cifar": VGGCifar, "efficientnet-lite0": efficientnet.efficientnet_lite0,
    "mlp": MLP, "cnn-cifar": SmallCNN, "resnet50": ResNet50,
    "efficientnet-lite1": lambda: efficientnet.efficientnet_lite("lite1"),
    "efficientnet-lite2": lambda: efficientnet.efficientnet_lite("lite2"),
}

MNIST_CLASSES = [str(i) for i in range(10)]

#: Starting knobs per dataset for models whose inputs are normalized pixels (the zoo's): the CLI's
#: defaults (mnist's), the live UI's starting values per model, and the reproductions in experiments/.
SAMPLING_DEFAULTS: dict[str, dict[str, float]] = {
    "mnist": {"temperature": 0.02, "step_size": 0.004, "l2": 0.3, "chains": 10},
    "cifar10": {"temperature": 1e-3, "step_size": 2e-3, "l2": 0.05, "chains": 6},
    "imagenet": {"temperature": 5e-4, "step_size": 2e-3, "l2": 0.02, "chains": 2},
}


def sampling_defaults(dataset: str | None) -> dict[str, float]:
    """The starting knobs for a model trained on ``dataset`` (MNIST's for ``None`` or an unknown one)."""
    return dict(SAMPLING_DEFAULTS.get(dataset or "mnist", SAMPLING_DEFAULTS["mnist"]))


CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@dataclass
class ModelInfo:
    """What ldam needs to know about a model beyond its weights."""

    name: str
    arch: str
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dataset: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], ``[..., C, H, W]`` → model input ``(pixel − mean) / std``."""
        return to_model_units(pixels, self.mean, self.std)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model input → pixels, ``x·std + mean`` (the inverse of :meth:`preprocess`)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1) if like.dim() >= 3 else (-1, 1)
        return (torch.tensor(self.mean, dtype=like.dtype).view(shape),
                torch.tensor(self.std, dtype=like.dtype).view(shape))

    def to_meta(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "class_names": self.class_names, "mean": list(self.mean),
                "std": list(self.std), "dataset": self.dataset, **self.meta}


_ENTRIES: dict[str, ModelInfo] = {
    "lenet-mnist": ModelInfo("lenet-mnist", "lenet5", (1, 28, 28), MNIST_CLASSES, (0.1307,), (0.3081,), "mnist"),
    "lenet-mnist-avg": ModelInfo("lenet-mnist-avg", "lenet5", (1, 28, 28), MNIST_CLASSES, (0.1307,), (0.3081,),
                                 "mnist"),
    "vgg-cifar10": ModelInfo("vgg-cifar10", "vgg-cifar", (3, 32, 32), CIFAR10_CLASSES, *CIFAR10_NORM, "cifar10"),
    "vgg-cifar10-avg": ModelInfo("vgg-cifar10-avg", "vgg-cifar", (3, 32, 32), CIFAR10_CLASSES, *CIFAR10_NORM,
                                 "cifar10"),
    "efficientnet-lite0-imagenet": ModelInfo("efficientnet-lite0-imagenet", "efficientnet-lite0", (3, 224, 224),
                                             None, efficientnet.MEAN, efficientnet.STD, "imagenet"),
    **{f"efficientnet-{v}-imagenet": ModelInfo(f"efficientnet-{v}-imagenet", f"efficientnet-{v}",
                                               (3, efficientnet.RESOLUTION[v], efficientnet.RESOLUTION[v]), None,
                                               efficientnet.MEAN, efficientnet.STD, "imagenet")
       for v in ("lite1", "lite2")},
}
# Entries whose weights come from an optional package rather than from weights/: (path, SHA-256).
_EXTERNAL: dict[str, tuple[Callable[[], Path], str]] = {
    **{f"efficientnet-{v}-imagenet": (lambda v=v: efficientnet.weights_path(v), efficientnet.SHA256[v])
       for v in ("lite0", "lite1", "lite2")},
}


def names() -> list[str]:
    """Every zoo entry (an entry from an optional package says how to install it when loaded)."""
    return [n for n in _ENTRIES if n in _EXTERNAL or (WEIGHTS / f"{n}.pt").exists()]


def entry(name: str) -> ModelInfo:
    """The description of zoo entry ``name`` (a copy; its ``meta`` holds the training record)."""
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise LdamError(f"no zoo model named {name!r}.{hint} Available: {', '.join('zoo:' + n for n in names())}")
    info = replace(_ENTRIES[name], meta={})
    record = WEIGHTS / f"{name}.json"
    if record.exists():
        info.meta = json.loads(record.read_text())
    if name in _EXTERNAL:
        info.class_names = efficientnet.class_names()
        info.meta.setdefault("sha256", _EXTERNAL[name][1])
    return info


def weights_file(name: str) -> Path:
    """Where the weights of zoo entry ``name`` are."""
    if name in _EXTERNAL:
        return _EXTERNAL[name][0]()
    return WEIGHTS / f"{name}.pt"


def build(arch: str) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(name: str) -> tuple[nn.Module, ModelInfo]:
    """A zoo model in eval mode, with its weights checked against their recorded SHA-256."""
    info = entry(name)
    path = weights_file(name)
    if not path.exists():
        raise LdamError(f"the weights of zoo:{name} are missing ({path}); reinstall ldam")
    want = info.meta.get("sha256")
    if want and _file_sha256(path) != want:
        raise CheckpointError(f"{path} fails its checksum (expected {want}); reinstall ldam")
    model = build(info.arch)
    load_weights(model, safe_load(path, "reinstall ldam"), path, f"architecture {type(model).__name__}")
    return model.eval(), info


def save_checkpoint(model: nn.Module, arch: str, path: str | Path, info: ModelInfo | None = None) -> Path:
    """Write ``{"arch", "state_dict", "meta"}``, the format :func:`load_checkpoint` reads (CPU tensors,
    wherever the model is)."""
    meta = info.to_meta() if info is not None else {}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({"arch": arch, "state_dict": state, "meta": meta}, path)  # never a half-written file


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Load a checkpoint written by :func:`save_checkpoint` (or ``ldam train``), safely."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass zoo:NAME ({', '.join(names())}) or a file")
    blob = safe_load(
        path, "ldam only loads weights-only checkpoints: {'arch': NAME, 'state_dict': ..., 'meta': {...}}, or, with "
        "--arch MODULE:FACTORY naming the code that builds the model, a state dict. A whole pickled model is never "
        "loaded: save its weights with torch.save(model.state_dict(), path) and pass --arch")
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise CheckpointError(
            f"{path} is not an ldam checkpoint: expected a dict with 'arch' (one of {', '.join(ARCHITECTURES)}) "
            "and 'state_dict'; save one with ldam.zoo.save_checkpoint(model, arch, path). For a state dict of "
            "another architecture, pass --arch MODULE:FACTORY (the code that builds it) and --input-shape"
        )
    model = build(str(blob["arch"]))
    load_weights(model, blob["state_dict"], path, f"architecture {type(model).__name__}")
    meta = dict(blob.get("meta") or {})
    shape = tuple(meta.pop("input_shape", None) or ())
    info = ModelInfo(
        path.name, str(blob["arch"]), shape, meta.pop("class_names", None),
        tuple(meta.pop("mean", None) or (0.0,)), tuple(meta.pop("std", None) or (1.0,)), meta.pop("dataset", None), meta,
    )
    return model.eval(), info


def load_model(spec: str, *, arch: str | None = None, arch_kwargs: dict[str, Any] | str | None = None,
               input_shape: tuple[int, ...] | list[int] | None = None, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, dataset: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """``zoo:NAME`` or a checkpoint path; with ``arch="pkg.mod:factory"``, a weights file (or
    ``"random"``) for the model that factory builds (see :mod:`ldam.zoo.arch`).

    ``input_shape``, ``mean``, ``std`` and ``dataset``, where given, replace what the model's own
    description says (with ``arch`` they are its only description; ``input_shape`` is required).
    """
    if arch is not None:
        from .arch import load_arch_model

        return load_arch_model(spec, arch, arch_kwargs, input_shape=input_shape, mean=mean, std=std, dataset=dataset)
    if arch_kwargs:
        raise LdamError("--arch-kwargs needs --arch MODULE:CALLABLE, the factory they are passed to")
    if spec == "random":
        raise LdamError("'random' needs --arch MODULE:CALLABLE, the code that builds the model to initialize")
    model, info = load(spec[4:]) if spec.startswith("zoo:") else load_checkpoint(spec)
    if input_shape or mean is not None or std is not None or dataset is not None:
        from .arch import normalization

        shape = tuple(int(n) for n in input_shape) if input_shape else tuple(info.input_shape)
        m, s = normalization(shape, mean, std, default=(tuple(info.mean), tuple(info.std)))
        info = replace(info, input_shape=shape, mean=m, std=s, dataset=dataset or info.dataset)
    return model, info


__all__ = ["ARCHITECTURES", "SAMPLING_DEFAULTS", "sampling_defaults", "ModelInfo", "names", "entry", "weights_file", "load", "load_model", "load_checkpoint",
           "save_checkpoint", "build", "LeNet5", "VGGCifar"]
