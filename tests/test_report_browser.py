"""The report in a real browser: it renders, shows its pictures and logs nothing to the console.

Runs headless Chromium from the command line; skipped when no Chromium or Chrome is installed.
Chromium prints every console message of the page (any level, uncaught exceptions included) to
stderr as an ``INFO:CONSOLE`` line when started with ``--enable-logging=stderr --v=0``; the report
is meant to be silent, so any such line fails. A control page that does call ``console.error``
proves the detector sees messages, so the silence check cannot pass by not looking.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browser import BROWSER, HEADLESS_FLAGS, needs_browser
from PIL import Image
from test_report import binary_report

from unetkit.evaluation.panels import FALSE_NEGATIVE_COLOUR, FALSE_POSITIVE_COLOUR

pytestmark = needs_browser

FLAGS = (
    *HEADLESS_FLAGS,
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
TIMEOUT_S = 90
CONSOLE_LINE = re.compile(r"\bCONSOLE[:(]\d+\)?\]\s*(.*)$")


def run_browser(page: Path, profile: Path, *extra: str) -> tuple[str, str]:
    """stdout and stderr of headless Chromium on ``page``; its process group dies on timeout."""
    command = [BROWSER, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish {page.name} within {TIMEOUT_S} s")
    assert process.returncode == 0, stderr[-2000:]
    return stdout, stderr


def console_messages(stderr: str) -> list[str]:
    """The page's console output, one entry per message, from Chromium's stderr log."""
    return [found.group(1) for line in stderr.splitlines() if (found := CONSOLE_LINE.search(line))]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return binary_report(tmp_path_factory.mktemp("browser") / "report.html", 120, 160)


def test_console_detector_sees_errors_and_exceptions(tmp_path):
    page = tmp_path / "noisy.html"
    page.write_text(
        '<!DOCTYPE html><html><body><p>x</p><script>console.error("probe-error");'
        'throw new Error("probe-throw");</script></body></html>',
        encoding="utf-8",
    )
    _, stderr = run_browser(page, tmp_path / "profile", "--dump-dom")
    messages = console_messages(stderr)
    assert any("probe-error" in message for message in messages), stderr[-2000:]
    assert any("probe-throw" in message for message in messages), stderr[-2000:]


def test_report_renders_with_a_silent_console_and_visible_pictures(report, tmp_path):
    shot = tmp_path / "shot.png"
    _, stderr = run_browser(
        report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,6000"
    )
    assert console_messages(stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape == (6000, 1280, 3)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 500, "the screenshot is nearly blank"
    for colour in (FALSE_POSITIVE_COLOUR, FALSE_NEGATIVE_COLOUR):  # the error maps were drawn
        close = (np.abs(pixels - np.asarray(colour)) <= 8).all(axis=2)
        assert close.sum() > 200, colour


def test_rendered_page_keeps_every_picture_and_runs_its_script(report, tmp_path):
    dom, stderr = run_browser(report, tmp_path / "profile", "--dump-dom")
    assert console_messages(stderr) == []
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 12  # 4 charts + 4 best + 4 worst panels
    assert all('src="data:image/png;base64,' in image for image in images)
    assert dom.count('data-sort-ready="yes"') == 2  # both per-class tables became sortable
