"""The atlas as a static site: plain HTML, CSS and vanilla JS that open from disk, no server.

Layout, under an atlas folder ``DIR`` (see :mod:`ldam.atlas.store`)::

    DIR/index.html                          the model, the sampler, each layer's progress
    DIR/site/atlas.css, DIR/site/atlas.js   copied from ``ldam/atlas/static``
    DIR/site/<layer>/index.html             the layer's grid of units (sortable, lazy thumbnails)
    DIR/site/<layer>/layer.js               the layer's table: ``window.ATLAS_LAYER = {...}``
    DIR/site/<layer>/rows/<unit>.json       one unit's row of that table (written with its page)
    DIR/site/<layer>/<unit>.html            one unit: diagnostics, facets, samples, top-k images
    DIR/site/<layer>/img/<unit>_*.png       its pictures (thumb, starts, means, last, topk)

``<layer>`` is :func:`~ldam.atlas.store.layer_dir_name`. Data reach the pages as ``<script src>``
files that assign a global, never by ``fetch``: Chromium refuses ``fetch`` of ``file://`` URLs.
Every file is written to a temporary name and renamed over its final name.

Pictures. A grid is :func:`ldam.render.grid` with ``PAD`` pixels of padding and a whole zoom
``max(1, TILE // height)``, so a tile of an ``h × w`` picture is ``h·z × w·z`` and a grid of ``n``
tiles ``ncol`` per row is ``PAD + ncol·(w·z + PAD)`` wide and ``PAD + ⌈n/ncol⌉·(h·z + PAD)`` high.
``starts`` is one row of ``F`` facet starts; ``means`` and ``last`` are ``F`` rows (facets) of
``chains`` tiles; ``topk`` is the ``k`` crops, ``⌈√k⌉`` per row; ``thumb`` is the chain mean
averaged over every facet and chain, at most ``THUMB`` pixels on its longer side (shrunk, never
enlarged: the page scales it without smoothing). Model-unit images are shown as the manifest's
``display`` says (``"pixel"``: un-normalized with its ``mean``/``std``; ``"signed"``: the paper's
signed display); the top-k crops are pixels already.

Activation trace. One inline SVG per facet, ``TRACE_W × TRACE_H`` user units, one polyline per
chain of the facet. Step ``t`` of ``T`` and activation ``v`` map to::

    x = TRACE_M + (TRACE_W − 2·TRACE_M) · t / (T − 1)        (T = 1: x = TRACE_W / 2)
    y = TRACE_M + (TRACE_H − 2·TRACE_M) · (hi − v) / (hi − lo)   (hi = lo: y = TRACE_H / 2)

where ``lo``/``hi`` are the least and greatest finite values of the unit's whole trace (every
facet, so facets share one scale); each point is printed with two decimals. Steps ``0, s, 2s, …``
and the last step are drawn, with ``s = ⌈T / TRACE_POINTS⌉``; non-finite values are left out of
the line. The unit's best dataset activation (``diagnostics["data_max"]``, else the top-1 score)
is a dashed line at its ``y`` when it lies in ``[lo, hi]``; else the caption says it is above or
below (the chains' own range stays readable however far they are from the data).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..render import grid, png_bytes, to_image
from ..io import atomic_write_bytes
from .store import AtlasStore, UnitRecord, layer_dir_name, write_text_atomic

STATIC = Path(__file__).parent / "static"
ASSETS = ("atlas.css", "atlas.js")
SITE = "site"
TILE = 64
THUMB = 64
PAD = 2
TRACE_W, TRACE_H, TRACE_M = 320, 96, 4
TRACE_POINTS = 400
LIVE_ORIGIN = "http://127.0.0.1:8765"

#: Diagnostics the pages name (in this order), each under the first of its keys that the record
#: holds (:func:`ldam.atlas.diagnostics.unit_diagnostics` writes the first key of each); any other
#: key is listed after them under its own name.
KNOWN: dict[str, tuple[str, tuple[str, ...]]] = {
    "activation": ("mean activation", ("activation", "mean_activation", "final_activation")),
    "rhat_facet": ("split-R̂, worst facet", ("rhat_facet", "max_rhat")),
    "rhat": ("split-R̂, all chains", ("rhat", "split_rhat", "r_hat")),
    "ess": ("ESS", ("ess", "min_ess", "ess_bulk")),
    "acceptance": ("acceptance", ("acceptance", "acceptance_rate", "accept_rate")),
    "data_max": ("best dataset activation", ("data_max", "topk_max")),
    "dead": ("dead", ("dead",)),
    "converged": ("converged", ("converged",)),
    "not_converged": ("not converged", ("not_converged", "unconverged")),
}


# ---- small helpers ------------------------------------------------------------------------
def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _plain(v: Any) -> Any:
    """``v`` with tensors and numpy values turned into Python numbers and lists."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 and v.dim() == 0 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def fmt(v: Any) -> str:
    """A diagnostic as the pages print it: floats to 4 significant digits, flags as yes/no."""
    v = _plain(v)
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v[:64]) + (" …" if len(v) > 64 else "")
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt(x)}" for k, x in v.items())
    return str(v)


