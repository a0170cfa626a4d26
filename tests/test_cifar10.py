"""CIFAR-10 loading against the array hashes and counts published in shared/data/MANIFEST.md, the
canonical pickle layout, and bad files."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from conftest import require_data
from ldam.data import cifar10
from ldam.errors import DataError

# SHA-256 of the HWC RGB bytes and of the uint8 labels (MANIFEST.md)
TRAIN_IMAGES = "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"
TRAIN_LABELS = "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"
TEST_IMAGES = "da362006b99671213d1a5d856cab2bedf64d40bad4501630ee60f4ceb2d3ec7f"
TEST_LABELS = "636a087e604331a0b9dafc94b6e9ade0c9cec72c4400d12473ccdb3e264474c1"
BATCH1_DATA = "a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21"
NPZ = ("cifar10/cifar10_train.npz", "cifar10/cifar10_test_first1000.npz")


def hwc_sha(x: torch.Tensor) -> str:
    return hashlib.sha256(x.permute(0, 2, 3, 1).contiguous().numpy().tobytes()).hexdigest()


def test_real_cifar10_matches_the_published_array_hashes_and_counts():
    require_data(*NPZ)
    x, y = cifar10.load_cifar10("train")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert hwc_sha(x) == TRAIN_IMAGES
    assert hashlib.sha256(y.numpy().astype(np.uint8).tobytes()).hexdigest() == TRAIN_LABELS
    assert np.bincount(y.numpy(), minlength=10).tolist() == [5000] * 10
    # the canonical pickle layout of data_batch_1 (N x 3072: R plane, G plane, B plane)
    assert hashlib.sha256(x[:10000].reshape(10000, -1).numpy().tobytes()).hexdigest() == BATCH1_DATA
    xt, yt = cifar10.load_cifar10("test")
    assert xt.shape == (1000, 3, 32, 32)
    assert hwc_sha(xt) == TEST_IMAGES
    assert hashlib.sha256(yt.numpy().astype(np.uint8).tobytes()).hexdigest() == TEST_LABELS
    assert yt[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert xt[0].flatten()[:9].tolist() == [158, 159, 165, 166, 160, 156, 162, 159, 158]  # R plane, printed values


def test_a_corrupt_npz_is_named_with_its_checksum(tmp_path, monkeypatch):
    # a small synthetic file in the real layout (HWC uint8 images, uint8 labels), its SHA-256 computed
    # here as the expected one: the checksum logic runs with or without the real data
    (tmp_path / "cifar10").mkdir()
    p = tmp_path / "cifar10" / "cifar10_test_first1000.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 20, dtype=np.uint8)
    np.savez(p, images=images, labels=labels)
    monkeypatch.setitem(cifar10.NPZ, p.name, hashlib.sha256(p.read_bytes()).hexdigest())
    monkeypatch.setenv("LDAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LDAM_CACHE_DIR", str(tmp_path / "cache"))
    x, y = cifar10.load_cifar10("test", download_missing=False)  # intact: it loads, as written
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    # ldam memoizes checksums by (path, size, mtime): a same-size rewrite must look like a new file
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=rf"cifar10_test_first1000.npz is corrupt.*{cifar10.NPZ[p.name]}"):
        cifar10.load_cifar10("test", download_missing=False)
    p.write_bytes(bytes(raw[:1000]))  # truncated
    with pytest.raises(DataError, match="corrupt or incomplete"):
        cifar10.load_cifar10("test", download_missing=False)


def fake_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2), data, np.array(labels)


def test_the_canonical_pickles_are_read_plane_by_plane(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    blob, data, labels = fake_batch(7, 0)
    (folder / "test_batch").write_bytes(blob)
    monkeypatch.setenv("LDAM_DATA_DIR", str(tmp_path))
    x, y = cifar10.load_cifar10("test", download_missing=False)
    # pixel (row r, col c) of channel k is data[:, k*1024 + r*32 + c]
    assert int(x[3, 1, 5, 9]) == int(data[3, 1024 + 5 * 32 + 9])
    assert torch.equal(x.reshape(7, -1), torch.from_numpy(data))
    assert y.tolist() == labels.tolist()


def test_a_pickle_that_builds_other_objects_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch.*refusing to unpickle builtins.print"):
        cifar10._load_batch(p)


def make_tar(batches: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_download_verifies_the_md5_and_never_leaves_partial_files(tmp_path, monkeypatch):
    batches = {f"data_batch_{i}": fake_batch(3, i)[0] for i in range(1, 6)}
    batches["test_batch"] = fake_batch(2, 9)[0]
    good = make_tar(batches)
    monkeypatch.setattr(cifar10, "TAR_MD5", hashlib.md5(good).hexdigest())

    def fetch(url, dest):
        if url.startswith("bad://"):
            dest.write_bytes(good[: len(good) // 2])
        elif url.startswith("dead://"):
            raise OSError("connection refused")
        else:
            dest.write_bytes(good)

    dest = tmp_path / "dl"
    with pytest.raises(DataError, match=r"could not download cifar-10-python.tar.gz.*connection refused.*MD5 .* != expected"):
        cifar10.download(dest, urls=["dead://x", "bad://x"], fetch=fetch)
    assert list(dest.iterdir()) == []
    out = cifar10.download(dest, urls=["bad://x", "good://x"], fetch=fetch)
    assert sorted(f.name for f in dest.iterdir()) == ["cifar-10-batches-py"]
    assert sorted(f.name for f in out.iterdir()) == sorted(batches)
    shutil.rmtree(out)
