"""Models whose architecture comes from your own code: ``--arch MODULE:CALLABLE``.

A fully pickled model is never loaded (unpickling runs arbitrary code that nobody chose). Instead
the user names the code that builds the model, ``package.module:factory`` (or
``package.module:Class.classmethod``), with keyword arguments given as a JSON object, and ldam
fills it with a weights file read by ``torch.load(weights_only=True)`` (or ``safetensors``):

    ldam layers weights.pt --arch mypkg.nets:resnet18 --arch-kwargs '{"num_classes": 10}' --input-shape 3 224 224

Importing the named module is the user's explicit choice of code to run, as with ``python -m``.
The weights are a state dict (``torch.save(model.state_dict(), path)``), or a dict holding one
under ``"state_dict"``, ``"model"``, ``"model_state_dict"`` or ``"module"``; they must fit exactly
(``load_state_dict(strict=True)``). ``RANDOM`` (the word ``random``) instead of a file keeps the
factory's own initialization, drawn under ``torch.manual_seed(0)`` so that it repeats.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, LdamError
from ..io import describe, is_state_dict, load_weights, safe_load

RANDOM = "random"
#: Keys under which a checkpoint dict may hold the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_HINT = "e.g. --arch torchvision.models:resnet18 or --arch mypkg.nets:Net.from_config"


class ArchError(LdamError, ValueError):
    """``--arch``/``--arch-kwargs`` cannot build a model, or the weights do not fit it."""


def parse_kwargs(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--arch-kwargs``: a JSON object (or an already parsed mapping) → keyword arguments."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchError(f"--arch-kwargs is not valid JSON ({e.msg} at column {e.colno}): {text!r}. Write a JSON "
                        "object with double-quoted keys, e.g. --arch-kwargs '{\"num_classes\": 10}'") from None
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
        raise ArchError(f"--arch-kwargs must be a JSON object of keyword arguments, got a JSON {kind}: {text!r}; "
                        "e.g. --arch-kwargs '{\"num_classes\": 10}'")
    return value


def _import(module: str, arch: str) -> Any:
    """Import ``module`` as ``python -m`` would find it: installed packages, then the current folder."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)  # last: the current folder never shadows an installed module
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ArchError(f"--arch {arch}: cannot import module {module!r} ({type(e).__name__}: {e}). Install the "
                        "package that provides it, or run ldam from the folder that holds it (or add that folder "
                        "to PYTHONPATH)") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing; report why
        raise ArchError(f"--arch {arch}: importing module {module!r} failed: {type(e).__name__}: {e}") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def resolve(arch: str) -> Callable[..., Any]:
    """``"pkg.mod:factory"`` or ``"pkg.mod:Class.method"`` → the callable it names."""
    module, sep, path = arch.partition(":")
    if not sep or not module.strip() or not path.strip() or ":" in path:
        raise ArchError(f"--arch expects MODULE:CALLABLE with one colon, {_HINT}; got {arch!r}")
    obj: Any = _import(module.strip(), arch)
    where = module.strip()
    for part in path.strip().split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3, cutoff=0.6)
            if close:
                hint = f" Did you mean {', '.join(close)}?"
            else:
                callables = [n for n in public if callable(getattr(obj, n, None))][:12]
                hint = f" It has: {', '.join(callables)}." if callables else ""
            kind = "module" if where == module.strip() else "object"
            raise ArchError(f"--arch {arch}: {kind} {where!r} has no attribute {part!r}.{hint}")
        obj = getattr(obj, part)
        where = f"{where}.{part}" if where != module.strip() else f"{where}:{part}"
    if not callable(obj):
        raise ArchError(f"--arch {arch}: {where} is not callable (it is of type {type(obj).__name__}); name a "
                        "function or class that returns a torch.nn.Module")
    return obj


