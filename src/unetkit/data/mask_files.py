"""Mask files read in canonical form: class ids ``0 .. 254`` as ``uint8``, ``255`` = ignore.

Rules, applied per dataset so every mask of a dataset is read the same way (the dataset's
:class:`MaskEncoding`, settled by :mod:`unetkit.data.mask_scan`):

* Pixel values are class ids, 8- or 16-bit alike. Palette (P-mode) masks are read as their
  palette *indices*, never converted to colours; 1-bit masks as 0 and 1. A colour (RGB) mask whose
  channels differ is rejected, unless the dataset has a colour map (``data.colour_map``, see
  :mod:`unetkit.data.colour_map`): then every mask is read as RGB (palette masks through their
  palette) and each colour becomes its class id.
* Binary masks: when ``num_classes`` is 2 or not given, and every mask of the dataset holds only
  0 and one other value, 1 or full-scale white (255, or 65535 in a 16-bit PNG), with white in at
  least one, then the dataset is binary and 1, 255 and 65535 all mean foreground (so 0/1 and
  0/255 masks may be mixed). Otherwise 255 keeps its canonical meaning, *ignore*.
* JPEG masks are snapped to black and white, and only accepted in a binary dataset
  (see :mod:`unetkit.data.lossy_masks`).
* ``ignore_index`` (a value used by the dataset for void pixels) is mapped to 255 = ignore.

A mask must have its image's size (as viewers show the image: EXIF rotations are applied, see
:mod:`unetkit.data.image_files`); a mask of another size is refused rather than resized, because
it is nearly always the mask of another image or of a resized or cropped copy, and stretching it
would misplace every label without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.data.colour_map import ColourMap
from unetkit.data.image_files import HIGH_BIT_DEPTH_MODES, is_colour, open_image
from unetkit.data.lossy_masks import SAVE_AS_PNG, is_lossy, snap_black_and_white
from unetkit.data.sources import DataError
from unetkit.tasks import IGNORE_INDEX


@dataclass(frozen=True)
class StoredMask:
    """The values a mask file holds, and whether they were snapped from a lossy (JPEG) file."""

    values: np.ndarray  # H x W int64
    lossy: bool = False
    snapped_pixels: int = 0  # pixels of a JPEG mask moved to 0 or 255


def read_raw_mask(path: str | Path) -> np.ndarray:
    """The stored values of mask ``path`` as ``H x W`` int64 (palette indices for P mode)."""
    return read_stored_mask(path).values


def read_stored_mask(path: str | Path) -> StoredMask:
    """The stored values of mask ``path``; a JPEG mask is snapped to 0 and 255 or refused."""
    with open_image(path) as mask:
        if is_lossy(mask):
            values, changed = snap_black_and_white(np.asarray(mask.convert("L")), path)
            return StoredMask(values.astype(np.int64), lossy=True, snapped_pixels=changed)
        values = _class_values(mask, path)
    if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise DataError(f"{path}: mask holds fractional values", fix="store integer class ids")
    return StoredMask(values.astype(np.int64))


def _class_values(mask: Image.Image, path: str | Path) -> np.ndarray:
    """The pixel values of a lossless mask image, as stored."""
    mode = mask.mode
    if mode in ("LA", "PA"):
        return np.asarray(mask)[..., 0]
    if mode in ("RGB", "RGBA"):
        return _grey_channel_of_colour_mask(np.asarray(mask), path)
    if mode in ("L", "P", "1") or mode in HIGH_BIT_DEPTH_MODES:
        return np.asarray(mask)
    raise DataError(
        f"{path}: mask mode {mode} is not a class-index image",
        fix="save masks as 8-bit greyscale (L) or palette (P) PNGs of class ids, or as "
        "RGB with a colour map (data.colour_map)",
    )


@dataclass(frozen=True)
class MaskEncoding:
    """How stored mask values become canonical class ids (see the module docstring).

    ``binary_255``: the dataset is binary, so full-scale white (255, or 65535 in 16-bit masks)
    means foreground (1). With ``colour_map`` the stored values are RGB colours and the other
    fields do not apply.
    """

    binary_255: bool = False
    ignore_index: int | None = None
    value_map: Mapping[int, int] | None = None
    colour_map: ColourMap | None = None

    def decode_value(self, value: int) -> int:
        """The canonical id of one stored value."""
        if self.ignore_index is not None and value == self.ignore_index:
            return IGNORE_INDEX
        if self.value_map is not None and value in self.value_map:
            return self.value_map[value]
        if self.binary_255 and value in FULL_SCALE_WHITE:
            return 1
        return value

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Canonical ``uint8`` mask from stored values; values beyond 255 raise ``DataError``."""
        stored = _stored_values(raw)
        canonical = np.array([self.decode_value(int(v)) for v in stored], dtype=np.int64)
        too_large = stored[(canonical < 0) | (canonical > IGNORE_INDEX)]
        if too_large.size:
            raise DataError(
                f"mask values {too_large[:5].tolist()} cannot be class ids (0..254, 255 = ignore)",
                fix="re-save the mask with class ids, or map them with task.ignore_index",
            )
        if stored.size and stored[0] >= 0 and stored[-1] < _LOOKUP_LIMIT:
            lookup = np.zeros(int(stored[-1]) + 1, dtype=np.uint8)
            lookup[stored] = canonical
            return lookup[raw]
        return canonical[np.searchsorted(stored, raw)].astype(np.uint8)


