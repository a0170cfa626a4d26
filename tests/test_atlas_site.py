"""The atlas's static site (:mod:`ldam.atlas.site`) checked against the records it was built from:
the numbers each unit page prints, the pictures' sizes and pixels (a numpy reference of both
displays), the trace's polyline points (the documented affine map), pending units; the site served
by the live server behind its guard; and the pages driven from disk in Chromium (Debian's).
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldam.atlas.site import PAD, THUMB, TILE, TRACE_H, TRACE_M, TRACE_POINTS, TRACE_W, build_site, write_layer_index
from ldam.atlas.store import AtlasStore, UnitRecord, layer_dir_name
from ldam.errors import LdamError
from web_helpers import LOCAL

K, F, CHAINS, STEPS, N_TOP, CROP = 9, 2, 2, 50, 20, 5
LAYERS = [("conv", 6), ("fc#1", 3)]
PENDING = {("conv", 2), ("fc#1", 1), ("fc#1", 2)}
LONG = ("conv", 4)  # this unit's trace is long (decimated) and holds a NaN
LIVE = "zoo:tiny"


def record(layer: str, unit: int, shape: tuple[int, ...], g: torch.Generator, facets: int = F, chains: int = CHAINS,
           k: int = K, steps: int = STEPS) -> UnitRecord:
    """A unit's record with random contents of the documented shapes."""
    c = shape[0]
    score = (torch.rand(k, generator=g) * 10).sort(descending=True).values
    trace = torch.randn(steps, facets * chains, generator=g, dtype=torch.float64).cumsum(0).float()
    if (layer, unit) == LONG:
        trace[18, 1] = float("nan")
    return UnitRecord(
        layer=layer, unit=unit,
        topk_index=torch.randperm(10_000, generator=g)[:k].clone(),
        topk_score=score,
        topk_box=torch.randint(0, 8, (k, 4), generator=g),
        topk_crops=torch.randint(0, 256, (k, c, CROP, CROP), generator=g, dtype=torch.uint8),
        facet_labels=torch.randint(0, facets, (N_TOP,), generator=g),
        facet_starts=torch.randn(facets, *shape, generator=g),
        chain_means=torch.randn(facets, chains, *shape, generator=g),
        chain_last=torch.randn(facets, chains, *shape, generator=g),
        trace=trace,
        # the keys of ldam.atlas.diagnostics.unit_diagnostics
        diagnostics={"rhat": 1.0 + float(torch.rand(1, generator=g)), "rhat_facet": 1.0 + float(torch.rand(1, generator=g)),
                     "ess": 500 * float(torch.rand(1, generator=g)), "acceptance": float(torch.rand(1, generator=g)),
                     "activation": float(trace[-math.ceil(steps / 4):].mean()), "data_max": float(score[0]),
                     "dead": unit % 3 == 1, "converged": unit % 2 == 0})


def make_atlas(root: Path, shape: tuple[int, ...], display: str, live: str | None,
               layers=LAYERS, pending=PENDING, **kw) -> dict:
    store = AtlasStore(root)
    manifest = {"model": "zoo:tiny <test>", "model_sha256": "0f" * 32, "input_shape": list(shape),
                "layers": [{"name": n, "units": u} for n, u in layers], "dataset": "tinyset", "k": K,
                "max_facets": F, "sampler": {"method": "mala", "steps": STEPS, "temperature": 0.05}, "seed": 3,
                "display": display, "mean": [0.4] * shape[0], "std": [0.3] * shape[0], "live_model": live}
    store.claim(manifest)
    g = torch.Generator().manual_seed(7 * shape[0] + len(display))
    recs = {}
    for name, units in layers:
        for u in range(units):
            if (name, u) in pending:
                continue
            steps = 1001 if (name, u) == LONG else STEPS
            recs[name, u] = record(name, u, shape, g, steps=steps, **kw)
            store.write_unit(recs[name, u])
    return {"root": root, "store": store, "manifest": store.read_manifest(), "records": recs, "shape": shape,
            "display": display, "live": live, "index": build_site(store)}


