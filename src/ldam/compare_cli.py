"""``ldam compare MODEL_A MODEL_B --targets ... --out DIR``: the command-line face of :func:`ldam.comparison.compare`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def _steps(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def add_subcommand(sub: Any) -> None:
    """Register ``ldam compare`` on the ``ldam`` subparsers ``sub``."""
    from .cli import _positive, add_arch_options, add_device_option
    from .samplers import METHODS

    c = sub.add_parser(
        "compare", help="sample the same units of two models with the same seeds and report, unit by unit, what changed",
        description="Sample the same targets of MODEL_A and MODEL_B with the same seeds and settings (defaults: the "
        "zoo's values for the models' dataset) and write a report to --out (report.md, report.html, compare.json, "
        "one PNG per unit): the chain means side by side; the change B - A of diversity, modes, final activation, "
        "gradient-region spread and effective area, mean ± s.e. over seeds; and the units ranked by a change score "
        "(the energy distance between A's and B's chain means over the same distance between two seeds).",
        epilog="Examples:\n  ldam compare zoo:lenet-mnist zoo:lenet-mnist-avg --targets 'fc3:0-9' --out runs/compare-lenet\n"
        "  ldam compare epoch5.pt epoch10.pt --targets conv2:0-15 --seeds 0 1 2 3 --out runs/epochs\n"
        "  ldam compare base.pt tuned.pt --arch mypkg.nets:resnet18 --input-shape 3 224 224 --targets output:0-9 "
        "--out runs/ft",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("model_a", metavar="MODEL_A", help="zoo:NAME, a checkpoint, or with --arch a weights file: A, the reference")
    c.add_argument("model_b", metavar="MODEL_B", help="the model compared with A; it must take the same input shape")
    c.add_argument("--targets", nargs="+", action="extend", required=True, metavar="TARGET",
                   help="the units, e.g. 'fc3:0-9' or output:3 conv2:0-5 (repeatable)")
    c.add_argument("--out", type=Path, required=True, help="the report's folder (created; files in it are replaced)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="sampler seeds, the same for both models, at least 2 (default: 0 1 2)")
    g = c.add_argument_group("sampling (defaults: ldam.zoo.SAMPLING_DEFAULTS for model A's dataset)")
    g.add_argument("--chains", type=_positive(int), default=None, help="chains per unit (default: the dataset's)")
    g.add_argument("--steps", type=_positive(int), default=1000, help="Langevin steps (default: %(default)s)")
    g.add_argument("--burn-in", type=_steps, default=None, metavar="N",
                   help="steps discarded before averaging (default: a quarter of --steps)")
    g.add_argument("--step-size", type=_positive(float), default=None, metavar="EPS", help="ε (default: the dataset's)")
    g.add_argument("--temperature", type=_positive(float), default=None, metavar="T", help="T (default: the dataset's)")
    g.add_argument("--l2", type=float, default=None, metavar="λ", help="L2 prior weight (default: the dataset's; 0 for none)")
    g.add_argument("--method", choices=list(METHODS), default="sgld", help="update rule (default: %(default)s)")
    g.add_argument("--pixel-range", action=argparse.BooleanOptionalAction, default=True,
                   help="keep inputs inside the pixel range [0, 1] in the model's normalized units (default: %(default)s)")
    g.add_argument("--threshold", type=_positive(float), default=0.5,
                   help="cosine-distance cut of the mode count (default: %(default)s)")
    c.add_argument("--display", choices=["signed", "pixel"], default="signed",
                   help="signed: the paper's grey display; pixel: the input mapped back to pixels (default: %(default)s)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    add_device_option(c, "both models and the chains run")
    add_arch_options(c, input_shape="one example's shape, e.g. 3 32 32 (required with --arch, which applies to both "
                     "models)")
    c.set_defaults(func=cmd_compare)


def _same_inputs(args: argparse.Namespace, info_a: Any, info_b: Any) -> None:
    """Both models take the same input shape and the same normalization, or a clear error."""
    from .errors import ShapeError

    shape_a, shape_b = tuple(info_a.input_shape), tuple(info_b.input_shape)
    if shape_a != shape_b:
        raise ShapeError(f"{args.model_a} takes inputs of shape {list(shape_a)} but {args.model_b} takes "
                         f"{list(shape_b)}: compare needs two models of the same input shape, so that the same chains "
                         "run in both")
    if (tuple(info_a.mean), tuple(info_a.std)) != (tuple(info_b.mean), tuple(info_b.std)):
        raise ShapeError(f"{args.model_a} normalizes its inputs with mean {list(info_a.mean)}, std {list(info_a.std)} "
                         f"but {args.model_b} with mean {list(info_b.mean)}, std {list(info_b.std)}: the same input "
                         "would be a different picture to each; pass --mean and --std to use one normalization for both")


def _unit_names(model: Any, info: Any, targets: list[str]) -> dict[str, str]:
    """Class names for the units of the output layer (``output``, or LeNet's ``fc3``), as ``ldam sample``
    prints them: target string → name."""
    from .guard import model_guard
    from .targets import resolve

    names = getattr(info, "class_names", None) or []
    if not names:
        return {}
    with model_guard(model):
        resolved = resolve(model, targets, tuple(info.input_shape)).targets
    return {str(t): names[t.unit] for t in resolved
            if t.layer in ("output", "fc3") and t.position is None and t.unit < len(names)}


def cmd_compare(args: argparse.Namespace) -> int:
    from .cli import _load
    from .comparison import compare

    model_a, info_a = _load(args.model_a, args)
    model_b, info_b = _load(args.model_b, args)
    _same_inputs(args, info_a, info_b)
    log = None if args.quiet else (lambda line: print(f"ldam compare: {line}", file=sys.stderr, flush=True))
    command = shlex.join(["ldam", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else None
    result = compare(
        model_a, model_b, args.targets, tuple(info_a.input_shape), args.out, seeds=args.seeds,
        dataset=info_a.dataset, chains=args.chains, steps=args.steps, burn_in=args.burn_in, step_size=args.step_size,
        temperature=args.temperature, l2=args.l2, pixel_range=args.pixel_range, method=args.method,
        threshold=args.threshold, names=(args.model_a, args.model_b), display=args.display,
        mean=tuple(info_a.mean), std=tuple(info_a.std), log=log, command=command,
        unit_names=_unit_names(model_a, info_a, args.targets),
    )
    print(f"compared {len(result.units)} unit(s) of {args.model_a} (A) and {args.model_b} (B), seeds {result.seeds}")
    for rank, u in enumerate(result.ranked()[:5], 1):
        label = f" ({u.label})" if u.label else ""
        print(f"  {rank}. {u.target}{label}: change score {u.score:.3f}")
    for what, path in result.files.items():
        if not what.startswith("picture"):
            print(f"{what}: {path}")
    return 0


__all__ = ["add_subcommand", "cmd_compare"]
