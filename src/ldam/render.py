"""Turning chains into pictures: the paper's signed display, RGB, grids and GIFs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image


def signed_display(x: torch.Tensor) -> np.ndarray:
    """The paper's display of a signed image: scale so the largest ``|value|`` is 127, add 128.

    Grey is uncorrelated with the neuron, white positively and black negatively correlated.
    One scale per image (all channels together), so colour balance is kept. Returns uint8.
    """
    return _signed(x.detach().cpu().double()).numpy()


def _signed(a: torch.Tensor, dim: tuple[int, ...] | None = None) -> torch.Tensor:
    """The signed display of float64 ``a`` as uint8: ``a`` (each slice over ``dim`` on its own, or
    all of it when ``dim`` is ``None``) scaled so its largest ``|value|`` is 127, plus 128."""
    peak = a.abs().amax() if dim is None else a.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(peak > 0, 127.0 / peak, torch.zeros_like(peak))
    return (a * scale + 128.0).round_().clamp_(0, 255).to(torch.uint8)


def pixel_display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the model's normalization ``(pixel − mean) / std`` and show pixels in [0, 1]."""
    return _pixels(x.detach().cpu().double(), mean, std, channel_axis=0).numpy()


def _pixels(a: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_axis: int) -> torch.Tensor:
    """Float64 model inputs ``a`` → uint8 pixels ``round(255 · clamp(a·std + mean, 0, 1))``, the
    statistics broadcast along ``channel_axis``."""
    shape = [1] * a.dim()
    shape[channel_axis] = -1
    m = torch.as_tensor(mean, dtype=torch.float64).view(shape)
    sd = torch.as_tensor(std, dtype=torch.float64).view(shape)
    return (a * sd + m).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def to_image(x: torch.Tensor, display: str = "signed", mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Image.Image:
    """One example ``[C, *spatial]`` as a picture.

    1 channel: grey. 3 channels: RGB. Other channel counts: the channels side by side in grey.
    1-D signals ``[C, L]``: a ``C``-row heat strip. ``display`` is ``"signed"`` or ``"pixel"``.
    """
    if display == "signed":
        a = signed_display(x)
    elif display == "pixel":
        a = pixel_display(x, mean, std)
    else:
        raise ValueError(f"display must be 'signed' or 'pixel', got {display!r}")
    if a.ndim == 2:  # [C, L] signal
        rows = max(1, 16 // a.shape[0])
        return Image.fromarray(np.repeat(a, rows, axis=0), mode="L")
    if a.ndim != 3:
        a = a.reshape(a.shape[0], a.shape[1], -1)
    c = a.shape[0]
    if c == 3:
        return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), mode="RGB")
    if c == 1:
        return Image.fromarray(a[0], mode="L")
    gap = np.full((a.shape[1], 1), 128, np.uint8)
    parts = []
    for i in range(c):
        parts += [a[i], gap] if i < c - 1 else [a[i]]
    return Image.fromarray(np.concatenate(parts, axis=1), mode="L")


def grid(images: Sequence[Image.Image], ncol: int, pad: int = 2, zoom: int = 2, background: int = 64) -> Image.Image:
    """Tile pictures ``ncol`` per row, each enlarged ``zoom`` times (nearest neighbour)."""
    if not images:
        raise ValueError("grid needs at least one image")
    mode = "RGB" if any(im.mode == "RGB" for im in images) else "L"
    w, h = images[0].size
    w, h = w * zoom, h * zoom
    nrow = -(-len(images) // ncol)
    canvas = Image.new(mode, (pad + ncol * (w + pad), pad + nrow * (h + pad)), background if mode == "L" else (background,) * 3)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        canvas.paste(im.convert(mode).resize((w, h), Image.NEAREST), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def display_array(x: torch.Tensor, display: str = "signed", mean: Sequence[float] = (0.0,),
                  std: Sequence[float] = (1.0,)) -> np.ndarray:
    """A batch of 1- or 3-channel images ``[N, C, H, W]`` → uint8 ``[N, H, W, C]``, each on its own
    scale (the same values as :func:`to_image` gives one at a time, computed in one pass)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"display_array takes [N, 1 or 3, H, W], got {list(x.shape)}")
    a = x.detach().cpu().to(torch.float64)  # copied to the host as is, then widened
    if display == "signed":
        u = _signed(a, dim=(1, 2, 3))
    elif display == "pixel":
        u = _pixels(a, mean, std, channel_axis=1)
    else:
        raise ValueError(f"display must be 'signed' or 'pixel', got {display!r}")
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def grid_array(tiles: np.ndarray, ncol: int, pad: int = 2, zoom: int = 2, background: int = 64) -> Image.Image:
    """Tile uint8 ``[N, H, W, C]`` pictures ``ncol`` per row, enlarged ``zoom`` times: the layout of
    :func:`grid`, assembled with array reshapes instead of one paste per tile."""
    n, h, w, c = tiles.shape
    nrow = -(-n // ncol)
    if zoom > 1:
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
        h, w = h * zoom, w * zoom
    cells = np.full((nrow * ncol, h + pad, w + pad, c), background, np.uint8)
    cells[:n, :h, :w] = tiles
    body = cells.reshape(nrow, ncol, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4).reshape(nrow * (h + pad), ncol * (w + pad), c)
    canvas = np.full((pad + body.shape[0], pad + body.shape[1], c), background, np.uint8)
    canvas[pad:, pad:] = body
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")


def batch_grid(x: torch.Tensor, ncol: int, display: str = "signed", zoom: int = 2, **norm: Sequence[float]) -> Image.Image:
    """A grid of a batch ``[N, C, *spatial]``: each example displayed on its own scale. A batch on a
    GPU is copied to the host once, not once per example."""
    x = x.detach().cpu()
    return grid([to_image(xi, display, **norm) for xi in x], ncol, zoom=zoom)


def png_bytes(im: Image.Image, compress_level: int = 6, optimize: bool = False) -> bytes:
    """The PNG file of ``im`` as bytes (``compress_level`` 1 for speed, ``optimize`` for size)."""
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level, optimize=optimize)
    return buf.getvalue()


def save_gif(frames: Sequence[Image.Image], path: str | Path | BinaryIO, fps: float = 10.0) -> Path | BinaryIO:
    """Write an animated GIF that loops forever, to a file (its folder is made) or a binary stream."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    if isinstance(path, (str, Path)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.convert("P", palette=Image.ADAPTIVE) if f.mode == "RGB" else f for f in frames]
    frames[0].save(path, format="GIF", save_all=True, append_images=list(frames[1:]),
                   duration=max(20, int(1000 / fps)), loop=0)
    return path
