"""The live UI's speed, measured in a real browser (Debian's chromium driven by Playwright).

1. **Frames per second delivered to the browser** for ``zoo:lenet-mnist`` with 100 chains (the 10
   output logits × 10 chains) and one sampler step per frame: frames counted by the page over
   ``--seconds``. Target: at least 20.
2. **Slider to frame latency**: the time from a temperature change in the page to the first frame
   whose parameters show it, measured by the page (``performance.now()``), over ``--trials``.
   Target: at most 200 ms.
3. **Four concurrent sessions**: frames per second in each of 4 tabs, and the latency of an
   HTTP request to the same server while they run, beside the same request with no session.

    python benchmarks/bench_web.py [--seconds 10] [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
import urllib.request

from ldam.web.server import BackgroundServer, ServerConfig, create_app
from ldam.web.session import ModelEntry

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
LATENCY_JS = """(v) => new Promise((resolve) => {
  const raw = sock.raw, orig = raw.onmessage, t0 = performance.now();
  raw.onmessage = (ev) => {
    orig(ev);
    const last = window.ldam.last;
    if (last && last.params.temperature === v) { raw.onmessage = orig; resolve(performance.now() - t0); }
  };
  sock.send({ type: "set", temperature: v });
})"""


def fps(page, seconds: float) -> float:
    n0, t0 = page.evaluate("window.ldam.frames"), time.perf_counter()
    time.sleep(seconds)
    return (page.evaluate("window.ldam.frames") - n0) / (time.perf_counter() - t0)


def http_latency(url: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        urllib.request.urlopen(url + "/api/health", timeout=10).read()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--trials", type=int, default=20)
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LDAM_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium (or set LDAM_CHROMIUM)")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; browser {chromium}")
    entries = {"zoo:lenet-mnist": ModelEntry.load("zoo:lenet-mnist", with_data=False)}
    app = create_app(entries, ServerConfig(max_sessions=8))
    with BackgroundServer(app) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        idle_ms = http_latency(srv.url)
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_function("window.ldam && window.ldam.frames > 20", timeout=60_000)
        one = fps(page, a.seconds)
        print(f"1. frames per second in the browser, LeNet, 100 chains, 1 step per frame: {one:.1f} (target >= 20)")
        lat = [page.evaluate(LATENCY_JS, v) for v in [0.03 if i % 2 == 0 else 0.02 for i in range(a.trials)]]
        print(f"2. slider -> first frame showing it: median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms "
              f"over {len(lat)} changes (target <= 200 ms)")
        pages = [page] + [browser.new_page() for _ in range(3)]
        for pg in pages[1:]:
            pg.goto(srv.url + "/")
            pg.wait_for_function("window.ldam && window.ldam.frames > 5", timeout=60_000)
        counts = [pg.evaluate("window.ldam.frames") for pg in pages]
        t0 = time.perf_counter()
        busy_ms = http_latency(srv.url)
        time.sleep(max(0.0, a.seconds - (time.perf_counter() - t0)))
        rates = [(pg.evaluate("window.ldam.frames") - c) / (time.perf_counter() - t0) for pg, c in zip(pages, counts)]
        print(f"3. four sessions at once: frames per second per tab {', '.join(f'{r:.1f}' for r in rates)} "
              f"(total {sum(rates):.1f}); HTTP request latency {busy_ms:.1f} ms (idle server: {idle_ms:.1f} ms)")
        browser.close()


if __name__ == "__main__":
    main()
