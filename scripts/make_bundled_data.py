"""Write the real-data subset that ships inside the package (src/ldam/data/bundled/).

    python scripts/make_bundled_data.py --source /work/shared/data

reads, from ``SOURCE/mnist`` and ``SOURCE/cifar10`` (the layout of ``$LDAM_DATA_DIR``):

* MNIST ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``, each checked against
  its canonical SHA-256 (``ldam.data.mnist.MNIST_FILES``): all 10,000 test digits;
* CIFAR-10 ``cifar10_test_first1000.npz`` (checked against ``ldam.data.cifar10.NPZ``) or the
  canonical ``cifar-10-batches-py/test_batch``: the first 1,000 test images, whose pixel and label
  bytes are checked against the hashes in shared/data/MANIFEST.md;

and writes one file per dataset with its SHA-256 into ``bundled/manifest.json``. The files have no
timestamps, so running the script again on the same data gives the same bytes and hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ldam.data import bundled, cifar10, mnist

#: SHA-256 of CIFAR-10 test[0:1000] as HWC uint8 bytes and of its uint8 labels (shared/data/MANIFEST.md).
CIFAR_TEST1000_IMAGES = "da362006b99671213d1a5d856cab2bedf64d40bad4501630ee60f4ceb2d3ec7f"
CIFAR_TEST1000_LABELS = "636a087e604331a0b9dafc94b6e9ade0c9cec72c4400d12473ccdb3e264474c1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mnist_test(root: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    sources = {}
    arrays = []
    for name, magic, dims in (("t10k-images-idx3-ubyte.gz", 0x803, 3), ("t10k-labels-idx1-ubyte.gz", 0x801, 1)):
        path = root / "mnist" / name
        if not path.exists():
            raise SystemExit(f"{path} is missing: point --source at a folder holding mnist/{name}")
        mnist._check(path, mnist.MNIST_FILES[name])  # raises DataError on a wrong SHA-256
        sources[name] = mnist.MNIST_FILES[name]
        arrays.append(mnist._read_idx(path, magic, dims))
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise SystemExit(f"MNIST test: got {images.shape} images and {labels.shape} labels, expected 10,000 of each")
    return images, labels, sources


def cifar_test1000(root: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    folder = root / "cifar10"
    npz = folder / "cifar10_test_first1000.npz"
    pickle = folder / "cifar-10-batches-py" / "test_batch"
    if npz.exists():
        hwc, labels = cifar10._from_npz(npz)  # checks the file's SHA-256 first
        source = {npz.name: cifar10.NPZ[npz.name]}
    elif pickle.exists():
        hwc, labels = cifar10._load_batch(pickle)
        source = {"cifar-10-batches-py/test_batch": sha(pickle.read_bytes())}
    else:
        raise SystemExit(f"neither {npz} nor {pickle} exists: point --source at a folder holding cifar10/")
    hwc, labels = np.ascontiguousarray(hwc[:1000], np.uint8), np.ascontiguousarray(labels[:1000], np.uint8)
    if sha(hwc.tobytes()) != CIFAR_TEST1000_IMAGES or sha(labels.tobytes()) != CIFAR_TEST1000_LABELS:
        raise SystemExit("CIFAR-10 test[0:1000]: the pixel or label bytes do not match the canonical hashes")
    source.update({"test[0:1000] images (HWC bytes)": CIFAR_TEST1000_IMAGES,
                   "test[0:1000] labels (uint8)": CIFAR_TEST1000_LABELS})
    return hwc.transpose(0, 3, 1, 2), labels, source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=os.environ.get("LDAM_DATA_DIR"),
                   help="folder holding mnist/ and cifar10/ (default: $LDAM_DATA_DIR)")
    p.add_argument("--out", type=Path, default=bundled.BUNDLED_DIR, help="where to write (default: %(default)s)")
    args = p.parse_args(argv)
    if args.source is None:
        p.error("give --source or set LDAM_DATA_DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for dataset, read in (("mnist", mnist_test), ("cifar10", cifar_test1000)):
        images, labels, sources = read(args.source)
        data = bundled.encode(images, labels)
        name = bundled.FILES[dataset]
        (args.out / name).write_bytes(data)
        files[name] = {"sha256": sha(data), "dataset": dataset, "images": list(images.shape),
                       "what": bundled.DESCRIPTIONS[dataset], "sources_sha256": sources}
        print(f"{name}: {len(data):,} bytes, sha256 {files[name]['sha256']}")
    (args.out / "manifest.json").write_text(json.dumps({"files": files}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
