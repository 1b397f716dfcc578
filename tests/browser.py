"""Headless Chromium for the optional page tests: where it is, and the flags it needs here.

As root in a closed network Chromium needs no sandbox, no GPU and no background connections (they
are refused, many at a time); every run gets its own ``--user-data-dir``.
"""

from __future__ import annotations

import shutil

import pytest

BROWSER = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium / google-chrome on PATH")

HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
