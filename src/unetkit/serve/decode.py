"""An uploaded file becomes the array the model reads, exactly as ``unetkit predict`` reads files.

Decoding goes through :func:`unetkit.data.image_files.read_image`, so the service answers what
``unetkit predict`` writes for the same file: palette, CMYK and alpha images become RGB (alpha
dropped), 16-bit and float images are stretched to 0..255, multi-frame files give their first
frame, and a one-channel model sees luminance.

What is refused, with the HTTP status the service answers:

* 413: an image of more than ``max_pixels`` pixels (its header is read first, so a small file that
  would unpack into gigabytes is refused before it is decoded).
* 415: an empty file, or bytes that are not an image PIL can decode (truncated files included;
  a TIFF that PIL cannot decode is named with its channel count and sample type).
* 422: a TIFF with a channel count no model input can be made of. Like the Segmenter, 1 to 4
  channels are accepted (grey, grey + alpha, RGB, RGBA); a 5-channel TIFF is refused. PIL decodes
  every other format to at most 4 channels, so only TIFFs (read with tifffile) can have more.
"""

from __future__ import annotations

import io
from http import HTTPStatus

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from unetkit.data.image_files import open_lazily, read_image
from unetkit.data.sources import DataError, UnreadableFileError

ACCEPTED_CHANNELS = range(1, 5)
"""Channel counts an upload may have: grey, grey + alpha, RGB, RGBA (alpha is dropped)."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FORMATS_HINT = "send a PNG, JPEG, TIFF, BMP or GIF image"


class UploadError(Exception):
    """An upload the service cannot answer; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, in_channels: int, max_pixels: int) -> np.ndarray:
    """``data`` (the bytes of an image file) as ``H x W x in_channels`` uint8.

    Raises :class:`UploadError` for the refusals listed in the module docstring.
    """
    if not data:
        raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the file is empty; {_FORMATS_HINT}")
    _check_header(data, max_pixels)
    try:
        # read_image opens in-memory files too (through data.image_files, as for files)
        return read_image(io.BytesIO(data), in_channels)
    except DataError as error:
        reason = error.__cause__ or error
        raise UploadError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"the file could not be decoded as an image ({reason}); {_FORMATS_HINT}",
        ) from error


def _check_header(data: bytes, max_pixels: int) -> None:
    """Refuse non-images, and images too large to answer, from the file's header alone."""
    try:
        with open_lazily(io.BytesIO(data)) as image:
            width, height = image.size
    except UnreadableFileError as error:
        raise _header_refusal(data, error.__cause__ or error) from error
    if width * height > max_pixels:
        raise UploadError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the image has {width} x {height} = {width * height} pixels, more than the "
            f"service's limit of {max_pixels}; send a smaller image, or raise the limit when "
            f"starting the server (unetkit serve --max-megapixels)",
        )


def _header_refusal(data: bytes, reason: BaseException) -> UploadError:
    """The answer to a header that :func:`open_lazily` refused; ``reason`` is PIL's error."""
    if isinstance(reason, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return UploadError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the image is too large to decode ({reason}); send a smaller image",
        )
    if isinstance(reason, UnidentifiedImageError):
        _explain_unreadable_tiff(data)
        return UploadError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"the file is not an image that can be read (unknown format); {_FORMATS_HINT}",
        )
    return UploadError(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"the file is not an image that can be read ({reason}); {_FORMATS_HINT}",
    )


def _explain_unreadable_tiff(data: bytes) -> None:
    """Say why a TIFF that PIL cannot open is refused: its channel count, or its layout."""
    if not data.startswith(_TIFF_MAGIC):
        return
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages[0]
            channels = int(page.samplesperpixel)
            layout = f"{page.photometric.name.lower()}, {page.dtype}"
    except Exception:  # a TIFF that tifffile cannot parse either is simply not an image
        return
    if channels not in ACCEPTED_CHANNELS:
        raise UploadError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"the image has {channels} channels; the model takes grey or RGB images "
            f"(1 to 4 channels: grey, grey + alpha, RGB, RGBA, alpha is dropped); save it "
            f"with 1, 3 or 4 channels",
        )
    raise UploadError(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"the TIFF's layout ({channels} channels, {layout}) cannot be decoded; save it as an "
        f"8-bit grey, RGB or RGBA image",
    )
