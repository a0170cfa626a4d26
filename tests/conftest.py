"""Shared test helpers: tiny models, and the rule for tests that need real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def data_dir() -> Path | None:
    d = os.environ.get("LDAM_DATA_DIR")
    return Path(d) if d else None


def require_data(*relative: str) -> Path:
    """Return ``$LDAM_DATA_DIR``; skip (or fail under ``LDAM_REQUIRE_DATA=1``) when files are absent."""
    root = data_dir()
    missing = [r for r in relative if root is None or not (root / r).exists()]
    if root is None or missing:
        reason = (
            "real data not found: set LDAM_DATA_DIR to a folder holding "
            + ", ".join(relative)
            + (f" (looked in {root})" if root else "")
        )
        if os.environ.get("LDAM_REQUIRE_DATA") == "1":
            pytest.fail(reason + " — LDAM_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(reason)
    return root


def require_module(name: str, reason: str = "the imagenet extra is not installed"):
    """Import and return module ``name``; skip when it is missing, but fail under ``LDAM_REQUIRE_DATA=1``
    (CI sets it: a broken optional install must not turn into a silent skip there)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        message = f"{reason}: cannot import {name} ({e})"
        if os.environ.get("LDAM_REQUIRE_DATA") == "1":
            pytest.fail(message + " — LDAM_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(message)


def integrated_autocorrelation_time(s) -> float:
    """τ_int of ``s`` [chains, steps, dims] (numpy): 1 + 2 Σ ρ_k, summed until ρ_k first drops below
    0.05; ``chains·steps / τ_int`` is then the number of effectively independent samples."""
    c = s - s.mean(1, keepdims=True)
    var, tau = (c * c).mean(), 1.0
    for k in range(1, s.shape[1] // 3):
        rho = (c[:, k:] * c[:, :-k]).mean() / var
        if rho < 0.05:
            break
        tau += 2 * rho
    return tau


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (Debian's executable; see web_helpers.chromium)."""
    from web_helpers import chromium

    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    """A fresh browser tab (1280x900, downloads accepted); fails the test on any script error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of many tiny operations: faster, and far faster on a busy
    shared machine; the previous count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
