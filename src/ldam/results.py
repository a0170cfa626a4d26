"""What a sampling run produced: samples, means, activation traces, and the config behind them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .errors import CheckpointError
from .io import atomic_save, safe_load
from .render import batch_grid, grid, save_gif, to_image
from .targets import Target, parse

FORMAT = "ldam-result-v1"


@dataclass
class Result:
    """The output of :func:`ldam.sample`. Rows are target-major: row ``i`` samples target ``i // chains``.

    The tensors are on the CPU, wherever the chains ran (``Sampler.result(device=None)`` keeps
    them on the sampler's device instead).

    Attributes:
        samples: kept states ``[n_targets·chains, n_kept, *input_shape]``.
        mean: mean of the kept states ``[n_targets·chains, *input_shape]``.
        activations: ``f(x_t)`` at every step ``[steps, n_targets·chains]``.
        ema: exponential moving average of the chains after burn-in (time constant ``ema_tau``).
        last: the chains' final state.
        acceptance: MALA's per-chain acceptance rate after burn-in (``None`` for other methods).
        burn_in: the first kept step.
        config: everything needed to rerun it (targets, shapes, schedules, seed, model hash, versions).
    """

    targets: list[Target]
    chains: int
    samples: torch.Tensor
    mean: torch.Tensor
    activations: torch.Tensor
    ema: torch.Tensor | None = None
    last: torch.Tensor | None = None
    acceptance: torch.Tensor | None = None
    burn_in: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def target_mean(self) -> torch.Tensor:
        """The mean over each target's chains and kept samples, ``[n_targets, *input_shape]``."""
        return self.mean.view(len(self.targets), self.chains, *self.mean.shape[1:]).mean(1)

    def target_activations(self) -> torch.Tensor:
        """Activation trace averaged over each target's chains, ``[steps, n_targets]``."""
        return self.activations.view(self.activations.shape[0], len(self.targets), self.chains).mean(2)

    # ---- pictures ----------------------------------------------------------------------
    def _pick(self, which: str) -> torch.Tensor:
        options = {"mean": self.mean, "ema": self.ema, "last": self.last}
        if which not in options or options[which] is None:
            raise ValueError(f"no {which!r} images in this result; choose from "
                             f"{[k for k, v in options.items() if v is not None]}")
        return options[which]  # type: ignore[return-value]

    def grid(self, which: str = "mean", display: str = "signed", zoom: int = 2,
             mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Image.Image:
        """One row per target, one column per chain; ``which`` is ``"mean"``, ``"ema"`` or ``"last"``."""
        return batch_grid(self._pick(which), self.chains, display, zoom=zoom, mean=mean, std=std)

    def target_grid(self, display: str = "signed", zoom: int = 4, ncol: int | None = None,
                    mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Image.Image:
        """The per-target mean (over chains and samples), enlarged."""
        n = len(self.targets)
        return batch_grid(self.target_mean, ncol or min(n, 10), display, zoom=zoom, mean=mean, std=std)

    def save_grid(self, path: str | Path, **kwargs: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.grid(**kwargs).save(path)
        return path

    def save_gif(self, path: str | Path, frames: int = 60, running_mean: bool = False, display: str = "signed",
                 fps: float = 10.0, zoom: int = 2, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Path:
        """Animate the kept samples of every chain (or, with ``running_mean``, their mean so far)."""
        n = self.samples.shape[1]
        if n == 0:
            raise ValueError("no samples were kept (keep_samples=False, or burn-in never ended); nothing to animate")
        idx = torch.linspace(0, n - 1, min(frames, n)).round().long().unique()
        csum = self.samples.double().cumsum(1) if running_mean else None
        images = []
        for k in idx.tolist():
            x = (csum[:, k] / (k + 1)).float() if csum is not None else self.samples[:, k]
            images.append(batch_grid(x, self.chains, display, zoom=zoom, mean=mean, std=std))
        return save_gif(images, path, fps)

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write samples, means, traces and config to one file, atomically (safe to load: tensors only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": FORMAT,
            "targets": [str(t) for t in self.targets],
            "chains": self.chains,
            "burn_in": self.burn_in,
            "config_json": json.dumps(self.config, default=repr),
            "samples": self.samples,
            "mean": self.mean,
            "activations": self.activations,
        }
        for k in ("ema", "last", "acceptance"):
            if getattr(self, k) is not None:
                blob[k] = getattr(self, k)
        return atomic_save(blob, path)

    @classmethod
    def load(cls, path: str | Path) -> "Result":
        """Load a saved result with ``weights_only=True`` (no arbitrary objects are unpickled)."""
        blob = safe_load(path, what=f"result file {path}")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an ldam result file (expected format {FORMAT!r})")
        targets = []
        for s in blob["targets"]:
            spec = parse(s)
            targets.append(Target(spec.layer, int(spec.first), spec.position))  # type: ignore[arg-type]
        return cls(
            targets=targets, chains=int(blob["chains"]), samples=blob["samples"], mean=blob["mean"],
            activations=blob["activations"], ema=blob.get("ema"), last=blob.get("last"),
            acceptance=blob.get("acceptance"), burn_in=int(blob["burn_in"]),
            config=json.loads(blob["config_json"]),
        )


__all__ = ["Result", "to_image", "grid"]
