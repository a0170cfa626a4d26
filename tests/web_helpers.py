"""Shared by the web and browser tests: the loopback addresses the server accepts, waiting for a
message or a condition, and Debian's Chromium driven by Playwright (never Playwright's download)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, Callable, Iterator

import pytest

LOCAL = "http://127.0.0.1:8765"  # the Host a local browser sends (the server refuses others)
WS = "ws://127.0.0.1:8765/ws"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def receive(ws: Any, kind: str, limit: int = 2000) -> dict:
    """The next message of type ``kind`` on a test socket (frames and others in between are skipped)."""
    for _ in range(limit):
        msg = ws.receive_json()
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind!r} message")


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``cond`` until it holds; a deadline for things that must happen at all, not a timing."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def chromium_path() -> str | None:
    for name in (os.environ.get("LDAM_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail under ``LDAM_REQUIRE_BROWSER=1`` (CI)."""
    if os.environ.get("LDAM_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " — LDAM_REQUIRE_BROWSER=1 forbids skipping")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's executable), or a skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        unavailable("no chromium executable: apt-get install chromium (or set LDAM_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def wait_frames(pg: Any, n: int, timeout: float = 60_000) -> None:
    """Wait until the page has shown ``n`` frames (``window.ldam.frames``)."""
    pg.wait_for_function(f"window.ldam && window.ldam.frames >= {n}", timeout=timeout)


def slide(pg: Any, name: str, position: int) -> float:
    """Move slider ``name`` to ``position`` (0-1000) as a user would; return the value it shows."""
    pg.eval_on_selector(f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", position)
    return float(pg.inner_text(f"#{name}-value"))
