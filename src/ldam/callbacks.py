"""Callbacks plug into the sampler loop without touching it: progress, GIFs, live views."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tqdm.auto import tqdm

from .render import batch_grid, save_gif

if TYPE_CHECKING:
    from PIL import Image

    from .results import Result
    from .sampler import Sampler, StepInfo


class Callback:
    """Base class: override any of ``on_begin``, ``on_step`` and ``on_end``."""

    def on_begin(self, sampler: "Sampler") -> None:
        """Before the first step."""

    def on_step(self, sampler: "Sampler", info: "StepInfo") -> None:
        """After every step; ``sampler.x`` is the new state (``sampler.images()`` its inputs)."""

    def on_end(self, sampler: "Sampler", result: "Result") -> None:
        """When the result is collected."""


class ProgressBar(Callback):
    """A tqdm bar showing the mean activation, the temperature, and MALA's acceptance rate."""

    def __init__(self, total: int | None = None, every: int = 25, **tqdm_kwargs: Any):
        self.total, self.every, self.kwargs = total, max(1, every), tqdm_kwargs
        self.bar: tqdm | None = None

    def on_begin(self, sampler: "Sampler") -> None:
        self.bar = tqdm(total=self.total, unit="step", desc="sampling", dynamic_ncols=True, **self.kwargs)

    def on_step(self, sampler: "Sampler", info: "StepInfo") -> None:
        assert self.bar is not None
        self.bar.update(1)
        if info.t % self.every == 0:
            post = {"f": f"{float(info.activation.mean()):.3g}", "T": f"{info.temperature:.3g}"}
            post.update({k: f"{v:.2f}" for k, v in info.stats.items()})
            post["phase"] = "sampling" if info.burned_in else "burn-in"
            self.bar.set_postfix(post, refresh=False)

    def on_end(self, sampler: "Sampler", result: "Result") -> None:
        if self.bar is not None:
            self.bar.close()


class GifRecorder(Callback):
    """Record the chains every ``every`` steps and write an animated GIF at the end.

    ``what`` is ``"state"`` (the chains as they move), ``"ema"`` (their moving average, once
    burn-in is over) or ``"auto"`` (the state during burn-in, then the moving average).
    Chains on a GPU stay there: only a recorded frame is copied to the host, once, every
    ``every`` steps (the frames are pictures, kept on the host until the GIF is written).
    """

    def __init__(self, path: str | Path, every: int = 20, what: str = "auto", display: str = "signed",
                 max_frames: int = 200, fps: float = 10.0, zoom: int = 1, **norm: Sequence[float]):
        if what not in ("state", "ema", "auto"):
            raise ValueError(f"GifRecorder records 'state', 'ema' or 'auto', got {what!r}")
        self.zoom = zoom
        self.path, self.every, self.what, self.display = Path(path), max(1, every), what, display
        self.max_frames, self.fps, self.norm = max_frames, fps, norm
        self.frames: list[Image.Image] = []

    def on_step(self, sampler: "Sampler", info: "StepInfo") -> None:
        if info.t % self.every or len(self.frames) >= self.max_frames:
            return
        x = sampler.ema if self.what != "state" and sampler.ema is not None else sampler.images()
        self.frames.append(batch_grid(x, sampler.chains, self.display, zoom=self.zoom, **self.norm))  # one copy

    def on_end(self, sampler: "Sampler", result: "Result") -> None:
        if self.frames:
            save_gif(self.frames, self.path, self.fps)
