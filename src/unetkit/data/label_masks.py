"""Multi-label masks read in canonical form: ``(L, H, W)`` uint8, 1 = the label is there, 0 = not,
255 = that label's pixel is not counted.

Three ways to store them, one per dataset (see :mod:`unetkit.data.datasets.label_folder`):

* one binary image per label (``masks/<label>/<name>.png``): 0 is absent and any other value
  (1, 255, 65535 ...) present, so 0/1 and 0/255 masks both work;
* a multi-page TIFF per image (``masks/<name>.tif``), page ``l`` being label ``l``, read as above;
* an NPZ per image (``masks/<name>.npz``) holding one ``(L, H, W)`` array of 0 and 1 (and 255 for
  pixels not counted), integer, boolean or float.

``ignore_index`` (``task.ignore_index``) marks a stored value as "not counted" in the images and
TIFF pages. A label map of another size than its image is refused, naming both files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ImageSequence

from unetkit.data.image_files import open_image
from unetkit.data.mask_files import check_same_size, read_raw_mask
from unetkit.data.sources import DataError
from unetkit.tasks import IGNORE_INDEX

NPZ_SUFFIX = ".npz"
TIFF_SUFFIXES = (".tif", ".tiff")


def binary_label_map(values: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Stored values ``(H, W)`` as a canonical label map: 0 stays 0, ``ignore_index`` becomes
    255, anything else 1."""
    label = (np.asarray(values) != 0).astype(np.uint8)
    if ignore_index is not None:
        label[np.asarray(values) == ignore_index] = IGNORE_INDEX
    return label


def read_label_images(paths: Sequence[Path], ignore_index: int | None = None) -> np.ndarray:
    """``(L, H, W)`` from one binary image per label; the images must share one size."""
    maps = [binary_label_map(read_raw_mask(path), ignore_index) for path in paths]
    for path, label in zip(paths[1:], maps[1:], strict=True):
        if label.shape != maps[0].shape:
            raise DataError(
                f"label masks of one image differ in size: {paths[0]} is {_size(maps[0])}, "
                f"{path} is {_size(label)}",
                fix="save every label mask of an image at the image's size",
            )
    return np.stack(maps)


def read_label_tiff(path: Path, ignore_index: int | None = None) -> np.ndarray:
    """``(L, H, W)`` from the pages of a multi-page TIFF, one page per label."""
    with open_image(path) as tiff:
        pages = [np.asarray(page) for page in ImageSequence.Iterator(tiff)]
    if any(page.ndim != 2 for page in pages):
        raise DataError(
            f"{path}: a label TIFF page has shape {next(p.shape for p in pages if p.ndim != 2)}",
            fix="save one single-channel page per label (0 = absent, non-zero = present)",
        )
    sizes = {page.shape for page in pages}
    if len(sizes) > 1:
        raise DataError(f"{path}: its pages differ in size {sorted(sizes)}", fix=_SAME_SIZE)
    return np.stack([binary_label_map(page, ignore_index) for page in pages])


def read_label_npz(path: Path) -> np.ndarray:
    """``(L, H, W)`` from an NPZ holding one such array of 0/1 (255 = not counted)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if len(keys) != 1 and "masks" not in keys:
                raise DataError(
                    f"{path}: holds arrays {keys}; expected one (L, H, W) array",
                    fix="save it with np.savez(path, masks=array)",
                )
            values = archive["masks" if "masks" in keys else keys[0]]
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as NPZ ({error})", fix=_NPZ_FIX) from error
    if values.ndim != 3:
        raise DataError(f"{path}: array of shape {values.shape}, not (L, H, W)", fix=_NPZ_FIX)
    found = np.unique(values)
    wrong = found[~np.isin(found, (0, 1, IGNORE_INDEX))]
    if wrong.size:
        raise DataError(
            f"{path}: holds values {wrong[:5].tolist()}; a label map holds 0, 1 and "
            f"{IGNORE_INDEX} (not counted)",
            fix=_NPZ_FIX,
        )
    return values.astype(np.uint8)


def read_label_file(path: Path, ignore_index: int | None = None) -> np.ndarray:
    """``(L, H, W)`` from one file per image: an NPZ or a multi-page TIFF."""
    if path.suffix.lower() == NPZ_SUFFIX:
        return read_label_npz(path)
    return read_label_tiff(path, ignore_index)


def check_label_mask(
    image: np.ndarray, mask: np.ndarray, num_labels: int, image_path: Path, mask_path: Path
) -> None:
    """Refuse a label mask whose label count or size does not fit (naming both files)."""
    if len(mask) != num_labels:
        raise DataError(
            f"{mask_path} holds {len(mask)} label map(s) but the task has {num_labels} labels "
            f"(image {image_path})",
            fix="give every image one map per label, in the same order, or set "
            "task.num_classes / task.class_names to the labels the files hold",
        )
    check_same_size(image, mask.transpose(1, 2, 0), image_path, mask_path)


def _size(label: np.ndarray) -> str:
    return f"{label.shape[0]}x{label.shape[1]}"


_SAME_SIZE = "save every label at the image's size"
_NPZ_FIX = "save one uint8 array of shape (labels, H, W) with np.savez(path, masks=array)"
