"""The HTTP service of a Segmenter: a FastAPI app with a prediction endpoint and an upload page.

Endpoints:

* ``POST /predict``: a multipart upload in the field ``file`` (``curl -F file=@image.png``).
  Answers the class-id mask as a PNG (``image/png``, one byte per pixel, the image's size), or with
  ``?overlay=true`` the image with its classes tinted. With ``?format=json`` it answers
  ``{width, height, classes: [{id, name, pixels, fraction}], mask_png_base64}`` (plus
  ``overlay_png_base64`` with ``overlay=true``). The format is a query parameter rather than an
  ``Accept`` header so that a plain link or ``curl`` picks it without header juggling.
* ``GET /health``: ``{"status": "ok"}`` once the service answers; never needs the API key.
* ``GET /model``: the model's name, task, threshold, classes (with their overlay colours), input
  size, input channels and the unetkit version.
* ``GET /``: a page to upload an image and see the overlay (see :mod:`unetkit.serve.page`); open
  without the API key, and then it carries no model data and asks for the key.
* ``GET /openapi.json``: the machine-readable API. The interactive ``/docs`` pages are off, as they
  load their scripts from the internet.

Every refusal is a JSON body ``{"detail": "<what is wrong and what to do>"}``: 400 for a body that
is not valid multipart, 401 without the API key when one is set (see :mod:`unetkit.serve.auth`),
413 for a body over the upload limit or an image over the pixel limit, 415 for a file that is not
an image, 422 for a missing ``file`` field, a bad query value or an image with too many channels
(see :mod:`unetkit.serve.decode`), and 503 with ``Retry-After`` when the server is full or a
request waited past its deadline (see :mod:`unetkit.serve.admission`). Predictions run on one
worker thread that batches concurrent requests (see :mod:`unetkit.serve.batcher`), so concurrent
requests are answered correctly; decoding and encoding run on worker threads, so the event loop
stays free to answer (and refuse) other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from unetkit.inference.segmenter import Segmenter
from unetkit.serve.admission import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_TIMEOUT_S,
    Admission,
    Load,
    check_limits,
)
from unetkit.serve.answer import (
    mask_picture,
    model_info,
    overlay_picture,
    png_bytes,
    prediction_json,
)
from unetkit.serve.auth import BearerAuth, check_api_key
from unetkit.serve.batcher import BatchingPredictor
from unetkit.serve.decode import UploadError, decode_image
from unetkit.serve.memory import IdleRelease
from unetkit.serve.page import render_page
from unetkit.serve.upload_limit import UploadLimit

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 25_000_000
_UPLOAD_HINT = (
    "send the image as multipart/form-data in a field named 'file', "
    "e.g. curl -F file=@image.png http://HOST:PORT/predict"
)


def create_app(
    segmenter: Segmenter,
    *,
    model_name: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FastAPI:
    """The service of ``segmenter``; ``model_name`` is what ``GET /model`` calls it.

    ``max_upload_bytes`` limits the request body (413 beyond it), ``max_pixels`` the decoded image
    (413 beyond it), which bounds the memory one request can take; ``max_queue`` bounds the
    prediction requests in flight and ``request_timeout_s`` how long one may wait (503 beyond
    either), which bounds the memory and time of them all. With ``api_key`` every route but ``/``
    and ``/health`` needs ``Authorization: Bearer <api_key>``. ``app.state.load`` counts the
    requests in flight and those refused.
    """
    in_channels = segmenter.preprocessing.in_channels
    if in_channels not in (1, 3):
        raise ValueError(
            f"the service reads uploads as grey or RGB images, but this model takes "
            f"{in_channels}-channel input; predict such images with the Python API instead"
        )
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels; got {max_pixels}")
    check_limits(max_queue, request_timeout_s)  # now, not at the first request (middleware)
    if api_key is not None:
        check_api_key(api_key)
    predictor = BatchingPredictor(segmenter.predict, segmenter.batch_size)
    info = model_info(segmenter, model_name)
    page = render_page(info if api_key is None else None, needs_key=api_key is not None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with predictor:
            yield

    app = FastAPI(title="unetkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.load = Load()
    _guard(app, api_key, max_upload_bytes, max_queue, request_timeout_s)
    app.add_exception_handler(UploadError, _upload_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)

    @app.get("/", response_class=HTMLResponse)
    def upload_page() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return info

    def answer(image: np.ndarray, mask: np.ndarray, answer_format: str, overlay: bool) -> Response:
        classes = segmenter.task.num_classes
        picture = overlay_picture(image, mask, classes) if overlay else None
        if answer_format == "json":
            return JSONResponse(prediction_json(mask, segmenter.class_names, picture))
        shown = mask_picture(mask) if picture is None else picture
        return Response(png_bytes(shown), media_type="image/png")

    @app.post("/predict", response_class=Response)
    async def predict(
        file: Annotated[UploadFile, File(description="the image file")],
        answer_format: Annotated[Literal["png", "json"], Query(alias="format")] = "png",
        overlay: bool = False,
    ) -> Response:
        # Each step can be cancelled by the request's deadline: a queued prediction is then
        # dropped (wrap_future cancels it), a decode or encode under way finishes unread.
        data = await file.read()
        await file.close()  # its buffer is not needed while the request waits
        image = await asyncio.to_thread(decode_image, data, in_channels, max_pixels)
        del data
        mask = await asyncio.wrap_future(predictor.submit(image))
        return await asyncio.to_thread(answer, image, mask, answer_format, overlay)

    return app


def _guard(
    app: FastAPI, api_key: str | None, max_upload_bytes: int, max_queue: int, timeout_s: float
) -> None:
    """The middleware in the order a request meets it: the key, the byte limit, the queue.

    Each refuses before the next costs anything: no key, no body read; too large a declared
    body, no place in the queue taken.
    """
    # add_middleware wraps what was added before, so the last added runs first
    load = app.state.load
    app.state.memory = IdleRelease(lambda: load.in_flight == 0)  # after a burst, RSS goes back
    app.add_middleware(
        Admission,
        paths=frozenset({"/predict"}),
        load=load,
        max_queue=max_queue,
        timeout_s=timeout_s,
        on_idle=app.state.memory.idle,
    )
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)


async def _upload_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UploadError)
    return JSONResponse({"detail": error.message}, status_code=error.status)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    """Starlette's refusals (404, 405, 413, unparseable bodies) as ``{"detail"}``, with the hint.

    A body that cannot be parsed as a form is a 400 with the parser's words ("Missing boundary in
    multipart.") or FastAPI's bare "There was an error parsing the body" (its cause says why);
    here both say what was wrong and how to send an upload.
    """
    assert isinstance(error, HTTPException)
    detail = error.detail
    if error.status_code == 400:
        reason = error.__cause__ or error.detail
        detail = f"the request body could not be parsed ({reason}); {_UPLOAD_HINT}"
    return JSONResponse({"detail": detail}, status_code=error.status_code, headers=error.headers)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    """One readable sentence instead of FastAPI's list of error records."""
    assert isinstance(error, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
        for problem in error.errors()
    ]
    about_file = any(tuple(problem["loc"][:2]) == ("body", "file") for problem in error.errors())
    detail = "; ".join(problems) + (f"; {_UPLOAD_HINT}" if about_file else "")
    return JSONResponse({"detail": detail}, status_code=422)
