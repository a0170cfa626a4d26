"""The ``ldam`` command line: ``serve``, ``sample``, ``layers``, ``demo``, ``zoo``, ``train``, ``eval`` and ``data fetch``.

Every error that ldam can explain is printed as one line (``ldam: error: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence


from . import __version__
from .callbacks import GifRecorder, ProgressBar
from .device import CHOICES as DEVICE_CHOICES, model_device, resolve_device
from .energy import L2, Box, Regularizer, TotalVariation
from .errors import LdamError
from .sampler import sample
from .samplers import METHODS
from .schedules import CyclicAnnealing
from .targets import probe_layers
from .zoo import SAMPLING_DEFAULTS

DEMO_MODEL = "zoo:lenet-mnist"
_START = SAMPLING_DEFAULTS["mnist"]  # the sampling defaults suit the zoo's models (demo: lenet-mnist)


ARCH_EXAMPLE = ("ldam layers weights.pt --arch mypkg.nets:resnet18 --arch-kwargs '{\"num_classes\": 10}' "
                "--input-shape 3 224 224")


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`ldam.zoo.load_model` that the model options ask for."""
    shape = getattr(args, "input_shape", None)
    return {"arch": getattr(args, "arch", None), "arch_kwargs": getattr(args, "arch_kwargs", None),
            "input_shape": tuple(shape) if shape else None, "mean": getattr(args, "mean", None),
            "std": getattr(args, "std", None)}


def _load(spec: str, args: argparse.Namespace | None = None):
    """The model and its description; with ``args``, moved to ``--device`` (checked before loading)."""
    from .zoo import load_model

    device = resolve_device(getattr(args, "device", "auto")) if args is not None else None
    model, info = load_model(spec, **(model_options(args) if args is not None else {}))
    return (model.to(device) if device is not None else model), info


def add_device_option(p: argparse.ArgumentParser, what: str = "the model runs") -> None:
    """``--device {auto,cpu,cuda,cuda:N,mps}``, resolved by :func:`ldam.device.resolve_device`."""
    p.add_argument("--device", default="auto", metavar="{" + ",".join(DEVICE_CHOICES) + "}",
                   help=f"where {what}: auto takes a GPU when there is one (cuda, then mps), else the CPU; or cpu, "
                   "cuda, cuda:N (the GPU with index N), mps (default: %(default)s)")


def add_arch_options(p: argparse.ArgumentParser, input_shape: str | None = None,
                     shape_note: str = "--input-shape is then required.") -> None:
    """``--arch``, ``--arch-kwargs``, ``--mean``, ``--std`` (and ``--input-shape`` unless the
    command has it already: pass its help text to add it)."""
    import textwrap

    about = ("--arch MODULE:CALLABLE names the code that builds the model (imported as `python -m` would: an "
             "installed package or the current folder; MODULE:Class.method works too). The model argument is then "
             "a weights file, loaded without unpickling and strictly: a state dict saved with "
             "torch.save(model.state_dict(), path), or a dict holding one under 'state_dict', 'model_state_dict', "
             "'model' or 'module' (.safetensors needs the safetensors package); or the word 'random' for the "
             f"factory's own initialization (seeded; ./random for a file of that name). {shape_note}")
    g = p.add_argument_group("your own architecture",
                             textwrap.fill(about, 78) + f"\n\nExample:\n  {ARCH_EXAMPLE}")
    g.add_argument("--arch", default=None, metavar="MODULE:CALLABLE",
                   help="the factory (function or class) that builds the model, e.g. mypkg.nets:resnet18")
    g.add_argument("--arch-kwargs", default=None, metavar="JSON",
                   help="keyword arguments for the factory, a JSON object, e.g. '{\"num_classes\": 10}'")
    if input_shape is not None:
        g.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N", help=input_shape)
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="inputs are (pixel - mean) / std with pixels in [0, 1]: the mean, 1 value or one per channel "
                   "(default: the model's own; 0 with --arch)")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                   help="the std, 1 value or one per channel (default: the model's own; 1 with --arch)")


