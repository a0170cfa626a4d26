"""Targets: which neuron's activation ``f(x)`` the sampler drives.

A target is addressed by a string::

    LAYER:UNIT          unit UNIT of LAYER; for a spatial layer, the unit's mean over positions
    LAYER:UNIT@Y,X      one spatial neuron (as many indices as the layer has spatial dims)
    LAYER:A-B           one target per unit A..B (inclusive)
    LAYER:*             one target per unit of LAYER
    output:UNIT         a unit of the model's own output

``LAYER`` is a name from ``model.named_modules()`` (every name, aliases included), optionally
followed by ``#K`` to pick the K-th call of a module that runs more than once per forward
(``relu#1``), and by ``[I]`` or ``[KEY]`` to pick one tensor of a module that returns a tuple or
a mapping (``h.0[0]``). ``output`` is the model's own output: the tensor it returns, or, for a
mapping or ``ModelOutput``, its ``logits`` (else its first tensor), for a tuple its first tensor;
``output.KEY`` and ``output[I]`` name the others.

**Units.** A layer's output is read per example as ``[units, *positions]``. The units are the
layer's features: the channel axis (axis 1 of ``[batch, C, ...]``, PyTorch's convention for
convolutions, pooling and batch norm), except for layers that act on the last axis
(``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``, and any module whose own parameters match the
last axis but not axis 1, e.g. Hugging Face's ``Conv1D``), whose units are the last axis and
whose other axes (tokens, or rows and columns of a channels-last image) are positions.
Parameter-free modules (activations, dropout, containers) take the layout of the tensor they
were given or of the last parametrized module inside them. ``unit_axes={"name": "last"}``
overrides the rule; ``ldam layers`` shows the choice.

A layer is addressable only if its output has one row per example (the probe runs two batch
sizes), is a floating-point tensor, and depends on the input. The others are listed with the
reason.

:func:`resolve` checks a list of target strings against a model and returns a :class:`TargetSet`,
which evaluates ``f`` for a batch laid out target-major (``chains`` consecutive rows per
target) in one forward pass that stops as soon as every target layer has been computed. Each
captured output is the layer's output as it was produced, whatever later in-place operations do.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import LdamError, ShapeError, TargetError

OUTPUT = "output"
_DENSE_SEED_LIMIT = 1 << 24

_GRAMMAR = re.compile(
    r"^(?P<layer>[^\s:@]+):(?P<units>\*|\d+(?:-\d+)?)(?:@(?P<pos>\d+(?:,\d+)*))?$"
)
_NAME = re.compile(r"^(?P<base>[^\s:@#\[\]]+?)(?:#(?P<call>\d+))?(?P<select>(?:\[[^\[\]]+\])*)$")

#: Module types whose units are the last axis of their output.
LAST_AXIS_TYPES: tuple[type, ...] = tuple(
    t for t in (
        nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding, nn.EmbeddingBag, getattr(nn, "RMSNorm", None),
    ) if t is not None
)
#: Module types whose units are axis 1 (channels first).
CHANNEL_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class Target:
    """One neuron: ``layer`` (an entry of ``ldam layers``), ``unit``, optional spatial ``position``.

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


# ---- layers ------------------------------------------------------------------------------

Selector = tuple  # a path of keys (str) and indices (int) into a module's returned container


