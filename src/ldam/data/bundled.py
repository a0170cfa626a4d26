"""A small real subset shipped inside the package, so that the live UI works with no data installed.

* ``mnist``: the 10,000 MNIST test digits and labels (the whole canonical test split);
* ``cifar10``: the first 1,000 CIFAR-10 test images and labels (``test_batch`` rows 0..999).

``scripts/make_bundled_data.py`` writes them from the verified canonical files, with their
SHA-256 in ``bundled/manifest.json``; :func:`load_bundled` checks that SHA-256 before parsing.
Each file is a gzip stream (no timestamp, so rebuilding gives the same bytes) of two ``.npy``
arrays, uint8 images then uint8 labels, read without pickle.

``ldam data fetch mnist cifar10`` downloads the full sets (see :mod:`ldam.data.fetch`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

BUNDLED_DIR = Path(__file__).parent / "bundled"
MANIFEST = BUNDLED_DIR / "manifest.json"
#: The file of each dataset's subset, and the full set's size (to say what is missing).
FILES: dict[str, str] = {"mnist": "mnist-test.npy.gz", "cifar10": "cifar10-test-first1000.npy.gz"}
SHAPES: dict[str, tuple[int, ...]] = {"mnist": (10000, 28, 28), "cifar10": (1000, 3, 32, 32)}
DESCRIPTIONS: dict[str, str] = {"mnist": "the 10,000 MNIST test digits",
                                "cifar10": "the first 1,000 CIFAR-10 test images"}


def manifest() -> dict[str, Any]:
    """The bundled files' SHA-256 and provenance (``{}`` when the package was built without them)."""
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text())


def has_bundled(dataset: str) -> bool:
    """Whether this installation ships a subset of ``dataset``."""
    return dataset in FILES and (BUNDLED_DIR / FILES[dataset]).exists() and dataset in manifest().get("files", {})


def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The bytes of one bundled file: gzip (mtime 0) of ``images`` then ``labels`` as ``.npy``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
    np.save(buf, np.ascontiguousarray(labels, dtype=np.uint8), allow_pickle=False)
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def decode(data: bytes, source: str = "the bundled file") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` from :func:`encode`'s bytes."""
    try:
        buf = io.BytesIO(gzip.decompress(data))
        images = np.load(buf, allow_pickle=False)
        labels = np.load(buf, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{source} is not a readable bundled data file ({e}); reinstall ldam") from None
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or len(images) != len(labels):
        raise DataError(f"{source} holds {images.dtype} images and {labels.dtype} labels of lengths "
                        f"{len(images)} and {len(labels)}; reinstall ldam")
    return images, labels


def load_bundled(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled subset of ``dataset`` (``"mnist"`` or ``"cifar10"``) as uint8 images (``[N, 28, 28]``
    for MNIST, ``[N, 3, 32, 32]`` for CIFAR-10, as :func:`ldam.data.load_mnist` and
    :func:`ldam.data.load_cifar10` give them) and int64 labels, after checking its SHA-256."""
    if dataset not in FILES:
        raise ValueError(f"ldam bundles data for {', '.join(FILES)}, not {dataset!r}")
    path = BUNDLED_DIR / FILES[dataset]
    entry = manifest().get("files", {}).get(FILES[dataset])
    if not path.exists() or entry is None:
        raise DataError(f"this installation of ldam has no bundled {dataset} subset ({path}); run "
                        f"`ldam data fetch {dataset}` for the full set")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise DataError(f"{path} is corrupt: SHA-256 {actual} does not match the expected {entry['sha256']}; "
                        f"reinstall ldam, or run `ldam data fetch {dataset}` for the full set")
    images, labels = decode(data, str(path))
    if images.shape != SHAPES[dataset]:
        raise DataError(f"{path} holds images of shape {images.shape}, expected {SHAPES[dataset]}; reinstall ldam")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


__all__ = ["load_bundled", "has_bundled", "manifest", "encode", "decode", "FILES", "DESCRIPTIONS", "BUNDLED_DIR"]
