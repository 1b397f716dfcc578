"""Request bodies over the size limit are refused as they arrive, never read to the end first.

A request that declares a larger ``Content-Length`` is answered 413 before any of its body is
read. A body sent without a length (chunked) is counted while it is read, and refused with 413 as
soon as it passes the limit. Either way the connection is closed after the answer, since the rest
of the body is never read. The limit applies to the whole body, so an upload's multipart framing
(a few hundred bytes) counts too.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CLOSE = {"Connection": "close"}  # the rest of the body is not read, so the connection ends


class UploadLimit:
    """ASGI middleware: a 413 JSON answer ``{"detail": ...}`` for bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"the upload limit must be a positive byte count; got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = JSONResponse(
                {"detail": self.message(f"the request declares {declared} bytes")},
                status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                headers=_CLOSE,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def message(self, seen: str) -> str:
        """What a person reads when the upload is too large."""
        return (
            f"the upload is too large: {seen}, the limit is {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:.3g} MB); send a smaller file, or raise the limit when "
            f"starting the server (unetkit serve --max-upload-mb)"
        )

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    seen = f"more than {self.max_bytes} bytes arrived"
                    raise HTTPException(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self.message(seen), headers=_CLOSE
                    )
            return message

        return counted_receive


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
