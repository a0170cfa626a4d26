"""One browser session: a sampler running in its own worker thread, steered by control messages.

The worker never waits on the browser. After every frame (``steps_per_frame`` sampler steps) it
renders the chains and publishes the frame as *the latest*; the sender hands the newest one to
the socket whenever the socket is free, so a slow client gets fewer frames, never a queue.
Controls are applied by the worker before its next step.
"""

from __future__ import annotations

import base64
import copy
import io
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.pixels import to_model_units
from ..device import model_device
from ..discriminator import CriticTraining, Discriminator
from ..energy import L2, Box
from ..errors import LdamError
from ..guard import model_guard
from ..parameterization import Spectral
from ..render import display_array, grid, grid_array, png_bytes, save_gif, signed_display, to_image
from ..sampler import Sampler
from ..samplers import METHODS as SAMPLER_METHODS, Metropolis
from ..targets import capture, probe_layers
from ..transforms import Jitter, Rotate, Scale
from ..zoo import SAMPLING_DEFAULTS, ModelInfo

#: Starting knobs per dataset (those of the CLI and the reproductions in experiments/).
DEFAULTS: dict[str, dict[str, float]] = SAMPLING_DEFAULTS


@dataclass(frozen=True)
class Knob:
    """A live control: the values a ``set`` message may carry (``low``–``high``), how its slider
    maps to them (``log``-scaled; with ``log_low``, a log slider from ``log_low`` whose left end is
    0), whether it is an ``integer``, and its ``initial`` value. The page builds its sliders from
    :meth:`slider`, sent in the ``hello`` message."""

    low: float
    high: float
    log: bool
    initial: float
    integer: bool = False
    log_low: float | None = None

    def slider(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"lo": self.low if self.log_low is None else self.log_low, "hi": self.high,
                                "log": self.log, "init": self.initial}
        if self.integer:
            spec["int"] = True
        if self.log_low is not None:
            spec["zeroAtMin"] = True
        return spec


_START = SAMPLING_DEFAULTS["mnist"]
#: The live controls, in the order of the page's sliders.
KNOBS: dict[str, Knob] = {
    "temperature": Knob(1e-4, 10.0, True, _START["temperature"]),
    "step_size": Knob(1e-5, 1.0, True, _START["step_size"]),
    "l2": Knob(0.0, 10.0, True, _START["l2"], log_low=1e-4),
    "disc_weight": Knob(0.0, 1.0, False, 0.0),
    "ema_tau": Knob(1.0, 500.0, True, 20.0),
    "steps_per_frame": Knob(1, 100, True, 1, integer=True),
}
#: Ranges of the live controls: (low, high, log-scaled).
RANGES: dict[str, tuple[float, float, bool]] = {k: (v.low, v.high, v.log) for k, v in KNOBS.items()}
#: Knobs after whose change a Metropolis method adapts its step again (they change the density or ε).
ADAPT_AGAIN = ("temperature", "step_size", "l2", "disc_weight")
METHODS = tuple(SAMPLER_METHODS)
#: How the page names each method: (short name, menu label, the stability bound's formula or None).
METHOD_LABELS: dict[str, tuple[str, str, str | None]] = {
    "sgld": ("SGLD", "SGLD", "4T/λ"),
    "mala": ("MALA", "MALA (exact)", None),
    "pmala": ("pMALA", "pMALA (exact, preconditioned)", None),
    "hmc": ("HMC", "HMC (exact)", None),
    "psgld": ("pSGLD", "pSGLD", "4T/(λ·max G)"),
    "paper": ("the paper's update", "paper (authors')", "(1+μ)/(λ(1−μ))"),
    "ascent": ("gradient ascent", "gradient ascent (Adam, no noise)", None),
}
assert set(METHOD_LABELS) == set(METHODS), "every method needs a label for the page"


def method_menu() -> list[dict[str, Any]]:
    """The methods as the page lists them (sent in the hello message)."""
    return [{"value": m, "name": METHOD_LABELS[m][0], "label": METHOD_LABELS[m][1], "bound": METHOD_LABELS[m][2]}
            for m in METHODS]
