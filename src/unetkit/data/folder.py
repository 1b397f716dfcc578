"""Image and mask files on disk: reading them in canonical form, pairing images/ with masks/.

Basic layout of the ``folder`` dataset (the others, split sub-folders and MMSegmentation's, are
in :mod:`unetkit.data.folder_layouts`)::

    root/images/<stem>.<ext>   any format PIL reads (png, jpg, jpeg, tif, tiff, bmp, gif)
    root/masks/<stem>.png      class ids as pixel values (mode L or P), same size as the image
    root/classes.txt           optional: one class name per line, background first

Mask rules, applied per dataset so every mask of a dataset is read the same way:

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

Images are read as RGB (or L for ``in_channels == 1``): palette, RGBA and CMYK images are converted,
16-bit and float images are stretched to 0..255 by their own range (their useful range varies with
the sensor), and multi-frame files give their first frame. Sample names are the file stems in
Unicode NFC form, so an image and a mask named alike by different systems still pair.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.data.colour_map import ColourMap
from unetkit.data.image_files import DECODE_ERRORS, ImageSource, open_image, unreadable
from unetkit.data.lossy_masks import SAVE_AS_PNG, is_lossy, snap_black_and_white
from unetkit.data.sources import DataError, DataProblem, SampleSource
from unetkit.data.text_files import read_text
from unetkit.tasks import IGNORE_INDEX

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"})
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# --- reading one file ------------------------------------------------------------------------


def read_image(path: ImageSource, in_channels: int = 3, *, allow_colour: bool = True) -> np.ndarray:
    """The image at ``path`` as ``H x W x in_channels`` uint8.

    With ``in_channels == 1`` colour images are converted to luminance, unless ``allow_colour`` is
    False: then an image whose channels differ raises :class:`DataError`, because feeding colour
    data to a one-channel model is usually a configuration mistake.
    """
    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 (grey) or 3 (RGB); got {in_channels}")
    with open_image(path) as image:
        if image.mode in _HIGH_BIT_DEPTH_MODES:
            grey = _stretch_to_uint8(np.asarray(image))
            array = grey[..., None] if in_channels == 1 else np.repeat(grey[..., None], 3, 2)
            return np.ascontiguousarray(array)
        try:
            rgb = np.asarray(_to_rgb(image))
        except DECODE_ERRORS as error:  # a mode PIL decodes but cannot convert (LAB TIFFs ...)
            raise unreadable(path, error) from error
    if in_channels == 3:
        return rgb
    if not allow_colour and _is_colour(rgb):
        raise DataError(
            f"{path}: colour image but in_channels=1",
            fix="set data.in_channels=3, or convert the images to greyscale first",
        )
    grey = Image.fromarray(rgb, mode="RGB").convert("L")
    return np.asarray(grey)[..., None]


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
    if mode in ("L", "P", "1") or mode in _HIGH_BIT_DEPTH_MODES:
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
        if mask.mode in _HIGH_BIT_DEPTH_MODES:
            raise DataError(
                f"{path}: {mask.mode} mask cannot be colour-coded",
                fix="save colour masks as 8-bit RGB PNGs, or drop data.colour_map for "
                "class-index masks",
            )
        return np.asarray(mask.convert("RGB"))


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line, background first; blank lines are skipped."""
    text = read_text(path, "class names file")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: class names must be unique; repeated: {', '.join(duplicates)}")
    if len(names) < 2:
        raise DataError(
            f"{path}: lists {len(names)} class name(s); list the background and at least one "
            f"more class, one name per line"
        )
    return names


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


def _is_colour(rgb: np.ndarray) -> bool:
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))


def _grey_channel_of_colour_mask(values: np.ndarray, path: str | Path) -> np.ndarray:
    rgb = values[..., :3]
    if _is_colour(rgb):
        colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
        raise DataError(
            f"{path}: colour-coded mask ({colours} distinct colours; R, G and B differ) and no "
            f"colour map",
            fix="give a colour map (data.colour_map: one 'R G B name' line per class), or "
            "convert it to a class-index PNG (mode L or P) whose pixel values are class ids",
        )
    return rgb[..., 0]


