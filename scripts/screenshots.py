"""Screenshots of the live UI for the README: docs/ui_sampler.png and docs/ui_activations.png.

Starts the server in this process (with the MNIST data when it is available, so the
discriminator slider is live), drives Debian's chromium with Playwright, and saves the pages.

    LDAM_DATA_DIR=../shared/data python scripts/screenshots.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from ldam.web.server import BackgroundServer, ServerConfig, create_app
from ldam.web.session import ModelEntry

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    chromium = os.environ.get("LDAM_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium")
    entries = {"zoo:lenet-mnist": ModelEntry.load("zoo:lenet-mnist")}
    with BackgroundServer(create_app(entries, ServerConfig())) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 980})
        page.goto(srv.url + "/")
        page.wait_for_function("window.ldam && window.ldam.frames > 5", timeout=60_000)
        page.select_option("#method", "paper")
        for name, pos in (("temperature", 577), ("step_size", 600), ("ema_tau", 500)):  # T 0.2, ε 0.001, τ 22
            page.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", pos)
        if entries["zoo:lenet-mnist"].has_data:
            page.eval_on_selector("#disc_weight", "(el) => { el.value = 500; el.dispatchEvent(new Event('input')); }")
        page.wait_for_function("window.ldam.frames > 400", timeout=120_000)
        page.screenshot(path=str(DOCS / "ui_sampler.png"))
        page.goto(srv.url + "/activations?layer=conv2")
        page.wait_for_function("window.ldam && window.ldam.received >= 1", timeout=60_000)
        page.eval_on_selector("#index", "(el) => { el.value = 7; el.dispatchEvent(new Event('change')); }")
        page.wait_for_function("window.ldam.received >= 2")
        page.click("#maps", position={"x": 40, "y": 12})
        page.wait_for_timeout(1500)
        page.screenshot(path=str(DOCS / "ui_activations.png"))
        browser.close()
    print(f"wrote {DOCS / 'ui_sampler.png'} and {DOCS / 'ui_activations.png'}")


if __name__ == "__main__":
    main()
