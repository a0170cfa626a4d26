"""MNIST, read from ``$LDAM_DATA_DIR``, then the user cache, then downloaded with checksums.

Lookup order for each canonical ``.gz`` file:

1. ``$LDAM_DATA_DIR/mnist/<file>``
2. ``$LDAM_CACHE_DIR/mnist/<file>`` (default ``~/.cache/ldam/mnist``)
3. a download from the canonical mirrors into the cache, verified against its SHA-256 and
   written atomically, so a half-written download is never used.

Every file is checked against its SHA-256 before it is parsed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError

MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_verified: dict[tuple[str, int, int], str] = {}

Fetcher = Callable[[str, Path], None]


def cache_dir() -> Path:
    return Path(os.environ.get("LDAM_CACHE_DIR") or Path.home() / ".cache" / "ldam")


def dataset_paths(dataset: str) -> list[Path]:
    """The folders searched for ``dataset``'s files, in order: ``$LDAM_DATA_DIR/<dataset>`` (when
    set), then ``<cache>/<dataset>``."""
    paths = []
    if os.environ.get("LDAM_DATA_DIR"):
        paths.append(Path(os.environ["LDAM_DATA_DIR"]) / dataset)
    paths.append(cache_dir() / dataset)
    return paths


def search_paths() -> list[Path]:
    """The folders searched for MNIST files, in order."""
    return dataset_paths("mnist")


def sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _verified[key] = h.hexdigest()
    return _verified[key]


def _check(path: Path, expected: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise DataError(
            f"{path} is corrupt or incomplete: SHA-256 {actual} does not match the expected {expected}. "
            "Delete the file so ldam can fetch it again, or point LDAM_DATA_DIR at a good copy"
        )


def _urlopen_fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as fh:
        while chunk := r.read(1 << 20):
            fh.write(chunk)


def fetch_verified(urls: Sequence[str], dest_dir: Path, name: str, check: Callable[[Path], str | None],
                   fetch: Fetcher = _urlopen_fetch, hint: str = "") -> Path:
    """Fetch ``name`` from the first URL whose bytes pass ``check`` (``None`` = good, else why not).

    Each try writes to a temporary ``.part`` file in ``dest_dir``; failed tries are deleted. The
    verified temporary file is returned for the caller to rename or unpack (and then delete).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=name, suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(url, tmp)
            problem = check(tmp)
        except OSError as e:
            problem = str(e)
        if problem is None:
            return tmp
        tmp.unlink(missing_ok=True)
        errors.append(f"{url}: {problem}")
    raise DataError(f"could not download {name}: " + "; ".join(errors) + (f". {hint}" if hint else ""))


def download(name: str, dest_dir: Path, mirrors: Sequence[str] = MIRRORS, fetch: Fetcher = _urlopen_fetch) -> Path:
    """Download ``name`` into ``dest_dir`` from the first mirror that gives the right bytes.

    The file is written to a temporary name, verified, then renamed into place.
    """
    expected = MNIST_FILES[name]

    def check(p: Path) -> str | None:
        actual = sha256(p)
        return None if actual == expected else f"SHA-256 {actual} != expected {expected}"

    tmp = fetch_verified([base + name for base in mirrors], dest_dir, name, check, fetch,
                         f"Without network access, copy the MNIST .gz files into {dest_dir} or set LDAM_DATA_DIR")
    os.replace(tmp, dest_dir / name)
    return dest_dir / name


def locate(name: str, download_missing: bool = True) -> Path:
    """The verified path of one canonical MNIST file (see the module docstring for the order)."""
    for folder in search_paths():
        p = folder / name
        if p.exists():
            _check(p, MNIST_FILES[name])
            return p
    if not download_missing:
        raise DataError(f"{name} not found in {', '.join(map(str, search_paths()))}; set LDAM_DATA_DIR")
    return download(name, cache_dir() / "mnist")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}); delete it and fetch it again") from None
    head = np.frombuffer(raw[: 4 + 4 * dims], ">u4")
    if len(head) < 1 + dims or head[0] != magic:
        raise DataError(f"{path} is not an idx file with magic {magic:#x}; delete it and fetch it again")
    shape = tuple(int(s) for s in head[1:])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} bytes of data, its header promises {shape}; the file is truncated")
    return data.reshape(shape)


def load_mnist(split: str = "train", download_missing: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ("train" or "test") as uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``;
    with ``download_missing=False`` only local files are used (a :class:`DataError` otherwise)."""
    if split not in _SPLITS:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    img_name, lab_name = _SPLITS[split]
    images = _read_idx(locate(img_name, download_missing), 0x803, 3)
    labels = _read_idx(locate(lab_name, download_missing), 0x801, 1)
    if len(images) != len(labels):
        raise DataError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