def _number(v: Any) -> float | None:
    v = _plain(v)
    if isinstance(v, bool) or v is None:
        return None if v is None else float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        return float(max(v))  # a per-facet list: its worst (largest) value
    return None


def _key(diag: dict[str, Any], name: str) -> str | None:
    return next((k for k in KNOWN[name][1] if k in diag), None)


def _flag(diag: dict[str, Any], name: str) -> bool:
    k = _key(diag, name)
    if k is not None:
        return bool(_number(diag[k]) or False)
    if name == "not_converged" and "converged" in diag:
        return not bool(_plain(diag["converged"]))
    return False


def _zoom(h: int) -> int:
    return max(1, TILE // max(1, h))


def _grid_size(tile: tuple[int, int], n: int, ncol: int) -> tuple[int, int]:
    """``(width, height)`` of a :func:`ldam.render.grid` of ``n`` tiles of ``tile`` (already zoomed)."""
    w, h = tile
    return PAD + ncol * (w + PAD), PAD + (-(-n // ncol)) * (h + PAD)


def _crop_image(a: np.ndarray) -> Image.Image:
    """A uint8 crop ``[C, s, s]`` (or a signal ``[C, s]``) as a picture."""
    if a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a), mode="L")
    if a.shape[0] == 3:
        return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), mode="RGB")
    if a.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(a[0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(np.concatenate(list(a), axis=1)), mode="L")


def _put(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically, unless ``path`` holds it already (a rebuild of an
    unchanged atlas rewrites nothing, and a served page is never replaced by itself)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if path.stat().st_size == len(raw) and path.read_bytes() == raw:
            return
    except OSError:
        pass
    atomic_write_bytes(path, raw)


def _site(store: AtlasStore) -> Path:
    return store.root / SITE


def _layer_site(store: AtlasStore, layer: str) -> Path:
    return _site(store) / layer_dir_name(layer)


def _write_assets(store: AtlasStore) -> None:
    """Copy the site's CSS and JS beside the layer folders (only when they differ)."""
    for name in ASSETS:
        _put(_site(store) / name, (STATIC / name).read_bytes())


def _page(title: str, body: str, css: str, scripts: Sequence[str] = (), page: str = "") -> str:
    tags = "".join(f'<script src="{_esc(s)}"></script>' for s in scripts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_esc(title)}</title><link rel="stylesheet" href="{_esc(css)}"></head>\n'
            f'<body data-page="{page}">\n{body}\n{tags}\n</body></html>\n')


def _layer_units(manifest: dict[str, Any], layer: str) -> int | None:
    for entry in manifest.get("layers", []):
        if entry.get("name") == layer:
            return int(entry["units"])
    return None


def _js_data(obj: Any) -> str:
    """``obj`` as a JavaScript literal (``NaN``/``Infinity`` allowed: this is JS, not JSON)."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


# ---- the pictures -------------------------------------------------------------------------
def _display(manifest: dict[str, Any]) -> dict[str, Any]:
    d = manifest.get("display") or "signed"
    if d == "pixel":
        return {"display": "pixel", "mean": tuple(manifest.get("mean") or (0.0,)),
                "std": tuple(manifest.get("std") or (1.0,))}
    return {"display": "signed"}


def _model_grid(x: torch.Tensor, ncol: int, manifest: dict[str, Any]) -> Image.Image:
    """Model-unit images ``[n, *input_shape]`` as a grid, ``ncol`` per row."""
    d = _display(manifest)
    ims = [to_image(xi, **d) for xi in x.detach().cpu().float()]
    return grid(ims, ncol, pad=PAD, zoom=_zoom(ims[0].size[1]))


def trace_points(values: Sequence[float], lo: float, hi: float) -> list[tuple[float, float]]:
    """The polyline points of one chain's trace (the module docstring's map), rounded to 0.01."""
    n = len(values)
    step = max(1, -(-n // TRACE_POINTS))
    ts = list(range(0, n, step))
    if n and ts[-1] != n - 1:
        ts.append(n - 1)
    out = []
    for t in ts:
        v = float(values[t])
        if not math.isfinite(v):
            continue
        x = TRACE_W / 2 if n == 1 else TRACE_M + (TRACE_W - 2 * TRACE_M) * t / (n - 1)
        out.append((round(x, 2), round(_y(v, lo, hi), 2)))
    return out


def _trace_range(trace: torch.Tensor) -> tuple[float, float] | None:
    """``(lo, hi)``: the least and greatest finite values of ``trace`` (``None``: there are none)."""
    vals = trace.detach().double().flatten()
    vals = vals[torch.isfinite(vals)]
    return (float(vals.min()), float(vals.max())) if vals.numel() else None


def _y(v: float, lo: float, hi: float) -> float:
    return TRACE_H / 2 if hi == lo else TRACE_M + (TRACE_H - 2 * TRACE_M) * (hi - v) / (hi - lo)


COLOURS = ("#6cb6ff", "#f2cc60", "#7ee787", "#ff7b72", "#d2a8ff", "#ffa657", "#56d4dd", "#e6e6e6")


def trace_svg(trace: torch.Tensor, facet: int, chains: int, lo: float, hi: float, data_max: float | None) -> str:
    """The SVG of facet ``facet``'s chains (columns ``facet·chains …`` of ``trace [steps, F·chains]``)."""
    parts = [f'<svg class="trace" data-facet="{facet}" data-lo="{lo!r}" data-hi="{hi!r}" '
             f'viewBox="0 0 {TRACE_W} {TRACE_H}" width="{TRACE_W}" height="{TRACE_H}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img">'
             f'<title>activation of facet {facet}\'s chains at every step ({fmt(lo)} to {fmt(hi)})</title>']
    if data_max is not None and lo <= data_max <= hi:
        y = _y(data_max, lo, hi)
        parts.append(f'<line class="datamax" x1="0" x2="{TRACE_W}" y1="{y:.2f}" y2="{y:.2f}"/>')
    cols = trace[:, facet * chains:(facet + 1) * chains].detach().double().cpu().numpy()
    for c in range(cols.shape[1]):
        pts = trace_points(cols[:, c].tolist(), lo, hi)
        if pts:
            text = " ".join(f"{x:.2f},{y:.2f}" for x, y in pts)
            parts.append(f'<polyline data-chain="{c}" stroke="{COLOURS[c % len(COLOURS)]}" points="{text}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _sprite(src: str, x: int, y: int, w: int, h: int, cls: str = "sprite", title: str = "") -> str:
    """A ``w × h`` window at ``(x, y)`` of the picture ``src`` (one PNG holds a whole grid)."""
    t = f' title="{_esc(title)}"' if title else ""
    return (f'<div class="{cls}" role="img"{t} style="width:{w}px;height:{h}px;'
            f'background-image:url({_esc(src)});background-position:-{x}px -{y}px"></div>')


# ---- one unit -----------------------------------------------------------------------------
def unit_row(rec: UnitRecord) -> dict[str, Any]:
    """The unit's row of its layer's table: the numbers its card shows and sorts by."""
    diag = {str(k): _plain(v) for k, v in (rec.diagnostics or {}).items()}
    row: dict[str, Any] = {"u": int(rec.unit), "s": "done"}
    for short, names in (("a", ("activation",)), ("r", ("rhat_facet", "rhat")), ("e", ("ess",)),
                         ("c", ("acceptance",)), ("m", ("data_max",))):
        k = next((k for k in (_key(diag, n) for n in names) if k is not None), None)
        row[short] = _number(diag[k]) if k is not None else None
    if row["m"] is None and rec.topk_score.numel():
        row["m"] = float(rec.topk_score.flatten()[0])
    if row["a"] is None and rec.trace.numel():
        tail = rec.trace[-math.ceil(rec.trace.shape[0] / 4):].double()  # as ldam.atlas.diagnostics
        tail = tail[torch.isfinite(tail)]
        row["a"] = float(tail.mean()) if tail.numel() else None
    row["d"] = _flag(diag, "dead")
    row["n"] = _flag(diag, "not_converged")
    row["f"] = rec.facets
    row["t"] = rec.chain_means.numel() > 0
    return row


def _diag_table(rec: UnitRecord, row: dict[str, Any]) -> str:
    diag = {str(k): _plain(v) for k, v in (rec.diagnostics or {}).items()}
    lines, shown = [], set()
    for name, (label, keys) in KNOWN.items():
        k = _key(diag, name)
        if k is not None:
            lines.append((k, label, diag[k]))
            shown.add(k)
        elif name == "data_max" and row["m"] is not None:
            lines.append(("data_max", label + " (top-1 score)", row["m"]))
        elif name == "activation" and row["a"] is not None:
            lines.append(("activation", label + " (last quarter of the trace)", row["a"]))
    for k in sorted(set(diag) - shown):
        lines.append((k, k.replace("_", " "), diag[k]))
    body = "".join(f'<tr data-key="{_esc(k)}"><th>{_esc(label)}</th><td>{_esc(fmt(v))}</td></tr>'
                   for k, label, v in lines)
    return f'<table class="diag" id="diagnostics">{body}</table>'


def _unit_images(store: AtlasStore, rec: UnitRecord, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the unit's PNGs; return their names and layouts for the page."""
    img = _layer_site(store, rec.layer) / "img"
    u = rec.unit
    out: dict[str, Any] = {}
    if rec.chain_means.numel():
        F, chains = int(rec.chain_means.shape[0]), int(rec.chain_means.shape[1])
        d = _display(manifest)
        mean = to_image(rec.chain_means.detach().cpu().double().mean((0, 1)), **d)
        if max(mean.size) > THUMB:
            s = THUMB / max(mean.size)
            mean = mean.resize((max(1, round(mean.width * s)), max(1, round(mean.height * s))), Image.LANCZOS)
        _put(img / f"{u}_thumb.png", png_bytes(mean))
        out["thumb"] = (f"img/{u}_thumb.png", mean.size)
        first = to_image(rec.chain_means[0, 0].detach().cpu().float(), **d)
        z = _zoom(first.size[1])
        out["tile"] = (first.size[0] * z, first.size[1] * z)
        out["F"], out["chains"] = F, chains
        grids = {"starts": (rec.facet_starts, F), "means": (rec.chain_means.flatten(0, 1), chains),
                 "last": (rec.chain_last.flatten(0, 1), chains)}
        for name, (x, ncol) in grids.items():
            if x.numel():
                g = _model_grid(x, ncol, manifest)
                _put(img / f"{u}_{name}.png", png_bytes(g))
                out[name] = (f"img/{u}_{name}.png", g.size)
    k = int(rec.topk_crops.shape[0]) if rec.topk_crops.dim() else 0
    if k:
        crops = rec.topk_crops.detach().cpu().to(torch.uint8).numpy()
        ims = [_crop_image(c) for c in crops]
        ncol = math.ceil(math.sqrt(k))
        z = _zoom(ims[0].size[1])
        g = grid(ims, ncol, pad=PAD, zoom=z)
        _put(img / f"{u}_topk.png", png_bytes(g))
        out["topk"] = (f"img/{u}_topk.png", g.size)
        out["topk_tile"] = (ims[0].size[0] * z, ims[0].size[1] * z)
        out["topk_ncol"] = ncol
    return out


def _live_link(manifest: dict[str, Any], layer: str, unit: int) -> str:
    live = manifest.get("live_model")
    if not live:
        return ""
    return (f'<a id="live" class="live" hidden data-origin="{LIVE_ORIGIN}" data-model="{_esc(live)}" '
            f'data-layer="{_esc(layer)}" data-unit="{int(unit)}" href="#">Open in the live sampler →</a>')


def _badges(row: dict[str, Any]) -> str:
    return ("".join([' <span class="badge dead">dead</span>' if row.get("d") else "",
                     ' <span class="badge nc">not converged</span>' if row.get("n") else ""]))


def write_unit_page(store: AtlasStore, rec: UnitRecord, manifest: dict[str, Any]) -> None:
    """Write unit ``rec.layer:rec.unit``'s pictures, its page and its row of the layer's table."""
    _write_assets(store)
    here = _layer_site(store, rec.layer)
    u, layer = int(rec.unit), rec.layer
    row = unit_row(rec)
    ims = _unit_images(store, rec, manifest)
    units = _layer_units(manifest, layer)
    title = f"{layer}:{u}"

    nav = ['<a href="../../index.html">Atlas</a>', f'<a href="index.html">Layer {_esc(layer)}</a>']
    if u > 0:
        nav.append(f'<a href="{u - 1}.html" rel="prev">← unit {u - 1}</a>')
    if units is None or u + 1 < units:
        nav.append(f'<a href="{u + 1}.html" rel="next">unit {u + 1} →</a>')
    nav.append(_live_link(manifest, layer, u))
    header = f'<header><h1>ldam atlas</h1>{"".join(nav)}</header>'

    thumb = ""
    if "thumb" in ims:
        src, (w, h) = ims["thumb"]
        s = max(1, 128 // max(w, h))
        thumb = (f'<figure><img class="pix" src="{_esc(src)}" width="{w * s}" height="{h * s}" alt="facet-averaged chain mean">'
                 f'<figcaption>chain mean, all facets</figcaption></figure>')
    summary = (f'<section class="summary"><h2>{_esc(title)}{_badges(row)}</h2>'
               f'<div class="views">{thumb}{_diag_table(rec, row)}</div></section>')

    labels = rec.facet_labels.flatten().tolist() if rec.facet_labels.numel() else []
    if "F" in ims:
        F, chains = ims["F"], ims["chains"]
        tw, th = ims["tile"]
        rng = _trace_range(rec.trace) if rec.trace.numel() else None
        rows = []
        for f in range(F):
            share = f'<div class="stats">{labels.count(f)} of the top {len(labels)} images</div>' if labels else ""
            cells = [f'<th>facet {f}{share}</th>']
            if "starts" in ims:
                cells.append("<td>" + _sprite(ims["starts"][0], f * (tw + PAD), 0, tw + 2 * PAD, th + 2 * PAD,
                                              title=f"facet {f}: start") + "</td>")
            for name in ("means", "last"):
                if name in ims:
                    gw = ims[name][1][0]
                    cells.append("<td>" + _sprite(ims[name][0], 0, f * (th + PAD), gw, th + 2 * PAD,
                                                  title=f"facet {f}: chain {'means' if name == 'means' else 'last states'}") + "</td>")
            if rng is not None:
                cells.append("<td>" + trace_svg(rec.trace, f, chains, rng[0], rng[1], row["m"]) + "</td>")
            rows.append(f'<tr data-facet="{f}">{"".join(cells)}</tr>')
        head = ("<tr><th></th>" + ("<th>start</th>" if "starts" in ims else "")
                + f"<th>chain means ({chains} chains)</th><th>last states</th>"
                + ("<th>activation trace</th>" if rng is not None else "") + "</tr>")
        scale = ""
        if rng is not None:
            m = row["m"]
            where = ("" if m is None else f"; dashed: the best dataset image ({fmt(m)})" if rng[0] <= m <= rng[1]
                     else f"; the best dataset image ({fmt(m)}) is {'above' if m > rng[1] else 'below'} the plot")
            scale = (f'<p class="note">Trace: every chain\'s target activation at every step, from {fmt(rng[0])} '
                     f'(bottom) to {fmt(rng[1])} (top){_esc(where)}.</p>')
        facets = (f'<section><h2>Facets and samples</h2><table class="facets">{head}{"".join(rows)}</table>{scale}'
                  f'<p class="note">Pictures: <a href="{_esc(ims.get("starts", ("",))[0])}">starts</a> · '
                  f'<a href="{_esc(ims.get("means", ("",))[0])}">chain means</a> · '
                  f'<a href="{_esc(ims.get("last", ("",))[0])}">last states</a></p></section>')
    else:
        facets = '<section><h2>Facets and samples</h2><p class="note">No samples for this unit.</p></section>'

    topk = ""
    if "topk" in ims:
        tw, th = ims["topk_tile"]
        ncol = ims["topk_ncol"]
        idx = rec.topk_index.flatten().tolist()
        score = rec.topk_score.flatten().tolist()
        figs = []
        for i in range(len(idx)):
            r, c = divmod(i, ncol)
            fac = f" · facet {labels[i]}" if "F" in ims and i < len(labels) else ""
            figs.append(f'<figure class="crop" data-rank="{i}" data-index="{int(idx[i])}" data-score="{score[i]!r}">'
                        + _sprite(ims["topk"][0], PAD + c * (tw + PAD), PAD + r * (th + PAD), tw, th,
                                  title=f"dataset row {int(idx[i])}")
                        + f'<figcaption>#{int(idx[i])} · <b>{_esc(fmt(float(score[i])))}</b>{fac}</figcaption></figure>')
        ds = manifest.get("dataset") or "the dataset"
        topk = (f'<section><h2>Top {len(idx)} images of {_esc(ds)}</h2><div class="crops">{"".join(figs)}</div>'
                f'<p class="note">Receptive-field crops around each image\'s maximal position; '
                f'#dataset row · score (the unit\'s maximum over positions). <a href="{_esc(ims["topk"][0])}">All in one picture</a></p></section>')
    elif manifest.get("dataset"):
        topk = '<section><h2>Top dataset images</h2><p class="note">None recorded for this unit.</p></section>'

    body = f'{header}\n<main class="unit">{summary}{facets}{topk}</main>'
    _put(here / f"{u}.html", _page(f"atlas: {title}", body, "../atlas.css", ["../atlas.js"], "unit"))
    # last, and always rewritten: its time stamp says the page is newer than the shard
    write_text_atomic(here / "rows" / f"{u}.json", json.dumps(row))


# ---- one layer ----------------------------------------------------------------------------
def _rows(store: AtlasStore, manifest: dict[str, Any], layer: str, refresh: bool) -> dict[int, dict[str, Any]]:
    """The rows of ``layer``'s computed units, writing any unit page that is missing or older than
    its shard (all of them when ``refresh``)."""
    rows = {}
    rowdir = _layer_site(store, layer) / "rows"
    for u in sorted(store.done_units(layer)):
        path = rowdir / f"{u}.json"
        stale = refresh or not path.exists() or path.stat().st_mtime < store.unit_path(layer, u).stat().st_mtime
        if stale:
            write_unit_page(store, store.read_unit(layer, u), manifest)
        try:
            rows[u] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            write_unit_page(store, store.read_unit(layer, u), manifest)
            rows[u] = json.loads(path.read_text())
    return rows


def _counts(rows: Iterable[dict[str, Any]], units: int) -> dict[str, int]:
    rows = list(rows)
    return {"units": units, "done": len(rows), "dead": sum(bool(r.get("d")) for r in rows),
            "not_converged": sum(bool(r.get("n")) for r in rows)}


def write_layer_index(store: AtlasStore, manifest: dict[str, Any], layer: str, _refresh: bool = False) -> None:
    """Write ``layer``'s page, its table ``layer.js`` and ``summary.json`` (the counts the atlas
    index shows). Units computed since their page was written get their page first."""
    _write_assets(store)
    here = _layer_site(store, layer)
    done = _rows(store, manifest, layer, _refresh)
    units = _layer_units(manifest, layer)
    units = max([units or 0, *(u + 1 for u in done)])
    rows = [done.get(u, {"u": u, "s": "pending"}) for u in range(units)]
    counts = _counts(done.values(), units)
    data = {"layer": layer, "units": units, "counts": counts, "rows": rows, "thumb": THUMB,
            "live_model": manifest.get("live_model"), "live_origin": LIVE_ORIGIN}
    _put(here / "layer.js", f"window.ATLAS_LAYER = {_js_data(data)};\n")
    _put(here / "summary.json", json.dumps(counts))
    pending = units - counts["done"]
    sorts = [("unit", "unit"), ("activation", "activation ↓"), ("rhat", "R̂ ↓ (worst facet)"), ("ess", "ESS ↑"),
             ("data_max", "data max ↓"), ("dead", "dead first"), ("not_converged", "not converged first")]
    options = "".join(f'<option value="{v}">{_esc(t)}</option>' for v, t in sorts)
    body = (f'<header><h1>ldam atlas</h1><a href="../../index.html">Atlas</a><a class="here" href="#">Layer {_esc(layer)}</a>'
            f'<span class="stats" id="counts">{counts["done"]}/{units} units · {counts["dead"]} dead · '
            f'{counts["not_converged"]} not converged · {pending} pending</span></header>\n'
            f'<main class="layer"><section><div class="row controls">'
            f'<label for="sort">Sort by</label><select id="sort">{options}</select>'
            f'<label><input type="checkbox" id="reverse"> reverse</label>'
            f'<label for="goto">Unit</label><input id="goto" type="number" min="0" max="{units - 1}" style="width:6em" '
            f'placeholder="0–{units - 1}"></div>'
            f'<div id="grid" class="grid" aria-live="polite"></div>'
            f'<noscript><p class="note">This page lists its units with JavaScript; '
            f'the unit pages are <code>&lt;unit&gt;.html</code> beside it.</p></noscript></section></main>')
    _put(here / "index.html", _page(f"atlas: {layer}", body, "../atlas.css", ["layer.js", "../atlas.js"], "layer"))


# ---- the atlas ----------------------------------------------------------------------------
def _kv_table(items: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    return f'<table class="{cls}">' + "".join(f'<tr data-key="{_esc(k)}"><th>{_esc(k)}</th><td>{_esc(fmt(v) if not isinstance(v, str) else v)}</td></tr>'
                                            for k, v in items) + "</table>"


def write_index(store: AtlasStore, manifest: dict[str, Any]) -> None:
    """Write ``DIR/index.html``: the model, the dataset, the sampler, and each layer's progress
    (from the layer's ``summary.json`` when written, else the shards present)."""
    _write_assets(store)
    sha = str(manifest.get("model_sha256") or "")
    model = [("model", str(manifest.get("model"))),
             ("model sha256", sha[:16] + ("…" if len(sha) > 16 else "")),
             ("input shape", "×".join(str(s) for s in manifest.get("input_shape") or [])),
             ("dataset", (f"{manifest['dataset']} ({manifest['dataset_rows']} rows)" if manifest.get("dataset_rows")
                          else manifest.get("dataset")) or "none"),
             ("top-k", manifest.get("k")), ("facets at most", manifest.get("max_facets")),
             ("seed", manifest.get("seed")), ("display", manifest.get("display") or "signed")]
    sampler = sorted((str(k), v) for k, v in (manifest.get("sampler") or {}).items())
    rows, totals = [], {"units": 0, "done": 0, "dead": 0, "not_converged": 0}
    for entry in manifest.get("layers", []):
        layer, units = str(entry["name"]), int(entry["units"])
        path = _layer_site(store, layer) / "summary.json"
        c = None
        if path.exists():
            try:
                c = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                c = None
        done = len(store.done_units(layer))
        if c is None or c.get("done") != done:  # the summary is stale: counts of flags unknown
            c = {"units": units, "done": done, "dead": None, "not_converged": None}
        for k in totals:
            totals[k] += c.get(k) or 0
        pct = 100.0 * c["done"] / units if units else 100.0
        link = f"{SITE}/{layer_dir_name(layer)}/index.html"
        rows.append(f'<tr data-layer="{_esc(layer)}"><th><a href="{_esc(link)}">{_esc(layer)}</a></th>'
                    f'<td class="num">{units}</td><td class="num">{c["done"]}</td>'
                    f'<td class="num">{"?" if c["dead"] is None else c["dead"]}</td>'
                    f'<td class="num">{"?" if c["not_converged"] is None else c["not_converged"]}</td>'
                    f'<td class="num">{units - c["done"]}</td>'
                    f'<td><div class="bar" title="{pct:.0f}% done"><div style="width:{pct:.1f}%"></div></div></td></tr>')
    layers = ('<table class="layers" id="layers"><tr><th>layer</th><th>units</th><th>done</th><th>dead</th>'
              '<th>not converged</th><th>pending</th><th></th></tr>' + "".join(rows) + "</table>")
    live = manifest.get("live_model")
    live_nav = (f'<a id="live" class="live" hidden data-origin="{LIVE_ORIGIN}" data-model="{_esc(live)}" href="#">Live sampler →</a>'
                if live else "")
    body = (f'<header><h1>ldam atlas</h1><a class="here" href="#">{_esc(manifest.get("model"))}</a>{live_nav}'
            f'<span class="stats">{totals["done"]}/{totals["units"]} units · {totals["dead"]} dead · '
            f'{totals["not_converged"]} not converged</span></header>\n'
            f'<main class="index"><section><h2>Layers</h2>{layers}</section>'
            f'<section><h2>Model and data</h2>{_kv_table(model)}</section>'
            f'<section><h2>Sampler</h2>{_kv_table(sampler)}</section></main>')
    _put(store.root / "index.html", _page(f"atlas: {manifest.get('model')}", body, f"{SITE}/atlas.css",
                                                       [f"{SITE}/atlas.js"], "index"))


def build_site(store: AtlasStore | str | Path) -> Path:
    """(Re)write the whole site from the manifest and every shard; return ``DIR/index.html``.
    Idempotent; units without a shard are shown as pending."""
    if not isinstance(store, AtlasStore):
        store = AtlasStore(store)
    manifest = store.read_manifest()
    if manifest is None:
        from ..errors import LdamError

        raise LdamError(f"{store.root} holds no atlas ({store.manifest_path.name} is missing); "
                        "run the atlas into that folder first")
    for entry in manifest.get("layers", []):
        write_layer_index(store, manifest, str(entry["name"]), _refresh=True)
    write_index(store, manifest)
    return store.root / "index.html"


__all__ = ["build_site", "write_unit_page", "write_layer_index", "write_index", "trace_points", "trace_svg",
           "unit_row", "fmt", "TILE", "THUMB", "PAD", "TRACE_W", "TRACE_H", "TRACE_M", "TRACE_POINTS"]
