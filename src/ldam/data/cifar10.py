"""CIFAR-10, from ``$LDAM_DATA_DIR/cifar10``, the user cache, or the canonical download.

Two layouts are read:

* the offline copy that ships beside this project (``cifar10_train.npz``, all 50,000 training
  images, and ``cifar10_test_first1000.npz``, the first 1,000 test images), each verified
  against its SHA-256;
* the canonical python pickles (``cifar-10-batches-py/``), which :func:`download` fetches as
  ``cifar-10-python.tar.gz`` (MD5 ``c58f30108f718f92721af3b95e74349a``) into the cache.

The pickles are plain numpy arrays; they are read with a restricted unpickler that only
rebuilds numpy arrays, lists, dicts and strings.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .mnist import Fetcher, _urlopen_fetch, cache_dir, dataset_paths, fetch_verified, sha256

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NPZ = {
    "cifar10_train.npz": "b5584b9bf0d8b93f0466283f209ba329d8ecc667ab9e3b19ce2f7664d3109cd8",
    "cifar10_test_first1000.npz": "0efa42c4fcc164a85bd5c38642d67fe99d07b5d4575466e4fd75e0990793fedc",
}
TAR_NAME = "cifar-10-python.tar.gz"
TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
TAR_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)


def search_paths() -> list[Path]:
    """The folders searched for the CIFAR-10 files, in order."""
    return dataset_paths("cifar10")


class _NumpyOnly(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            d = _NumpyOnly(fh, encoding="bytes").load()
        data = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(data), np.asarray(d[b"labels"], np.uint8)
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({e}); delete it and download again") from None


def _from_pickles(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((folder / n).exists() for n in names):
        return None
    parts = [_load_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    actual = sha256(path)
    if actual != NPZ[path.name]:
        raise DataError(f"{path} is corrupt or incomplete: SHA-256 {actual} does not match the expected "
                        f"{NPZ[path.name]}. Replace it with a good copy or point LDAM_DATA_DIR elsewhere")
    with np.load(path) as z:
        return z["images"], z["labels"]


def download(dest: Path, urls: Sequence[str] = TAR_URLS, fetch: Fetcher = _urlopen_fetch) -> Path:
    """Fetch and verify the canonical tarball, then unpack its pickles into ``dest``.

    The pickles are unpacked into a temporary folder that is renamed into place only when complete.
    """
    def check(p: Path) -> str | None:
        md5 = hashlib.md5(p.read_bytes()).hexdigest()
        return None if md5 == TAR_MD5 else f"MD5 {md5} != expected {TAR_MD5}"

    tmp = fetch_verified(urls, dest, TAR_NAME, check, fetch,
                         f"Without network access, put the data in {dest} or set LDAM_DATA_DIR")
    staging = Path(tempfile.mkdtemp(dir=dest, prefix="cifar-10-batches-py", suffix=".part"))
    final = dest / "cifar-10-batches-py"
    try:
        with tarfile.open(tmp) as tar:
            for m in tar.getmembers():
                name = Path(m.name).name
                if m.isfile() and (name.startswith("data_batch_") or name in ("test_batch", "batches.meta")):
                    data = tar.extractfile(m)
                    assert data is not None
                    (staging / name).write_bytes(data.read())
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"could not unpack {TAR_NAME} ({e}); delete {dest} and try again") from None
    finally:
        tmp.unlink(missing_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
    return final


def load_cifar10(split: str = "train", download_missing: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` as uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    The offline copy's test split holds only the first 1,000 test images.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    npz = "cifar10_train.npz" if split == "train" else "cifar10_test_first1000.npz"
    found = None
    for folder in search_paths():
        found = _from_pickles(folder / "cifar-10-batches-py", split)
        if found is None and (folder / npz).exists():
            found = _from_npz(folder / npz)
        if found is not None:
            break
    if found is None:
        if not download_missing:
            raise DataError(f"CIFAR-10 not found in {', '.join(map(str, search_paths()))}; set LDAM_DATA_DIR")
        found = _from_pickles(download(cache_dir() / "cifar10"), split)
        assert found is not None
    images, labels = found
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(labels.astype(np.int64))


__all__ = ["load_cifar10", "CLASSES", "download"]
