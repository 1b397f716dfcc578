"""The HTTP service of a Segmenter: a FastAPI app with a prediction endpoint and an upload page.

Endpoints:

* ``POST /predict``: a multipart upload in the field ``file`` (``curl -F file=@image.png``).
  Answers the class-id mask as a PNG (``image/png``, one byte per pixel, the image's size), or with
  ``?overlay=true`` the image with its classes tinted. With ``?format=json`` it answers
  ``{width, height, classes: [{id, name, pixels, fraction}], mask_png_base64}`` (plus
  ``overlay_png_base64`` with ``overlay=true``). The format is a query parameter rather than an
  ``Accept`` header so that a plain link or ``curl`` picks it without header juggling.
* ``GET /health``: ``{"status": "ok"}`` once the service answers.
* ``GET /model``: the model's name, task, threshold, classes (with their overlay colours), input
  size, input channels and the unetkit version.
* ``GET /``: a page to upload an image and see the overlay (see :mod:`unetkit.serve.page`).
* ``GET /openapi.json``: the machine-readable API. The interactive ``/docs`` pages are off, as they
  load their scripts from the internet.

Every refusal is a 4xx with a JSON body ``{"detail": "<what is wrong and what to do>"}``: 413 for a
body over the upload limit or an image over the pixel limit, 415 for a file that is not an image,
422 for a missing ``file`` field, a bad query value or an image with too many channels (see
:mod:`unetkit.serve.decode`). Predictions run on one worker thread that batches concurrent
requests (see :mod:`unetkit.serve.batcher`), so concurrent requests are answered correctly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from unetkit.inference.segmenter import Segmenter
from unetkit.palette import overlay as tint
from unetkit.serve.answer import model_info, png_bytes, prediction_json
from unetkit.serve.batcher import BatchingPredictor
from unetkit.serve.decode import UploadError, decode_image
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
) -> FastAPI:
    """The service of ``segmenter``; ``model_name`` is what ``GET /model`` calls it.

    ``max_upload_bytes`` limits the request body (413 beyond it), ``max_pixels`` the decoded image
    (413 beyond it), which bounds the memory one request can take.
    """
    in_channels = segmenter.preprocessing.in_channels
    if in_channels not in (1, 3):
        raise ValueError(
            f"the service reads uploads as grey or RGB images, but this model takes "
            f"{in_channels}-channel input; predict such images with the Python API instead"
        )
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels; got {max_pixels}")
    predictor = BatchingPredictor(segmenter.predict, segmenter.batch_size)
    info = model_info(segmenter, model_name)
    page = render_page(info)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with predictor:
            yield

    app = FastAPI(title="unetkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    app.add_exception_handler(UploadError, _upload_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/", response_class=HTMLResponse)
    def upload_page() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return info

    @app.post("/predict", response_class=Response)
    def predict(
        file: Annotated[UploadFile, File(description="the image file")],
        answer_format: Annotated[Literal["png", "json"], Query(alias="format")] = "png",
        overlay: bool = False,
    ) -> Response:
        image = decode_image(file.file.read(), in_channels, max_pixels)
        mask = predictor.submit(image).result()
        picture = tint(image, mask, segmenter.task.num_classes) if overlay else None
        if answer_format == "json":
            return JSONResponse(prediction_json(mask, segmenter.class_names, picture))
        return Response(png_bytes(mask if picture is None else picture), media_type="image/png")

    return app


async def _upload_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UploadError)
    return JSONResponse({"detail": error.message}, status_code=error.status)


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
