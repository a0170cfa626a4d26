"""The live UI in a newcomer's hands, in a real browser (Debian's Chromium driven by Playwright):
no data installed, the stability bound, MALA at the default knobs, an ImageNet model.

Without a browser these tests skip with the reason; under ``LDAM_REQUIRE_BROWSER=1`` they fail.
"""

from __future__ import annotations

import time

import pytest

from ldam.web.server import BackgroundServer, ServerConfig, create_app
from ldam.web.session import ModelEntry
from web_helpers import slide, wait_frames

MODEL = "zoo:lenet-mnist"
IMAGENET = "zoo:efficientnet-lite0-imagenet"
NO_BROKEN_IMAGES = "[...document.images].every((i) => i.hidden || i.offsetParent === null || i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """lenet-mnist on a fresh machine: no LDAM_DATA_DIR and an empty cache, so the bundled subset."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LDAM_DATA_DIR", raising=False)
        mp.setenv("LDAM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        entries = {MODEL: ModelEntry.load(MODEL)}
    assert entries[MODEL].data_source == "bundled"
    with BackgroundServer(create_app(entries, ServerConfig(max_sessions=4))) as srv:
        yield srv


@pytest.fixture(scope="module")
def imagenet_server():
    pytest.importorskip("efficientnet_lite_pytorch")
    entries = {MODEL: ModelEntry.load(MODEL, with_data=False), IMAGENET: ModelEntry.load(IMAGENET, with_data=False)}
    with BackgroundServer(create_app(entries, ServerConfig(max_sessions=4))) as srv:
        yield srv


def test_without_data_the_sampler_page_works_and_says_what_is_missing(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    assert page.evaluate(NO_BROKEN_IMAGES)
    # The discriminator works on the bundled digits; the page says so inline, with the command.
    assert not page.eval_on_selector("#disc_weight", "el => el.disabled")
    note = page.locator("#data-note")
    assert note.is_visible() and "10,000 MNIST test digits" in note.inner_text()
    assert page.inner_text("#data-note code") == "ldam data fetch mnist"
    # Top-9 of unit 3 comes from the bundled test digits, beside the samples.
    page.select_option("#unit", "3")
    page.wait_for_function("document.getElementById('top9').naturalWidth > 0 && !document.getElementById('top9').hidden")
    assert page.evaluate(NO_BROKEN_IMAGES)
    slide(page, "disc_weight", 500)
    page.wait_for_function("window.ldam.last.stats.d_real !== undefined", timeout=60_000)
    assert "no real images" not in page.inner_text("#error")


def test_without_data_the_activations_page_shows_dataset_examples_and_top9(page, server):
    page.goto(server.url + "/activations")
    page.wait_for_function("window.ldam && window.ldam.received >= 1")
    assert page.eval_on_selector("#source", "el => el.value") == "dataset"
    assert page.eval_on_selector("#layer", "el => el.value") == "conv1"
    assert page.evaluate(NO_BROKEN_IMAGES)
    assert page.evaluate("document.getElementById('maps').naturalWidth") > 0
    page.click("#maps", position={"x": 20, "y": 20})
    page.wait_for_function("document.getElementById('top9').naturalWidth > 0 && !document.getElementById('top9').hidden")
    assert page.evaluate(NO_BROKEN_IMAGES)
    assert "ldam data fetch mnist" in page.inner_text("#data-note")


def test_a_server_without_data_shows_no_broken_image_and_says_why(page, imagenet_server):
    page.goto(imagenet_server.url + f"/activations?model={MODEL}")
    page.wait_for_function("window.ldam && window.ldam.models.length > 0")
    page.wait_for_timeout(500)
    assert page.eval_on_selector("#source", "el => el.value") == "upload"
    assert page.evaluate(NO_BROKEN_IMAGES)
    assert "--no-data" in page.inner_text("#data-note")


def test_the_page_shows_the_stability_bound_and_warns_past_it(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    page.wait_for_function("document.getElementById('stability').textContent.includes('stable for step')")
    assert "0.267" in page.inner_text("#stability")  # 4T/λ at T 0.02, λ 0.3
    assert not page.locator("#unstable").is_visible()
    assert slide(page, "temperature", 0) == 1e-4
    page.wait_for_function("window.ldam.last.params.temperature === 1e-4")
    page.wait_for_selector("#unstable")
    text = page.inner_text("#stability")
    assert "1.3e-3" in text and "Lower the step below" in text  # 4 × 1e-4 / 0.3
    slide(page, "step_size", 0)  # ε = 1e-5, below the bound again
    page.wait_for_function("window.ldam.last.params.step_size === 1e-5")
    page.wait_for_function("!document.getElementById('unstable')")


def test_mala_moves_at_the_default_knobs(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    page.select_option("#method", "mala")
    page.wait_for_function("window.ldam.last.params.method === 'mala' && window.ldam.last.stats.adapted_step")
    assert page.locator("#adapting").is_visible()  # the page says it is adapting its step
    assert "adapting its step" in page.inner_text("#stability")
    page.wait_for_function("window.ldam.last.stats.acceptance > 0 && window.ldam.last.t >= 30", timeout=60_000)
    a = page.evaluate("[window.ldam.last.seq, window.ldam.last.grid, window.ldam.last.stats.acceptance]")
    page.wait_for_function(f"window.ldam.last.seq >= {a[0] + 5}", timeout=60_000)
    b = page.evaluate("[window.ldam.last.seq, window.ldam.last.grid, window.ldam.last.stats.acceptance]")
    assert a[2] > 0 and b[2] > 0
    assert a[1] != b[1]  # the chains moved between frames
    shown, sent = page.evaluate("[document.getElementById('adapted-step').textContent, window.ldam.last.stats.adapted_step[0]]")
    assert float(shown) == pytest.approx(sent, rel=0.05) and sent > 0  # the adapted step, to 2 significant digits


def test_imagenet_units_have_names_a_search_and_the_layout_fits(page, imagenet_server):
    page.goto(imagenet_server.url + f"/?model={IMAGENET}")
    wait_frames(page, 1, timeout=120_000)
    assert page.eval_on_selector("#unit option", "o => o.textContent") == "0: tench"
    assert page.locator("#unit-search").is_visible()
    page.fill("#unit-search", "goldfish")
    assert page.eval_on_selector_all("#unit option", "os => os.map((o) => o.textContent)") == ["1: goldfish"]
    page.press("#unit-search", "Enter")
    page.wait_for_function("window.ldam.started && window.ldam.started.targets === 'output:1'", timeout=120_000)
    page.fill("#unit-search", "shark")
    names = page.eval_on_selector_all("#unit option", "os => os.map((o) => o.textContent)")
    classes = imagenet_server.app.state.entries[IMAGENET].info.class_names
    assert names == [f"{i}: {c}" for i, c in enumerate(classes) if "shark" in c.lower()] and len(names) >= 2
    page.wait_for_function("!document.getElementById('means').hidden", timeout=120_000)
    # The panel holds its controls; the mean of one unit is capped so the trace stays in view.
    aside = page.eval_on_selector("aside", "el => el.getBoundingClientRect().right")
    for sel in ("#model", "#layer", "#unit"):
        assert page.eval_on_selector(sel, "el => el.getBoundingClientRect().right") <= aside
    assert page.eval_on_selector("#means", "el => el.getBoundingClientRect().height") <= 300
    assert page.eval_on_selector("#trace", "el => el.getBoundingClientRect().bottom") <= 900
    assert page.evaluate(NO_BROKEN_IMAGES)


def test_imagenet_activations_start_on_a_feature_layer_and_switching_model_resets_the_input(page, imagenet_server):
    page.goto(imagenet_server.url + f"/activations?model={IMAGENET}")
    page.wait_for_function("window.ldam && window.ldam.received >= 1", timeout=120_000)
    assert page.eval_on_selector("#layer", "el => el.value") == "_conv_stem"
    assert page.eval_on_selector("#source", "el => el.value") == "photo"
    assert page.evaluate("window.ldam.maps.total_units") == 32
    assert page.evaluate(NO_BROKEN_IMAGES)
    page.select_option("#source", "upload")
    page.select_option("#model", MODEL)  # lenet on this server has no data: uploads only
    assert page.eval_on_selector("#source", "el => el.value") == "upload"
    assert page.eval_on_selector("#layer", "el => el.value") == "conv1"
    page.select_option("#model", IMAGENET)  # back: a photo, not an empty upload page
    assert page.eval_on_selector("#source", "el => el.value") == "photo"
    page.wait_for_function("window.ldam.received >= 2 && window.ldam.maps.layer === '_conv_stem'", timeout=120_000)
    assert page.evaluate(NO_BROKEN_IMAGES)


def test_divergence_is_reported_on_the_page(page, server):
    page.goto(server.url + "/")
    wait_frames(page, 3)
    page.click("#pause")
    page.wait_for_function("window.ldam.paused === true")
    deadline = time.time() + 10  # the sessions of earlier tests end as their sockets close
    while len(server.app.state.sessions) > 1 and time.time() < deadline:
        time.sleep(0.05)
    (session,) = server.app.state.sessions
    session.sampler.x.fill_(float("inf"))  # chains that exploded
    page.click("#pause")  # resume
    page.wait_for_function("document.getElementById('stability').textContent.startsWith('Diverged')")
    text = page.inner_text("#stability")
    assert "4·T/λ = 0.267" in text and "Lower the step size" in text  # SGLD's bound at T 0.02, λ 0.3
