"""Where the work runs: ``--device {auto,cpu,cuda,cuda:N,mps}``, checked in one place.

The library itself never picks a device: the :class:`~ldam.sampler.Sampler` (and everything it
drives: chains, regularizers, the discriminator's critic, the activation trace, the moving
average, kept samples) follows the device of the model's parameters. The command line and the
scripts resolve ``--device`` with :func:`resolve_device` and move the model there after loading
it (models load on the CPU first, then ``model.to(device)``).

    >>> ldam.device.resolve_device("auto")      # cuda, then mps, else cpu
    device(type='cpu')
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .errors import DeviceError

#: What ``--device`` accepts (``cuda:N`` with ``N`` a GPU index).
CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_SPEC = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device that ``spec`` names, checked against this machine.

    ``"auto"`` (or ``None``) takes a GPU when there is one (CUDA, then Apple's MPS), else the
    CPU; ``"cpu"``, ``"cuda"`` (the current CUDA GPU), ``"cuda:N"`` and ``"mps"`` name one.
    A malformed spec, or a GPU this machine does not have, raises :class:`~ldam.errors.DeviceError`
    with one line naming the cause and the fix (the CLI prints it as ``ldam: error: ...``).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    m = _SPEC.match(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"unknown device {spec!r}; choose one of auto (a GPU if there is one, else the CPU), cpu, "
                          "cuda, cuda:N (N: the GPU's index, e.g. cuda:0) or mps")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' asked for, but Apple's MPS GPU backend is not available to this PyTorch "
                              "(it needs an Apple-silicon Mac and a torch build with MPS); use --device cpu, or "
                              "--device auto to take whatever this machine has")
        return torch.device("mps")
    if not torch.cuda.is_available():
        build = getattr(torch.version, "cuda", None)
        cause = (f"this PyTorch ({torch.__version__}) is a CPU-only build" if not build else
                 f"no CUDA GPU is visible to this PyTorch ({torch.__version__}, CUDA {build}): no GPU, no driver, "
                 "or CUDA_VISIBLE_DEVICES hides them")
        fix = "install a CUDA build of torch" if not build else "check nvidia-smi and CUDA_VISIBLE_DEVICES"
        auto = "mps" if _mps_available() else "the CPU"
        raise DeviceError(f"device {text!r} asked for, but {cause}; {fix}, or use --device cpu "
                          f"(--device auto picks {auto} here)")
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if int(index) >= count:
        have = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
        raise DeviceError(f"device {text!r} does not exist: this machine has {_plural(count, 'CUDA GPU')} ({have}); "
                          f"use --device cuda:{count - 1 if count else 0}, or --device auto")
    return torch.device("cuda", int(index))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without any."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` is done (for timings; a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


__all__ = ["resolve_device", "model_device", "synchronize", "CHOICES", "DeviceError"]


def script_device(spec: str, prog: str) -> torch.device:
    """:func:`resolve_device` for a script: a bad request exits with ``PROG: error: ...``. Prints
    the torch version and where the script runs."""
    from .errors import LdamError

    try:
        dev = resolve_device(spec)
    except LdamError as e:
        raise SystemExit(f"{prog}: error: {e}") from None
    where = f"{torch.get_num_threads()} threads" if dev.type == "cpu" else str(dev)
    print(f"torch {torch.__version__}, {where}")
    return dev
