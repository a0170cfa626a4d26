"""The live UI in a real browser: Playwright driving Debian's Chromium (never Playwright's own download).

Without a browser these tests skip with the reason; under ``LDAM_REQUIRE_BROWSER=1`` (set by CI)
they fail instead.
"""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from ldam.web.server import BackgroundServer, ServerConfig, create_app
from ldam.web.session import ModelEntry
from web_helpers import slide, wait_frames, wait_until

MODEL = "zoo:lenet-mnist"
@pytest.fixture(scope="module")
def server():
    entries = {MODEL: ModelEntry.load(MODEL, with_data=False)}
    app = create_app(entries, ServerConfig(max_sessions=4))
    with BackgroundServer(app) as srv:
        yield srv


def sessions(server) -> list:
    return list(server.app.state.sessions)


def test_page_loads_and_frames_arrive(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 10)
    last = page.evaluate("window.ldam.last")
    assert last["t"] >= 9 and len(last["target_activation"]) == 10
    assert page.evaluate("document.getElementById('grid').naturalWidth") == 2 + 10 * 30  # 28 px tiles, 2 px gutters


def test_temperature_slider_reaches_the_sampler_and_the_chains_respond(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 5)
    # counted in sampler steps, not seconds: 40 steps at the start temperature, then 80 at T = 10
    page.wait_for_function("window.ldam.last.t >= 40", timeout=60_000)
    cold = page.evaluate("window.ldam.trace.slice(-5).reduce((a, b) => a + b) / 5")
    t = slide(page, "temperature", 1000)
    assert t == 10.0
    (s,) = sessions(server)
    assert wait_until(lambda: s.sampler.temperature == 10.0)
    page.wait_for_function("window.ldam.last.params.temperature === 10")
    t_hot = page.evaluate("window.ldam.last.t")
    # The SGLD drift is (ε/2T)·∇(f − λR): at T = 10 it is 500× weaker than at T = 0.02 and the
    # noise carries the chains out of their modes, so the mean activation falls.
    page.wait_for_function(f"window.ldam.last.t >= {t_hot + 80}", timeout=60_000)
    hot = page.evaluate("window.ldam.trace.slice(-5).reduce((a, b) => a + b) / 5")
    assert hot < cold - 1.0, (cold, hot)


def test_switching_layer_or_unit_restarts_the_chains(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    page.select_option("#unit", "3")
    page.wait_for_function("window.ldam.started && window.ldam.started.targets === 'output:3'")
    page.wait_for_function("window.ldam.last.target_activation.length === 1")
    (s,) = sessions(server)
    assert [str(t) for t in s.sampler.targets] == ["output:3"]
    page.select_option("#layer", "conv2")
    page.wait_for_function("window.ldam.started.targets.startsWith('conv2:')")
    assert wait_until(lambda: str(s.sampler.targets[0]).startswith("conv2"))
    page.select_option("#unit", "5")
    page.wait_for_function("window.ldam.started.targets === 'conv2:5'")
    assert wait_until(lambda: [str(t) for t in s.sampler.targets] == ["conv2:5"] and s.sampler.t < 1000)


def test_pause_stops_frames(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    page.click("#pause")
    page.wait_for_function("window.ldam.paused === true")
    (s,) = sessions(server)
    seq, t = s.seq, s.sampler.t  # the worker has paused: its last frame and step
    # no clock: the frames still in flight land, and the last one is the one made at the pause
    page.wait_for_function(f"window.ldam.last.seq === {seq}", timeout=30_000)
    assert page.evaluate("window.ldam.last.t") == t
    assert s.seq == seq and s.sampler.t == t  # meanwhile, no frame made and no step taken
    n = page.evaluate("window.ldam.frames")
    page.click("#pause")
    wait_frames(page, n + 3)
    first = page.evaluate("window.ldam.last")
    # after the resume, new frames from new steps
    assert first["seq"] >= seq + 3 and first["t"] > t


def test_snapshot_downloads_a_valid_png(page, server, tmp_path):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    # A snapshot downloads a PNG and a JSON config in either order: wait for the PNG by its name.
    with page.expect_download(lambda d: d.suggested_filename.endswith(".png")) as dl:
        page.click("#snapshot")
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    assert path.suffix == ".png"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100


def test_activations_page_shows_maps_for_an_uploaded_image(page, server, tmp_path):
    png = tmp_path / "digit.png"
    img = Image.new("L", (56, 56), 0)
    img.paste(255, (20, 8, 36, 48))  # a bright vertical bar, like a "1"
    img.save(png)
    page.goto(server.url + "/activations")
    page.wait_for_function("window.ldam && window.ldam.models.length > 0")
    # This server has no dataset loaded, so the page offers only uploads.
    assert page.eval_on_selector("#source", "el => el.value") == "upload"
    page.select_option("#layer", "conv1")
    page.set_input_files("#file", str(png))
    page.wait_for_function("window.ldam.received >= 1 && window.ldam.maps.layer === 'conv1'")
    maps = page.evaluate("window.ldam.maps")
    assert maps["units"] == 6
    # The maps are of the uploaded picture: compare with conv1 on the same resized image.
    entry = server.app.state.entries[MODEL]
    pix = torch.tensor(list(img.resize((28, 28), Image.BICUBIC).tobytes()), dtype=torch.float32).view(1, 28, 28) / 255
    with torch.no_grad():
        ref = entry.model.conv1(entry.info.preprocess(pix).unsqueeze(0))[0].flatten(1).mean(1)
    assert torch.allclose(torch.tensor(maps["means"]), ref, atol=1e-3)
    page.click("#maps", position={"x": 20, "y": 20})  # inside unit 0 (the picture is shown enlarged)
    page.wait_for_selector("#open-unit:not([hidden])")
    assert "unit=0" in page.get_attribute("#open-unit", "href")


def test_two_tabs_run_independent_sessions(browser, server):
    context = browser.new_context()
    a, b = context.new_page(), context.new_page()
    try:
        a.goto(server.url + "/")
        b.goto(server.url + "/")
        wait_frames(a, 3)
        wait_frames(b, 3)
        assert len(sessions(server)) == 2
        slide(a, "temperature", 900)
        a.wait_for_function("window.ldam.last.params.temperature > 1")
        temps = sorted(s.sampler.temperature for s in sessions(server))
        assert temps[0] == 0.02 and temps[1] > 1
        assert b.evaluate("window.ldam.last.params.temperature") == 0.02
    finally:
        context.close()
    assert wait_until(lambda: not sessions(server))  # closing the tabs stopped their workers
