"""MNIST loading against the real files' published checksums and counts, and against bad files."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil

import numpy as np
import pytest

from conftest import require_data, require_module
from ldam.data import mnist
from ldam.errors import DataError

FILES = list(mnist.MNIST_FILES)
# SHA-256 of the decompressed idx bytes and per-class counts, from shared/data/MANIFEST.md
IDX_SHA = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
COUNTS = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
          "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return np.array([magic, *arr.shape], ">u4").tobytes() + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("split,img,lab", [("train", FILES[0], FILES[1]), ("test", FILES[2], FILES[3])])
def test_real_mnist_matches_the_published_checksums_and_counts(split, img, lab):
    require_data(*(f"mnist/{f}" for f in FILES))
    x, y = mnist.load_mnist(split)
    assert x.shape == (len(y), 28, 28) and str(x.dtype) == "torch.uint8"
    assert hashlib.sha256(idx_bytes(x.numpy(), 0x803)).hexdigest() == IDX_SHA[img]
    assert hashlib.sha256(idx_bytes(y.numpy(), 0x801)).hexdigest() == IDX_SHA[lab]
    assert np.bincount(y.numpy(), minlength=10).tolist() == COUNTS[split]


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """Small synthetic MNIST test files (60 random images and labels, real idx/gzip format) in a data
    folder, with their SHA-256 (computed here) as the expected checksums: the checksum, cache and
    download logic runs everywhere, with or without the real data."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60, dtype=np.uint8)
    for name, arr, magic in ((FILES[2], images, 0x803), (FILES[3], labels, 0x801)):
        (folder / name).write_bytes(gzip.compress(idx_bytes(arr, magic), mtime=0))
        monkeypatch.setitem(mnist.MNIST_FILES, name, hashlib.sha256((folder / name).read_bytes()).hexdigest())
    monkeypatch.setenv("LDAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LDAM_CACHE_DIR", str(tmp_path / "cache"))
    np.savez(tmp_path / "arrays.npz", images=images, labels=labels)
    return tmp_path


def test_a_corrupt_file_is_named_with_its_checksum(data_copy):
    # the intact files load, as written
    x, y = mnist.load_mnist("test", download_missing=False)
    want = np.load(data_copy / "arrays.npz")
    np.testing.assert_array_equal(x.numpy(), want["images"])
    np.testing.assert_array_equal(y.numpy(), want["labels"])
    p = data_copy / "data" / "mnist" / FILES[2]
    raw = bytearray(p.read_bytes())
    raw[5000] ^= 0xFF
    p.write_bytes(bytes(raw))
    # ldam memoizes checksums by (path, size, mtime): a same-size rewrite must look like a new file
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=rf"{FILES[2]} is corrupt.*does not match the expected {mnist.MNIST_FILES[FILES[2]]}"):
        mnist.load_mnist("test")


def test_a_truncated_idx_file_is_refused(tmp_path):
    p = tmp_path / "short.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x803)[:-100]))
    with pytest.raises(DataError, match="truncated"):
        mnist._read_idx(p, 0x803, 3)
    p.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip"):
        mnist._read_idx(p, 0x803, 3)


def test_cache_is_searched_after_the_data_dir(data_copy, monkeypatch):
    monkeypatch.setenv("LDAM_DATA_DIR", str(data_copy / "elsewhere"))
    cache = data_copy / "cache" / "mnist"
    shutil.copytree(data_copy / "data" / "mnist", cache)
    assert mnist.locate(FILES[3]) == cache / FILES[3]


def test_download_verifies_the_checksum_and_never_leaves_partial_files(data_copy):
    good = data_copy / "data" / "mnist"

    def fetch(url, dest):
        if url.startswith("bad://"):
            dest.write_bytes(b"half a file")
        elif url.startswith("dead://"):
            raise OSError("connection refused")
        else:
            shutil.copy(good / url.rsplit("/", 1)[1], dest)

    dest = data_copy / "dl"
    p = mnist.download(FILES[3], dest, mirrors=["dead://x/", "bad://x/", "good://x/"], fetch=fetch)
    assert p == dest / FILES[3] and mnist.sha256(p) == mnist.MNIST_FILES[FILES[3]]
    assert sorted(f.name for f in dest.iterdir()) == [FILES[3]]
    with pytest.raises(DataError, match=r"could not download.*connection refused.*SHA-256 .* != expected"):
        mnist.download(FILES[2], dest, mirrors=["dead://x/", "bad://x/"], fetch=fetch)
    assert sorted(f.name for f in dest.iterdir()) == [FILES[3]]


def test_sample_photos_are_the_scikit_image_files():
    require_module("skimage")
    import skimage.data

    from ldam.data import load_photo, photo_names

    x = load_photo("coffee", size=224, resize=256)
    assert x.shape == (3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1
    raw = skimage.data.coffee()  # 400 x 600 RGB
    assert raw.shape == (400, 600, 3)
    # no resizing (short side already 400): exactly the centre 400 x 400 of the file, over 255
    full = load_photo("coffee", size=400, resize=400)
    np.testing.assert_array_equal(full.permute(1, 2, 0).numpy(), raw[:, 100:500].astype(np.float32) / 255)
    assert set(photo_names()) >= {"chelsea", "coffee", "rocket"}
    with pytest.raises(DataError, match="no sample photo named 'dog'.*chelsea"):
        load_photo("dog")
