"""The user's model is sacred: run it in eval mode and put everything back afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; on any exit (return, error, interrupt) restore
    every module's train/eval flag, every parameter's ``requires_grad`` and ``.grad``, and
    remove any hook added during the block. Parameters and buffers are never written by ldam.
    """
    modules = list(model.modules())
    modes = [m.training for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = [{name: set(getattr(m, name, {}).keys()) for name in _HOOK_DICTS} for m in modules]
    model.eval()
    try:
        yield model
    finally:
        for m, mode, before in zip(modules, modes, hooks):
            m.training = mode
            for name, keys in before.items():
                d = getattr(m, name, None)
                if d is not None and len(d) != len(keys):
                    for k in [k for k in d if k not in keys]:
                        del d[k]
        for p, flag, grad in zip(params, flags, grads):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad
