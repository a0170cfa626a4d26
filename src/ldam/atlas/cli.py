"""``ldam atlas MODEL --layers L1,L2 --out DIR``: the command-line face of :func:`ldam.atlas.atlas`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_subcommand(sub) -> None:
    from ..cli import add_arch_options, add_device_option
    from ..samplers import METHODS

    a = sub.add_parser(
        "atlas", help="every unit of some layers: top dataset images, facets, samples, diagnostics, as a static site",
        description="Sample every unit of the given layers, per facet (clusters of its top dataset images), beside "
        "its top-k dataset images and receptive-field crops, with split-R̂/ESS diagnostics, and write a static site "
        "to --out that opens from disk. Each unit is written as its own shard: run the same command again to resume "
        "after an interruption. --ray runs the units on a Ray cluster (pip install 'ldam[atlas]').",
        epilog="Examples:\n  ldam atlas zoo:lenet-mnist --layers conv1,conv2,fc3 --out runs/atlas-lenet\n"
        "  ldam atlas zoo:vgg-cifar10 --layers '*' --out runs/atlas-vgg --ray --workers 2\n"
        "  ldam serve zoo:lenet-mnist --atlas runs/atlas-lenet   # the site beside the live sampler",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("model", help="zoo:NAME, a checkpoint, or with --arch a weights file")
    a.add_argument("--layers", required=True, help="comma-separated layer names (see `ldam layers MODEL`), or '*' for all")
    a.add_argument("--out", type=Path, required=True, help="the atlas folder (created; resumed when it exists)")
    a.add_argument("--data", default="test", choices=("test", "train", "none"), help="dataset split for the top-k pass: test, train, or none "
                   "(samples only) (default: %(default)s; the model's own dataset, local files only)")
    a.add_argument("--limit", type=int, default=None, help="use only the first N dataset rows")
    a.add_argument("--k", type=int, default=9, help="top dataset images shown per unit (default: %(default)s)")
    a.add_argument("--top-n", type=int, default=64, help="top images clustered into facets (default: %(default)s)")
    a.add_argument("--facets", type=int, default=3, help="facets per unit, at most (default: %(default)s)")
    a.add_argument("--chains", type=int, default=2, help="chains per facet (default: %(default)s)")
    a.add_argument("--steps", type=int, default=200, help="Langevin steps per chain (default: %(default)s)")
    a.add_argument("--burn-in", type=int, default=None, help="steps discarded (default: a quarter of --steps)")
    a.add_argument("--temperature", type=float, default=None, help="T (default: the zoo's value for the dataset)")
    a.add_argument("--step-size", type=float, default=None, help="ε (default: the zoo's value for the dataset)")
    a.add_argument("--l2", type=float, default=None, help="L2 prior weight λ (default: the zoo's value)")
    a.add_argument("--method", default="sgld", choices=METHODS, help="sampling method (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--block", type=int, default=16, help="units sampled together in one batch (default: %(default)s)")
    a.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: a local instance (no ADDRESS) or a cluster's address (e.g. auto, ray://host:10001)")
    a.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else per CPU)")
    a.add_argument("--force", action="store_true", help="discard an atlas in --out made with another configuration")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_option(a, "the model and the chains run (in-process)")
    add_arch_options(a, input_shape="one example's shape, e.g. 3 32 32 (required with --arch)")
    a.set_defaults(func=cmd_atlas)


def cmd_atlas(args: argparse.Namespace) -> int:
    from ..cli import _load
    from ..zoo import sampling_defaults
    from . import atlas, dataset_for

    model, info = _load(args.model, args)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    data = None
    if args.data != "none":
        if info.dataset not in ("mnist", "cifar10"):
            raise ValueError(f"{args.model} has no local dataset for the top-k pass ({info.dataset or 'none'}); "
                             "pass --data none to sample without one")
        data = dataset_for(info.dataset, args.data, args.limit, info.mean, info.std)
    knobs = sampling_defaults(info.dataset)
    config = {"k": args.k, "top_n": args.top_n, "max_facets": args.facets, "chains": args.chains, "steps": args.steps,
              "burn_in": args.burn_in, "method": args.method, "seed": args.seed, "block": args.block,
              "temperature": args.temperature if args.temperature is not None else knobs["temperature"],
              "step_size": args.step_size if args.step_size is not None else knobs["step_size"],
              "l2": args.l2 if args.l2 is not None else knobs["l2"]}
    live = args.model[4:] if args.model.startswith("zoo:") else None
    t0 = time.perf_counter()
    store = atlas(model, layers, info.input_shape, args.out, data=data, mean=info.mean, std=info.std,
                  name=args.model, live_model=live, ray=None if args.ray is None else (True if args.ray == "local" else args.ray),
                  workers=args.workers, force=args.force, progress=not args.no_progress, **config)
    print(f"ldam atlas: {store.root / 'index.html'} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


__all__ = ["add_subcommand", "cmd_atlas"]
