"""Pixels to model inputs: the one normalization ``(pixel − mean) / std`` that every loader uses."""

from __future__ import annotations

from typing import Any

import torch


def to_model_units(pixels: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """Pixels → model input ``(pixel − mean) / std``, pixels in [0, 1]: uint8 pixels (0–255) are
    read as ``pixel / 255``, floating ones as they are. ``mean`` and ``std`` hold one value or one
    per channel (sequences or tensors); the channel axis is the third from last (``[..., C, H, W]``),
    or the second from last for signals ``[C, L]``."""
    x = pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels
    shape = (-1, 1, 1) if x.dim() >= 3 else (-1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


__all__ = ["to_model_units"]