# --- pairing a folder of images with a folder of masks -----------------------------------------


@dataclass(frozen=True)
class SamplePair:
    """One named sample: its image file and its mask file."""

    name: str
    image: Path
    mask: Path


@dataclass
class FolderScan:
    """Pairs found by :func:`pair_by_stem` and what did not pair (orphans, duplicate stems)."""

    pairs: list[SamplePair]
    problems: list[DataProblem] = field(default_factory=list)


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` by extension, sorted; hidden and other files skipped."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def pair_by_stem(
    images_dir: str | Path, masks_dir: str | Path, mask_suffix: str = ""
) -> FolderScan:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem><mask_suffix>.*``, recording orphans."""
    problems: list[DataProblem] = []
    images = _index_by_stem(list_image_files(images_dir), "", problems)
    masks = _index_by_stem(list_image_files(masks_dir), mask_suffix, problems)
    return match_stems(
        images,
        masks,
        problems,
        missing_mask_fix=f"add {Path(masks_dir)}/{{stem}}{mask_suffix}.png, or move the image away",
        missing_image_fix=f"add the image {Path(images_dir)}/{{stem}}.<ext>, or delete the mask",
    )


def match_stems(
    images: dict[str, Path],
    masks: dict[str, Path],
    problems: list[DataProblem],
    missing_mask_fix: str,
    missing_image_fix: str,
) -> FolderScan:
    """Pairs of the stems found on both sides; each orphan becomes a warning.

    The ``*_fix`` texts may name the stem as ``{stem}``.
    """
    pairs = [
        SamplePair(stem, images[stem], masks[stem]) for stem in sorted(images) if stem in masks
    ]
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(
            DataProblem(
                str(images[stem]),
                "image without a mask; it is left out",
                missing_mask_fix.format(stem=stem),
                severity="warning",
            )
        )
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(
            DataProblem(
                str(masks[stem]),
                "mask without an image; it is left out",
                missing_image_fix.format(stem=stem),
                severity="warning",
            )
        )
    return FolderScan(pairs, problems)


def _index_by_stem(files: list[Path], suffix: str, problems: list[DataProblem]) -> dict[str, Path]:
    """Files by sample name (stem without ``suffix``); a name seen twice is a problem."""
    by_name: dict[str, Path] = {}
    for path in files:
        name = unicodedata.normalize("NFC", path.stem)
        if suffix:
            if not name.endswith(suffix):
                continue
            name = name[: -len(suffix)]
        if name in by_name:
            problems.append(
                DataProblem(
                    str(path),
                    f"has the same name as {by_name[name].name}; only the first is used",
                    "give every sample one file per folder (rename or remove the duplicate)",
                )
            )
            continue
        by_name[name] = path
    return by_name


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


# --- the source ---------------------------------------------------------------------------------


class FolderSource(SampleSource):
    """Samples read from paired image and mask files."""

    def __init__(
        self,
        pairs: list[SamplePair],
        in_channels: int = 3,
        encoding: MaskEncoding | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.in_channels = in_channels
        self.encoding = encoding or MaskEncoding()

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image = read_image(pair.image, self.in_channels, allow_colour=False)
        mask = read_mask(pair.mask, self.encoding)
        check_same_size(image, mask, pair.image, pair.mask)
        return image, mask

    def describe(self, index: int) -> str:
        pair = self.pairs[index]
        return f"{pair.image} (mask {pair.mask})"

    def files(self, index: int) -> list[Path]:
        return [Path(self.pairs[index].image), Path(self.pairs[index].mask)]

    def _select(self, positions: list[int]) -> FolderSource:
        return FolderSource([self.pairs[p] for p in positions], self.in_channels, self.encoding)
