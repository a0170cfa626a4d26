"""``ldam data fetch mnist cifar10``: download the full datasets, verified, into the folder ldam reads.

Files go to ``$LDAM_CACHE_DIR`` (default ``~/.cache/ldam``), which the loaders search after
``$LDAM_DATA_DIR``, or to ``--dir DIR`` (then run with ``LDAM_DATA_DIR=DIR``). Every file is
written under a temporary name, checked against its canonical checksum (MNIST: SHA-256 of each
``.gz``; CIFAR-10: MD5 of ``cifar-10-python.tar.gz``) and only then moved into place; a file that
fails its checksum is deleted and the command fails, naming the file and both checksums.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from . import cifar10, mnist

DATASETS = ("mnist", "cifar10")


def _mirrors(mirror: str | None, default: Sequence[str]) -> tuple[str, ...]:
    if mirror is None:
        return tuple(default)
    return (mirror if mirror.endswith("/") else mirror + "/",)


def fetch_mnist(dest: Path, mirror: str | None = None, fetch: mnist.Fetcher = mnist._urlopen_fetch) -> list[str]:
    """Put the four canonical MNIST files in ``dest`` (kept where already there with the right
    SHA-256); returns one line per file saying what was done."""
    lines = []
    for name, expected in mnist.MNIST_FILES.items():
        path = dest / name
        if path.exists() and mnist.sha256(path) == expected:
            lines.append(f"{path}: already there, SHA-256 verified")
            continue
        mnist.download(name, dest, _mirrors(mirror, mnist.MIRRORS), fetch)
        lines.append(f"{path}: downloaded, SHA-256 verified")
    return lines


def fetch_cifar10(dest: Path, mirror: str | None = None, fetch: mnist.Fetcher = mnist._urlopen_fetch) -> list[str]:
    """Put the canonical CIFAR-10 pickles in ``dest/cifar-10-batches-py`` (from the tarball, MD5
    verified), unless they are there already."""
    folder = dest / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if all((folder / n).exists() for n in names):
        return [f"{folder}: already there"]
    urls = cifar10.TAR_URLS if mirror is None else (_mirrors(mirror, ())[0] + cifar10.TAR_NAME,)
    cifar10.download(dest, urls, fetch)
    return [f"{folder}: downloaded {cifar10.TAR_NAME}, MD5 verified, unpacked"]


def fetch_datasets(datasets: Sequence[str], root: Path | None = None, mirror: str | None = None,
                   fetch: mnist.Fetcher = mnist._urlopen_fetch) -> list[str]:
    """Fetch each of ``datasets`` into ``root/<dataset>`` (default: the cache ldam searches)."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset {unknown[0]!r}: ldam fetches {' and '.join(DATASETS)}")
    root = root or mnist.cache_dir()
    lines = []
    for d in dict.fromkeys(datasets):
        lines += (fetch_mnist if d == "mnist" else fetch_cifar10)(root / d, mirror, fetch)
    return lines


def cmd_fetch(args: argparse.Namespace) -> int:
    for d in dict.fromkeys(args.datasets):  # what is done is printed before a later dataset can fail
        for line in fetch_datasets([d], args.dir, args.mirror):
            print(line, flush=True)
    if args.dir is not None:
        print(f"ldam reads these files with LDAM_DATA_DIR={args.dir}")
    return 0


def add_subcommand(sub: "argparse._SubParsersAction") -> None:
    """Add ``ldam data fetch`` to the command line's subcommands."""
    d = sub.add_parser("data", help="download the full MNIST / CIFAR-10 sets (the package ships only a small subset)",
                       description="Datasets. Without them ldam uses the subset it ships (the 10,000 MNIST test "
                       "digits, the first 1,000 CIFAR-10 test images).")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = dsub.add_parser("fetch", help="download and verify datasets",
                        description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    f.add_argument("datasets", nargs="+", choices=DATASETS, metavar="DATASET", help="mnist and/or cifar10")
    f.add_argument("--dir", type=Path, default=None,
                   help="save under DIR/<dataset> instead of the cache (then set LDAM_DATA_DIR=DIR)")
    f.add_argument("--mirror", default=None, metavar="URL",
                   help="base URL to fetch from instead of the canonical mirrors (https://, or file:// for a "
                   "local copy); the checksums are checked all the same")
    f.set_defaults(func=cmd_fetch)


__all__ = ["fetch_datasets", "fetch_mnist", "fetch_cifar10", "add_subcommand", "DATASETS"]
