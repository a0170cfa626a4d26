"""Generator priors: VAE decoders trained with ``ldam train-generator``, for ``ldam.Generator``.

``zoo:vae-mnist`` and ``zoo:vae-cifar10`` ship in ``weights/`` with their recipe and SHA-256
(``vae-*.json``); a folder or ``generator.pt`` written by ``ldam train-generator`` loads the same way
(its ``generator.json`` beside it names the configuration). Weights are read with
``torch.load(weights_only=True)`` (:func:`ldam.io.safe_load`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, LdamError
from ..io import load_weights, safe_load
from .vae import VAE, Normalized

WEIGHTS = Path(__file__).parent / "weights"
GENERATORS = ("vae-mnist", "vae-cifar10")


def names() -> list[str]:
    """The zoo generators whose weights are installed."""
    return [n for n in GENERATORS if (WEIGHTS / f"{n}.pt").exists()]


def _locate(spec: str) -> tuple[Path, Path]:
    if spec.startswith("zoo:") or spec in GENERATORS:
        name = spec.removeprefix("zoo:")
        if name not in names():
            raise LdamError(f"no zoo generator named {name!r}; available: {', '.join('zoo:' + n for n in names()) or 'none'}")
        return WEIGHTS / f"{name}.pt", WEIGHTS / f"{name}.json"
    path = Path(spec)
    if path.is_dir():
        path = path / "generator.pt"
    if not path.exists():
        raise CheckpointError(f"no generator at {spec}: pass zoo:NAME ({', '.join(names())}) or the generator.pt "
                              "written by ldam train-generator")
    record = path.with_suffix(".json")
    if not record.exists():
        raise CheckpointError(f"{path} has no {record.name} beside it (written by ldam train-generator with the "
                              "configuration needed to rebuild the VAE)")
    return path, record


def load_vae(spec: str) -> tuple[VAE, dict[str, Any]]:
    """The VAE named by ``spec`` (``zoo:NAME``, a folder, or a ``generator.pt``) and its record."""
    path, record_path = _locate(spec)
    record = json.loads(record_path.read_text())
    want = record.get("sha256")
    if want and hashlib.sha256(path.read_bytes()).hexdigest() != want:
        raise CheckpointError(f"{path} fails its checksum (expected {want}); reinstall ldam or retrain it")
    cfg = record["config"]
    from ..train import DATASETS

    c, s, _ = DATASETS[cfg["dataset"]].input_shape
    vae = VAE(c, s, int(cfg["latent"]))
    source = f"the generator {path}"
    state = safe_load(path, "ldam only loads the weights-only generator.pt written by ldam train-generator",
                      what=source)
    load_weights(vae, state, source, f"the VAE its {record_path.name} describes (latent {cfg['latent']})")
    return vae.eval(), record


def for_model(spec: str, info: Any) -> Normalized:
    """The decoder of ``spec`` followed by the normalization of a model's inputs (``info.mean``,
    ``info.std``): ``G(h)`` in the model's units, with ``.latent`` its latent size."""
    vae, record = load_vae(spec)
    dataset = record["config"]["dataset"]
    if getattr(info, "dataset", None) not in (None, dataset):
        raise LdamError(f"the generator {spec} was trained on {dataset} but the model's inputs are {info.dataset} images")
    return Normalized(vae.decoder, tuple(info.mean), tuple(info.std)).eval()


__all__ = ["names", "load_vae", "for_model", "GENERATORS"]
