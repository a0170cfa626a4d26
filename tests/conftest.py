"""Shared test helpers: tiny models, and the rule for tests that need real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
