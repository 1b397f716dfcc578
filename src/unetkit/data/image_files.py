"""Opening image files from the wild: decoded in full, turned upright, bounded in size.

Every reader of images and masks in unetkit opens files through :func:`open_image`, so training,
evaluation, ``predict`` and ``serve`` agree on what a user's folder can throw at them:

* Orientation: a photo whose EXIF header says it is rotated or mirrored is turned the way viewers
  show it (``ImageOps.exif_transpose``). Images and masks alike, so a mask drawn on the picture as
  the user sees it lines up with it. :func:`upright` does the same for an image already in memory,
  and :func:`header_size` gives the size as seen, without decoding.
* Size: a header claiming more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's decompression-bomb
  limit, about 89 million) is refused before any pixel is decoded, naming the file and the limit.
* Failure: an empty file, a truncated one, or bytes no decoder understands raise
  :class:`UnreadableFileError` naming the file; PIL's own exceptions never escape.

:func:`read_image` gives an image's pixels in canonical form: RGB (or L for ``in_channels == 1``);
palette, RGBA and CMYK images are converted, 16-bit and float images are stretched to 0..255 by
their own range (their useful range varies with the sensor), and multi-frame files give their first
frame. Masks are read by :mod:`unetkit.data.mask_files`, through the same opener.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from unetkit.data.sources import DataError, UnreadableFileError

ImageSource = str | Path | BinaryIO

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"})
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# What PIL's decoders raise on malformed bytes. OSError is the documented one; the others come out
# of individual plugins on corrupt headers (found by tests/test_data_wild.py's generated files).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)
_SIZE_LIMIT_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_REEXPORT = "re-export the file, or remove it (with its image or mask)"
_ORIENTATION = ExifTags.Base.Orientation
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap width and height


def open_image(source: ImageSource) -> Image.Image:
    """``source`` opened, decoded in full (so truncation fails here) and turned upright.

    ``format`` stays the file's (``"JPEG"`` ...). The caller closes the image (use ``with``).
    """
    image = open_lazily(source)
    try:
        image.load()
        turned = upright(image)
    except DECODE_ERRORS as error:
        image.close()
        raise unreadable(source, error) from error
    if turned is not image:
        turned.format = image.format  # a turned copy has none; lossy_masks asks for JPEG
        image.close()
    return turned


def read_image(path: ImageSource, in_channels: int = 3, *, allow_colour: bool = True) -> np.ndarray:
    """The image at ``path`` as ``H x W x in_channels`` uint8.

    With ``in_channels == 1`` colour images are converted to luminance, unless ``allow_colour`` is
    False: then an image whose channels differ raises :class:`DataError`, because feeding colour
    data to a one-channel model is usually a configuration mistake.
    """
    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 (grey) or 3 (RGB); got {in_channels}")
    with open_image(path) as image:
        if image.mode in HIGH_BIT_DEPTH_MODES:
            grey = _stretch_to_uint8(np.asarray(image))
            array = grey[..., None] if in_channels == 1 else np.repeat(grey[..., None], 3, 2)
            return np.ascontiguousarray(array)
        try:
            rgb = np.asarray(_to_rgb(image))
        except DECODE_ERRORS as error:  # a mode PIL decodes but cannot convert (LAB TIFFs ...)
            raise unreadable(path, error) from error
    if in_channels == 3:
        return rgb
    if not allow_colour and is_colour(rgb):
        raise DataError(
            f"{path}: colour image but in_channels=1",
            fix="set data.in_channels=3, or convert the images to greyscale first",
        )
    grey = Image.fromarray(rgb, mode="RGB").convert("L")
    return np.asarray(grey)[..., None]


def header_size(source: ImageSource) -> tuple[int, int]:
    """``(height, width)`` of the image as viewers show it, read from its header alone."""
    with open_lazily(source) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_ORIENTATION)
        except DECODE_ERRORS as error:
            raise unreadable(source, error) from error
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says; ``image`` itself when already upright.

    For images opened elsewhere (an upload, a PIL image handed to the Segmenter), so they are
    seen as :func:`open_image` sees the same file.
    """
    if image.getexif().get(_ORIENTATION) not in range(2, 9):
        return image
    return ImageOps.exif_transpose(image)


def unreadable(
    source: ImageSource, error: Exception, *, page: int | None = None
) -> UnreadableFileError:
    """The error for a file (or ``page`` of a multi-page file) that PIL cannot decode; names the
    file, the page and PIL's reason."""
    where = describe_source(source) if page is None else f"{describe_source(source)} page {page}"
    return UnreadableFileError(
        f"{where}: cannot be read as an image ({type(error).__name__}: {error})", fix=_REEXPORT
    )


def describe_source(source: ImageSource) -> str:
    """The path of ``source``, or ``<in-memory image>`` for a file object without a name."""
    if isinstance(source, str | Path):
        return str(source)
    return str(getattr(source, "name", "<in-memory image>"))


def open_lazily(source: ImageSource) -> Image.Image:
    """``Image.open(source)``, pixels not yet decoded, with every failure as our error.

    For readers that pick frames themselves (TIFF stacks); others use :func:`open_image`.
    """
    name = describe_source(source)
    if _is_empty(source):
        raise UnreadableFileError(f"{name}: the file is empty (0 bytes)", fix=_REEXPORT)
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit and decodes anyway; refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(source)
    except FileNotFoundError as error:
        raise UnreadableFileError(f"{name}: file not found", fix=_REEXPORT) from error
    except _SIZE_LIMIT_ERRORS as error:
        raise UnreadableFileError(
            f"{name}: refused to decode: {error} (the limit is PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} pixels)",
            fix="a header this large is usually a corrupt or hostile file: re-export or remove "
            "it; cut a genuine image this large into tiles before using it",
        ) from error
    except DECODE_ERRORS as error:
        raise unreadable(source, error) from error


def _is_empty(source: ImageSource) -> bool:
    if isinstance(source, str | Path):
        try:
            return os.stat(source).st_size == 0
        except OSError:
            return False  # Image.open names the problem (missing file, permissions)
    if isinstance(source, io.BytesIO):
        with source.getbuffer() as view:
            return view.nbytes == 0
    return False


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def is_colour(rgb: np.ndarray) -> bool:
    """Whether the ``H x W x 3`` pixels ``rgb`` hold a pixel whose channels differ."""
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))
