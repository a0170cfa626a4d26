"""Targets: which neuron's activation ``f(x)`` the sampler drives.

A target is addressed by a string::

    LAYER:UNIT          unit UNIT of LAYER; for a spatial (conv) layer, the channel's mean over positions
    LAYER:UNIT@Y,X      one spatial neuron (as many indices as the layer has spatial dims)
    LAYER:A-B           one target per unit A..B (inclusive)
    LAYER:*             one target per unit of LAYER
    output:UNIT         a unit of the model's own output

``LAYER`` is a name from ``model.named_modules()`` and the activation is that module's output,
read as ``[batch, units, *spatial]``.

:func:`resolve` checks a list of such strings against a model and returns a :class:`TargetSet`,
which evaluates ``f`` for a batch laid out target-major (``chains`` consecutive rows per
target) in one forward pass that stops as soon as every target layer has been computed.
"""

from __future__ import annotations

import difflib
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import ShapeError, TargetError

OUTPUT = "output"
_DENSE_SEED_LIMIT = 1 << 24

_GRAMMAR = re.compile(
    r"^(?P<layer>[^\s:@]+):(?P<units>\*|\d+(?:-\d+)?)(?:@(?P<pos>\d+(?:,\d+)*))?$"
)


@dataclass(frozen=True)
class Target:
    """One neuron: ``layer`` (module name or ``"output"``), ``unit``, optional spatial ``position``.

    Without a position on a spatial layer, ``f`` is the unit's mean over all positions.
    """

    layer: str
    unit: int
    position: tuple[int, ...] | None = None

    def __str__(self) -> str:
        pos = "" if self.position is None else "@" + ",".join(map(str, self.position))
        return f"{self.layer}:{self.unit}{pos}"


@dataclass(frozen=True)
class _Spec:
    """A parsed but unresolved target string: units may be a range or a wildcard."""

    layer: str
    first: int | None  # None means "*"
    last: int | None
    position: tuple[int, ...] | None
    text: str


def parse(text: str) -> _Spec:
    """Parse one target string (see the module docstring for the grammar)."""
    if not isinstance(text, str):
        raise TargetError(f"a target must be a string like 'fc3:0', got {type(text).__name__}")
    m = _GRAMMAR.match(text.strip())
    if m is None:
        raise TargetError(
            f"malformed target {text!r}: expected LAYER:UNIT, LAYER:UNIT@Y,X, LAYER:A-B or "
            "LAYER:* (for example 'fc3:7', 'conv1:2@14,14', 'fc3:0-9', 'output:3'); "
            "run `ldam layers MODEL` to see the layer names"
        )
    units = m["units"]
    pos = tuple(int(p) for p in m["pos"].split(",")) if m["pos"] else None
    if units == "*":
        first = last = None
    elif "-" in units:
        a, b = (int(u) for u in units.split("-"))
        if b < a:
            raise TargetError(f"malformed target {text!r}: range {a}-{b} is empty; write it as {b}-{a}")
        first, last = a, b
    else:
        first = last = int(units)
    return _Spec(m["layer"], first, last, pos, text.strip())


def _as_specs(targets: str | Target | Iterable[str | Target]) -> list[_Spec]:
    if isinstance(targets, (str, Target)):
        targets = [targets]
    specs = []
    for t in targets:
        specs.append(parse(str(t)))
    if not specs:
        raise TargetError("no targets given: pass at least one, e.g. 'output:0'")
    return specs


@dataclass(frozen=True)
class LayerInfo:
    """A module's output shape per example (without batch) and its number of units."""

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def units(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[1:]


def probe_layers(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> dict[str, LayerInfo]:
    """Run one forward pass on zeros and record every module's output shape.

    The model must already be in the state the caller wants (the sampler wraps this in its
    model guard). Modules whose output is not a tensor are left out; so are modules never called.
    """
    shapes: dict[str, LayerInfo] = {}
    handles = []

    def make_hook(name: str, kind: str):
        def hook(_mod, _inp, out):
            if name not in shapes and isinstance(out, torch.Tensor) and out.dim() >= 1:
                shapes[name] = LayerInfo(name, kind, tuple(out.shape[1:]))

        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make_hook(name, type(mod).__name__)))
    try:
        x = torch.zeros((1, *input_shape), device=device)
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - reported with its cause
        raise ShapeError(
            f"the model rejects input shape {tuple(input_shape)}: {type(e).__name__}: {e}. "
            "Pass the shape of one example without the batch dimension, e.g. (1, 28, 28) "
            "for MNIST or (3, 32, 32) for CIFAR-10"
        ) from None
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, torch.Tensor) and out.dim() >= 1:
        shapes[OUTPUT] = LayerInfo(OUTPUT, "output", tuple(out.shape[1:]))
    return shapes


