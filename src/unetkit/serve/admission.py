"""Overload is an answer: a bounded number of predictions at once, each with a deadline.

A prediction request holds memory from the moment its body starts to arrive (the upload, then the
decoded image, then the mask) until its answer is sent. So at most ``max_queue`` prediction
requests are admitted at once: receiving, decoding, waiting for the model or being predicted.
One more is answered at once with 503, a ``Retry-After`` header and a JSON ``{"detail": ...}``,
before any of its body is read (uvicorn discards the rest of the body and keeps the connection, so
the client reads the answer). With the upload limit this bounds what uploads can buffer:
``max_queue`` bodies of at most ``max_upload_bytes``.

An admitted request that has not started its answer ``timeout_s`` seconds after it was admitted
(a slow upload, a long queue) is answered 503 too, with a message naming the limit, and its work is
dropped: a prediction still queued is never run (see :mod:`unetkit.serve.batcher`), one already
running in a batch finishes and is thrown away. The deadline covers the time until the answer
starts, not the sending of an answer to a slow reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unetkit.serve.scope import route_path

DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT_S = 30.0
RETRY_AFTER_S = 1


@dataclass
class Load:
    """What the admission has seen: requests admitted now, and those refused or timed out."""

    in_flight: int = 0
    busy: int = 0
    timed_out: int = 0


class Admission:
    """ASGI middleware bounding the requests to ``paths`` in flight, each by a deadline.

    Counters live in ``load`` (the app keeps it as ``app.state.load``). They are only touched on
    the event loop, so they need no lock. ``on_idle`` is called (on the loop) each time the last
    request in flight ends.
    """

    def __init__(
        self,
        app: ASGIApp,
        paths: frozenset[str],
        load: Load,
        max_queue: int = DEFAULT_MAX_QUEUE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        check_limits(max_queue, timeout_s)
        self.app = app
        self.paths = paths
        self.load = load
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.on_idle = on_idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.load.in_flight >= self.max_queue:
            self.load.busy += 1
            await self._overloaded(self._busy_message())(scope, receive, send)
            return
        self.load.in_flight += 1
        try:
            await self._within_deadline(scope, receive, send)
        finally:
            self.load.in_flight -= 1
            if self.load.in_flight == 0 and self.on_idle is not None:
                self.on_idle()

    async def _within_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False

        async def send_and_stop_the_clock(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, receive, send_and_stop_the_clock)
        except TimeoutError:
            if answered or not deadline.expired():
                raise  # not this deadline's: the app's own error, or one after the answer began
            self.load.timed_out += 1
            await self._overloaded(self._timeout_message())(scope, receive, send)

    def _busy_message(self) -> str:
        return (
            f"the server is busy: {self.load.in_flight} requests are being answered, the most it "
            f"takes at once (unetkit serve --max-queue {self.max_queue}); retry after "
            f"{RETRY_AFTER_S} s, as the Retry-After header says"
        )

    def _timeout_message(self) -> str:
        return (
            f"the request was not answered within {self.timeout_s:g} s (unetkit serve "
            f"--request-timeout) because the server is overloaded or the upload was too slow; "
            f"its work was dropped. Retry after {RETRY_AFTER_S} s, send fewer requests at once, "
            f"or raise the limit"
        )

    @staticmethod
    def _overloaded(message: str) -> JSONResponse:
        return JSONResponse(
            {"detail": message},
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


def check_limits(max_queue: int, timeout_s: float) -> None:
    """Refuse a queue bound that is not a positive integer, or a timeout that is not positive."""
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(
            f"max_queue (--max-queue) must be a positive number of requests; got {max_queue!r}"
        )
    if not timeout_s > 0:
        raise ValueError(
            f"the request timeout (--request-timeout) must be a positive number of seconds; "
            f"got {timeout_s!r}"
        )
