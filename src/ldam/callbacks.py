"""Callbacks plug into the sampler loop without touching it: progress, GIFs, live views.

A callback sees a :class:`StepInfo` after every step, which carries everything the built-in
callbacks read; the running sampler is passed too, for callbacks that steer it, but this module
never needs to know its type.

Lifecycle: ``on_begin`` before the first step of a run, ``on_step`` after every step, and
``on_end`` exactly once per ``on_begin``: with the :class:`~ldam.results.Result` when it is
collected, or with ``None`` when the run stops on an error or an interrupt (the error is then
raised as it was; an error inside ``on_end`` itself is reported as a warning, not in its place).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .render import batch_grid, save_gif

if TYPE_CHECKING:
    from PIL import Image

    from .results import Result


@dataclass
class StepInfo:
    """What callbacks see after each step ``t``.

    ``activation`` is ``f(x_t)`` per chain (``[n_targets · chains]``), ``temperature`` and
    ``step_size`` the values used at ``t``, ``burned_in`` whether samples are being kept, ``stats``
    the method's and regularizers' statistics (e.g. MALA's acceptance). ``images()`` gives the
    chains' new inputs ``x_{t+1}`` (computed on demand: through the parameterization if any),
    ``ema`` their moving average once burn-in is over, ``chains`` the chains per target.
    """

    t: int
    activation: torch.Tensor
    temperature: float
    step_size: float
    burned_in: bool
    stats: dict[str, float]
    chains: int = 1
    images: Callable[[], torch.Tensor] = field(default=lambda: torch.empty(0), repr=False)
    ema: torch.Tensor | None = field(default=None, repr=False)


class Callback:
    """Base class: override any of ``on_begin``, ``on_step`` and ``on_end``."""

    def on_begin(self, sampler: Any) -> None:
        """Before the first step of a run."""

    def on_step(self, sampler: Any, info: StepInfo) -> None:
        """After every step; ``info.images()`` is the new state's inputs."""

    def on_end(self, sampler: Any, result: "Result | None") -> None:
        """Once per ``on_begin``: with the result when it is collected, ``None`` after an error."""


class ProgressBar(Callback):
    """A tqdm bar showing the mean activation, the temperature, and MALA's acceptance rate."""

    def __init__(self, total: int | None = None, every: int = 25, **tqdm_kwargs: Any):
        self.total, self.every, self.kwargs = total, max(1, every), tqdm_kwargs
        self.bar: tqdm | None = None

    def on_begin(self, sampler: Any) -> None:
        self.bar = tqdm(total=self.total, unit="step", desc="sampling", dynamic_ncols=True, **self.kwargs)

    def on_step(self, sampler: Any, info: StepInfo) -> None:
        assert self.bar is not None
        self.bar.update(1)
        if info.t % self.every == 0:
            post = {"f": f"{float(info.activation.mean()):.3g}", "T": f"{info.temperature:.3g}"}
            post.update({k: f"{v:.2f}" for k, v in info.stats.items()})
            post["phase"] = "sampling" if info.burned_in else "burn-in"
            self.bar.set_postfix(post, refresh=False)

    def on_end(self, sampler: Any, result: "Result | None") -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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

    def on_step(self, sampler: Any, info: StepInfo) -> None:
        if info.t % self.every or len(self.frames) >= self.max_frames:
            return
        x = info.ema if self.what != "state" and info.ema is not None else info.images()
        self.frames.append(batch_grid(x, info.chains, self.display, zoom=self.zoom, **self.norm))  # one copy

    def on_end(self, sampler: Any, result: "Result | None") -> None:
        """Write the GIF, also after an error (the frames up to it show what went wrong)."""
        if self.frames:
            save_gif(self.frames, self.path, self.fps)
