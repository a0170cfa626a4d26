"""One streaming pass over a dataset: each unit's top-k rows, and the receptive-field crops.

**Ranking.** For a layer read as ``a[n, u, p]`` (example ``n``, unit ``u``, position ``p``: see
:meth:`~ldam.targets.LayerInfo.to_units`), unit ``u`` scores example ``n`` by its maximum over
positions, ``s[n, u] = max_p a[n, u, p]``, at the first position that attains it,
``p*[n, u] = argmax_p a[n, u, p]`` (as the Deep Visualization Toolbox ranks units). Unit ``u``'s
top-k are the ``k`` rows first in the order "larger ``s`` first, then lower dataset index", a total
order on distinct rows, so the top-k of a dataset is one well-defined set. :class:`TopK` keeps it
for every unit in ``O(units · k)`` memory while rows stream past, and :meth:`TopK.merge` combines
the top-k of disjoint chunks into the top-k of their union (the operation is associative and
commutative: chunks may be processed anywhere and merged in any grouping). NaN scores rank below
every number.

**Receptive fields.** :func:`receptive_field` measures, for an image model, which input pixels a
spatial position of a layer can see: the support of ``∂(Σ_u a[u, p]) / ∂x`` over a few random
inputs, fitted by a translation-equivariant box (see :class:`ReceptiveField`). :func:`crops` cuts
those boxes out of uint8 pictures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import LdamError, TargetError
from ..guard import model_guard
from ..targets import LayerInfo, Tap, _model_device, _model_dtype, probe_layers

_PAD_INDEX = -1
_GREY = 128


class TopK:
    """The running top-``k`` rows of every one of ``units`` units (module docstring: the order).

    Attributes (all on the CPU, best first along the last axis; ``k' = min(k, rows seen)``):

    - ``score [U, k']``: ``s[n, u]`` of the kept rows; ``index [U, k']`` their dataset indices;
      ``position [U, k']`` the flat position ``p*[n, u]`` (0 for a layer without positions).
    - ``max [U]``, ``min [U]``: the largest and smallest value the unit took on any row seen, at any
      position (NaN ignored; ``-inf``/``+inf`` before the first row); ``count [U]`` the rows seen.

    The buffers are ``[U, k]`` whatever the number of rows; slots not yet filled hold score
    ``-inf`` and index ``-1`` and are hidden by the attributes above.
    """

    def __init__(self, units: int, k: int, dtype: torch.dtype = torch.float32):
        if units < 1 or k < 1:
            raise ValueError(f"TopK needs units ≥ 1 and k ≥ 1, got units={units}, k={k}")
        self.units, self.k = int(units), int(k)
        self._score = torch.full((units, k), -math.inf, dtype=dtype)
        self._index = torch.full((units, k), _PAD_INDEX, dtype=torch.long)
        self._position = torch.zeros((units, k), dtype=torch.long)
        self.max = torch.full((units,), -math.inf, dtype=dtype)
        self.min = torch.full((units,), math.inf, dtype=dtype)
        self.count = torch.zeros(units, dtype=torch.long)

    @property
    def filled(self) -> int:
        """``min(k, rows seen)``: how many of the ``k`` slots hold a row."""
        return min(self.k, int(self.count.max()))

    @property
    def score(self) -> Tensor:
        return self._score[:, : self.filled]

    @property
    def index(self) -> Tensor:
        return self._index[:, : self.filled]

    @property
    def position(self) -> Tensor:
        return self._position[:, : self.filled]

    def update(self, scores: Tensor, positions: Tensor | None, offset: int, minimum: Tensor | None = None) -> None:
        """Take in rows ``offset … offset + B − 1``: ``scores [B, U]`` (``s[n, u]``), ``positions
        [B, U]`` (``p*[n, u]``; ``None`` means all 0) and optionally ``minimum [B, U]``, each row's
        minimum over positions for the running ``min`` (default: ``scores``)."""
        scores = scores.detach().to("cpu", self._score.dtype)
        if scores.dim() != 2 or scores.shape[1] != self.units:
            raise ValueError(f"scores must be [batch, {self.units}], got {list(scores.shape)}")
        b = scores.shape[0]
        if b == 0:
            return
        positions = (torch.zeros_like(scores, dtype=torch.long) if positions is None
                     else positions.detach().to("cpu", torch.long))
        if positions.shape != scores.shape:
            raise ValueError(f"positions {list(positions.shape)} must match scores {list(scores.shape)}")
        low = scores if minimum is None else minimum.detach().to("cpu", self._score.dtype)
        rows = torch.arange(offset, offset + b, dtype=torch.long).expand(self.units, b)
        self._keep(scores.T, rows, positions.T)
        self.max = torch.fmax(self.max, torch.where(scores.isnan(), -math.inf, scores).amax(0))
        self.min = torch.fmin(self.min, torch.where(low.isnan(), math.inf, low).amin(0))
        self.count = self.count + b

    def merge(self, other: "TopK") -> "TopK":
        """The top-k of the union of the rows behind ``self`` and ``other`` (which must be
        disjoint sets of dataset indices), as a new :class:`TopK`; neither input changes."""
        if (other.units, other.k) != (self.units, self.k):
            raise ValueError(f"cannot merge TopK(units={self.units}, k={self.k}) with "
                             f"TopK(units={other.units}, k={other.k})")
        out = TopK(self.units, self.k, torch.promote_types(self._score.dtype, other._score.dtype))
        out._score, out._index, out._position = self._score.to(out._score.dtype), self._index, self._position
        out._keep(other._score.to(out._score.dtype), other._index, other._position)
        out.max = torch.fmax(self.max.to(out.max.dtype), other.max.to(out.max.dtype))
        out.min = torch.fmin(self.min.to(out.min.dtype), other.min.to(out.min.dtype))
        out.count = self.count + other.count
        return out

    def _keep(self, score: Tensor, index: Tensor, position: Tensor) -> None:
        """Replace the buffers by the best ``k`` of (buffers ∪ candidates ``[U, m]``)."""
        score = torch.cat([self._score, score], 1)
        index = torch.cat([self._index, index], 1)
        position = torch.cat([self._position, position], 1)
        by_index = torch.where(index == _PAD_INDEX, torch.iinfo(torch.long).max, index).argsort(1)
        score, index, position = (t.gather(1, by_index) for t in (score, index, position))
        key = torch.where(score.isnan(), -math.inf, score)
        best = torch.sort(key, dim=1, descending=True, stable=True).indices[:, : self.k]
        self._score, self._index, self._position = (t.gather(1, best) for t in (score, index, position))

    def state(self) -> dict[str, Tensor]:
        """The full state as a dict of tensors (for ``torch.save``; see :meth:`from_state`)."""
        return {"score": self._score, "index": self._index, "position": self._position,
                "max": self.max, "min": self.min, "count": self.count}

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> "TopK":
        units, k = state["score"].shape
        top = cls(units, k, state["score"].dtype)
        top._score, top._index, top._position = state["score"], state["index"], state["position"]
        top.max, top.min, top.count = state["max"], state["min"], state["count"]
        return top

    def __repr__(self) -> str:
        return f"TopK(units={self.units}, k={self.k}, rows={int(self.count.max())})"


# ---- the streaming pass ------------------------------------------------------------------

def _batches(data: Tensor | Iterable, batch_size: int) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise TypeError(f"each batch must be a tensor of model inputs (or a tuple whose first item is one), "
                            f"got {type(x).__name__}")
        yield x


def _layer(model: nn.Module, layer: str, input_shape: Sequence[int],
           layers: Mapping[str, LayerInfo] | None) -> LayerInfo:
    if layers is None:
        layers = probe_layers(model, tuple(input_shape))
    if layer not in layers:
        raise TargetError(f"no layer named {layer!r} in {type(model).__name__}; run `ldam layers` to list them")
    info = layers[layer]
    if not info.addressable:
        raise TargetError(f"layer {layer!r} cannot be read: {info.reason}")
    return info


def stream_topk(model: nn.Module, layer: str, data: Tensor | Iterable, k: int, batch_size: int = 256,
                layers: Mapping[str, LayerInfo] | None = None, progress: bool = False, offset: int = 0) -> TopK:
    """Every unit's top-``k`` rows of ``data`` at ``layer`` (module docstring: the order), in one pass.

    ``data`` is a tensor of model inputs ``[N, *input_shape]`` (read ``batch_size`` rows at a time)
    or an iterable of such batches (or of tuples whose first item is one, as a ``DataLoader``
    yields), taken as they come. Row ``b`` of the stream is dataset index ``offset + b``: a chunk
    of a larger dataset passes its start so that :meth:`TopK.merge` of the chunks is the pass over
    the whole. Each batch goes to the model's device (floating inputs in the model's dtype); the
    forward stops at ``layer``; the model runs in eval mode and is left as found.
    """
    if isinstance(data, Tensor):
        total: int | None = len(data)
    else:
        total = None
    stream = _batches(data, batch_size)
    first = next(stream, None)
    if first is None:
        raise ValueError("stream_topk got no data")
    device, dtype = _model_device(model), _model_dtype(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"top-{k} {layer}", unit="row")
    try:
        with model_guard(model):
            info = _layer(model, layer, tuple(first.shape[1:]), layers)
            top = TopK(info.units, k, torch.promote_types(info.dtype, torch.float32))
            tap = Tap(model, [info])
            row = offset
            with tap.attached(), torch.no_grad():
                for x in chain([first], stream):
                    x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
                    a = info.to_units(tap.forward(x)[info.name]).to(top._score.dtype)
                    top.update(a.amax(2), a.argmax(2), row, a.amin(2))
                    row += len(x)
                    if bar is not None:
                        bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    return top


# ---- receptive fields --------------------------------------------------------------------

@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels each spatial position of a layer can see, as a box per position.

    Per axis (rows, then columns) the field of position ``i`` is ``[start + stride·i, stop +
    stride·i)``, half-open, before clipping to the image (translation equivariance). ``start =
    −inf`` (``stop = +inf``) means that side lay outside the image at every measured position,
    so it is the image border for every position. A layer without two spatial axes sees the whole
    image from every position (``stride`` 0, ``start −inf``, ``stop +inf``). ``image`` is
    ``(H, W)`` of the input; ``grid`` the layer's ``(h, w)`` (``(1, P)`` for ``P`` non-spatial
    positions).
    """

    image: tuple[int, int]
    grid: tuple[int, int]
    stride: tuple[float, float]
    start: tuple[float, float]
    stop: tuple[float, float]

    @property
    def size(self) -> tuple[float, float]:
        """The field's height and width before clipping (``inf`` when not seen inside the image)."""
        return (self.stop[0] - self.start[0], self.stop[1] - self.start[1])

    def box(self, position: int, clip: bool = True) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of flat position ``position`` (row-major over ``grid``), half-open,
        clipped to the image; with ``clip=False`` the measured sides may lie outside the image
        (for centred crops; a side never seen inside the image stays at the border)."""
        n = self.grid[0] * self.grid[1]
        if not 0 <= position < n:
            raise IndexError(f"position {position} is outside the layer's {self.grid[0]}x{self.grid[1]} grid")
        y, x = divmod(int(position), self.grid[1])
        y0, y1 = _edges(self.start[0], self.stop[0], self.stride[0], y, self.image[0], clip)
        x0, x1 = _edges(self.start[1], self.stop[1], self.stride[1], x, self.image[1], clip)
        return y0, y1, x0, x1

    def boxes(self, positions: Tensor | Sequence[int], clip: bool = True) -> Tensor:
        """:meth:`box` of each flat position, as a long tensor ``[*positions.shape, 4]``."""
        p = torch.as_tensor(positions, dtype=torch.long)
        out = [self.box(int(v), clip) for v in p.reshape(-1).tolist()]
        return torch.tensor(out, dtype=torch.long).reshape(*p.shape, 4)


def _edges(start: float, stop: float, stride: float, i: int, limit: int, clip: bool) -> tuple[int, int]:
    lo = 0 if start == -math.inf else math.floor(start + stride * i + 0.5)
    hi = limit if stop == math.inf else math.floor(stop + stride * i + 0.5)
    if clip:
        lo, hi = min(max(lo, 0), limit), min(max(hi, 0), limit)
    return lo, hi


def receptive_field(model: nn.Module, layer: str, input_shape: Sequence[int],
                    layers: Mapping[str, LayerInfo] | None = None, samples: int = 4, seed: int = 0,
                    max_positions: int = 16) -> ReceptiveField:
    """Measure the receptive field of ``layer``'s positions in an image model (inputs
    ``[C, H, W]`` or ``[H, W]``; the layer's positions ``(h, w)``).

    For a position ``p`` the field is the bounding box of ``{pixels (y, x) : ∂(Σ_u a[u, p]) / ∂x[·,
    y, x] ≠ 0}`` united over ``samples`` standard-normal inputs (seeded by ``seed``; the union
    guards against paths that a ReLU or a max-pool switches off for one input). Up to
    ``max_positions`` positions along the layer's diagonal, both ends included, are measured in
    batches (examples are independent in eval mode). Per axis, the edges a position's box has
    strictly inside the image (not cut by the border) are fitted by ``edge = c + stride · i``: the
    stride is the median of the pairwise slopes of those edges (Theil–Sen; ``H/h`` when fewer than
    two are seen), ``c`` the median of ``edge − stride · i``. This holds for any stack of
    convolutions and pools, whose fields are translates of one box; a layer whose value at a
    position depends on every pixel (attention, a global pool, a linear layer) gets the whole
    image. A layer without two spatial axes gets the whole image. The model is left as found.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2:
        raise ValueError(f"receptive fields need image inputs [C, H, W] or [H, W], got input shape {list(shape)}")
    height, width = shape[-2:]
    with model_guard(model):
        info = _layer(model, layer, shape, layers)
        if len(info.spatial) != 2:
            positions = max(1, math.prod(info.spatial))
            return ReceptiveField((height, width), (1, positions), (0.0, 0.0), (-math.inf, -math.inf),
                                  (math.inf, math.inf))
        h, w = info.spatial
        m = min(max(h, w), max_positions)
        ys = np.rint(np.linspace(0, h - 1, m)).astype(int)
        xs = np.rint(np.linspace(0, w - 1, m)).astype(int)
        for p in model.parameters():
            p.requires_grad_(False)
        rows, cols = _support(model, info, shape, ys * w + xs, samples, seed)
    fits = [_fit(ys, rows, height, h), _fit(xs, cols, width, w)]
    return ReceptiveField((height, width), (h, w), (fits[0][0], fits[1][0]), (fits[0][1], fits[1][1]),
                          (fits[0][2], fits[1][2]))


def _support(model: nn.Module, info: LayerInfo, shape: tuple[int, ...], flat: np.ndarray, samples: int,
             seed: int, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per measured position, the half-open row and column ranges ``[n, 2]`` of the input-gradient
    support (``[-1, -1]`` where the gradient is zero everywhere)."""
    device, dtype = _model_device(model), _model_dtype(model)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(samples, *shape, generator=g).to(device, dtype)
    tap = Tap(model, [info])
    per = max(1, chunk // samples)
    rows, cols = [], []
    with tap.attached(), torch.enable_grad():
        for i in range(0, len(flat), per):
            pos = torch.as_tensor(flat[i:i + per], dtype=torch.long, device=device)
            x = base.repeat(len(pos), *([1] * len(shape))).requires_grad_(True)
            a = info.to_units(tap.forward(x)[info.name])
            picked = a[torch.arange(len(x), device=device), :, pos.repeat_interleave(samples)]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            mask = grad.ne(0).reshape(len(pos), samples, -1, *shape[-2:]).any(2).any(1).cpu()
            rows.append(_ranges(mask.any(2)))
            cols.append(_ranges(mask.any(1)))
    return np.concatenate(rows), np.concatenate(cols)


def _ranges(mask: Tensor) -> np.ndarray:
    """``[n, L]`` boolean → ``[n, 2]``: first and one past the last true index (``-1`` if none)."""
    m = mask.numpy()
    any_ = m.any(1)
    first = np.where(any_, m.argmax(1), -1)
    last = np.where(any_, m.shape[1] - m[:, ::-1].argmax(1), -1)
    return np.stack([first, last], 1)


def _fit(idx: np.ndarray, edges: np.ndarray, limit: int, n: int) -> tuple[float, float, float]:
    """``(stride, start, stop)`` of one axis from measured ``[lo, hi)`` at positions ``idx``."""
    seen = edges[:, 0] >= 0
    if not seen.any():
        raise LdamError("the layer's value does not depend on the input at any measured position, so it has no "
                        "receptive field")
    lo_ok = seen & (edges[:, 0] > 0)
    hi_ok = seen & (edges[:, 1] < limit)
    slopes = []
    for ok, col in ((lo_ok, 0), (hi_ok, 1)):
        i, e = idx[ok].astype(float), edges[ok, col].astype(float)
        di = i[:, None] - i[None, :]
        de = e[:, None] - e[None, :]
        upper = np.triu(di != 0, 1)
        slopes.append(de[upper] / di[upper])
    slopes_all = np.concatenate(slopes)
    stride = float(np.median(slopes_all)) if len(slopes_all) else limit / n
    start = float(np.median(edges[lo_ok, 0] - stride * idx[lo_ok])) if lo_ok.any() else -math.inf
    stop = float(np.median(edges[hi_ok, 1] - stride * idx[hi_ok])) if hi_ok.any() else math.inf
    return stride, start, stop


# ---- crops -------------------------------------------------------------------------------

def _square(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` to length ``side``: away from the image border it touches (so that a box cut
    by the border regains its centre), else evenly on both sides."""
    d = side - (hi - lo)
    if d <= 0:
        return lo, hi
    at_low, at_high = lo <= 0, hi >= limit
    if at_low and not at_high:
        return lo - d, hi
    if at_high and not at_low:
        return lo, hi + d
    return lo - d // 2, hi + d - d // 2


def crops(images: Tensor, indices: Tensor | Sequence[int], boxes: Tensor | Sequence[Sequence[int]],
          size: int) -> Tensor:
    """The boxes ``(y0, y1, x0, x1)`` (half-open) of pictures ``images[indices]`` as uint8 squares
    ``[k, C, s, s]`` (``C = 1`` for ``[N, H, W]`` pictures).

    Each box is first made square by growing its shorter side: away from an image border it
    touches, else evenly. A box cut by the border (as :meth:`ReceptiveField.box` returns it) thus
    regains its full extent with the unit's position at the centre (exact unless it is cut on both
    ends of an axis or equally at a corner); boxes from ``box(p, clip=False)`` may already lie
    partly outside the image. Pixels outside the image are mid-grey (128). Every square is then
    resized, bilinear with antialiasing, to ``s × s`` with ``s = min(size, largest square side)``;
    a square already ``s`` wide is copied exactly.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"crops takes uint8 pictures, got {images.dtype}; convert with "
                        "(x * 255).round().clamp(0, 255).to(torch.uint8)")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"crops takes pictures [N, C, H, W] or [N, H, W], got {list(images.shape)}")
    _, c, height, width = images.shape
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    bx = torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)
    if len(idx) != len(bx):
        raise ValueError(f"{len(idx)} indices but {len(bx)} boxes")
    if len(idx) == 0:
        return torch.zeros(0, c, size, size, dtype=torch.uint8)
    squares = []
    for y0, y1, x0, x1 in bx.tolist():
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"empty box {(y0, y1, x0, x1)}")
        side = max(y1 - y0, x1 - x0)
        squares.append(_square(y0, y1, side, height) + _square(x0, x1, side, width))
    s = min(size, max(q[1] - q[0] for q in squares))
    out = torch.empty(len(idx), c, s, s, dtype=torch.uint8)
    for j, (n, (y0, y1, x0, x1)) in enumerate(zip(idx.tolist(), squares)):
        side = y1 - y0
        canvas = torch.full((c, side, side), _GREY, dtype=torch.uint8)
        ty0, ty1, tx0, tx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
        if ty1 > ty0 and tx1 > tx0:
            canvas[:, ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = images[n, :, ty0:ty1, tx0:tx1]
        if side == s:
            out[j] = canvas
        else:
            resized = torch.nn.functional.interpolate(canvas[None].float(), size=(s, s), mode="bilinear",
                                                      align_corners=False, antialias=True)
            out[j] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out


__all__ = ["TopK", "stream_topk", "ReceptiveField", "receptive_field", "crops"]