@dataclass(frozen=True)
class LayerInfo:
    """One addressable (or listed but refused) layer.

    ``shape`` is the output per example (without the batch axis) as the layer produces it;
    ``unit_axis`` is the axis of ``shape`` that holds the units (``None``: one unit, a scalar per
    example). ``reason`` says why the layer cannot be a target (``None``: it can). ``module``,
    ``call`` and ``select`` say where the value comes from: the module's name (``None`` for the
    model's output), which call of it (``None``: its only call) and the path into a returned
    tuple or mapping.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    unit_axis: int | None = 0
    calls: int = 1
    reason: str | None = None
    alias_of: str | None = None
    dtype: torch.dtype = torch.float32
    module: str | None = None
    call: int | None = None
    select: Selector = ()
    layout: str = "channels"  # "channels", "last" or "override"

    @property
    def addressable(self) -> bool:
        return self.reason is None

    @property
    def units(self) -> int:
        return 1 if self.unit_axis is None or not self.shape else self.shape[self.unit_axis]

    @property
    def spatial(self) -> tuple[int, ...]:
        if self.unit_axis is None or not self.shape:
            return ()
        return self.shape[: self.unit_axis] + self.shape[self.unit_axis + 1:]

    @property
    def unit_dim(self) -> str:
        """How the units were found, for listings: ``"channels"`` or ``"last"``."""
        if self.unit_axis is None or len(self.shape) < 2:
            return "-"
        return "last" if self.unit_axis == len(self.shape) - 1 else "channels"

    @property
    def note(self) -> str:
        parts = []
        if self.alias_of:
            parts.append(f"same module as {self.alias_of}")
        if self.reason:
            parts.append(f"not a target: {self.reason}")
        elif self.layout == "override":
            parts.append("units axis set by unit_axes")
        elif self.unit_dim == "last" and len(self.shape) >= 2:
            parts.append("units: last axis (features); other axes are positions")
        return "; ".join(parts)

    def to_units(self, a: torch.Tensor) -> torch.Tensor:
        """``[batch, *shape]`` → ``[batch, units, positions]``."""
        b = a.shape[0]
        if self.unit_axis is None or not self.shape:
            return a.reshape(b, 1, 1)
        if self.unit_axis != 0:
            a = a.movedim(self.unit_axis + 1, 1)
        return a.reshape(b, self.units, -1)


def _select(value: Any, path: Selector) -> Any:
    for key in path:
        if isinstance(key, int):
            value = value[key]
        elif isinstance(value, Mapping):
            value = value[key]
        else:
            value = getattr(value, key)
    return value


def _items(value: Any) -> list[tuple[Any, Any]] | None:
    """The (key, item) pairs of a returned container, or ``None`` if it is not one."""
    if isinstance(value, Mapping):  # dict, OrderedDict, Hugging Face ModelOutput
        return [(k, v) for k, v in value.items() if isinstance(k, (str, int))]
    if isinstance(value, (tuple, list)):
        return list(enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


def _format_select(path: Selector, dotted_keys: bool) -> str:
    out = ""
    for k in path:
        out += f".{k}" if dotted_keys and isinstance(k, str) else f"[{k}]"
    return out


def _describe_value(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {str(v.dtype).replace('torch.', '')} tensor of shape {list(v.shape)}"
    items = _items(v)
    if items is not None:
        return f"a {type(v).__name__} of {len(items)} item(s)"
    return f"a {type(v).__name__}"


@dataclass
class _Rec:
    """What the probe saw for one value: shapes at two batch sizes, gradient, layout."""

    kind: str
    module: str | None
    call: int | None
    select: Selector
    value2: Any
    shape3: tuple[int, ...] | None = None
    layout: str = "channels"
    calls: int = 1


def _unit_axis(shape: tuple[int, ...], layout: str) -> int | None:
    if not shape:
        return None
    return len(shape) - 1 if layout == "last" and len(shape) >= 2 else 0


def _own_layout(mod: nn.Module, out: torch.Tensor) -> str | None:
    """The layout a module with its own parameters gives its output (``None``: undecided).

    A feature-sized parameter indexes features by its last axis (Linear-like: weight ``[out,
    in]``, bias ``[out]``) or by its first (conv-like: weight ``[C, ...]``). When the shapes
    do not decide (say ``C = H = W``), the module's type does.
    """
    own = [p for p in mod.parameters(recurse=False) if p.dim() >= 1]
    if own and out.dim() >= 3:
        last = any(p.shape[-1] == out.shape[-1] for p in own)
        first = any(p.shape[0] == out.shape[1] for p in own)
        if last != first:
            return "last" if last else "channels"
    if isinstance(mod, CHANNEL_TYPES):
        return "channels"
    if isinstance(mod, LAST_AXIS_TYPES):
        return "last"
    return None


class _Probe:
    """Runs the model on two batch sizes with hooks on every module and records each value."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names: dict[int, list[str]] = {}
        self.mods: dict[int, nn.Module] = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            if name:
                self.names.setdefault(id(mod), []).append(name)
                self.mods[id(mod)] = mod

    def run(self, x: torch.Tensor, track: bool) -> tuple[dict[int, list[Any]], Any]:
        calls: dict[int, list[Any]] = {}
        layouts: dict[int, tuple[str, torch.Tensor]] = {}  # id(tensor) → layout (tensor kept alive)
        inner: dict[int, tuple[str, int]] = {}  # id(module) → last parametrized descendant's (layout, size)
        stack: list[int] = []
        self._recent: tuple[str, int] | None = None  # the last parametrized module's (layout, size)

        def pre(mod, _args):
            stack.append(id(mod))

        def post(mod, args, kwargs, out):
            key = id(mod)
            if stack and stack[-1] == key:
                stack.pop()
            calls.setdefault(key, []).append(out)
            if not track:
                return
            self._note_grad(out)
            inputs = list(args) + list(kwargs.values())
            own = bool(list(mod.parameters(recurse=False)))
            for v in [out] + [item for _, item in (_items(out) or [])]:
                if not isinstance(v, torch.Tensor) or id(v) in layouts:
                    continue
                layout = self._layout(mod, v, inputs, layouts, inner.get(key), self._recent)
                layouts[id(v)] = (layout, v)
                if own and v.dim() >= 3:
                    size = v.shape[-1] if layout == "last" else v.shape[1]
                    self._recent = (layout, size)
                    for anc in stack:
                        inner[anc] = (layout, size)

        if track:
            self.grad: dict[int, bool] = {}
        handles = []
        try:
            for key, mod in self.mods.items():
                handles.append(mod.register_forward_pre_hook(pre))
                handles.append(mod.register_forward_hook(post, with_kwargs=True))
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        if track:
            self._note_grad(out)
            self.value_layouts = {k: v[0] for k, v in layouts.items()}
            self._alive = layouts  # keeps the ids above unique until the probe ends
        return calls, out

    def _note_grad(self, value: Any) -> None:
        # Read now: a view's requires_grad follows its base's flag, which the probe restores later.
        for v in [value] + [item for _, item in (_items(value) or [])]:
            if isinstance(v, torch.Tensor):
                self.grad[id(v)] = v.requires_grad

    @staticmethod
    def _layout(mod, out, inputs, layouts, inner, recent) -> str:
        """The unit layout of ``out``, a value ``mod`` returned: the first rule that decides wins."""
        if id(out) in layouts:  # returned as given (identity, in place, a container's last child)
            return layouts[id(out)][0]
        own = _own_layout(mod, out)
        if own is not None:
            return own
        if out.dim() < 3:
            return "channels"
        for rule in (inner, "inputs", recent):
            if rule == "inputs":
                for t in inputs:
                    if isinstance(t, torch.Tensor) and t.shape == out.shape and id(t) in layouts:
                        return layouts[id(t)][0]
            elif rule is not None:
                # the features of the last parametrized module inside (or, failing that, before)
                layout, size = rule
                first, last = out.shape[1] == size, out.shape[-1] == size
                if first != last:
                    return "last" if last else "channels"
                if first:
                    return layout
        return "channels"


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _probe_input(batch: int, shape: Sequence[int], device, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    return torch.randn((batch, *shape), generator=g).to(device=device, dtype=dtype)


def probe_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    unit_axes: Mapping[str, str | int] | None = None,
) -> dict[str, LayerInfo]:
    """Run the model on batches of 2 and 3 random inputs (in its own dtype and device) and
    describe every value a target can address; refused ones carry their reason.

    The model must already be in the state the caller wants (the sampler wraps this in its
    model guard). Modules never called are left out. During the probe, parameters that require
    gradients are frozen (and restored) so that whether a layer depends on the input is exact.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = dtype or _model_dtype(model)
    probe, (calls2, out2), (calls3, out3) = _run_probe(model, input_shape, device, dtype)
    table = _LayerTable(probe, dtype, unit_axes)
    for key, outs in calls2.items():
        table.add_module(key, outs, calls3.get(key, []))
    table.add_model_output(out2, out3)
    table.check_unit_axes_used()
    return table.layers


@contextmanager
def _parameters_frozen(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on the model's trainable parameters for a block, then restore it
    (so that a value needs a gradient only if it depends on the input)."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run_probe(model: nn.Module, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype
               ) -> tuple[_Probe, tuple[dict[int, list[Any]], Any], tuple[dict[int, list[Any]], Any]]:
    """Run ``model`` under a :class:`_Probe` on 2 random inputs (tracking gradients and layouts) and
    on 3 (values only), with its parameters frozen; returns the probe and each run's
    ``(calls, output)``. A forward that fails becomes a :class:`ShapeError` when torch rejects the
    shape and an :class:`LdamError` otherwise."""
    probe = _Probe(model)
    try:
        with _parameters_frozen(model):
            x2 = _probe_input(2, input_shape, device, dtype).requires_grad_(True)
            with torch.enable_grad():
                run2 = probe.run(x2, track=True)
            with torch.no_grad():
                run3 = probe.run(_probe_input(3, input_shape, device, dtype), track=False)
    except (RuntimeError, ValueError, IndexError) as e:  # what torch raises for a shape it cannot take
        raise ShapeError(
            f"the model rejects input shape {tuple(input_shape)} ({str(dtype).replace('torch.', '')} on "
            f"{device}): {type(e).__name__}: {e}. Pass the shape of one example without the batch "
            "dimension, e.g. (1, 28, 28) for MNIST or (3, 32, 32) for CIFAR-10"
        ) from e
    except Exception as e:  # noqa: BLE001 - anything else is the model's own error, not the shape's
        raise LdamError(
            f"the model's forward raised {type(e).__name__}: {e} on a probe batch of shape "
            f"{(2, *tuple(input_shape))}; that is an error inside the model's code, not a shape mismatch "
            "(the traceback above shows where)"
        ) from e
    return probe, run2, run3


class _LayerTable:
    """The result of :func:`probe_layers` as it is built: one :class:`LayerInfo` per value the probe
    saw (addressable or refused), in the order the model produced them.

    Each entry of ``unit_axes`` is used up (popped) by the layer it names; what is left at the end
    names no addressable layer (:meth:`check_unit_axes_used`).
    """

    def __init__(self, probe: _Probe, dtype: torch.dtype, unit_axes: Mapping[str, str | int] | None):
        self.probe = probe
        self.dtype = dtype
        self.unit_axes = dict(unit_axes or {})
        self.layers: dict[str, LayerInfo] = {}

    def layout_of(self, v: Any) -> str:
        """The unit layout the probe found for the tensor ``v`` (``"channels"`` for anything else)."""
        return self.probe.value_layouts.get(id(v), "channels") if isinstance(v, torch.Tensor) else "channels"

    def add_tensor(self, name: str, kind: str, v2: Any, v3: Any, *, module: str | None, call: int | None,
                   select: Selector, calls: int, layout: str, alias_of: str | None = None) -> None:
        """Add one value (normally a tensor) seen as ``v2`` and ``v3`` at batch sizes 2 and 3: its shape,
        its units axis (from ``layout``, or from ``unit_axes``) and, if it cannot be a target, why."""
        reason = _refusal(v2, v3, self.probe.grad.get(id(v2), False))
        shape = tuple(v2.shape[1:]) if isinstance(v2, torch.Tensor) else ()
        how = layout
        if name in self.unit_axes and reason is None:
            layout, how = _override(name, self.unit_axes.pop(name), shape), "override"
        dt = v2.dtype if isinstance(v2, torch.Tensor) else self.dtype
        axis = _unit_axis(shape, "last" if layout == "last" else "channels") if isinstance(layout, str) else layout
        self.layers[name] = LayerInfo(name, kind, shape, axis, calls, reason, alias_of, dt, module, call, select, how)

    def add_value(self, name: str, kind: str, v2: Any, v3: Any, layout: str, **where: Any) -> None:
        """Add what a module (or the model) returned: a tensor as itself, a tuple, mapping or dataclass
        as a refused entry that lists its tensors, each of which is added as ``name[K]`` or ``name.K``."""
        items = _items(v2)
        if items is None or isinstance(v2, torch.Tensor):
            self.add_tensor(name, kind, v2, v3, layout=layout, **where)
        else:
            self._add_container(name, kind, v2, v3, items, where)

    def _add_container(self, name: str, kind: str, v2: Any, v3: Any, items: list[tuple[Any, Any]],
                       where: dict[str, Any]) -> None:
        """Add a returned container (refused: it has no single unit layout) and then each of its tensors."""
        items3 = dict(_items(v3) or [])
        tensors = [(k, v) for k, v in items if isinstance(v, torch.Tensor)]
        dotted = where["module"] is None
        sub = [name + _format_select((k,), dotted) for k, _ in tensors]
        why = (f"returns {_describe_value(v2)}; address one of its tensors: {', '.join(sub[:4])}"
               + (" ..." if len(sub) > 4 else "") if sub else f"returns {_describe_value(v2)}, with no tensor in it")
        self.layers[name] = LayerInfo(name, kind, (), None, where["calls"], why, where.get("alias_of"), self.dtype,
                                      where["module"], where["call"], where["select"])
        for (k, v), sname in zip(tensors, sub):
            self.add_tensor(sname, kind, v, items3.get(k), layout=self.layout_of(v), module=where["module"],
                            call=where["call"], select=where["select"] + (k,), calls=where["calls"],
                            alias_of=where.get("alias_of"))

    def add_module(self, key: int, outs: list[Any], outs3: list[Any]) -> None:
        """Add the outputs of one module (``outs``: one per call at batch size 2; ``outs3`` at 3) under
        each of its names; every name after the first is an alias of the first."""
        names = self.probe.names[key]
        kind = type(self.probe.mods[key]).__name__
        for i, name in enumerate(names):
            alias = names[0] if i else None
            if len(outs) == 1:
                self.add_value(name, kind, outs[0], outs3[0] if outs3 else None, self.layout_of(outs[0]),
                               module=names[0], call=None, select=(), calls=1, alias_of=alias)
            else:
                self._add_calls(name, kind, outs, outs3, module=names[0], alias=alias)

    def _add_calls(self, name: str, kind: str, outs: list[Any], outs3: list[Any], module: str,
                   alias: str | None) -> None:
        """Add a module called more than once per forward: ``name`` itself is refused (it names no
        single call) and each call is added as ``name#K``."""
        n = len(outs)
        calls_list = ", ".join(f"{name}#{k}" for k in range(min(n, 3))) + (f" ... {name}#{n - 1}" if n > 3 else "")
        first = outs[0]
        self.layers[name] = LayerInfo(
            name, kind, tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else (), None, n,
            f"called {n} times per forward; name one call: {calls_list}", alias, self.dtype, module, None, (),
        )
        for k in range(n):
            self.add_value(f"{name}#{k}", kind, outs[k], outs3[k] if k < len(outs3) else None,
                           self.layout_of(outs[k]), module=module, call=k, select=(), calls=n,
                           alias_of=None if alias is None else f"{alias}#{k}")

    def add_model_output(self, out2: Any, out3: Any) -> None:
        """Add the model's own output as ``output``: the tensor it returns, or for a container the
        default tensor (:func:`_default_output`) with the others as ``output.KEY`` / ``output[I]``."""
        if isinstance(out2, torch.Tensor):
            self.add_tensor(OUTPUT, "output", out2, out3, module=None, call=None, select=(), calls=1,
                            layout=self.layout_of(out2))
        else:
            self._add_output_container(out2, out3)

    def _add_output_container(self, out2: Any, out3: Any) -> None:
        """Add a container the model returns: its tensors are added under a placeholder name and
        renamed to ``output...`` (appended last); ``output`` itself is an alias of the default
        tensor, or refused when the container holds no tensor."""
        layers = self.layers
        default = _default_output(out2)
        self.add_value(OUTPUT + "*", "output", out2, out3, "channels", module=None, call=None, select=(), calls=1)
        container = layers.pop(OUTPUT + "*")
        renamed = {}
        for name, li in list(layers.items()):
            if name.startswith(OUTPUT + "*"):
                del layers[name]
                new = OUTPUT + name[len(OUTPUT) + 1:]
                renamed[new] = dataclasses.replace(li, name=new)
        if default is not None:
            path, _ = default
            src = renamed.get(OUTPUT + _format_select(path, True))
            if src is not None:
                layers[OUTPUT] = dataclasses.replace(src, name=OUTPUT, alias_of=src.name)
        else:
            layers[OUTPUT] = dataclasses.replace(
                container, name=OUTPUT,
                reason=f"the model returns {_describe_value(out2)}, with no tensor to read units from")
        layers.update(renamed)

    def check_unit_axes_used(self) -> None:
        """Raise :class:`TargetError` if some entry of ``unit_axes`` named no addressable layer."""
        if self.unit_axes:
            close = {n: difflib.get_close_matches(n, list(self.layers), n=1) for n in self.unit_axes}
            raise TargetError(
                "unit_axes names layers that are not addressable: " + ", ".join(
                    f"{n!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for n, c in close.items())
            )


def _override(name: str, axis: str | int, shape: tuple[int, ...]) -> int | None:
    if not shape:
        raise TargetError(f"unit_axes[{name!r}]: the layer has one unit per example, there is no axis to choose")
    if axis in ("last", -1):
        return len(shape) - 1
    if axis in ("channels", "first", 1):
        return 0
    if isinstance(axis, int) and 1 <= axis <= len(shape):
        return axis - 1
    raise TargetError(
        f"unit_axes[{name!r}] = {axis!r}: use 'channels' (axis 1), 'last', or an axis 1..{len(shape)} "
        f"of its output [batch, {', '.join(map(str, shape))}]"
    )


def _default_output(out: Any) -> tuple[Selector, torch.Tensor] | None:
    """The rule for ``output`` on a container: ``logits`` of a mapping, else the first tensor."""
    items = _items(out)
    if items is None:
        return None
    for k, v in items:
        if k == "logits" and isinstance(v, torch.Tensor):
            return (k,), v
    for k, v in items:
        if isinstance(v, torch.Tensor):
            return (k,), v
    return None


def _refusal(v2: Any, v3: Any, needs_grad: bool) -> str | None:
    """Why a value seen at batch sizes 2 and 3 cannot be a target (``None``: it can)."""
    if not isinstance(v2, torch.Tensor):
        return f"returns {_describe_value(v2)}"
    if v2.dim() == 0 or not isinstance(v3, torch.Tensor) or v3.dim() == 0 or v2.shape[0] != 2 or v3.shape[0] != 3 \
            or v2.shape[1:] != v3.shape[1:]:
        s3 = list(v3.shape) if isinstance(v3, torch.Tensor) else "-"
        return (f"its first axis is not one row per example (output {list(v2.shape)} for 2 inputs, {s3} for 3): "
                "the layer folds examples into its first axis (e.g. attention windows) or broadcasts over them")
    if not v2.is_floating_point():
        return f"its output is {str(v2.dtype).replace('torch.', '')}, not floating point (no gradient)"
    if not needs_grad:
        return "its output does not depend on the input (no gradient reaches the input from it)"
    return None


def _lookup(name: str, layers: Mapping[str, LayerInfo], model: nn.Module, text: str) -> LayerInfo:
    info = layers.get(name)
    if info is None and name.startswith(OUTPUT + "["):
        m = re.fullmatch(r"output\[([A-Za-z_]\w*)\](.*)", name)
        if m:
            info = layers.get(f"{OUTPUT}.{m[1]}{m[2]}")
    if info is None:
        m = _NAME.match(name)
        if m and m["call"] is not None:
            base = layers.get(m["base"] + m["select"])
            if base is not None and base.calls == 1:
                if int(m["call"]) == 0:
                    info = base
                else:
                    raise TargetError(f"{m['base']!r} is called once per forward; drop '#{m['call']}' in {text!r}")
    if info is None:
        names = {n for n, _ in model.named_modules(remove_duplicate=False) if n}
        if name in names:
            raise TargetError(
                f"layer {name!r} is never called in the forward pass, so it has no output to read; "
                "run `ldam layers MODEL` to list every addressable layer"
            )
        close = difflib.get_close_matches(name, [n for n, li in layers.items() if li.addressable], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise TargetError(
            f"unknown layer {name!r} in target {text!r}.{hint} "
            "Run `ldam layers MODEL` to list every addressable layer."
        )
    if info.reason is not None:
        raise TargetError(f"layer {name!r} cannot be a target: {info.reason}")
    return info


def _expand(spec: _Spec, layers: Mapping[str, LayerInfo], model: nn.Module) -> list[Target]:
    info = _lookup(spec.layer, layers, model, spec.text)
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
    return [Target(info.name, u, pos) for u in range(first, last + 1)]


# ---- capture -----------------------------------------------------------------------------

class _Truncate(Exception):
    """Raised from a forward hook once every target layer has been computed."""


class Tap:
    """Captures the outputs of named layers (entries of :func:`probe_layers`) during a forward.

    Each captured value is the layer's output as produced: when the forward continues past a
    layer, its output is cloned at once, so later in-place operations cannot change it (the
    clone stays on the autograd graph). With ``truncate`` the forward stops as soon as every
    layer is captured, unless the model's output is one of them.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerInfo], truncate: bool = True):
        self.model = model
        self.layers = {li.name: li for li in layers}
        self._outputs = [li for li in self.layers.values() if li.module is None]
        self.truncate = truncate and not self._outputs
        modules = dict(model.named_modules(remove_duplicate=False))
        self._wanted: dict[int, list[LayerInfo]] = {}
        self._mods: dict[int, nn.Module] = {}
        for li in self.layers.values():
            if li.module is None:
                continue
            mod = modules[li.module]
            self._wanted.setdefault(id(mod), []).append(li)
            self._mods[id(mod)] = mod
        self._need = sum(len(v) for v in self._wanted.values())
        self._captured: dict[str, Any] = {}
        self._calls: dict[int, int] = {}

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Register the capture hooks for the duration of a block (exactly these are removed)."""
        handles = [mod.register_forward_hook(self._hook(key)) for key, mod in self._mods.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, key: int):
        wanted = self._wanted[key]

        def hook(_m, _i, out):
            k = self._calls.get(key, 0)
            self._calls[key] = k + 1
            got = []
            for li in wanted:
                if (li.call is None and k == 0) or li.call == k:
                    got.append(li.name)
                    self._captured[li.name] = _select(out, li.select)
            if not got:
                return
            if self.truncate and len(self._captured) == self._need:
                raise _Truncate
            for name in got:
                v = self._captured[name]
                if isinstance(v, torch.Tensor):
                    self._captured[name] = v.clone()

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``x`` and return every layer's output (call inside :meth:`attached`)."""
        captured = self._captured = {}
        self._calls = {}
        try:
            out = self.model(x)
        except _Truncate:
            pass
        else:
            for li in self._outputs:
                captured[li.name] = _select(out, li.select)
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise TargetError(f"layers {missing} were not computed in the forward pass (is the tap attached, and "
                              "does the model take the same path for every input?)")
        for name, v in captured.items():
            if not isinstance(v, torch.Tensor) or v.shape[0] != x.shape[0]:
                raise TargetError(f"layer {name!r} returned {_describe_value(v)} for a batch of {x.shape[0]}; "
                                  "it changed since the layers were probed")
        return captured


def capture(model: nn.Module, layers: Sequence[LayerInfo], x: torch.Tensor, batch_size: int | None = None
            ) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for every row of ``x`` (no gradients), ``batch_size`` rows at a time.

    The model must already be in the state the caller wants (see :func:`ldam.guard.model_guard`).
    """
    tap = Tap(model, layers)
    step = batch_size or max(1, len(x))
    parts: dict[str, list[torch.Tensor]] = {li.name: [] for li in layers}
    with tap.attached(), torch.no_grad():
        for i in range(0, len(x), step):
            for name, v in tap.forward(x[i:i + step]).items():
                parts[name].append(v.detach())
    return {n: torch.cat(v) for n, v in parts.items()}


class TargetSet:
    """Resolved targets, laid out target-major over ``chains`` rows each.

    ``activation(x)`` returns ``f(x)`` per row: row ``i`` belongs to target ``i // chains``.
    Inputs are cast to the model's floating dtype for the forward; ``f`` and ``∇f`` come back
    in the dtype of ``x``.
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], layers: Mapping[str, LayerInfo], chains: int,
                 model_dtype: torch.dtype | None = None, amp: str | None = None):
        self.model = model
        self.amp = _amp_dtype(amp)
        self.targets = list(targets)
        self.layers = dict(layers)
        self.chains = chains
        self.batch = len(self.targets) * chains
        self.model_dtype = model_dtype or _model_dtype(model)
        names = list(dict.fromkeys(t.layer for t in self.targets))
        self.tap = Tap(model, [layers[n] for n in names])
        self.truncate = self.tap.truncate
        # Per layer: which rows, and how to read each row's value from that layer's [B, units, positions].
        self._readers: list[tuple[str, torch.Tensor | None, torch.Tensor, bool]] = [
            reader for name in names for reader in self._readers_for(name)
        ]
        self._seeds: dict[str, torch.Tensor] | None = self._dense_seeds()

    @staticmethod
    def _flat_index(t: Target, info: LayerInfo) -> int:
        """Where ``t``'s value lies in the layer's output flattened to ``[units · positions]``: its
        unit, or for a target at a position that position's index within its unit's block."""
        if t.position is None:
            return t.unit
        idx = 0
        for p, size in zip(t.position, info.spatial):
            idx = idx * size + p
        return idx + t.unit * max(1, math.prod(info.spatial))

    def _readers_for(self, name: str) -> list[tuple[str, torch.Tensor | None, torch.Tensor, bool]]:
        """The read-outs of layer ``name``: one per kind of read (the mean of a unit over positions, or
        one value), each ``(name, rows, flat indices [rows, 1], use_mean)``; ``rows`` is ``None``
        when the read covers every row of the batch."""
        info = self.layers[name]
        groups: dict[bool, tuple[list[int], list[int]]] = {}
        for i, t in enumerate(self.targets):
            if t.layer != name:
                continue
            use_mean = t.position is None and bool(info.spatial)
            rows, flat = groups.setdefault(use_mean, ([], []))
            rows.extend(range(i * self.chains, (i + 1) * self.chains))
            flat.extend([self._flat_index(t, info)] * self.chains)
        return [
            (name, None if len(rows) == self.batch else torch.tensor(rows), torch.tensor(flat).unsqueeze(1), use_mean)
            for use_mean, (rows, flat) in groups.items()
        ]

    def _dense_seeds(self) -> dict[str, torch.Tensor] | None:
        """Per layer, ``∂(Σ_rows f)/∂(layer output)``, a fixed selection tensor in the layer's own layout
        and dtype: passing it as ``grad_outputs`` skips differentiating the read-out. ``None`` when a
        layer is too large for a dense one (more than ``_DENSE_SEED_LIMIT`` values per batch)."""
        seeds: dict[str, torch.Tensor] = {}
        for name, rows, flat, use_mean in self._readers:
            info = self.layers[name]
            numel = max(1, math.prod(info.shape))
            if self.batch * numel > _DENSE_SEED_LIMIT:
                return None
            seed = seeds.setdefault(name, torch.zeros(self.batch, info.units, numel // info.units))
            r = torch.arange(self.batch) if rows is None else rows
            n_pos = numel // info.units
            if use_mean:
                seed.view(self.batch, -1)[r[:, None], flat.squeeze(1)[:, None] * n_pos + torch.arange(n_pos)[None]] = 1.0 / n_pos
            else:
                seed.view(self.batch, -1)[r, flat.squeeze(1)] = 1.0
        return {n: self._layout(self.layers[n], g).to(self.layers[n].dtype) for n, g in seeds.items()}

    @staticmethod
    def _layout(info: LayerInfo, g: torch.Tensor) -> torch.Tensor:
        """``[B, units, positions]`` → the layer's own ``[B, *shape]`` layout."""
        b = g.shape[0]
        if info.unit_axis is None or not info.shape:
            return g.reshape(b, *info.shape)
        g = g.reshape(b, info.units, *info.spatial)
        if info.unit_axis != 0:
            g = g.movedim(1, info.unit_axis + 1)
        return g.contiguous()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TargetSet":
        """Move the read-out tensors to ``device`` (selection tensors keep each layer's own dtype)."""
        self._readers = [
            (n, None if r is None else r.to(device), f.to(device), m) for n, r, f, m in self._readers
        ]
        if self._seeds is not None:
            self._seeds = {n: g.to(device) for n, g in self._seeds.items()}
        return self

    def describe(self) -> list[str]:
        return [str(t) for t in self.targets]

    def attached(self):
        """Register the capture hooks for the duration of a block (exactly these are removed)."""
        return self.tap.attached()

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` for every row of ``x`` (differentiable), in one (possibly truncated) forward.

        Call inside :meth:`attached` when any target is an inner layer.
        """
        return self._read(self._forward(x)).to(x.dtype)

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` per row and ``∇_x f`` (rows are independent when the model is in eval mode)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            captured = self._forward(xr)
            if self._seeds is None:
                f = self._read(captured)
                (g,) = torch.autograd.grad(f.sum(), xr)
                return f.detach().to(x.dtype), g
            names = list(self._seeds)
            outs = [captured[n] for n in names]
            seeds = [self._seeds[n] if o.dtype == self._seeds[n].dtype else self._seeds[n].to(o.dtype)
                     for n, o in zip(names, outs)]  # under autocast a layer may come out in bfloat16
            (g,) = torch.autograd.grad(outs, xr, seeds)
        with torch.no_grad():
            return self._read(captured).to(x.dtype), g

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x if x.dtype == self.model_dtype else x.to(self.model_dtype)
        if self.amp is None:
            return self.tap.forward(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp):
            return self.tap.forward(x)

    def _read(self, captured: dict[str, torch.Tensor]) -> torch.Tensor:
        f = None
        for name, rows, flat, use_mean in self._readers:
            a = self.layers[name].to_units(captured[name])  # [B, units, positions]
            if a.dtype != self.model_dtype:
                a = a.to(self.model_dtype)
            if rows is not None:
                a = a.index_select(0, rows)
            if use_mean:  # gather each row's unit first, then average its positions
                vals = a.gather(1, flat.unsqueeze(2).expand(-1, -1, a.shape[2])).mean(2).squeeze(1)
            else:
                vals = a.flatten(1).gather(1, flat).squeeze(1)
            if rows is None:
                f = vals
            else:
                f = (torch.zeros(self.batch, dtype=vals.dtype, device=vals.device) if f is None else f).index_put(
                    (rows,), vals, accumulate=True
                )
        assert f is not None
        return f


_AMP = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    if amp is None or amp is False or amp == "off":
        return None
    if amp not in _AMP:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return _AMP[amp]


def resolve(
    model: nn.Module,
    targets: str | Target | Iterable[str | Target],
    input_shape: Sequence[int],
    chains: int = 1,
    layers: Mapping[str, LayerInfo] | None = None,
    unit_axes: Mapping[str, str | int] | None = None,
    amp: str | None = None,
) -> TargetSet:
    """Check target strings against ``model`` and expand ranges into a :class:`TargetSet`.

    ``amp="bf16"`` (or ``"fp16"``) runs the model's forward and backward under autocast; ``f``
    and ``∇f`` come back in the chains' dtype.
    """
    specs = _as_specs(targets)
    if layers is None:
        layers = probe_layers(model, input_shape, unit_axes=unit_axes)
    expanded: list[Target] = []
    for s in specs:
        expanded.extend(_expand(s, layers, model))
    return TargetSet(model, expanded, layers, chains, amp=amp)


__all__ = ["Target", "LayerInfo", "TargetSet", "Tap", "capture", "probe_layers", "resolve", "parse"]
