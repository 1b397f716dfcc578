"""Masks saved as JPEG: compression noise around black and white is snapped away, the rest refused.

JPEG is lossy: a black-and-white mask comes back with values near 0 and 255 around every edge (a
quarter of the pixels of a 24 x 32 mask at quality 75, 2 % of a 256 x 256 one). Two cases:

* A black-and-white picture (some pixels near white, at most 10 % mid-grey) is snapped: values
  below 128 become 0, the others 255, and ``data check`` warns with the number of pixels changed.
  Thresholding at the midpoint is what anyone converting such a mask would do, and binary JPEG
  masks are common in downloaded datasets; refusing them would only send the user off to write
  the same threshold.
* Anything else cannot be told from noise and is refused with the fix "save masks as PNG": class
  ids 1, 2, 3 all lie within JPEG noise of black, and several grey levels blur into each other.

A snapped JPEG mask is only used in a binary dataset: :func:`unetkit.data.mask_files.read_mask`
refuses one with white pixels otherwise, because white (255) would mean *ignore* there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.data.sources import DataError

LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
SAVE_AS_PNG = (
    "save masks as PNG (lossless): JPEG compression changes mask values, so class ids cannot be "
    "recovered; binary masks may stay JPEG if they are black (0) and white (255)"
)
_NEAR_BLACK, _NEAR_WHITE = 64, 192  # below the first or from the second on: not mid-grey
_MAX_GREY_SHARE = 0.10
_MIDPOINT = 128


def is_lossy(image: Image.Image) -> bool:
    """Whether ``image`` was decoded from a lossy format (JPEG), so its values are approximate."""
    return image.format in LOSSY_FORMATS


def snap_black_and_white(values: np.ndarray, path: str | Path) -> tuple[np.ndarray, int]:
    """``values`` (a JPEG mask, uint8) snapped to 0 and 255, and the number of pixels changed.

    Raises :class:`DataError` when the mask is not a black-and-white picture (module docstring).
    """
    if values.size == 0:
        return values, 0
    grey_share = float(np.mean((values >= _NEAR_BLACK) & (values < _NEAR_WHITE)))
    has_white = int(values.max()) >= _NEAR_WHITE
    if (has_white or not values.any()) and grey_share <= _MAX_GREY_SHARE:
        snapped = np.where(values >= _MIDPOINT, 255, 0).astype(values.dtype)
        return snapped, int(np.count_nonzero(snapped != values))
    seen = np.unique(values)
    reason = (
        f"{grey_share:.0%} of its pixels are mid-grey"
        if has_white
        else f"no pixel is near white (the brightest is {int(seen[-1])})"
    )
    raise DataError(
        f"{path}: JPEG mask with {len(seen)} distinct values ({int(seen[0])}..{int(seen[-1])}) "
        f"is not black and white: {reason}",
        fix=SAVE_AS_PNG,
    )