def build(arch: str, kwargs: Mapping[str, Any] | str | None = None, seed: int = 0) -> nn.Module:
    """Call the factory ``arch`` names with ``kwargs``; the random initialization is drawn under
    ``torch.manual_seed(seed)`` (the global random state is left as it was)."""
    factory = resolve(arch)
    kw = parse_kwargs(kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(**kw)
        except Exception as e:  # noqa: BLE001 - the user's factory failed; report why
            raise ArchError(f"--arch {arch}: calling it with {describe_kwargs(kw)} raised {type(e).__name__}: {e}. "
                            "Check --arch-kwargs") from None
    if not isinstance(model, nn.Module):
        raise ArchError(f"--arch {arch} returned a {type(model).__module__}.{type(model).__name__}, not a "
                        "torch.nn.Module; name a factory (or class) that builds the model")
    return model


def describe_kwargs(kw: Mapping[str, Any]) -> str:
    return "no arguments" if not kw else "(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"


def _is_state_dict(obj: Any) -> bool:
    return is_state_dict(obj) and len(obj) > 0


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read without unpickling any object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; pass a state dict saved with "
                              f"torch.save(model.state_dict(), path), or '{RANDOM}' for a random initialization")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path} is a safetensors file: pip install safetensors to read it") from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # noqa: BLE001 - the cause is reported
            raise CheckpointError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None
    blob = safe_load(path, "ldam never unpickles objects: if the file holds a whole pickled model, save its weights "
                     "instead, torch.save(model.state_dict(), path), and pass them with --arch MODULE:FACTORY")
    if _is_state_dict(blob):
        return dict(blob)
    if isinstance(blob, Mapping):
        for key in WRAPPER_KEYS:
            if _is_state_dict(blob.get(key)):
                return dict(blob[key])
    raise CheckpointError(f"{path} holds {describe(blob)}, not a state dict of tensors (nor one under "
                          f"{', '.join(map(repr, WRAPPER_KEYS))}); save one with torch.save(model.state_dict(), path)")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with an error naming every misfit
    (:func:`ldam.io.load_weights`)."""
    load_weights(model, state, source, f"the model --arch {arch} builds",
                 "Check --arch and --arch-kwargs, or that the file holds this model's weights")


def _check_norm(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if len(vals) not in (1, channels):
        raise LdamError(f"--{name} takes 1 value or one per channel ({channels}), got {len(vals)}: {list(vals)}")
    if name == "std" and not all(v > 0 for v in vals):
        raise LdamError(f"--std values must be > 0, got {list(vals)}")
    return vals


def normalization(input_shape: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None,
                  default: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,), (1.0,))
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked ``(mean, std)``: 1 value or one per channel; ``default`` where not given."""
    c = int(input_shape[0]) if len(input_shape) else 1
    m = _check_norm("mean", mean, c) if mean is not None else default[0]
    s = _check_norm("std", std, c) if std is not None else default[1]
    return m, s


def load_arch_model(spec: str, arch: str, arch_kwargs: Mapping[str, Any] | str | None = None, *,
                    input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, dataset: str | None = None):
    """Build ``arch`` with ``arch_kwargs`` and load ``spec`` (a weights file, or ``"random"``).

    Returns ``(model in eval mode, ModelInfo)``; inputs are ``(pixel − mean) / std`` (default
    mean 0, std 1), no class names.
    """
    from . import ModelInfo

    if spec.startswith("zoo:"):
        raise ArchError(f"--arch applies to weights files and '{RANDOM}'; {spec} has its own architecture "
                        "(drop --arch)")
    if not input_shape:
        raise ArchError("a model built by --arch needs its input shape: pass --input-shape, the shape of one "
                        "example without the batch dimension, e.g. --input-shape 3 224 224")
    shape = tuple(int(n) for n in input_shape)
    m, s = normalization(shape, mean, std)
    kw = parse_kwargs(arch_kwargs)
    model = build(arch, kw)
    if spec != RANDOM:
        load_state(model, read_state_dict(spec), spec, arch)
    info = ModelInfo(Path(spec).name if spec != RANDOM else RANDOM, arch, shape, None, m, s, dataset,
                     {"arch_kwargs": kw, "weights": spec})
    return model.eval(), info


__all__ = ["RANDOM", "ArchError", "parse_kwargs", "resolve", "build", "read_state_dict", "load_state",
           "load_arch_model", "normalization"]