def _expand(spec: _Spec, layers: dict[str, LayerInfo], model: nn.Module) -> list[Target]:
    info = layers.get(spec.layer)
    if info is None:
        names = [n for n, _ in model.named_modules() if n]
        if spec.layer in names:
            raise TargetError(
                f"layer {spec.layer!r} does not produce a tensor in the forward pass (it is never "
                "called, or returns a tuple); pick one of its submodules — run `ldam layers MODEL`"
            )
        close = difflib.get_close_matches(spec.layer, list(layers), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise TargetError(
            f"unknown layer {spec.layer!r} in target {spec.text!r}.{hint} "
            "Run `ldam layers MODEL` to list every addressable layer."
        )
    n = info.units
    first = 0 if spec.first is None else spec.first
    last = n - 1 if spec.last is None else spec.last
    if last >= n:
        raise TargetError(
            f"unit {last} is out of range in {spec.text!r}: layer {spec.layer!r} has {n} units (0-{n - 1})"
        )
    pos = spec.position
    if pos is not None:
        sp = info.spatial
        if not sp:
            raise TargetError(
                f"{spec.text!r} gives a spatial index, but layer {spec.layer!r} is not spatial "
                f"(output {list(info.shape)}); drop the '@...' part"
            )
        if len(pos) != len(sp):
            want = ",".join("YX"[-len(sp):] if len(sp) <= 2 else ["i"] * len(sp))
            raise TargetError(
                f"{spec.text!r} gives {len(pos)} spatial indices but layer {spec.layer!r} has "
                f"{len(sp)} spatial dims {'x'.join(map(str, sp))}; write @{want}"
            )
        for p, s in zip(pos, sp):
            if p >= s:
                raise TargetError(
                    f"position @{','.join(map(str, pos))} is out of range in {spec.text!r}: layer "
                    f"{spec.layer!r} is {'x'.join(map(str, sp))} (indices 0..{s - 1})"
                )
    return [Target(spec.layer, u, pos) for u in range(first, last + 1)]


class _Truncate(Exception):
    """Raised from a forward hook once every target layer has been computed."""


class TargetSet:
    """Resolved targets, laid out target-major over ``chains`` rows each.

    ``activation(x)`` returns ``f(x)`` per row: row ``i`` belongs to target ``i // chains``.
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], layers: dict[str, LayerInfo], chains: int):
        self.model = model
        self.targets = list(targets)
        self.layers = layers
        self.chains = chains
        self.batch = len(self.targets) * chains
        names = list(dict.fromkeys(t.layer for t in self.targets))
        self.truncate = OUTPUT not in names
        modules = dict(model.named_modules())
        self._modules = {n: modules[n] for n in names if n != OUTPUT}
        self._captured: dict[str, torch.Tensor] = {}
        # Per layer: which rows, and how to read each row's value from that layer's output.
        self._readers: list[tuple[str, torch.Tensor | None, torch.Tensor, bool]] = []
        for name in names:
            info = layers[name]
            n_pos = 1
            for size in info.spatial:
                n_pos *= size
            groups: dict[bool, tuple[list[int], list[int]]] = {}
            for i, t in enumerate(self.targets):
                if t.layer != name:
                    continue
                use_mean = t.position is None and bool(info.spatial)
                idx = t.unit
                if t.position is not None:
                    idx = 0
                    for p, size in zip(t.position, info.spatial):
                        idx = idx * size + p
                    idx += t.unit * n_pos
                rows, flat = groups.setdefault(use_mean, ([], []))
                rows.extend(range(i * chains, (i + 1) * chains))
                flat.extend([idx] * chains)
            for use_mean, (rows, flat) in groups.items():
                all_rows = len(rows) == self.batch
                self._readers.append(
                    (name, None if all_rows else torch.tensor(rows), torch.tensor(flat).unsqueeze(1), use_mean)
                )

        # ∂(Σ_rows f)/∂(layer output) is a fixed selection tensor per layer; passing it as
        # grad_outputs skips differentiating the read-out. Skipped for layers too large for it.
        self._seeds: dict[str, torch.Tensor] | None = {}
        for name, rows, flat, use_mean in self._readers:
            shape = layers[name].shape
            numel = max(1, math.prod(shape))
            if self.batch * numel > _DENSE_SEED_LIMIT:
                self._seeds = None
                break
            seed = self._seeds.setdefault(name, torch.zeros(self.batch, numel))
            r = torch.arange(self.batch) if rows is None else rows
            n_pos = max(1, math.prod(layers[name].spatial))
            if use_mean:
                cols = flat.squeeze(1)[:, None] * n_pos + torch.arange(n_pos)[None]
                seed[r[:, None], cols] = 1.0 / n_pos
            else:
                seed[r, flat.squeeze(1)] = 1.0
        if self._seeds is not None:
            self._seeds = {n: g.view(self.batch, *layers[n].shape) for n, g in self._seeds.items()}

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "TargetSet":
        self._readers = [
            (n, None if r is None else r.to(device), f.to(device), m) for n, r, f, m in self._readers
        ]
        if self._seeds is not None:
            self._seeds = {n: g.to(device, dtype) for n, g in self._seeds.items()}
        return self

    def describe(self) -> list[str]:
        return [str(t) for t in self.targets]

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Register the capture hooks for the duration of a block (removed on any exit)."""
        handles = [mod.register_forward_hook(self._make_hook(name)) for name, mod in self._modules.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _make_hook(self, name: str):
        need = len(self._modules)

        def hook(_m, _i, out):
            if name not in self._captured:
                self._captured[name] = out
                if self.truncate and len(self._captured) == need:
                    raise _Truncate

        return hook

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` for every row of ``x`` (differentiable), in one (possibly truncated) forward.

        Call inside :meth:`attached` when any target is an inner layer.
        """
        return self._read(self._forward(x))

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` per row and ``∇_x f`` (rows are independent when the model is in eval mode)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            captured = self._forward(xr)
            if self._seeds is None:
                f = self._read(captured)
                (g,) = torch.autograd.grad(f.sum(), xr)
                return f.detach(), g
            names = list(self._seeds)
            (g,) = torch.autograd.grad([captured[n] for n in names], xr, [self._seeds[n] for n in names])
        with torch.no_grad():
            return self._read(captured), g

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = self._captured = {}
        try:
            captured[OUTPUT] = self.model(x)
        except _Truncate:
            pass
        missing = [n for n, *_ in self._readers if n not in captured]
        if missing:
            raise TargetError(f"layers {missing} were not computed in the forward pass (is the sampler attached?)")
        return captured

    def _read(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        f = None
        for name, rows, flat, use_mean in self._readers:
            a = captured[name]
            a = a.flatten(2).mean(2) if use_mean else a.flatten(1)
            if rows is None:
                f = a.gather(1, flat).squeeze(1)
            else:
                vals = a.index_select(0, rows).gather(1, flat).squeeze(1)
                f = (torch.zeros(self.batch, dtype=vals.dtype, device=vals.device) if f is None else f).index_put(
                    (rows,), vals, accumulate=True
                )
        assert f is not None
        return f


def resolve(
    model: nn.Module,
    targets: str | Target | Iterable[str | Target],
    input_shape: Sequence[int],
    chains: int = 1,
    layers: dict[str, LayerInfo] | None = None,
) -> TargetSet:
    """Check target strings against ``model`` and expand ranges into a :class:`TargetSet`."""
    specs = _as_specs(targets)
    if layers is None:
        layers = probe_layers(model, input_shape)
    expanded: list[Target] = []
    for s in specs:
        expanded.extend(_expand(s, layers, model))
    return TargetSet(model, expanded, layers, chains)
