"""A disk cache of decoded, resized samples, shared by every run that asks for the same size.

Decoding a large JPEG, TIFF or GIF and shrinking it costs far more than a training step can afford
on a small CPU, and the result is the same every epoch. :class:`CachedSource` does that work once
per sample and size and keeps the result as an uncompressed ``.npz`` file. Entries are keyed by the
sample's :meth:`~unetkit.data.sources.SampleSource.fingerprint` (its files' paths, sizes and
modification times, and how masks are decoded) and by the size, so an edited file or a new size
is decoded afresh and nothing stale is ever served. Augmentation then starts from the cached
``img_size`` picture: a random resized crop samples a region of it, not of the full-resolution
original.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from unetkit.data.preprocess import resize_image, size_hw
from unetkit.data.sources import SampleSource

CACHE_VERSION = "2"  # 2: EXIF orientation applied, JPEG masks snapped (issue 12)


def default_cache_dir() -> Path:
    """``$UNETKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/unetkit``, else ``~/.cache/unetkit``."""
    if os.environ.get("UNETKIT_CACHE_DIR"):
        return Path(os.environ["UNETKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unetkit"


class CachedSource(SampleSource):
    """``source`` with every sample resized to ``size`` and kept on disk after its first load."""

    def __init__(self, source: SampleSource, size: int | tuple[int, int], cache_dir: Path) -> None:
        self.source = source
        self.size = size_hw(size)
        self.cache_dir = Path(cache_dir)
        self.in_channels = source.in_channels

    @property
    def names(self) -> list[str]:
        return self.source.names

    def describe(self, index: int) -> str:
        return self.source.describe(index)

    def files(self, index: int) -> list[Path]:
        return self.source.files(index)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        entry = self._entry(index)
        if entry.is_file():
            with np.load(entry) as stored:
                return stored["image"], stored["mask"]
        image, mask = self._decode_and_resize(index)
        _write_atomically(entry, image, mask)
        return image, mask

    def _decode_and_resize(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.source.load(index)
        height, width = self.size
        image = resize_image(image, self.size)
        if image.ndim == 2:
            image = image[..., None]
        if mask.ndim == 3:  # multi-label (L, H, W): each label map on its own
            mask = np.stack([_resize_mask(label, width, height) for label in mask])
        else:
            mask = _resize_mask(mask, width, height)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def _entry(self, index: int) -> Path:
        key = f"{CACHE_VERSION}|{self.size}|{self.source.fingerprint(index)}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.npz"

    def _select(self, positions: list[int]) -> CachedSource:
        names = [self.source.names[p] for p in positions]
        return CachedSource(self.source.subset(names), self.size, self.cache_dir)


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def _write_atomically(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """Write via a temporary file and a rename, so parallel workers never read half an entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, image=image, mask=mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
