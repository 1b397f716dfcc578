"""Overload is an answer: a full queue and a missed deadline get 503 with Retry-After, not a crash.

The model is held by a gate (its predictions wait for a signal), so the tests decide when the
queue is full and when a request has waited too long, rather than racing the clock.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from model_helpers import rgb
from test_inference import segmenter, write_checkpoint
from test_serve import (
    TIMEOUT_S,
    GatedModel,
    detail,
    get_json,
    png_file,
    raw_exchange,
    running,
    upload,
)

from unetkit.inference.segmenter import Segmenter
from unetkit.serve import create_app
from unetkit.serve.batcher import BatchingPredictor
from unetkit.serve.memory import IdleRelease, release_freed_memory

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-overload") / "best.pt"
    write_checkpoint(path, 3)
    return path


class Gate:
    """Stands in for ``Segmenter.predict``: notes each batch's image sizes, waits to be released."""

    def __init__(self, predict: Callable[[list[np.ndarray]], list[np.ndarray]]) -> None:
        self.predict = predict
        self.batches: list[list[tuple[int, int]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        assert self.release.wait(TIMEOUT_S)
        self.batches.append([image.shape[:2] for image in images])
        return self.predict(images)


def gated_app(checkpoint: Path, **limits: float) -> tuple[Gate, FastAPI]:
    model = Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)
    gate = Gate(model.predict)
    model.predict = gate  # what the app's batching worker calls
    return gate, create_app(model, **limits)


def server_of(app: FastAPI) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def image(seed: int) -> bytes:
    """A PNG of ``(10 + seed) x (12 + seed)`` pixels: each request's own size, seen by the gate."""
    return png_file(rgb(10 + seed, 12 + seed, seed=seed))


def test_a_full_queue_is_answered_at_once_with_503_and_retry_after(checkpoint):
    gate, app = gated_app(checkpoint, max_queue=2)
    load = app.state.load
    with running(server_of(app)) as url, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(upload, url, image(0))
            assert gate.entered.wait(TIMEOUT_S)  # in the model
            second = pool.submit(upload, url, image(1))
            wait_until(lambda: load.in_flight == 2)  # waiting for the model

            status, headers, body = upload(url, image(2))
            assert status == 503 and headers["Retry-After"] == "1"
            assert headers["Content-Type"] == "application/json"
            assert "the server is busy: 2 requests are being answered" in detail(body)
            assert "--max-queue 2" in detail(body)
            assert get_json(f"{url}/health") == (200, {"status": "ok"})  # answered while full
            assert load.busy == 1
        finally:
            gate.release.set()
        assert first.result(TIMEOUT_S)[0] == 200 and second.result(TIMEOUT_S)[0] == 200
        wait_until(lambda: load.in_flight == 0)
        assert upload(url, image(2))[0] == 200  # a place again
    assert gate.batches == [[(10, 12)], [(11, 13)], [(12, 14)]]


def test_a_request_past_its_deadline_is_503_and_its_queued_work_is_dropped(checkpoint):
    gate, app = gated_app(checkpoint, max_queue=4, request_timeout_s=1.0)
    with running(server_of(app)) as url, ThreadPoolExecutor(2) as pool:
        try:
            started = time.monotonic()
            in_model = pool.submit(upload, url, image(0))
            assert gate.entered.wait(TIMEOUT_S)
            queued = pool.submit(upload, url, image(1))
            answers = [in_model.result(TIMEOUT_S), queued.result(TIMEOUT_S)]
            waited = time.monotonic() - started
            assert not gate.release.is_set()  # answered while the model still held the first
        finally:
            gate.release.set()
        for status, headers, body in answers:
            assert status == 503 and headers["Retry-After"] == "1"
            assert "the request was not answered within 1 s" in detail(body)
            assert "its work was dropped" in detail(body)
        assert 1.0 <= waited < TIMEOUT_S
        assert app.state.load.timed_out == 2
        assert upload(url, image(2))[0] == 200
    assert gate.batches == [[(10, 12)], [(12, 14)]]  # the queued image was never predicted


def read_answer(connection: socket.socket) -> tuple[int, bytes]:
    """The status and body of one HTTP answer, read without waiting for the connection to close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, "the server closed before answering"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    length = int({name.lower(): value for name, value in fields.items()}["content-length"])
    while len(body) < length:
        body += connection.recv(65536)
    return int(lines[0].split(" ")[1]), body


def test_a_slow_upload_is_answered_at_the_deadline(checkpoint):
    _, app = gated_app(checkpoint, request_timeout_s=0.5)
    with running(server_of(app)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as connection:
            head = (
                b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            connection.sendall(head)  # and the other 4996 bytes never come
            status, body = read_answer(connection)
        assert status == 503 and "not answered within 0.5 s" in detail(body)
        wait_until(lambda: app.state.load.in_flight == 0)  # its place is given back
        assert get_json(f"{url}/health")[0] == 200


def test_the_byte_limit_holds_for_each_of_many_concurrent_uploads(checkpoint):
    gate, app = gated_app(checkpoint, max_upload_bytes=4096, max_queue=32)
    gate.release.set()
    small = png_file(rgb(20, 20))  # about 1.3 kB: six of them together pass the limit
    start = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
    chunked = start + b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in [part] + [b"x" * 1000] * 5]
    with running(server_of(app)) as url, ThreadPoolExecutor(12) as pool:
        oversized = [pool.submit(raw_exchange, url, chunked, chunks) for _ in range(6)]
        fitting = [pool.submit(upload, url, small) for _ in range(6)]
        for answer in oversized:
            text = answer.result(TIMEOUT_S)
            assert text.startswith(b"HTTP/1.1 413 ") and b"more than 4096 bytes arrived" in text
        assert [answer.result(TIMEOUT_S)[0] for answer in fitting] == [200] * 6
        wait_until(lambda: app.state.load.in_flight == 0)


def test_limits_that_cannot_work_are_refused_when_the_app_is_built():
    model = segmenter()
    with pytest.raises(ValueError, match=r"--max-queue\) must be a positive number.*got 0"):
        create_app(model, max_queue=0)
    with pytest.raises(ValueError, match=r"--request-timeout\) must be a positive.*got 0"):
        create_app(model, request_timeout_s=0)
    with pytest.raises(ValueError, match="the API key .* is empty"):
        create_app(model, api_key="")


def test_a_cancelled_job_is_never_predicted():
    model = GatedModel()
    with BatchingPredictor(model, batch_size=4) as predictor:
        first = predictor.submit(np.array([0]))
        assert model.entered.wait(TIMEOUT_S)  # the worker is busy with image 0
        given_up, kept = predictor.submit(np.array([1])), predictor.submit(np.array([2]))
        assert given_up.cancel()
        model.release.set()
        assert first.result(TIMEOUT_S)[0] == 0 and kept.result(TIMEOUT_S)[0] == 20
    assert model.batches == [[0], [2]] and given_up.cancelled()


# --- memory after a burst -----------------------------------------------------------------------


def test_freed_memory_is_released_once_idle_and_not_while_busy():
    idle = {"now": True}

    async def scenario() -> list[int]:
        release = IdleRelease(lambda: idle["now"], delay_s=0.05)
        seen = []
        release.idle()
        release.idle()  # the last request of two ended: one release, a delay after the last
        await asyncio.sleep(0.15)
        seen.append(release.releases)
        idle["now"] = False  # a request began before the delay passed
        release.idle()
        await asyncio.sleep(0.15)
        seen.append(release.releases)
        return seen

    assert asyncio.run(scenario()) == [1, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_server_releases_memory_after_its_last_request(checkpoint):
    assert release_freed_memory() is True
    gate, app = gated_app(checkpoint)
    gate.release.set()
    with running(server_of(app)) as url:
        assert app.state.memory.releases == 0
        assert upload(url, image(0))[0] == 200
        wait_until(lambda: app.state.memory.releases == 1)