def _positive(kind: type = float):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    return parse


def _burn_in(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"burn-in is a number of steps or 'auto', got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("burn-in must be >= 0")
    return v


def _schedule(s: str):
    """A float, or ``cyclic:HOT,COLD,PERIOD`` for cyclic annealing."""
    if s.startswith("cyclic:"):
        try:
            hot, cold, period = s[len("cyclic:"):].split(",")
            return CyclicAnnealing(float(hot), float(cold), int(period))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected cyclic:HOT,COLD,PERIOD (e.g. cyclic:5,0.5,500), got {s!r}") from None
    return _positive(float)(s)


def _unit_interval(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (0: plain LDAM, 1: the critic alone), got {s}")
    return v


def _discriminator(args: argparse.Namespace, info, input_shape: tuple[int, ...]):
    """The discriminator the options ask for, or ``None`` when ``--disc-weight`` is 0."""
    if not args.disc_weight and args.disc_checkpoint is None and args.disc_data is None:
        return None
    from .discriminator import CriticTraining, Discriminator

    mode = args.disc_mode or ("mix" if args.method == "paper" else "density")
    dataset = args.disc_data
    if dataset is None and args.disc_checkpoint is None:
        dataset = getattr(info, "dataset", None)
        if dataset not in ("mnist", "cifar10"):
            raise LdamError("the discriminator needs real images: pass --disc-data mnist|cifar10, or "
                            "--disc-checkpoint PATH for a critic trained earlier")
    real = None
    if dataset is not None:
        from .train import DATASETS, normalize

        images, _ = DATASETS[dataset].load("train")
        real = normalize(images, getattr(info, "mean", (0.0,)), getattr(info, "std", (1.0,)))
        if tuple(real.shape[1:]) != tuple(input_shape):
            raise LdamError(f"--disc-data {dataset} has images of shape {list(real.shape[1:])} but the model's inputs "
                            f"have shape {list(input_shape)}; choose the dataset the model was trained on")
    training = CriticTraining(every=args.disc_every, lr=args.disc_lr) if real is not None else None
    if args.disc_checkpoint is not None:
        return Discriminator.load(args.disc_checkpoint, real, weight=args.disc_weight, mode=mode, training=training,
                                  seed=args.seed)
    return Discriminator(real, weight=args.disc_weight, mode=mode, training=training, seed=args.seed)


def _regularizers(args: argparse.Namespace, info) -> list[Regularizer]:
    regs: list[Regularizer] = []
    if args.l2:
        regs.append(L2(args.l2))
    if args.tv:
        regs.append(TotalVariation(args.tv))
    if args.pixel_range and getattr(args, "parameterization", "pixel") != "generator":  # G's sigmoid keeps the range
        mean = getattr(info, "mean", None) or (0.0,)
        std = getattr(info, "std", None) or (1.0,)
        regs.append(Box.from_normalization(mean, std))
    return regs


def _transforms(text: str) -> list:
    """``jitter=8,scale=0.9:1.1,rotate=10`` → transform values."""
    from .transforms import Jitter, Rotate, Scale

    out: list = []
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            if name == "jitter":
                out.append(Jitter(int(value)))
            elif name == "scale":
                lo, _, hi = value.partition(":")
                out.append(Scale((float(lo), float(hi))))
            elif name == "rotate":
                out.append(Rotate(float(value)))
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read {item!r}: use jitter=PIXELS, scale=LOW:HIGH and rotate=DEGREES, comma-separated"
            ) from None
    return out


def _parameterization(args: argparse.Namespace, info: Any):
    kind = getattr(args, "parameterization", "pixel")
    if kind == "pixel":
        return None
    from .parameterization import Generator, Spectral

    if kind == "spectral":
        return Spectral(decay=args.decay, sigma=args.latent_sigma, std=getattr(info, "std", None))
    if not args.generator:
        raise LdamError("--parameterization generator needs --generator zoo:NAME (or the generator.pt of "
                        "ldam train-generator)")
    from .zoo import generators

    g = generators.for_model(args.generator, info)
    return Generator(g, (g.latent,), sigma=args.latent_sigma)


def _add_sampling_options(p: argparse.ArgumentParser, steps: int, chains: int, pixel_range: bool) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--chains", type=_positive(int), default=chains, help="chains per target (default: %(default)s)")
    g.add_argument("--steps", type=_positive(int), default=steps, help="Langevin steps (default: %(default)s)")
    g.add_argument("--step-size", type=_schedule, default=_START["step_size"], metavar="EPS",
                   help="step size ε, or cyclic:HOT,COLD,PERIOD (default: %(default)s)")
    g.add_argument("--temperature", type=_schedule, default=_START["temperature"], metavar="T",
                   help="temperature T, or cyclic:HOT,COLD,PERIOD to anneal between modes (default: %(default)s)")
    g.add_argument("--method", choices=list(METHODS), default="sgld",
                   help="update rule: sgld; the exact ones, which report their acceptance: mala, pmala (with a "
                   "learned diagonal metric), hmc (5 leapfrog steps per proposal); psgld (preconditioned); paper "
                   "(the authors' normalized-gradient update); ascent (Adam on the same log p, no noise: the "
                   "optimizer baseline; --step-size is its learning rate, e.g. 0.05) (default: %(default)s)")
    g.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="run the model's forward and backward under autocast; the chains stay float32 "
                   "(default: off)")
    g.add_argument("--burn-in", type=_burn_in, default=None, metavar="N|auto",
                   help="steps to discard before averaging, or 'auto' (default: a quarter of --steps)")
    g.add_argument("--thin", type=_positive(int), default=None,
                   help="keep every N-th state (default: keep about 100 states per chain)")
    g.add_argument("--ema-tau", type=_positive(float), default=200.0,
                   help="time constant of the moving average, in steps (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    r = p.add_argument_group("energy: log p(x) = (f(x) - Σ λ R(x)) / T",
                             "The defaults suit the zoo models, whose inputs are normalized pixels.")
    r.add_argument("--l2", type=float, default=_START["l2"], metavar="λ", help="weight of R = ½‖x‖² (default: %(default)s; 0 for none)")
    r.add_argument("--tv", type=float, default=0.0, metavar="λ", help="weight of total variation (default: none)")
    r.add_argument("--parameterization", choices=["pixel", "spectral", "generator"], default="pixel",
                   help="where the chains live: pixel (the input itself), spectral (Fourier coefficients with "
                   "1/f^decay amplitudes and decorrelated colour), or generator (the latent of --generator); "
                   "log p(z) = log p(Φ(z)) - ½‖z‖²/σ² (default: %(default)s)")
    r.add_argument("--generator", default=None, metavar="SPEC",
                   help="generator: zoo:vae-mnist, zoo:vae-cifar10, or a generator.pt of ldam train-generator")
    r.add_argument("--decay", type=float, default=1.0, metavar="D",
                   help="spectral: amplitude decay 1/f^D (default: %(default)s)")
    r.add_argument("--latent-sigma", type=_positive(float), default=1.0, metavar="σ",
                   help="spectral, generator: the Gaussian prior's σ on the latent z (default: %(default)s)")
    r.add_argument("--transforms", type=_transforms, default=None, metavar="SPEC",
                   help="average the activation over random transforms, e.g. jitter=8,scale=0.9:1.1,rotate=10 "
                   "(SGLD, pSGLD, ascent only; default: none)")
    r.add_argument("--transform-draws", type=_positive(int), default=1, metavar="K",
                   help="random transforms per chain and step (default: %(default)s)")
    r.add_argument("--pixel-range", action=argparse.BooleanOptionalAction, default=pixel_range,
                   help="keep inputs inside the pixel range [0, 1], in the model's normalized units "
                   "(default: %(default)s)")
    dg = p.add_argument_group(
        "discriminator: R_D(x) = -log D(x), a critic trained online against the chains",
        "w morphs from the neuron's pre-image (0) to what the critic finds real (1). density: "
        "log p = ((1-w) f - w R_D - ...)/T, exact with any method; mix: the authors' (1-w) g_f + w g_D of "
        "RMS-normalized gradients, with --method paper.")
    dg.add_argument("--disc-weight", type=_unit_interval, default=0.0, metavar="W",
                    help="discriminator weight w in [0, 1] (default: %(default)s, no discriminator)")
    dg.add_argument("--disc-data", choices=["mnist", "cifar10"], default=None,
                    help="real images for the critic, normalized like the model's inputs "
                    "(default: the zoo model's own dataset)")
    dg.add_argument("--disc-checkpoint", type=Path, default=None, metavar="PATH",
                    help="start from a critic saved earlier (critic.pt of a previous run); without real data it "
                    "stays frozen")
    dg.add_argument("--disc-mode", choices=["density", "mix"], default=None,
                    help="density or mix (default: mix with --method paper, density otherwise)")
    dg.add_argument("--disc-every", type=_positive(int), default=10, metavar="K",
                    help="one critic update every K steps (default: %(default)s)")
    dg.add_argument("--disc-lr", type=_positive(float), default=1e-4, help="the critic's learning rate (default: %(default)s)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<time>)")
    o.add_argument("--display", choices=["signed", "pixel"], default="signed",
                   help="signed: the paper's grey display (largest |value| → 127, plus 128); pixel: the "
                   "model's input mapped back to pixels (default: %(default)s)")
    o.add_argument("--gif-every", type=_positive(int), default=None, metavar="N",
                   help="record the chains for the GIF every N steps (default: steps/60)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_sampling(args: argparse.Namespace, model_spec: str, targets: Sequence[str]) -> int:
    """``ldam sample`` and ``ldam demo``: load the model, sample ``targets``, write the files, print a summary."""
    model, info = _load(model_spec, args)
    input_shape = tuple(info.input_shape)
    out: Path = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")  # created by the first file written
    norm = _normalization(info)
    callbacks = _sampling_callbacks(args, out, norm)
    regularizers, disc = _energy_terms(args, info, input_shape)
    res = sample(model, list(targets), **_sample_options(args, info, input_shape, regularizers, callbacks))
    _record_run(res, args, model, info, model_spec)
    paths = _write_outputs(res, args, out, norm, disc)
    _print_summary(res, info, disc, paths)
    return 0


def _normalization(info: Any) -> dict[str, tuple[float, ...]]:
    """The model's input normalization (``mean``, ``std``) for turning inputs back into images."""
    return {"mean": tuple(getattr(info, "mean", None) or (0.0,)), "std": tuple(getattr(info, "std", None) or (1.0,))}


def _burn_in_and_thin(args: argparse.Namespace) -> tuple[int | str, int]:
    """``--burn-in`` (default: a quarter of the steps) and ``--thin`` (default: about 100 kept states)."""
    burn_in = args.burn_in if args.burn_in is not None else args.steps // 4
    thin = args.thin or max(1, (args.steps - (burn_in if isinstance(burn_in, int) else args.steps // 2)) // 100)
    return burn_in, thin


def _sampling_callbacks(args: argparse.Namespace, out: Path, norm: dict) -> list:
    """The GIF recorder (every ``--gif-every`` steps, default steps/60) and, unless ``--quiet``, a progress bar."""
    gif_every = args.gif_every or max(1, args.steps // 60)
    callbacks = [GifRecorder(out / "chains.gif", every=gif_every, display=args.display, **norm)]
    if not args.quiet:
        callbacks.append(ProgressBar(total=args.steps))
    return callbacks


def _energy_terms(args: argparse.Namespace, info: Any, input_shape: tuple[int, ...]) -> tuple[list[Regularizer], Any]:
    """The regularizers the options ask for, the discriminator last when there is one; and the
    discriminator (``None`` without one)."""
    regularizers = _regularizers(args, info)
    disc = _discriminator(args, info, input_shape)
    if disc is not None:
        regularizers.append(disc)
    return regularizers, disc


def _sample_options(args: argparse.Namespace, info: Any, input_shape: tuple[int, ...],
                    regularizers: list[Regularizer], callbacks: list) -> dict[str, Any]:
    """The keyword arguments of :func:`ldam.sample` that the sampling options ask for."""
    burn_in, thin = _burn_in_and_thin(args)
    return dict(
        input_shape=input_shape, chains=args.chains, steps=args.steps,
        step_size=args.step_size, temperature=args.temperature, regularizers=regularizers,
        method=args.method, burn_in=burn_in, thin=thin, seed=args.seed, ema_tau=args.ema_tau,
        callbacks=callbacks, amp=args.amp, unit_axes=dict(getattr(args, "unit_axis", None) or []),
        parameterization=_parameterization(args, info), transforms=args.transforms or (),
        transform_draws=args.transform_draws,
    )


def _record_run(res: Any, args: argparse.Namespace, model: Any, info: Any, model_spec: str) -> None:
    """Add the model (its spec, device and any ``--arch``) to the results' config."""
    res.config["model_spec"] = model_spec
    res.config["device"] = str(model_device(model))
    if getattr(args, "arch", None):
        res.config["arch"], res.config["arch_kwargs"] = args.arch, info.meta.get("arch_kwargs", {})


def _write_outputs(res: Any, args: argparse.Namespace, out: Path, norm: dict, disc: Any) -> dict[str, Path]:
    """Write grid.png, targets.png, result.pt, config.json (and critic.pt) to ``out``; the GIF is the
    recorder's. Returns what each file is → its path, for the summary."""
    paths = {
        "grid (mean of each chain)": res.save_grid(out / "grid.png", display=args.display, **norm),
        "per-target mean": out / "targets.png",
        "animation of the chains": out / "chains.gif",
        "results (samples, means, traces, config)": res.save(out / "result.pt"),
        "config": out / "config.json",
    }
    if disc is not None:
        paths["critic (reuse with --disc-checkpoint)"] = disc.save(out / "critic.pt")
    res.target_grid(display=args.display, **norm).save(out / "targets.png")
    (out / "config.json").write_text(json.dumps(res.config, indent=2, default=repr) + "\n")
    return paths


def _print_summary(res: Any, info: Any, disc: Any, paths: dict[str, Path]) -> None:
    """Print what was sampled, each target's final mean activation, the acceptance and critic
    statistics where there are any, and the files written."""
    final = res.target_activations()[-max(1, res.activations.shape[0] // 10):].mean(0)
    names = getattr(info, "class_names", None)
    print(f"sampled {len(res.targets)} target(s) x {res.chains} chains, {res.activations.shape[0]} steps, "
          f"burn-in {res.burn_in}, {res.samples.shape[1]} kept per chain, on {res.config['device']}")
    for t, f in zip(res.targets, final.tolist()):
        label = f" ({names[t.unit]})" if names and t.layer in ("output", "fc3") and t.unit < len(names) else ""
        print(f"  {t}{label}: mean activation over the last 10% of steps {f:.3f}")
    if res.acceptance is not None:
        print(f"  MALA acceptance rate: {float(res.acceptance.mean()):.3f}")
    if disc is not None:
        d_mean = float(disc.prob_real(res.mean).mean())
        last = disc.stats()
        scores = f", last update D(real) {last['d_real']:.3f}, D(fake) {last['d_fake']:.3f}" if last else ""
        print(f"  discriminator (w = {disc.weight:g}, {disc.mode}, {disc.updates} critic updates{scores}): "
              f"D of the chain means {d_mean:.3f}")
    for what, p in paths.items():
        print(f"{what}: {p}")


def cmd_sample(args: argparse.Namespace) -> int:
    return _run_sampling(args, args.model, args.target)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = Path("runs/demo")
    print(f"ldam demo: sampling the 10 output neurons (digits 0-9) of {DEMO_MODEL}")
    return _run_sampling(args, DEMO_MODEL, ["output:0-9"])


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Lines of a table whose every column is as wide as its widest cell (``right``: right-aligned
    columns); columns are two spaces apart and trailing spaces are dropped."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in [header, *rows]]


def _unit_axis_item(text: str) -> tuple[str, str]:
    name, sep, axis = text.rpartition("=")
    if not sep or not name or axis not in ("channels", "last") and not axis.isdigit():
        raise argparse.ArgumentTypeError(f"expected LAYER=channels, LAYER=last or LAYER=AXIS (an axis number), got {text!r}")
    return name, int(axis) if axis.isdigit() else axis


def _add_unit_axis(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unit-axis", type=_unit_axis_item, action="append", default=None, metavar="LAYER=AXIS",
                   help="which axis of LAYER's output holds its units: channels (axis 1), last, or an axis number; "
                   "overrides the rule shown by `ldam layers` (repeat for more layers)")


def cmd_layers(args: argparse.Namespace) -> int:
    model, info = _load(args.model, args)
    input_shape = tuple(info.input_shape)
    from .guard import model_guard

    with model_guard(model):
        layers = probe_layers(model, input_shape, unit_axes=dict(args.unit_axis or []))
    arch = f" (--arch {args.arch})" if args.arch else ""
    print(f"{args.model}{arch}: input {list(input_shape)}")
    rows = []
    for name, li in layers.items():
        ex = f"{name}:0" + ("@" + ",".join(str(s // 2) for s in li.spatial) if li.spatial else "")
        if not getattr(li, "addressable", True):
            ex = "-"
        rows.append([name, li.kind, str(list(li.shape)), str(li.units), ex, str(getattr(li, "note", "") or "")])
    for line in table(["layer", "type", "output shape", "units", "target example", "note"], rows, right=[3]):
        print(line)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from . import zoo

    print(f"{'model':<36} {'input':<14} {'dataset':<9} {'test accuracy':<15} weights")
    for name in zoo.names():
        info = zoo.entry(name)
        acc = info.meta.get("test_accuracy")
        try:
            where = str(zoo.weights_file(name))
        except LdamError as e:
            where = f"not installed: {str(e).split('; ')[-1]}"
        print(f"{'zoo:' + name:<36} {'x'.join(map(str, info.input_shape)):<14} {info.dataset or '-':<9} "
              f"{f'{acc:.4f}' if acc is not None else '-':<15} {where}")
    from .zoo import generators

    for name in generators.names():
        _, record = generators.load_vae(name)
        cfg = record["config"]
        print(f"{'zoo:' + name + ' (generator)':<36} {'latent ' + str(cfg['latent']):<14} {cfg['dataset']:<9} "
              f"{'ELBO ' + format(record['test_elbo'], '.0f'):<15} {generators.WEIGHTS / (name + '.pt')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .web.server import ServerConfig, is_loopback, new_token, serve

    token = args.token
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise LdamError(f"--host {args.host} would let other machines drive this server; add --allow-remote "
                            "(it requires a token) or keep the default 127.0.0.1")
        token = token or new_token()
        print(f"ldam serve: WARNING: listening on {args.host}, reachable from other machines. Every request must "
              f"carry the token; share the URL below only with people you trust.", file=sys.stderr)
    if args.arch and not args.model:
        raise LdamError(f"--arch needs the weights files it builds (or 'random'), e.g. ldam serve weights.pt "
                        f"--arch {args.arch} --input-shape 3 32 32")
    models = args.model or [DEMO_MODEL]
    device = resolve_device(args.device)  # checked before any model is loaded
    cfg = ServerConfig(host=args.host, port=args.port, token=token, max_sessions=args.max_sessions,
                       max_fps=args.max_fps, allowed_hosts=tuple(args.allowed_host or ()), atlas=args.atlas)
    try:
        serve(models, cfg, with_data=not args.no_data, device=device, **model_options(args))
    except KeyboardInterrupt:
        pass
    print("ldam serve: stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ldam`` parser: the global options and one subcommand parser per command."""
    p = _main_parser()
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_sample_parser(sub)
    _add_demo_parser(sub)
    _add_layers_parser(sub)
    _add_serve_parser(sub)
    _add_zoo_parser(sub)

    from .train import add_subcommands
    from .train_generator import add_subcommands as add_generator_subcommands

    from .data.fetch import add_subcommand as add_data_subcommand
    from .atlas.cli import add_subcommand as add_atlas_subcommand

    add_subcommands(sub)
    add_generator_subcommands(sub)
    add_data_subcommand(sub)
    add_atlas_subcommand(sub)
    __import__("ldam.compare_cli").compare_cli.add_subcommand(sub)  # ldam compare
    return p


def _main_parser() -> argparse.ArgumentParser:
    """The top-level parser: description, examples, ``--version`` and ``--debug``."""
    p = argparse.ArgumentParser(
        prog="ldam",
        description="Sample the inputs that drive a neuron of a PyTorch model with Langevin dynamics "
        "(LDAM): log p(x) = (f(x) − Σ λ R(x)) / T.",
        epilog="Examples:\n  ldam serve                     # the live UI on http://127.0.0.1:8765/\n  ldam demo\n"
        "  ldam layers zoo:lenet-mnist\n"
        f"  {ARCH_EXAMPLE}\n"
        "  ldam zoo\n  ldam sample --model zoo:lenet-mnist --target 'fc3:0-9' --chains 10 --steps 3000 --l2 1.0 --out runs/x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ldam {__version__}")
    p.add_argument("--debug", action="store_true", help="on an error, show Python's traceback instead of one line")
    return p


def _add_sample_parser(sub) -> None:
    """``ldam sample --model M --target T ...``: sample the given targets of any model."""
    s = sub.add_parser("sample", help="sample inputs for one or more neurons",
                       description="Sample inputs for one or more neurons and write a grid PNG, a GIF, "
                       "the per-target means and the results file.")
    s.add_argument("--model", required=True,
                   help="zoo:NAME (see `ldam zoo`), a checkpoint file, or with --arch a weights file or 'random'")
    s.add_argument("--target", action="append", required=True,
                   help="LAYER:UNIT, LAYER:UNIT@Y,X, LAYER:A-B, LAYER:* or output:UNIT (also relu#1:3 for a "
                   "module's second call, attn[0]:5 or output.logits:3 for one tensor of what a layer returns); "
                   "repeat for more")
    _add_unit_axis(s)
    s.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N",
                   help="one example's shape, e.g. 1 28 28 (default: the model's own; required with --arch)")
    add_arch_options(s)
    _add_sampling_options(s, steps=2000, chains=8, pixel_range=False)
    add_device_option(s, "the model and the chains run (results are saved from the CPU either way)")
    s.set_defaults(func=cmd_sample)


def _add_demo_parser(sub) -> None:
    """``ldam demo``: sample the digit neurons of the demo model."""
    d = sub.add_parser("demo", help=f"sample the 10 digit neurons of {DEMO_MODEL} into runs/demo (no browser needed)",
                       description=f"Sample the 10 output neurons of {DEMO_MODEL}, 10 chains each, and "
                       "write grid.png, targets.png, chains.gif and result.pt to runs/demo.")
    _add_sampling_options(d, steps=1500, chains=int(_START["chains"]), pixel_range=True)
    add_device_option(d, "the model and the chains run")
    d.set_defaults(func=cmd_demo)


def _add_layers_parser(sub) -> None:
    """``ldam layers MODEL``: list the layers a target can address."""
    ly = sub.add_parser("layers", help="list every addressable layer with its output shape and units",
                        description="List every layer a target can address, with output shape and unit count.",
                        epilog=f"Examples:\n  ldam layers zoo:lenet-mnist\n  {ARCH_EXAMPLE}\n"
                        "  ldam layers random --arch torchvision.models:resnet18 --input-shape 3 224 224",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ly.add_argument("model", help="zoo:NAME, a checkpoint file, or with --arch a weights file or 'random'")
    ly.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N",
                    help="one example's shape, e.g. 3 224 224 (default: the model's own; required with --arch)")
    add_arch_options(ly)
    _add_unit_axis(ly)
    add_device_option(ly, "the model is probed")
    ly.set_defaults(func=cmd_layers)


def _add_serve_parser(sub) -> None:
    """``ldam serve [MODEL ...]``: the live web UI."""
    from .web.server import DEFAULT_PORT

    w = sub.add_parser("serve", help="the live web UI: watch chains move and turn the knobs while they run",
                       description="Serve the live sampler and activations pages. Each browser tab runs its own "
                       "sampler; sliders change temperature, step size, L2, discriminator weight and averaging "
                       "while the chains run. Binds 127.0.0.1 unless --allow-remote.")
    w.add_argument("model", nargs="*", help=f"zoo:NAME or checkpoint files the browser may choose "
                   f"(default: {DEMO_MODEL}); with --arch, weights files (or 'random') of that architecture")
    w.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default: %(default)s)")
    w.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, this machine only)")
    w.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than localhost; prints a warning and requires a token")
    w.add_argument("--token", default=None, help="require ?token=TOKEN on every request (generated with --allow-remote)")
    w.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="with --allow-remote: a host name browsers use to reach this server (repeatable); other Host "
                   "headers are refused (DNS rebinding). Default: the --host address, or any name behind the token "
                   "when --host is 0.0.0.0/::")
    w.add_argument("--max-sessions", type=_positive(int), default=4, help="concurrent browser sessions (default: %(default)s)")
    w.add_argument("--max-fps", type=_positive(float), default=60.0, help="frames per second per session, at most (default: %(default)s)")
    w.add_argument("--no-data", action="store_true", help="do not load datasets (no discriminator, no dataset inputs)")
    w.add_argument("--atlas", type=Path, default=None, metavar="DIR",
                   help="also serve the static site of the atlas in DIR (an `ldam atlas --out`) under /atlas/, "
                   "whose unit pages link into the live sampler")
    add_device_option(w, "the models and every session's chains run")
    add_arch_options(w, input_shape="one example's shape, e.g. 3 32 32: required with --arch, which applies to every "
                     "model file given here (zoo:NAME models keep their own)")
    w.set_defaults(func=cmd_serve)


def _add_zoo_parser(sub) -> None:
    """``ldam zoo``: list the zoo's models."""
    z = sub.add_parser("zoo", help="list the zoo's models with their inputs and test accuracies",
                       description="List every zoo:NAME with its input shape, dataset, test accuracy and weights file.")
    z.set_defaults(func=cmd_zoo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LdamError as e:
        if args.debug:
            raise
        text = e.cli_message() if hasattr(e, "cli_message") else str(e)  # flags, not Python keywords
        print(f"ldam: error: {text}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:  # a value or a path the user gave
        if args.debug:
            raise
        print(f"ldam: error: {e} (ldam --debug ... shows where)", file=sys.stderr)
        return 2
    except (TypeError, AttributeError, NameError, AssertionError) as e:  # a bug: keep the traceback
        if args.debug:
            raise
        import traceback

        traceback.print_exc()
        print(f"ldam: internal error ({type(e).__name__}: {e}); the traceback above shows where. Please report it.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ldam: interrupted; the model is unchanged", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ldam layers BIG | head`: the reader has gone, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "add_arch_options", "add_device_option", "model_options"]
