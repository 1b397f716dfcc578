"""Optional API key: with one set, every route but the page and ``/health`` needs it.

A client sends the key as ``Authorization: Bearer KEY``. The rule is by route: ``/`` (the upload
page, which then carries no model data and asks for the key itself) and ``/health`` (for load
balancers and probes) are open; everything else, the model description and predictions included,
answers 401 with a JSON ``{"detail": ...}`` and ``WWW-Authenticate: Bearer`` without the key. The
key is compared in constant time (:func:`hmac.compare_digest`), so answer times do not reveal how
much of a guess was right, and it never appears in an answer or a log line.

The key comes from ``unetkit serve --api-key`` or the environment variable ``UNETKIT_API_KEY``;
the variable is the better choice, as a command line is visible to every user of the machine
(``ps``).
"""

from __future__ import annotations

import hmac
import os
import string
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from unetkit.serve.scope import route_path

API_KEY_VARIABLE = "UNETKIT_API_KEY"
OPEN_PATHS = frozenset({"/", "/health"})
_KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + string.punctuation)
_HOW_TO_SEND = (
    "send the header 'Authorization: Bearer <key>', e.g. curl -H \"Authorization: Bearer "
    f'${API_KEY_VARIABLE}" -F file=@image.png http://HOST:PORT/predict; the upload page at / '
    "asks for the key"
)


def resolve_api_key(given: str | None) -> str | None:
    """The key to require: ``given`` (``--api-key``), else ``$UNETKIT_API_KEY``, else None (open).

    Raises ValueError for a key that cannot travel in an ``Authorization`` header, an empty one
    included (an empty variable is more likely a mistake than a wish to serve without a key).
    """
    key = given if given is not None else os.environ.get(API_KEY_VARIABLE)
    if key is not None:
        check_api_key(key)
    return key


def check_api_key(key: str) -> None:
    """Refuse a key that is empty or not printable ASCII without spaces; the message omits it."""
    source = f"the API key (--api-key or ${API_KEY_VARIABLE})"
    if not key:
        raise ValueError(
            f"{source} is empty; set a non-empty key, or unset {API_KEY_VARIABLE} and leave out "
            f"--api-key to serve without one"
        )
    if not set(key) <= _KEY_CHARACTERS:
        raise ValueError(
            f"{source} has characters an HTTP header cannot carry as a Bearer token (spaces, "
            f"control or non-ASCII characters); use letters, digits and punctuation, e.g. the "
            f"output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


class BearerAuth:
    """ASGI middleware: 401 for requests to a closed route without ``Authorization: Bearer KEY``."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        check_api_key(api_key)
        self.app = app
        self._key = api_key.encode("ascii")
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in self.open_paths:
            await self.app(scope, receive, send)
            return
        problem = self._problem(Headers(scope=scope).get("authorization"))
        if problem is None:
            await self.app(scope, receive, send)
            return
        # The body is not read: uvicorn discards what the client still sends and keeps the
        # connection, so the client reads this answer rather than a reset connection.
        refusal = JSONResponse(
            {"detail": f"{problem}; {_HOW_TO_SEND}"},
            status_code=HTTPStatus.UNAUTHORIZED,
            headers={"WWW-Authenticate": 'Bearer realm="unetkit"'},
        )
        await refusal(scope, receive, send)

    def _problem(self, authorization: str | None) -> str | None:
        """What is wrong with the ``Authorization`` header, or None when it carries the key."""
        if authorization is None:
            return "this service needs an API key and the request has no Authorization header"
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":  # not echoed: a bare key would sit where the scheme goes
            return "the Authorization header does not use the Bearer scheme ('Bearer <key>')"
        # latin-1 is how ASGI servers decode header bytes, so this gives back the bytes sent
        if not hmac.compare_digest(token.strip().encode("latin-1"), self._key):
            return "the API key sent is not this service's key"
        return None