@pytest.fixture(scope="module", params=[((1, 8, 8), "signed", None), ((3, 8, 8), "pixel", LIVE)],
                ids=["grey-signed", "rgb-pixel"])
def atlas(request, tmp_path_factory):
    shape, display, live = request.param
    return make_atlas(tmp_path_factory.mktemp("atlas") / "atlas", shape, display, live)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_atlas(tmp_path_factory.mktemp("rgb") / "atlas", (3, 8, 8), "pixel", LIVE)


# ---- reading the pages back ---------------------------------------------------------------------
class Page(HTMLParser):
    """What the tests read of a generated page: the diagnostics table, the trace SVGs, the top-k
    figures, the live link and every link."""

    def __init__(self, text: str):
        super().__init__()
        self.diag: dict[str, str] = {}
        self.svgs: dict[int, dict] = {}
        self.crops: list[dict] = []
        self.links: list[str] = []
        self.live: dict | None = None
        self.h2: list[str] = []
        self._row = self._svg = None
        self._cell = self._in_h2 = False
        self.text = text
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-key" in a:
            self._row = a["data-key"]
        elif tag == "td" and self._row is not None:
            self._cell = True
            self.diag[self._row] = ""
        elif tag == "svg" and a.get("class") == "trace":
            self._svg = int(a["data-facet"])
            self.svgs[self._svg] = {"lo": float(a["data-lo"]), "hi": float(a["data-hi"]), "lines": {}, "datamax": None}
        elif tag == "polyline" and self._svg is not None:
            pts = [tuple(map(float, p.split(","))) for p in a["points"].split()]
            self.svgs[self._svg]["lines"][int(a["data-chain"])] = pts
        elif tag == "line" and self._svg is not None and a.get("class") == "datamax":
            self.svgs[self._svg]["datamax"] = float(a["y1"])
        elif tag == "figure" and a.get("class") == "crop":
            self.crops.append(a)
        elif tag == "a":
            self.links.append(a.get("href", ""))
            if a.get("id") == "live":
                self.live = a
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row, self._cell = None, False
        elif tag == "svg":
            self._svg = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._cell:
            self.diag[self._row] += data
        if self._in_h2:
            self.h2[-1] += data


def unit_page(a: dict, layer: str, unit: int) -> Page:
    return Page((a["root"] / "site" / layer_dir_name(layer) / f"{unit}.html").read_text())


def layer_data(a: dict, layer: str) -> dict:
    text = (a["root"] / "site" / layer_dir_name(layer) / "layer.js").read_text()
    prefix = "window.ATLAS_LAYER = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


# ---- a numpy reference of the two displays and of the grid layout -------------------------------
def displayed(x: torch.Tensor, display: str, mean, std) -> np.ndarray:
    """uint8 ``[H, W, C]`` of one model-unit image ``[C, H, W]``, computed independently."""
    a = x.double().numpy()
    if display == "pixel":
        m, s = np.array(mean)[:, None, None], np.array(std)[:, None, None]
        u = np.rint(np.clip(a * s + m, 0, 1) * 255)
    else:
        peak = np.abs(a).max()
        u = np.clip(np.rint(a * 127.0 / peak + 128.0), 0, 255)
    return u.astype(np.uint8).transpose(1, 2, 0)


def grid_size(tile_w: int, tile_h: int, n: int, ncol: int) -> tuple[int, int]:
    return PAD + ncol * (tile_w + PAD), PAD + math.ceil(n / ncol) * (tile_h + PAD)