FULL_SCALE_WHITE = frozenset({255, 2**16 - 1})
"""White in an 8-bit and in a 16-bit mask: foreground in a binary dataset."""

# Masks whose values are all in [0, _LOOKUP_LIMIT) (8- and 16-bit PNGs) are decoded by a lookup
# table and counted with bincount: 0.5 ms instead of 3.4 ms for np.unique + searchsorted on a
# 500 x 332 Oxford-IIIT Pet trimap, the larger part of loading a sample.
_LOOKUP_LIMIT = 2**16


def _stored_values(raw: np.ndarray) -> np.ndarray:
    """The distinct values of ``raw``, ascending."""
    if raw.dtype.kind in "ui" and raw.size:
        low, high = int(raw.min()), int(raw.max())
        if low >= 0 and high < _LOOKUP_LIMIT:
            return np.flatnonzero(np.bincount(raw.ravel(), minlength=high + 1))
    return np.unique(raw)


def read_mask(path: str | Path, encoding: MaskEncoding | None = None) -> np.ndarray:
    """The canonical ``H x W`` uint8 mask of ``path`` (class ids, 255 = ignore)."""
    encoding = encoding or MaskEncoding()
    if encoding.colour_map is not None:
        return encoding.colour_map.decode(read_colour_mask(path), path)
    stored = read_stored_mask(path)
    if stored.lossy and not encoding.binary_255 and stored.values.any():
        raise DataError(
            f"{path}: JPEG mask in a dataset that is not binary (its white would mean ignore)",
            fix=SAVE_AS_PNG,
        )
    try:
        return encoding.decode(stored.values)
    except DataError as error:
        raise DataError(f"{path}: {error.message}", fix=error.fix) from error


def read_colour_mask(path: str | Path) -> np.ndarray:
    """The colours of mask ``path`` as ``H x W x 3`` uint8 (palette masks through their palette)."""
    with open_image(path) as mask:
        if is_lossy(mask):
            raise DataError(
                f"{path}: colour mask saved as JPEG; compression shifts its colours, so they "
                f"cannot be matched to the colour map",
                fix="save colour masks as PNG (lossless)",
            )
        if mask.mode in HIGH_BIT_DEPTH_MODES:
            raise DataError(
                f"{path}: {mask.mode} mask cannot be colour-coded",
                fix="save colour masks as 8-bit RGB PNGs, or drop data.colour_map for "
                "class-index masks",
            )
        return np.asarray(mask.convert("RGB"))


def _grey_channel_of_colour_mask(values: np.ndarray, path: str | Path) -> np.ndarray:
    rgb = values[..., :3]
    if is_colour(rgb):
        colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
        raise DataError(
            f"{path}: colour-coded mask ({colours} distinct colours; R, G and B differ) and no "
            f"colour map",
            fix="give a colour map (data.colour_map: one 'R G B name' line per class), or "
            "convert it to a class-index PNG (mode L or P) whose pixel values are class ids",
        )
    return rgb[..., 0]


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    """Refuse a mask whose height and width differ from its image's (module docstring: why)."""
    if image.shape[:2] == mask.shape[:2]:
        return
    (height, width), (mask_height, mask_width) = image.shape[:2], mask.shape[:2]
    swapped = (mask_height, mask_width) == (width, height)
    hint = (
        "; the sizes are swapped: a photo with an EXIF orientation is read upright, as viewers "
        "show it, so draw the mask on the upright picture"
        if swapped
        else ""
    )
    raise DataError(
        f"image is {height}x{width} (HxW) but its mask is {mask_height}x{mask_width} "
        f"(image {image_path}, mask {mask_path})",
        fix="masks must match their image pixel for pixel; re-export the mask at the image's "
        f"size (a mask of another size is usually that of another image or of a resized copy)"
        f"{hint}",
    )
