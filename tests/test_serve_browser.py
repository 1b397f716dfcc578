"""The upload page in headless Chromium: a file chosen in its file input comes back as an overlay.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte, read on file descriptor 3 and written on 4), which needs no extra
package. The file is chosen with ``DOM.setFileInputFiles``, which fires the input's ``change``
event as a person's choice does; the test then waits for the page's ``data-state`` and reads what
the page shows. Skipped when Chromium is not installed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import BROWSER, HEADLESS_FLAGS, needs_browser
from model_helpers import rgb
from test_inference import write_checkpoint
from test_serve import decoded_png, png_file, serving, upload

pytestmark = needs_browser

FLAGS = (
    *HEADLESS_FLAGS,
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60


class DevTools:
    """A headless Chromium and its DevTools protocol; events are kept in ``self.events``."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()

        def as_fds_3_and_4() -> None:  # runs in the child before exec
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [BROWSER, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=as_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """The result of one command; a protocol error fails the test."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._next_message()
            if answer.get("id") == self._last_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]
            if "method" in answer:
                self.events.append(answer)

    def _next_message(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._reader], [], [], deadline - time.monotonic())
            assert ready, "chromium did not answer"
            data = os.read(self._reader, 1 << 20)
            assert data, "chromium closed its DevTools pipe"
            self._buffer += data
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self, url: str) -> str:
        """A new tab on ``url``, loaded; returns its session id."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Runtime.enable", session)
        self.call("Page.navigate", session, url=url)
        self.wait_for(session, "document.readyState === 'complete'")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, session: str, condition: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self.evaluate(session, f"Boolean({condition})"):
            assert time.monotonic() < deadline, f"timed out waiting for {condition}"
            time.sleep(0.05)

    def choose_file(self, session: str, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument", session)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session, nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", session, nodeId=node, files=[str(path)])

    def page_errors(self, session: str) -> list[dict[str, Any]]:
        """Uncaught exceptions and console errors or warnings of one page so far."""
        return [
            event
            for event in self.events
            if event.get("sessionId") == session
            and (
                event["method"] == "Runtime.exceptionThrown"
                or (
                    event["method"] == "Runtime.consoleAPICalled"
                    and event["params"]["type"] in ("error", "warning", "assert")
                )
            )
        ]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            os.close(self._writer)
            os.close(self._reader)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    devtools = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield devtools
    finally:
        devtools.close()


@pytest.fixture(scope="module")
def url(browser: DevTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = tmp_path_factory.mktemp("serve-browser") / "best.pt"
    write_checkpoint(checkpoint, 3)
    with serving(checkpoint) as base:
        yield base


SHOWN = """JSON.stringify({
  state: document.body.dataset.state,
  status: document.getElementById("status").textContent,
  overlaySrc: document.getElementById("overlay").src,
  overlayHidden: document.getElementById("overlay").hidden,
  overlaySize: [document.getElementById("overlay").naturalWidth,
                document.getElementById("overlay").naturalHeight],
  overlayBox: document.getElementById("overlay").getBoundingClientRect().width,
  rows: [...document.querySelectorAll("#areas tbody tr")].map(
    (row) => [...row.cells].map((cell) => cell.textContent)),
})"""


def test_a_chosen_image_comes_back_as_its_overlay_with_class_areas(browser, url, tmp_path):
    image = rgb(37, 53, seed=11)
    path = tmp_path / "photo.png"
    path.write_bytes(png_file(image))
    _, _, overlay_png = upload(url, path.read_bytes(), "?overlay=true")
    _, _, json_body = upload(url, path.read_bytes(), "?format=json")
    areas = json.loads(json_body)["classes"]

    session = browser.open_page(f"{url}/")
    browser.choose_file(session, "#file", path)
    browser.wait_for(session, "['done', 'error'].includes(document.body.dataset.state)")
    shown = json.loads(browser.evaluate(session, SHOWN))

    assert shown["state"] == "done", shown["status"]
    assert shown["status"] == "photo.png: 53 x 37 pixels"
    assert not shown["overlayHidden"] and shown["overlaySize"] == [53, 37]
    assert shown["overlayBox"] > 0
    prefix = "data:image/png;base64,"
    assert shown["overlaySrc"].startswith(prefix)
    shown_overlay = decoded_png(base64.b64decode(shown["overlaySrc"].removeprefix(prefix)))
    np.testing.assert_array_equal(shown_overlay, decoded_png(overlay_png))
    assert [row[0] for row in shown["rows"]] == [area["name"] for area in areas]
    assert [int(row[1].replace(",", "")) for row in shown["rows"]] == [
        area["pixels"] for area in areas
    ]
    assert [row[2] for row in shown["rows"]] == [
        f"{100 * area['fraction']:.2f} %" for area in areas
    ]
    assert browser.page_errors(session) == []


def test_a_file_that_is_not_an_image_shows_the_service_message(browser, url, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")

    session = browser.open_page(f"{url}/")
    browser.choose_file(session, "#file", path)
    browser.wait_for(session, "['done', 'error'].includes(document.body.dataset.state)")
    shown = json.loads(browser.evaluate(session, SHOWN))

    assert shown["state"] == "error"
    assert shown["status"].startswith("notes.txt: the file is not an image that can be read")
    assert shown["status"].endswith("(HTTP 415)")
    assert shown["overlayHidden"] and shown["rows"] == []
    assert browser.page_errors(session) == []


KEY = "page-key_0123456789"
STATE = "document.body.dataset.state"


@pytest.fixture(scope="module")
def keyed_url(browser: DevTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = tmp_path_factory.mktemp("serve-browser-key") / "best.pt"
    write_checkpoint(checkpoint, 3)
    with serving(checkpoint, api_key=KEY) as base:
        yield base


def choose_and_wait(browser: DevTools, session: str, path: Path) -> dict[str, Any]:
    """Choose ``path`` in the page's file input; what the page shows once it is done or failed."""
    browser.evaluate(session, f"{STATE} = 'idle'")
    browser.choose_file(session, "#file", path)
    browser.wait_for(session, f"['done', 'error'].includes({STATE})")
    return json.loads(browser.evaluate(session, SHOWN))


def test_with_an_api_key_the_page_sends_the_key_typed_in_its_field(browser, keyed_url, tmp_path):
    paths = [tmp_path / "first.png", tmp_path / "second.png"]
    for seed, path in enumerate(paths):
        path.write_bytes(png_file(rgb(21, 30, seed=seed)))
    session = browser.open_page(f"{keyed_url}/")
    about = browser.evaluate(session, 'document.getElementById("about").textContent')
    assert about == "This service needs an API key: enter it, then choose an image."

    browser.evaluate(session, 'document.getElementById("api-key").value = "wrong"')
    shown = choose_and_wait(browser, session, paths[0])
    assert shown["state"] == "error" and shown["status"].startswith("first.png: the API key sent")
    assert shown["status"].endswith("(HTTP 401)") and shown["rows"] == []

    browser.evaluate(session, f'document.getElementById("api-key").value = "{KEY}"')
    shown = choose_and_wait(browser, session, paths[1])
    assert shown["state"] == "done", shown["status"]
    assert shown["status"] == "second.png: 30 x 21 pixels"
    assert [row[0] for row in shown["rows"]] == ["background", "class1", "class2"]
    about = browser.evaluate(session, 'document.getElementById("about").textContent')
    assert about.startswith("Model unet: multiclass, 3 classes")
    assert browser.page_errors(session) == []