def tile(png: np.ndarray, r: int, c: int, tw: int, th: int, zoom: int) -> np.ndarray:
    """Tile ``(r, c)`` of a grid picture, shrunk back by ``zoom`` (nearest neighbour: every zoom-th pixel)."""
    y, x = PAD + r * (th + PAD), PAD + c * (tw + PAD)
    t = png[y:y + th, x:x + tw]
    t = t[::zoom, ::zoom]
    return t if t.ndim == 3 else t[..., None]


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return np.asarray(im)


# ---- the pages and pictures, without a browser ----------------------------------------------------
def test_every_unit_page_prints_its_records_numbers(atlas):
    for (layer, u), rec in atlas["records"].items():
        page = unit_page(atlas, layer, u)
        d = rec.diagnostics
        assert page.h2[0].startswith(f"{layer}:{u}")
        for key in ("rhat", "rhat_facet", "ess", "acceptance", "activation", "data_max"):
            assert float(page.diag[key]) == pytest.approx(d[key], rel=5e-4), (layer, u, key)
        assert page.diag["dead"] == ("yes" if d["dead"] else "no")
        assert page.diag["converged"] == ("yes" if d["converged"] else "no")
        assert ("dead" in page.h2[0]) == d["dead"] and ("not converged" in page.h2[0]) == (not d["converged"])
        # the top-k images: each dataset row and score, best first
        assert [int(c["data-index"]) for c in page.crops] == rec.topk_index.tolist()
        assert [float(c["data-score"]) for c in page.crops] == pytest.approx(rec.topk_score.tolist(), rel=1e-6)
        assert "index.html" in page.links and "../../index.html" in page.links  # the layer, the atlas
        if atlas["live"] is None:
            assert page.live is None
        else:
            assert (page.live["data-model"], page.live["data-layer"], page.live["data-unit"]) == (atlas["live"], layer, str(u))
            assert "hidden" in page.live  # shown by the script, which makes its address


