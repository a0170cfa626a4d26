"""The user's model is sacred: run it in eval mode and put everything back afterwards.

Hooks are not this guard's business: every hook ldam registers is removed through its own
handle when the block that added it ends, and hooks that the model registers itself (some
models install them lazily during their first forward) are left exactly where the model put them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; on any exit (return, error, interrupt) restore
    every module's train/eval flag and every parameter's ``requires_grad`` and ``.grad``.
    Parameters and buffers are never written by ldam.
    """
    modules = list(model.modules())
    modes = [m.training for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
        for p, flag, grad in zip(params, flags, grads):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad
