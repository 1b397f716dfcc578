"""What the Segmenter accepts as an image: NumPy arrays or PIL images, checked and made uniform.

Every input becomes an ``H x W x C`` uint8 array with the channel count the model was trained on,
converted as :func:`unetkit.data.image_files.read_image` converts files (EXIF orientation
included), so an image predicted from memory and the same image read from disk give the same
result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.data.image_files import upright

ImageLike = np.ndarray | Image.Image

_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def as_image_array(image: ImageLike, channels: int) -> np.ndarray:
    """An HxWxC uint8 array of ``image`` with ``channels`` channels, or an error with the fix."""
    if isinstance(image, (str, Path)):
        raise TypeError(
            f"Segmenter takes images (NumPy arrays or PIL images), not paths like {image!r}; "
            f"read the file first (unetkit.data.image_files.read_image) or use predict_files"
        )
    array = _pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixel values 0..255, got {array.dtype}; convert first, e.g. "
            f"(img / img.max() * 255).astype(np.uint8)"
        )
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or min(array.shape[:2]) < 1:
        raise ValueError(
            f"expected one image of shape HxW or HxWxC, got shape {array.shape}; "
            f"pass several images as a list"
        )
    return np.ascontiguousarray(_match_channels(array, channels))


def is_single_image(images: object) -> bool:
    """Whether ``images`` is one image (or a path mistaken for one) rather than a sequence."""
    return isinstance(images, (Image.Image, np.ndarray, str, Path))


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Grey or RGB uint8 pixels of a PIL image, as ``data.image_files.read_image`` sees them.

    High-bit-depth images keep their dtype, so they fail the uint8 check instead of being clipped.
    An EXIF orientation is applied, as when the file is read from disk.
    """
    image = upright(image)
    if image.mode in ("L", "RGB") or image.mode in _HIGH_BIT_DEPTH_MODES:
        return np.asarray(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """``array`` (HxWxC) with alpha dropped and grey/RGB converted to ``channels`` channels."""
    if array.shape[2] in (2, 4):  # grey + alpha, RGBA
        array = array[..., :-1]
    if array.shape[2] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] == 3 and channels == 1:
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[..., None]
    if array.shape[2] != channels:
        raise ValueError(
            f"the model expects {channels}-channel images (1 = grey, 3 = RGB, with an optional "
            f"alpha channel); got {array.shape[2]} channels"
        )
    return array