def test_the_pictures_have_the_grid_layout_and_the_records_pixels(atlas):
    c, h, w = atlas["shape"]
    man = atlas["manifest"]
    zoom = max(1, TILE // h)
    tw, th = w * zoom, h * zoom
    czoom = max(1, TILE // CROP)
    for (layer, u), rec in atlas["records"].items():
        img = atlas["root"] / "site" / layer_dir_name(layer) / "img"
        show = lambda x: displayed(x, atlas["display"], man["mean"], man["std"])  # noqa: E731
        means, last, starts = load(img / f"{u}_means.png"), load(img / f"{u}_last.png"), load(img / f"{u}_starts.png")
        assert Image.open(img / f"{u}_means.png").size == grid_size(tw, th, F * CHAINS, CHAINS)
        assert Image.open(img / f"{u}_last.png").size == grid_size(tw, th, F * CHAINS, CHAINS)
        assert Image.open(img / f"{u}_starts.png").size == grid_size(tw, th, F, F)
        for f in range(F):
            np.testing.assert_array_equal(tile(starts, 0, f, tw, th, zoom), show(rec.facet_starts[f]))
            for ch in range(CHAINS):
                np.testing.assert_array_equal(tile(means, f, ch, tw, th, zoom), show(rec.chain_means[f, ch]))
                np.testing.assert_array_equal(tile(last, f, ch, tw, th, zoom), show(rec.chain_last[f, ch]))
        thumb = load(img / f"{u}_thumb.png")
        assert max(thumb.shape[:2]) <= THUMB
        np.testing.assert_array_equal(thumb if thumb.ndim == 3 else thumb[..., None],
                                      show(rec.chain_means.double().mean((0, 1))))
        ncol = math.ceil(math.sqrt(K))
        topk = load(img / f"{u}_topk.png")
        assert Image.open(img / f"{u}_topk.png").size == grid_size(CROP * czoom, CROP * czoom, K, ncol)
        for i in range(K):
            np.testing.assert_array_equal(tile(topk, i // ncol, i % ncol, CROP * czoom, CROP * czoom, czoom),
                                          rec.topk_crops[i].numpy().transpose(1, 2, 0))


def expected_points(values: list[float], lo: float, hi: float) -> list[tuple[float, float]]:
    """The module docstring's map, written out again: every step up to TRACE_POINTS steps, else
    every s-th and the last; non-finite values left out."""
    n = len(values)
    s = math.ceil(n / TRACE_POINTS)
    steps = sorted(set(range(0, n, s)) | {n - 1})
    return [(TRACE_M + (TRACE_W - 2 * TRACE_M) * t / (n - 1), TRACE_M + (TRACE_H - 2 * TRACE_M) * (hi - values[t]) / (hi - lo))
            for t in steps if math.isfinite(values[t])]


def test_trace_polylines_are_the_documented_affine_map_of_the_trace(atlas):
    for (layer, u), rec in atlas["records"].items():
        page = unit_page(atlas, layer, u)
        tr = rec.trace.double()
        data_max = rec.diagnostics["data_max"]
        finite = tr[torch.isfinite(tr)]
        lo, hi = float(finite.min()), float(finite.max())
        assert sorted(page.svgs) == list(range(F))
        for f, svg in page.svgs.items():
            assert (svg["lo"], svg["hi"]) == pytest.approx((lo, hi), rel=1e-12)
            if lo <= data_max <= hi:  # the best dataset image's line, on the same map
                assert svg["datamax"] == pytest.approx(TRACE_M + (TRACE_H - 2 * TRACE_M) * (hi - data_max) / (hi - lo), abs=0.006)
            else:
                assert svg["datamax"] is None
                assert f"is {'above' if data_max > hi else 'below'} the plot" in page.text
            assert sorted(svg["lines"]) == list(range(CHAINS))
            for ch, pts in svg["lines"].items():
                want = expected_points(tr[:, f * CHAINS + ch].tolist(), lo, hi)
                assert len(pts) == len(want), (layer, u, f, ch)
                np.testing.assert_allclose(np.array(pts), np.array(want), atol=0.006)  # printed to 0.01
                assert all(0 <= x <= TRACE_W and 0 <= y <= TRACE_H for x, y in pts)
    # the long trace is decimated to at most TRACE_POINTS + 1 points, and its NaN is left out
    long = unit_page(atlas, *LONG).svgs[0]["lines"]
    assert len(long[0]) == math.ceil(1001 / 3) + 1 and len(long[1]) == len(long[0]) - 1  # step 18 is drawn, and NaN


def test_pending_units_are_shown_as_pending_and_counted(atlas):
    for name, units in LAYERS:
        data = layer_data(atlas, name)
        assert data["units"] == units and len(data["rows"]) == units
        for row in data["rows"]:
            if (name, row["u"]) in PENDING:
                assert row == {"u": row["u"], "s": "pending"}
                assert not (atlas["root"] / "site" / layer_dir_name(name) / f"{row['u']}.html").exists()
            else:
                rec = atlas["records"][name, row["u"]]
                assert row["s"] == "done" and row["r"] == pytest.approx(rec.diagnostics["rhat_facet"])
                assert row["d"] == rec.diagnostics["dead"] and row["n"] == (not rec.diagnostics["converged"])
        done = [r for r in data["rows"] if r["s"] == "done"]
        assert data["counts"] == {"units": units, "done": len(done), "dead": sum(r["d"] for r in done),
                                  "not_converged": sum(r["n"] for r in done)}
    index = (atlas["root"] / "index.html").read_text()
    for name, units in LAYERS:
        row = re.search(rf'<tr data-layer="{re.escape(name)}">(.*?)</tr>', index).group(1)
        nums = [int(x) for x in re.findall(r'<td class="num">(\d+)</td>', row)]
        pend = sum((name, u) in PENDING for u in range(units))
        c = layer_data(atlas, name)["counts"]
        assert nums == [units, units - pend, c["dead"], c["not_converged"], pend]
        assert f'href="site/{layer_dir_name(name)}/index.html"' in row


def test_the_site_is_rebuilt_identically_and_a_new_shard_appears_in_its_layer(tmp_path):
    a = make_atlas(tmp_path / "atlas", (1, 8, 8), "signed", None, layers=[("conv", 3)], pending={("conv", 1)})
    files = lambda: {p: p.read_bytes() for p in sorted(a["root"].rglob("*")) if p.is_file() and "shards" not in p.parts}  # noqa: E731
    before = files()
    build_site(a["store"])
    assert files() == before  # idempotent
    store, g = a["store"], torch.Generator().manual_seed(9)
    store.write_unit(record("conv", 1, (1, 8, 8), g))
    write_layer_index(store, a["manifest"], "conv")  # a runner's incremental update: the new unit's page comes too
    data = layer_data(a, "conv")
    assert [r["s"] for r in data["rows"]] == ["done"] * 3 and data["counts"]["done"] == 3
    assert (a["root"] / "site" / "conv" / "1.html").exists()


def test_no_dataset_no_samples_large_and_1d_inputs(tmp_path):
    """Units with nothing to show still get a page and a card: no dataset (k = 0), a dead unit with
    no chains, a large non-square input (the thumbnail shrinks), a 1-D signal input."""
    def empty(c, *rest, facets=1, chains=2, steps=10, shape=(3, 100, 80)):
        return UnitRecord(
            "a", c, torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 4, dtype=torch.long),
            torch.zeros(0, shape[0], CROP, CROP, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
            torch.randn(facets, *shape), torch.randn(facets, chains, *shape), torch.randn(facets, chains, *shape),
            torch.randn(steps, facets * chains), {"rhat": float("nan"), "ess": float("inf"), "dead": c == 1})
    store = AtlasStore(tmp_path / "atlas")
    store.claim({"model": "m", "input_shape": [3, 100, 80], "layers": [{"name": "a", "units": 2}], "dataset": None,
                 "k": 0, "max_facets": 1, "sampler": {}, "seed": 0, "display": "signed", "live_model": None})
    store.write_unit(empty(0))
    store.write_unit(empty(1, facets=0, chains=0, steps=0))
    build_site(store)
    page = (tmp_path / "atlas" / "site" / "a" / "0.html").read_text()
    assert "Top " not in page and Page(page).diag["rhat"] == "nan" and Page(page).diag["ess"] == "inf"
    with Image.open(tmp_path / "atlas" / "site" / "a" / "img" / "0_thumb.png") as im:
        assert im.size == (round(80 * THUMB / 100), THUMB)
    assert "No samples" in (tmp_path / "atlas" / "site" / "a" / "1.html").read_text()
    assert [r["t"] for r in layer_data({"root": tmp_path / "atlas"}, "a")["rows"]] == [True, False]
    # a 1-D signal [C, L]: its tiles are to_image's heat strips, enlarged like any picture
    sig = AtlasStore(tmp_path / "sig")
    sig.claim({"model": "s", "input_shape": [2, 16], "layers": [{"name": "a", "units": 1}], "dataset": None,
               "display": "signed", "live_model": None})
    sig.write_unit(empty(0, shape=(2, 16)))
    build_site(sig)
    with Image.open(tmp_path / "sig" / "site" / "a" / "img" / "0_means.png") as im:
        assert im.size == grid_size(16 * 4, 16 * 4, 2, 2)  # 2 rows of 8 px per channel → 16 × 16, zoom 4


def test_a_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(LdamError, match="holds no atlas"):
        build_site(tmp_path)


# ---- served by the live server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def web():
    """``(TestClient, ldam.web.server)``; the site's own tests need no web extra, these do."""
    from fastapi.testclient import TestClient

    from ldam.web import server

    return TestClient, server


def test_the_live_server_serves_the_site_and_nothing_else_of_the_folder(rgb, web):
    TestClient, server = web
    ServerConfig, create_app = server.ServerConfig, server.create_app
    root = rgb["root"]
    (root.parent / "secret.txt").write_text("SECRET")
    with TestClient(create_app({}, ServerConfig(atlas=root)), base_url=LOCAL) as c:
        r = c.get("/atlas/index.html")
        assert r.status_code == 200 and "zoo:tiny &lt;test&gt;" in r.text
        assert c.get("/atlas/").text == r.text
        assert c.get("/atlas", follow_redirects=False).headers["location"] == "/atlas/"
        assert c.get("/atlas/site/conv/index.html").status_code == 200
        assert c.get("/atlas/site/conv/").text == c.get("/atlas/site/conv/index.html").text
        png = c.get("/atlas/site/conv/img/0_thumb.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert c.get("/atlas/site/atlas.js").headers["x-content-type-options"] == "nosniff"
        for path in ["/atlas/manifest.json", "/atlas/shards/conv/0.pt", "/atlas/../secret.txt",
                     "/atlas/site/../manifest.json", "/atlas/site/%2e%2e/manifest.json", "/atlas/site/..%2fmanifest.json",
                     "/atlas/site/%2e%2e%2f%2e%2e%2fsecret.txt", "/atlas/site/%2fetc%2fpasswd", "/atlas/site//etc/passwd"]:
            r = c.get(path)
            assert r.status_code == 404, path
            assert b"SECRET" not in r.content and b"model_sha256" not in r.content
        assert c.get("/atlas/index.html", headers={"host": "evil.example"}).status_code == 421
    with TestClient(create_app({}, ServerConfig(atlas=root, token="tok")), base_url=LOCAL) as c:
        assert c.get("/atlas/index.html").status_code == 401
        assert c.get("/atlas/site/conv/0.html").status_code == 401
        assert c.get("/atlas/index.html?token=tok").status_code == 200
        assert c.get("/atlas/site/conv/0.html").status_code == 200  # the cookie the token set


def raw_get(port: int, path: str) -> bytes:
    """``GET path`` sent byte for byte (no client normalizes the dots away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_dot_dot_paths_sent_raw_are_refused(rgb, web):
    _, server = web
    (rgb["root"].parent / "secret.txt").write_text("SECRET")
    with server.BackgroundServer(server.create_app({}, server.ServerConfig(atlas=rgb["root"]))) as srv:
        assert raw_get(srv.port, "/atlas/site/atlas.css").startswith(b"HTTP/1.1 200")
        for path in ["/atlas/site/../manifest.json", "/atlas/site/../../secret.txt", "/atlas/site/conv/../../manifest.json",
                     "/atlas/../secret.txt", "/atlas/site/%2e%2e/%2e%2e/secret.txt", "/atlas/site/..\\..\\secret.txt"]:
            reply = raw_get(srv.port, path)
            assert reply.split(b" ", 2)[1] in (b"400", b"404"), (path, reply[:80])
            assert b"SECRET" not in reply and b"model_sha256" not in reply, path


def test_a_missing_atlas_folder_names_the_fix(tmp_path, web):
    _, server = web
    with pytest.raises(LdamError, match="no atlas folder"):
        server.create_app({}, server.ServerConfig(atlas=tmp_path / "nowhere"))


# ---- in a browser ------------------------------------------------------------------------------------
def test_click_through_from_disk(page, rgb):
    page.goto((rgb["root"] / "index.html").as_uri())  # file://: no server at all
    page.click('tr[data-layer="conv"] a')
    page.wait_for_selector('body[data-ready="1"]')
    assert page.eval_on_selector_all("#grid > .card", "cs => cs.map(c => c.dataset.unit)") == [str(u) for u in range(6)]
    assert "pending" in page.get_attribute('#grid > .card[data-unit="2"]', "class")
    page.wait_for_function("document.querySelector('.card[data-unit=\"0\"] img').naturalWidth > 0")
    page.click('#grid > .card[data-unit="1"]')
    page.wait_for_url("**/site/conv/1.html")
    assert page.inner_text("h2").startswith("conv:1")
    assert page.is_visible("#live")
    assert page.get_attribute("#live", "href") == f"http://127.0.0.1:8765/?model={LIVE.replace(':', '%3A')}&layer=conv&unit=1"
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.click('header a[href="index.html"]')
    page.wait_for_url((rgb["root"] / "site" / "conv" / "index.html").as_uri() + "**")
    page.click('header a[href="../../index.html"]')
    page.wait_for_url((rgb["root"] / "index.html").as_uri())
    assert page.is_visible("#layers")


def test_sorting_by_rhat_and_dead_first(page, rgb):
    page.goto((rgb["root"] / "site" / "conv" / "index.html").as_uri())
    page.wait_for_selector('body[data-ready="1"]')
    recs = {u: r for (layer, u), r in rgb["records"].items() if layer == "conv"}
    units = lambda: [int(u) for u in page.eval_on_selector_all("#grid > .card", "cs => cs.map(c => c.dataset.unit)")]  # noqa: E731
    page.select_option("#sort", "rhat")
    by_rhat = sorted(recs, key=lambda u: -recs[u].diagnostics["rhat_facet"])
    assert units() == by_rhat + [2]  # the largest R̂ (of the worst facet) first; the pending unit last
    page.check("#reverse")
    assert units() == by_rhat[::-1] + [2]
    page.uncheck("#reverse")
    page.select_option("#sort", "dead")
    dead = [u for u in sorted(recs) if recs[u].diagnostics["dead"]]
    assert units()[:len(dead)] == dead and "dead" in page.get_attribute("#grid > .card", "class")


def test_a_thousand_unit_layer_is_quick_and_loads_only_the_thumbnails_in_view(page, tmp_path_factory):
    a = make_atlas(tmp_path_factory.mktemp("big") / "atlas", (3, 8, 8), "pixel", LIVE, layers=[("big", 1000)],
                   pending={("big", 500)}, facets=1, chains=1, k=1)
    t0 = time.perf_counter()
    page.goto((a["root"] / "site" / "big" / "index.html").as_uri())
    page.wait_for_function("document.querySelectorAll('#grid > .card').length === 1000")
    ready = time.perf_counter() - t0
    assert ready < 5.0, f"{ready:.2f} s until the grid had its 1000 cards"
    page.wait_for_function("document.querySelector('#grid img').naturalWidth > 0")
    loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert 0 < loaded < 400, loaded  # lazy: only the cards near the view, out of 999
    # every thumbnail is fixed-size before it loads (no layout jump), and the last ones load on scroll
    assert page.evaluate("[...document.images].every(i => i.getAttribute('width') === '64' && i.getAttribute('height') === '64')")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("document.querySelector('.card[data-unit=\"999\"] img').naturalWidth > 0")
    page.select_option("#sort", "rhat")
    assert page.eval_on_selector("#grid > .card", "c => c.dataset.unit") == str(
        max((u for (_, u) in a["records"]), key=lambda u: a["records"]["big", u].diagnostics["rhat_facet"]))
    print(f"1000-unit layer: grid in {ready:.2f} s, {loaded} thumbnails loaded at first")


def test_the_live_link_is_relative_when_served(page, rgb, web):
    _, server = web
    with server.BackgroundServer(server.create_app({}, server.ServerConfig(atlas=rgb["root"]))) as srv:
        page.goto(srv.url + "/atlas/")
        page.click('tr[data-layer="conv"] a')
        page.wait_for_selector('body[data-ready="1"]')
        page.click('#grid > .card[data-unit="3"]')
        page.wait_for_url("**/atlas/site/conv/3.html")
        assert page.get_attribute("#live", "href") == f"/?model={LIVE.replace(':', '%3A')}&layer=conv&unit=3"
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