PARAMETERIZATIONS = ("pixel", "spectral")
MAX_CHAINS = 100
#: Chains per target when a start names none (the page's fallback too: it is sent in the hello).
DEFAULT_CHAINS = int(_START["chains"])
TRACE_KEEP = 2000
GIF_FRAMES = 200
GIF_FPS = 15  #: a recording's frame rate (66 ms a frame)
GIF_BYTES = 48 * 1024 * 1024  #: a recording's frames, PNG-encoded, at most this many bytes per session
GIF_SIDE = 800  #: recorded frames are shrunk to at most this many pixels on their longer side
MAX_PENDING = 16  #: control messages waiting for the worker, after coalescing


class Busy(LdamError):
    """A control the worker cannot take now; the client is told and nothing is queued."""


def png_b64(im: Image.Image) -> str:
    return base64.b64encode(png_bytes(im, compress_level=1)).decode("ascii")


class NormalizedImages(Dataset):
    """uint8 images ``[N, C, H, W]`` served as model inputs ``(pixel/255 − mean) / std``, one at a time."""

    def __init__(self, images: torch.Tensor, mean: Any, std: Any):
        self.images = images if images.dim() == 4 else images.unsqueeze(1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_model_units(self.images[i], self.mean, self.std)


@dataclass
class ModelEntry:
    """A model the server was started with: the only models a browser may choose."""

    name: str
    model: torch.nn.Module
    info: ModelInfo
    layers: dict[str, Any]
    train_images: torch.Tensor | None = None  # uint8, for the critic (loaded when first needed)
    test_images: torch.Tensor | None = None  # uint8, for the activations page
    test_labels: torch.Tensor | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # the shared model's hooks
    _top_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _load_train: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    #: where the images come from: "full" (the dataset's files), "bundled" (the subset shipped with
    #: ldam), "missing" (looked for, none found); None when not looked for (``with_data=False``)
    data_source: str | None = None
    data_problems: list[str] = field(default_factory=list)  # why a copy that exists could not be used
    _copies: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_model(cls, name: str, model: torch.nn.Module, input_shape: tuple[int, ...], *,
                   class_names: list[str] | None = None, mean: tuple[float, ...] = (0.0,),
                   std: tuple[float, ...] = (1.0,), dataset: str | None = None,
                   device: torch.device | str | None = None) -> "ModelEntry":
        """Your own module, for :func:`ldam.web.serve` (inputs are ``(pixel − mean) / std``). With
        ``device`` the model is moved there (``model.to(device)``); otherwise it stays where it is.
        Every session's copy of the model, and so its chains, runs on the model's device."""
        if device is not None:
            model = model.to(device)
        info = ModelInfo(name, type(model).__name__, tuple(input_shape), class_names, tuple(mean), tuple(std), dataset)
        with model_guard(model):
            layers = probe_layers(model, info.input_shape)
        entry = cls(name, model, info, layers)
        if dataset is not None:
            entry._load_data()
        return entry

    @classmethod
    def load(cls, spec: str, with_data: bool = True, device: torch.device | str | None = None,
             **options: Any) -> "ModelEntry":
        """``zoo:NAME`` or a checkpoint file, loaded on the CPU, then moved to ``device`` if given;
        ``options`` go to :func:`ldam.zoo.load_model` (``arch="pkg.mod:factory"``, ``arch_kwargs``,
        ``input_shape``, ``mean``, ``std``)."""
        from ..zoo import load_model

        model, info = load_model(spec, **options)
        if device is not None:
            model = model.to(device)
        with model_guard(model):
            layers = probe_layers(model, info.input_shape)
        entry = cls(spec, model, info, layers)
        if with_data:
            entry._load_data()
        return entry

    def _load_data(self) -> None:
        """Local copies only (``$LDAM_DATA_DIR`` or the cache), else the subset shipped with ldam
        (:mod:`ldam.data.bundled`): the server never downloads."""
        from ..data import load_bundled, load_cifar10, load_mnist

        loaders = {"mnist": (load_mnist, (1, 28, 28)), "cifar10": (load_cifar10, (3, 32, 32))}
        if self.info.dataset not in loaders:
            return
        load, shape = loaders[self.info.dataset]
        if tuple(shape) != tuple(self.info.input_shape):
            return
        try:
            test_x, test_y = load("test", download_missing=False)
            self.data_source = "full"
            # The training split (the critic's real images) is read when a discriminator first needs it.
            self._load_train = lambda: load("train", download_missing=False)[0]
        except (LdamError, OSError) as e:
            if "not found" not in str(e):  # present but unreadable (a checksum mismatch, a bad file): say so
                self.data_problems.append(str(e))
            try:
                test_x, test_y = load_bundled(self.info.dataset)
            except (LdamError, OSError) as e2:
                self.data_problems.append(str(e2))
                self.data_source = "missing"  # the discriminator and dataset inputs are disabled
                return
            self.data_source = "bundled"
            self._load_train = lambda: test_x  # the critic's real images: the whole bundled subset
        self.test_images = (test_x if test_x.dim() == 4 else test_x.unsqueeze(1))[:1000]
        self.test_labels = test_y[:1000]

    @property
    def device(self) -> torch.device:
        """Where the model (and every session's copy of it) runs."""
        return model_device(self.model)

    @property
    def has_data(self) -> bool:
        return self.train_images is not None or self._load_train is not None

    def real_images(self) -> NormalizedImages:
        """The training images in model units, for a critic (read from disk on first use)."""
        with self._lock:
            if self.train_images is None:
                if self._load_train is None:
                    raise LdamError(f"no real images for {self.name}'s discriminator: {self.data_note()}")
                x = self._load_train()
                self.train_images = x if x.dim() == 4 else x.unsqueeze(1)
        return NormalizedImages(self.train_images, self.info.mean, self.info.std)

    def data_note(self) -> str | None:
        """What the server lacks of the model's dataset and the command that brings it (``None``
        when the full dataset is here), with the reason when a copy exists but could not be used."""
        note = self._data_note()
        if note is not None and self.data_problems:
            note += " (" + "; ".join(self.data_problems) + ")"
        return note

    def _data_note(self) -> str | None:
        from ..data.bundled import DESCRIPTIONS

        ds = self.info.dataset
        if self.data_source == "full":
            return None
        if ds in DESCRIPTIONS:
            fetch = f"ldam data fetch {ds}"
            if self.data_source == "bundled":
                return (f"Using the subset shipped with ldam ({DESCRIPTIONS[ds]}) for the dataset examples and the "
                        f"discriminator's real images. For the full {ds} set run: {fetch}")
            if self.data_source == "missing":
                return (f"No {ds} images on this server, so the discriminator and dataset examples are off. "
                        f"Run: {fetch}, then restart ldam serve")
            if tuple(self.info.input_shape) == ((1, 28, 28) if ds == "mnist" else (3, 32, 32)):
                return ("This server was started without data (--no-data), so the discriminator and dataset "
                        "examples are off. Restart it without --no-data")
        if ds == "imagenet":
            return ("ImageNet images are not shipped: the discriminator (it needs real images) and dataset "
                    "examples are off; use the sample photos or upload an image")
        return "No dataset for this model, so the discriminator and dataset examples are off"

    def _find_copies(self) -> dict[str, str]:
        """Layers whose output repeats the model's input (padding, identity, dropout at eval) as
        ``"input"``, or its output (the logits' own layer) as ``"output"``, found on one random input."""
        shape = tuple(self.info.input_shape)
        n_in = math.prod(shape)
        out_li = self.layers.get("output")
        cands = [li for n, li in self.layers.items() if li.addressable and n != "output" and (
            (len(li.shape) == len(shape) and li.shape[:1] == shape[:1] and math.prod(li.shape) >= n_in)
            or (out_li is not None and li.shape == out_li.shape))]
        if not cands or out_li is None:
            return {}
        x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
        try:
            with self._lock, model_guard(self.model):
                outs = capture(self.model, cands + [out_li], x.to(device=self.device, dtype=out_li.dtype))
        except Exception:  # noqa: BLE001 - a model that fails here only loses the hint
            return {}
        ref_in = torch.sort(x.flatten().double()).values
        ref_out = outs["output"].flatten().double().cpu()
        found = {}
        for li in cands:
            v = outs[li.name].flatten().double().cpu()
            nonzero = torch.sort(v[v != 0]).values
            if nonzero.shape == ref_in.shape and torch.allclose(nonzero, ref_in, rtol=1e-3, atol=1e-5):
                found[li.name] = "input"
            elif v.shape == ref_out.shape and torch.allclose(v, ref_out, rtol=1e-4, atol=1e-5):
                found[li.name] = "output"
        return found

    def copies(self) -> dict[str, str]:
        """:meth:`_find_copies`, computed once."""
        with self._lock:
            if self._copies is None:
                self._copies = self._find_copies()
            return self._copies

    def maps_layer(self) -> str:
        """The activations page's first layer: the first spatial feature layer (not a copy of the input)."""
        copies = self.copies()
        names = [n for n, li in self.layers.items() if li.addressable and copies.get(n) != "input"]
        spatial = [n for n in names if len(self.layers[n].spatial) == 2]
        return (spatial or names or list(self.layers))[0]

    def describe(self) -> dict[str, Any]:
        """What a page needs to know of this model (sent in the ``hello`` message)."""
        names = self.info.class_names
        copies = self.copies()
        ds = self.info.dataset
        return {
            "name": self.name,
            "input_shape": list(self.info.input_shape),
            "layers": [{"name": n, "kind": li.kind, "shape": list(li.shape), "units": li.units,
                        "copies": copies.get(n)}
                       for n, li in self.layers.items() if li.addressable],
            "classes": names,
            "maps_layer": self.maps_layer(),
            "data": {"source": self.data_source, "note": self.data_note(),
                     "command": f"ldam data fetch {ds}" if ds in ("mnist", "cifar10") and self.data_source != "full"
                     and self.data_source is not None else None},
            "all_outputs": self.layers.get("output") is not None and self.layers["output"].units <= 20,
            "discriminator": self.has_data,
            "dataset_examples": 0 if self.test_images is None else len(self.test_images),
            "photos": self.info.dataset == "imagenet",
            "defaults": DEFAULTS.get(self.info.dataset or "", DEFAULTS["mnist"]),
        }

    def preprocess_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.info.preprocess(pixels)

    def dataset_input(self, index: int) -> torch.Tensor:
        assert self.test_images is not None
        return NormalizedImages(self.test_images[index:index + 1], self.info.mean, self.info.std)[0]

    def unit_maps(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s output for ``x`` as ``[N, units, positions]`` (the shared model, one caller at a time).

        ``x`` (an upload or dataset images, on the host) goes to the model's device for the
        forward, 250 rows at a time; the maps come back on the CPU, where the pictures are drawn."""
        li = self.layers[layer]
        with self._lock, model_guard(self.model):
            out = torch.cat([capture(self.model, [li], x[i:i + 250].to(device=self.device, dtype=li.dtype))[layer]
                             for i in range(0, len(x), 250)])
        return li.to_units(out).cpu().float()

    def unit_scores(self, layer: str) -> torch.Tensor:
        """Each test image's activation of every unit of ``layer`` (spatial mean), ``[N, units]``."""
        with self._lock:
            if layer not in self._top_cache:
                assert self.test_images is not None
                x = NormalizedImages(self.test_images, self.info.mean, self.info.std)
                self._top_cache[layer] = self.unit_maps(layer, torch.stack([x[i] for i in range(len(x))])).mean(2)
            return self._top_cache[layer]


@dataclass
class Params:
    """The live knobs; the worker copies them into the sampler before each frame."""

    temperature: float = KNOBS["temperature"].initial
    step_size: float = KNOBS["step_size"].initial
    l2: float = KNOBS["l2"].initial
    disc_weight: float = KNOBS["disc_weight"].initial
    ema_tau: float = KNOBS["ema_tau"].initial
    method: str = METHODS[0]
    steps_per_frame: int = int(KNOBS["steps_per_frame"].initial)
    display: str = "signed"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LiveSession:
    """A sampler for one browser tab, advanced by a worker thread."""

    def __init__(self, entries: dict[str, ModelEntry], publish: Callable[[dict[str, Any]], None], max_fps: float = 60.0,
                 on_exit: Callable[["LiveSession"], None] | None = None):
        self.entries = entries
        self.on_exit = on_exit  # called by the worker thread as it ends (the server frees the slot then)
        self.publish = publish
        self.params = Params()
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._pending: list[tuple[str, Any]] = []  # coalesced controls, at most MAX_PENDING
        self._pending_lock = threading.Lock()
        self._interrupt = threading.Event()  # a control arrived: end the frame after this step
        self.held = False  # set by the server while nobody takes the frames: the worker idles
        self.sampler: Sampler | None = None
        self.entry: ModelEntry | None = None
        self.model: torch.nn.Module | None = None
        self.disc: Discriminator | None = None
        self.target_desc: dict[str, Any] = {}
        self.paused = False
        self.seq = 0
        self.recording: list[bytes] | None = None  # PNG-encoded frames
        self._recorded_bytes = 0
        self._record_capped = False
        self.acceptance: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="ldam-session", daemon=True)
        self._thread.start()

    # ---- called from the server (any thread) ----
    def submit(self, kind: str, payload: Any = None) -> None:
        """Queue a control for the worker. Knob changes merge into one (the latest value of each
        wins); a newer ``start``, ``pause``/``resume``, ``reset``, ``snapshot`` or ``record``
        replaces a pending one of its kind. Raises :class:`Busy` when ``MAX_PENDING`` are waiting."""
        group = {"resume": "pause"}.get(kind, kind)
        with self._pending_lock:
            pending = self._pending
            if kind == "set" and pending and pending[-1][0] == "set":
                pending[-1] = ("set", {**pending[-1][1], **payload})
            else:
                if kind != "set":
                    pending[:] = [(k, p) for k, p in pending if {"resume": "pause"}.get(k, k) != group]
                if len(pending) >= MAX_PENDING:
                    raise Busy(f"{len(pending)} controls are waiting for the sampler; wait for a frame, then retry")
                pending.append((kind, payload))
        self._interrupt.set()
        self._wake.set()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the worker to end (it does within one sampler step) and wait up to ``timeout`` s."""
        self._stop.set()
        self._interrupt.set()
        self._wake.set()
        if timeout is None or timeout > 0:
            self._thread.join(timeout)

    def hold(self, on: bool) -> None:
        """Idle the worker (``on``) while nobody takes its frames, or let it run again."""
        self.held = on
        if not on:
            self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the worker ----
    def _loop(self) -> None:
        try:
            self._run()
        finally:
            self.sampler = None  # the model copy and the chains go with the worker
            if self.on_exit is not None:
                self.on_exit(self)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        last = 0.0
        while not self._stop.is_set():
            self._apply_controls()
            if self.sampler is None or self.paused or self.held:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            wait = self.min_interval - (time.perf_counter() - last)
            if wait > 0:
                self._stop.wait(wait)
            last = time.perf_counter()
            try:
                s = self.sampler
                t0 = s.t
                # a control or a stop takes effect within one step; one divergence check per frame
                s.run(self.params.steps_per_frame, stop=lambda: self._stop.is_set() or self._interrupt.is_set())
                if self._stop.is_set():
                    break
                if s.t == t0:
                    continue  # nothing moved: apply the control first
                if len(s.activations) > 2 * TRACE_KEEP:
                    s.forget_trace(TRACE_KEEP)
                self.publish(self.frame(record=True))
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one bad step
                self.paused = True
                reason = str(e) if isinstance(e, LdamError) else f"{type(e).__name__}: {e}"
                self.publish({"type": "error", "message": f"{reason} (paused: change the controls, then reset or resume)"})

    def _apply_controls(self) -> None:
        while not self._stop.is_set():
            with self._pending_lock:
                self._interrupt.clear()
                if not self._pending:
                    return
                kind, payload = self._pending.pop(0)
            try:
                self._control(kind, payload)
            except (LdamError, ValueError, KeyError) as e:
                self.publish({"type": "error", "message": str(e).strip("'\"")})
            except Exception as e:  # noqa: BLE001 - a control that fails must not end the session
                self.publish({"type": "error", "message": f"{type(e).__name__}: {e}"})

    def _control(self, kind: str, p: Any) -> None:
        if kind == "start":
            self._start(p)
        elif kind == "set":
            self._set(p)
        elif kind == "pause":
            self.paused = True
            self.publish({"type": "paused", "paused": True})
        elif kind == "resume":
            self.paused = False
            self.publish({"type": "paused", "paused": False})
        elif kind == "reset":
            if self.sampler is not None:
                self.sampler.reset()
                if isinstance(self.sampler.method, Metropolis):
                    self.sampler.method.restart_adaptation()  # fresh chains: adapt the step again
                self.sampler.restart_average()
                self.publish(self.frame())
        elif kind == "snapshot":
            self._snapshot()
        elif kind == "record":
            self._record(bool(p))

    def _start(self, p: dict[str, Any]) -> None:
        entry = self.entries[p["model"]]
        layer, unit = p["layer"], p["unit"]
        if layer not in entry.layers:
            raise KeyError(f"unknown layer {layer!r} of {entry.name}")
        units = entry.layers[layer].units
        if unit == "all":
            if units > 20:
                raise ValueError(f"'all units' is offered for layers of at most 20 units; {layer} has {units}")
            targets = f"{layer}:0-{units - 1}"
            n_targets = units
        else:
            if not 0 <= int(unit) < units:
                raise ValueError(f"{layer} has {units} units (0-{units - 1}), got {unit}")
            targets, n_targets = f"{layer}:{int(unit)}", 1
        chains = max(1, min(int(p.get("chains") or DEFAULT_CHAINS), MAX_CHAINS // n_targets if n_targets > 1 else MAX_CHAINS))
        if entry is not self.entry:
            self.entry = entry
            self.model = copy.deepcopy(entry.model)  # the hooks of one session never reach another's
            self.disc = None
        assert self.model is not None
        regs: list[Any] = [Box.from_normalization(entry.info.mean, entry.info.std), L2(self.params.l2)]
        if self.disc is not None:
            self.disc.reset()
            regs.append(self.disc)
        shape = entry.info.input_shape
        images = len(shape) == 3
        param = Spectral(std=entry.info.std) if p.get("parameterization") == "spectral" else None
        if param is not None and not images:
            raise ValueError(f"the spectral parameterization is for image inputs; {entry.name} takes {list(shape)}")
        transforms = []
        if p.get("transforms"):
            if not images:
                raise ValueError(f"transforms are for image inputs; {entry.name} takes {list(shape)}")
            transforms = [Jitter(max(1, shape[-1] // 16)), Scale((0.9, 1.1)), Rotate(10)]
        self.sampler = Sampler(self.model, targets, shape, chains=chains,
                               step_size=self.params.step_size, temperature=self.params.temperature,
                               regularizers=regs, method=self.params.method, burn_in=0, ema_tau=self.params.ema_tau,
                               keep_samples=False, seed=int(p.get("seed") or 0), parameterization=param,
                               transforms=transforms)
        self.sampler.restart_average()
        self.acceptance = None
        self.target_desc = {"model": entry.name, "layer": layer, "unit": unit, "targets": targets, "chains": chains,
                            "n_targets": n_targets, "parameterization": p.get("parameterization") or "pixel",
                            "transforms": [repr(t) for t in transforms]}
        self.publish({"type": "started", **self.target_desc})
        self.paused = False
        self.publish(self.frame())

    def _ensure_disc(self) -> Discriminator:
        if self.disc is None:
            if self.entry is None:
                raise LdamError("start a target before turning on the discriminator")
            real = self.entry.real_images()
            mode = "mix" if self.params.method == "paper" else "density"
            self.disc = Discriminator(real, weight=0.0, mode=mode, training=CriticTraining(every=10))
            if self.sampler is not None:
                self.sampler.add_regularizer(self.disc)
        return self.disc

    def _set(self, p: dict[str, Any]) -> None:
        s = self.sampler
        for key, value in p.items():
            if key == "disc_weight" and value > 0 and self.disc is None:
                self._ensure_disc()
            if key == "method":
                if self.disc is not None:
                    self.disc.mode = "mix" if value == "paper" else "density"
                if s is not None:
                    s.set_method(value)  # a fresh method: a Metropolis one adapts its step from the start
                    s.method.reset()
                    self.acceptance = None
            setattr(self.params, key, value)
            if s is None:
                continue
            if key in ADAPT_AGAIN and isinstance(s.method, Metropolis):
                s.method.restart_adaptation()  # the density or the step changed: the learned step no longer fits
            if key == "temperature":
                s.temperature = value
            elif key == "step_size":
                s.step_size = value
            elif key == "l2":
                s.set_weight("l2", value)
            elif key == "disc_weight" and self.disc is not None:
                self.disc.weight = value
            elif key == "ema_tau":
                s.ema_tau = value

    def _method_stats(self) -> dict[str, Any]:
        """The method's numbers for a frame: ``stable_step``, the largest step size at which it is
        stable for the L2 weight and temperature (``None``: no bound); for a Metropolis method also
        ``acceptance`` over its last ``window`` proposals, whether it is ``adapting`` its step, and
        the ``adapted_step`` (mean, min and max over the chains of ε times the learned scale)."""
        s = self.sampler
        assert s is not None
        l2 = self.params.l2
        stats: dict[str, Any] = {"stable_step": s.method.stable_step(l2, self.params.temperature) if l2 > 0 else None}
        if isinstance(s.method, Metropolis):
            recent = s.method.recent_acceptance
            self.acceptance = None if recent is None else float(recent.mean())
            stats["acceptance"] = self.acceptance
            stats["adapting"] = s.method.adapting
            stats["target_accept"] = s.method.target_accept
            scale = s.method.step_scale()
            if scale is not None:
                lo, mean, hi = (float(v) for v in torch.stack([scale.min(), scale.mean(), scale.max()]).cpu())
                stats["adapted_step"] = [s.step_size * mean, s.step_size * lo, s.step_size * hi]
        return stats

    def _grid(self, x: torch.Tensor, ncol: int, zoom: int) -> Image.Image:
        assert self.entry is not None
        info = self.entry.info
        display = self.params.display
        norm = {"mean": info.mean, "std": info.std} if display == "pixel" else {}
        if x.dim() == 4 and x.shape[1] in (1, 3):
            return grid_array(display_array(x, display, **norm), ncol, zoom=zoom)
        return grid([to_image(xi, display, **norm) for xi in x], ncol, zoom=zoom)

    def frame(self, record: bool = False) -> dict[str, Any]:
        """The chains (their moving averages), the per-target means and the numbers, as a message;
        with ``record`` (frames of the running chains, not resets or snapshots) also a GIF frame."""
        s = self.sampler
        assert s is not None and self.entry is not None
        current = s.images()
        shown = (s.ema if s.ema is not None else current).detach()
        n_t, chains = len(s.targets), s.chains
        zoom = 1  # the browser enlarges the pictures (pixelated): 4x fewer pixels to encode and send
        # The chains stay on the model's device; a frame copies to the host only what it shows: the
        # pictures (one copy of `shown`) and its numbers (the last activations and the jitter, one
        # small copy). Everything else (per-target means, pictures, stats) is computed from those copies.
        trace = s.activations
        last = trace[-1] if len(trace) else torch.zeros(s.batch, dtype=shown.dtype, device=shown.device)
        jit = ((current - shown).pow(2).mean().sqrt() if s.ema is not None
               else torch.zeros((), dtype=shown.dtype, device=shown.device))
        numbers = torch.cat([last.to(shown.dtype), jit.reshape(1).to(shown.dtype)]).cpu()
        shown = shown.cpu()
        per_target = shown.view(n_t, chains, *shown.shape[1:]).mean(1)
        acts, jitter = numbers[:-1].view(n_t, chains), float(numbers[-1])
        stats: dict[str, Any] = {"activation": float(acts.mean()), "jitter": jitter}
        stats.update(self._method_stats())
        if self.disc is not None:
            stats.update({k: v for k, v in self.disc.stats().items() if k in ("d_real", "d_fake")})
        self.seq += 1
        grid_im = self._grid(shown, chains if n_t > 1 else min(chains, 10), zoom)
        means_im = self._grid(per_target, min(n_t, 10), 1)
        grid_png = png_bytes(grid_im, compress_level=1)
        if record and self.recording is not None:
            self._record_frame(grid_im, grid_png)
        return {"type": "frame", "seq": self.seq, "t": s.t, "grid": base64.b64encode(grid_png).decode("ascii"),
                "means": png_b64(means_im),
                "target_activation": [float(a) for a in acts.mean(1)], "stats": stats,
                "params": self.params.as_dict(), "paused": self.paused, "time": time.time()}

    def _snapshot(self) -> None:
        s = self.sampler
        if s is None:
            raise LdamError("nothing to snapshot yet: start a target first")
        frame = self.frame()
        config = {**s.config, **self.target_desc, "live_params": self.params.as_dict()}
        self.publish({"type": "snapshot", "png": frame["grid"], "means": frame["means"],
                      "config": _jsonable(config)})

    def _record_frame(self, im: Image.Image, png: bytes) -> None:
        """Keep one frame of the recording, PNG-encoded and at most ``GIF_SIDE`` pixels on a side,
        while the recording holds fewer than ``GIF_FRAMES`` frames and ``GIF_BYTES`` bytes."""
        assert self.recording is not None
        if max(im.size) > GIF_SIDE:
            im = im.copy()
            im.thumbnail((GIF_SIDE, GIF_SIDE), Image.BILINEAR)
            png = png_bytes(im, compress_level=1)
        if len(self.recording) >= GIF_FRAMES or self._recorded_bytes + len(png) > GIF_BYTES:
            if not self._record_capped:
                self._record_capped = True
                self.publish({"type": "recording", "on": True, "capped": True, "frames": len(self.recording),
                              "message": f"the recording is full ({len(self.recording)} frames, "
                                         f"{self._recorded_bytes / 2**20:.1f} MB): stop it to get the GIF"})
            return
        self.recording.append(png)
        self._recorded_bytes += len(png)

    def _record(self, on: bool) -> None:
        if on:
            self.recording, self._recorded_bytes, self._record_capped = [], 0, False
            self.publish({"type": "recording", "on": True})
            return
        frames, self.recording, self._recorded_bytes = self.recording or [], None, 0
        if not frames:
            self.publish({"type": "recording", "on": False})
            return
        buf = io.BytesIO()
        save_gif([Image.open(io.BytesIO(data)) for data in frames], buf, fps=GIF_FPS)
        self.publish({"type": "gif", "data": base64.b64encode(buf.getvalue()).decode("ascii"), "frames": len(frames)})


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def activation_maps(entry: ModelEntry, layer: str, x: torch.Tensor, max_units: int = 512) -> dict[str, Any]:
    """Every unit's activation map of ``layer`` for one input ``x`` ``[C, H, W]``, as one picture."""
    if layer not in entry.layers:
        raise KeyError(f"unknown layer {layer!r} of {entry.name}")
    out = entry.unit_maps(layer, x.unsqueeze(0))[0]  # [units, positions]
    logits = entry.unit_maps("output", x.unsqueeze(0))[0, :, 0]
    li = entry.layers[layer]
    units = min(out.shape[0], max_units)
    spatial = li.spatial if len(li.spatial) == 2 else (1, 1)
    maps = out[:units].reshape(units, *spatial) if len(li.spatial) == 2 else out[:units].reshape(units, 1, 1)
    a = signed_display(maps)  # one scale for all the maps
    tile = max(1, 32 // max(spatial)) if max(spatial) < 32 else 1
    ims = [Image.fromarray(m) for m in a]
    cols = int(math.ceil(math.sqrt(units)))
    pic = grid(ims, cols, zoom=max(tile, 1))
    top = torch.topk(logits, min(5, logits.numel()))
    names = entry.info.class_names
    preds = [{"class": int(i), "name": names[int(i)] if names else str(int(i)), "logit": float(v)}
             for v, i in zip(top.values, top.indices)]
    th, tw = spatial[0] * max(tile, 1), spatial[1] * max(tile, 1)
    return {"type": "activations", "layer": layer, "units": units, "total_units": int(out.shape[0]), "cols": cols,
            "tile": [int(tw), int(th)], "pad": 2, "png": png_b64(pic), "predictions": preds,
            "means": [float(v) for v in out[:units].mean(1)]}


def top_images(entry: ModelEntry, layer: str, unit: int, k: int = 9) -> dict[str, Any]:
    """The ``k`` test images that drive ``layer:unit`` most (spatial mean of its map)."""
    if entry.test_images is None:
        raise LdamError(f"no dataset is available for {entry.name}")
    scores = entry.unit_scores(layer)
    if not 0 <= unit < scores.shape[1]:
        raise ValueError(f"{layer} has {scores.shape[1]} units, got {unit}")
    top = torch.topk(scores[:, unit], k)
    imgs = [to_image(entry.test_images[int(i)].float() / 255, "pixel") for i in top.indices]
    return {"type": "top9", "layer": layer, "unit": unit, "png": png_b64(grid(imgs, 3, zoom=2)),
            "scores": [float(v) for v in top.values]}
