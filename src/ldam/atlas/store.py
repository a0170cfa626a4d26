"""The atlas on disk: a manifest that pins the run's configuration, and one shard per unit.

Layout of an atlas folder ``DIR``::

    DIR/manifest.json                 the configuration (model fingerprint, dataset, sampler, seeds)
    DIR/shards/<layer>/topk.pt        the layer's streaming top-k pass (written once)
    DIR/shards/<layer>/<unit>.pt      one unit's result (a :class:`UnitRecord`)
    DIR/index.html, DIR/site/...      the static site (:mod:`ldam.atlas.site`)

Every file is written to a temporary name and renamed over its final name, so a run killed at
any moment leaves each shard either complete or absent. Shards are plain dicts of tensors,
numbers and strings, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import LdamError
from ..io import atomic_save, atomic_write_bytes, safe_load

MANIFEST = "manifest.json"
FORMAT = 1


class AtlasConfigError(LdamError):
    """An atlas folder holds a run with another configuration."""


def layer_dir_name(layer: str) -> str:
    """A file-system-safe folder name for a layer name (``features.0`` → ``features.0``,
    ``relu#1`` → ``relu_1``); distinct layer names map to distinct folders via a suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer)
    return safe if safe == layer else f"{safe}-{abs(hash_text(layer)) % 10**8:08d}"


def hash_text(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


@dataclass
class UnitRecord:
    """Everything the atlas knows about one unit ``layer:unit``.

    Images are in the model's input units, ``[..., *input_shape]``; ``pixels`` are uint8 crops.

    - ``topk_index``/``topk_score``: the dataset rows that drive the unit most (by its maximum
      over positions) and those maxima, best first; ``topk_box`` the receptive-field box
      ``(y0, y1, x0, x1)`` around the maximal position in each; ``topk_crops`` the crops as uint8
      pictures ``[k, C, s, s]``.
    - ``facet_labels``: the facet of each of the top-N images; ``facet_starts`` the facets' mean
      images (the chains' starting points), ``[F, *input_shape]``.
    - ``chain_means``: each chain's mean over its kept samples, ``[F, chains, *input_shape]``;
      ``chain_last`` the final states of the same chains; ``trace`` the target activation of every
      chain at every step, ``[steps, F · chains]`` (facet-major).
    - ``diagnostics``: numbers and flags (see :mod:`ldam.atlas.diagnostics`).
    """

    layer: str
    unit: int
    topk_index: torch.Tensor
    topk_score: torch.Tensor
    topk_box: torch.Tensor
    topk_crops: torch.Tensor
    facet_labels: torch.Tensor
    facet_starts: torch.Tensor
    chain_means: torch.Tensor
    chain_last: torch.Tensor
    trace: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnitRecord":
        return cls(**d)

    @property
    def facets(self) -> int:
        return int(self.chain_means.shape[0])


class AtlasStore:
    """Reads and writes one atlas folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- manifest -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AtlasConfigError(f"{self.manifest_path} cannot be read ({e}); move the folder away or pass "
                                   "--force to start over") from None

    def claim(self, config: dict[str, Any], force: bool = False) -> bool:
        """Pin ``config`` to the folder. Returns ``True`` when the folder already held this same
        configuration (a resumed run). A different configuration is refused with the keys that
        differ, unless ``force``, which clears the old shards first."""
        config = {"format": FORMAT, **json.loads(json.dumps(config))}
        old = self.read_manifest()
        if old is not None and old == config:
            self.sweep()
            return True
        if old is not None and not force:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            shown = "; ".join(f"{k}: {old.get(k)!r} → {config.get(k)!r}" for k in diff[:4])
            raise AtlasConfigError(
                f"{self.root} holds an atlas made with another configuration ({shown}{' ...' if len(diff) > 4 else ''}). "
                "Use another --out folder, or pass --force to discard it and start over")
        if old is not None:
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.manifest_path, json.dumps(config, indent=1, sort_keys=True))
        return False

    def sweep(self) -> None:
        """Remove the temporary files a killed run left behind (never a finished file)."""
        for tmp in self.root.rglob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        import shutil

        for sub in ("shards", "site"):
            if (self.root / sub).exists():
                shutil.rmtree(self.root / sub)
        for name in (MANIFEST, "index.html"):
            if (self.root / name).exists():
                (self.root / name).unlink()

    # ---- shards -------------------------------------------------------------------------
    def layer_dir(self, layer: str) -> Path:
        return self.root / "shards" / layer_dir_name(layer)

    def unit_path(self, layer: str, unit: int) -> Path:
        return self.layer_dir(layer) / f"{unit}.pt"

    def has_unit(self, layer: str, unit: int) -> bool:
        return self.unit_path(layer, unit).exists()

    def done_units(self, layer: str) -> set[int]:
        d = self.layer_dir(layer)
        if not d.exists():
            return set()
        return {int(p.stem) for p in d.glob("*.pt") if p.stem.isdigit()}

    def write_unit(self, rec: UnitRecord) -> Path:
        return atomic_save(rec.to_dict(), self.unit_path(rec.layer, rec.unit))

    def read_unit(self, layer: str, unit: int) -> UnitRecord:
        path = self.unit_path(layer, unit)
        d = safe_load(path, what=f"atlas shard {path}", hint="Delete it and run the same command again to recompute that unit")
        try:
            return UnitRecord.from_dict(d)
        except TypeError as e:
            raise LdamError(f"atlas shard {path} is not a unit record ({e}); delete it and run the same command "
                            "again to recompute that unit") from None

    def write_layer(self, layer: str, name: str, data: dict[str, Any]) -> Path:
        return atomic_save(data, self.layer_dir(layer) / f"{name}.pt")

    def read_layer(self, layer: str, name: str) -> dict[str, Any] | None:
        path = self.layer_dir(layer) / f"{name}.pt"
        if not path.exists():
            return None
        return safe_load(path, what=f"atlas layer file {path}", hint="Delete it and run the same command again")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed over it."""
    atomic_write_bytes(path, text.encode())


__all__ = ["AtlasStore", "UnitRecord", "AtlasConfigError", "layer_dir_name", "write_text_atomic"]
