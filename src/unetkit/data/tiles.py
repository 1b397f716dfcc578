"""Tiles: fixed-size windows cut from large images, so a model can train at native resolution.

Shrinking a 1600 x 1200 microscope image to the model's input size erases the small structures it
must learn (CCAgT's satellites are a few pixels wide). Instead, each image is covered by a regular
grid of ``tile x tile`` windows whose last row and column are aligned to the image border (they
overlap their neighbour rather than run off the image), and every window is a sample of its own,
named ``<image name>@<y>,<x>``. A :class:`TiledSource` can also hold the whole images, so a
dataset can train on tiles and still be evaluated on whole images at their original resolution.

Splits must be grouped by image: tiles of one image look alike, and a split that puts some in
train and others in test measures memory, not generalisation. Split the image names first, then
expand them with :meth:`TiledSource.tile_names`. :func:`tile_every_image` and
:func:`expand_split` do this for any dataset (``data.tile_size``, applied by
:func:`unetkit.data.registry.build_splits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.data.image_files import header_size
from unetkit.data.sources import DataError, SampleSource
from unetkit.data.splits import SplitRecord

TILE_MARK = "@"

TileOrigin = tuple[int, int]


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets of ``tile``-long windows covering ``0 .. length``; the last ends at ``length``.

    A side no longer than ``tile`` gives a single window at 0 (it is then smaller than ``tile``).
    """
    if tile < 1:
        raise DataError(f"data.tile_size must be a positive number of pixels; got {tile}")
    if length <= tile:
        return [0]
    count = -(-length // tile)
    return [i * tile for i in range(count - 1)] + [length - tile]


def tile_grid(height: int, width: int, tile: int) -> list[TileOrigin]:
    """``(y, x)`` top-left corners of the tiles covering a ``height x width`` image, row by row."""
    return [(y, x) for y in tile_origins(height, tile) for x in tile_origins(width, tile)]


def tile_name(image_name: str, origin: TileOrigin) -> str:
    """``<image_name>@<y>,<x>``."""
    return f"{image_name}{TILE_MARK}{origin[0]},{origin[1]}"


def image_name_of(sample_name: str) -> str:
    """The image a sample comes from: the part of a tile name before ``@``, else the name itself."""
    return sample_name.rsplit(TILE_MARK, 1)[0] if TILE_MARK in sample_name else sample_name


@dataclass(frozen=True)
class _Entry:
    """One sample of a tiled source: image ``base`` of the wrapped source, whole or one tile."""

    base: int
    origin: TileOrigin | None  # None: the whole image


class TiledSource(SampleSource):
    """The samples of ``base`` cut into ``tile_size`` tiles, optionally with the whole images too.

    Loading a tile decodes its whole image; the last decoded image is kept, so reading the tiles
    of one image in a row (data checks, evaluation) decodes it once. Training in random order
    decodes per tile: turn on ``data.cache`` to keep decoded tiles on disk.
    """

    def __init__(self, base: SampleSource, tile_size: int, entries: Sequence[_Entry]) -> None:
        self.base = base
        self.tile_size = tile_size
        self.entries = list(entries)
        self.in_channels = base.in_channels
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    @classmethod
    def covering(
        cls,
        base: SampleSource,
        tile_size: int,
        sizes: Sequence[tuple[int, int]],
        *,
        include_whole: bool = True,
    ) -> TiledSource:
        """Every image of ``base`` (``sizes[i]`` = its height and width) as a grid of tiles.

        With ``include_whole`` each image is also a sample under its own name, before its tiles.
        """
        if len(sizes) != len(base):
            raise DataError(f"{len(sizes)} image sizes given for {len(base)} images")
        entries: list[_Entry] = []
        for index, (height, width) in enumerate(sizes):
            if include_whole:
                entries.append(_Entry(index, None))
            entries.extend(_Entry(index, o) for o in tile_grid(height, width, tile_size))
        return cls(base, tile_size, entries)

    @property
    def names(self) -> list[str]:
        base_names = self.base.names
        return [self._name(entry, base_names) for entry in self.entries]

    def tile_names(self, image_names: Sequence[str]) -> list[str]:
        """The names of every tile of the images called ``image_names``, image by image."""
        wanted = set(image_names)
        base_names = self.base.names
        tiles: dict[str, list[str]] = {name: [] for name in image_names}
        for entry in self.entries:
            image = base_names[entry.base]
            if entry.origin is not None and image in wanted:
                tiles[image].append(tile_name(image, entry.origin))
        untiled = [name for name, names in tiles.items() if not names]
        if untiled:
            raise DataError(f"no tiles of image(s) {untiled[:5]}: they are not in the dataset")
        return [name for image in image_names for name in tiles[image]]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        entry = self.entries[index]
        image, mask = self._load_base(entry.base)
        if entry.origin is None:
            return image.copy(), mask.copy()
        y, x = entry.origin
        window = (slice(y, y + self.tile_size), slice(x, x + self.tile_size))
        mask_window = window if mask.ndim == 2 else (slice(None), *window)  # (L, H, W) labels
        return np.ascontiguousarray(image[window]), np.ascontiguousarray(mask[mask_window])

    def describe(self, index: int) -> str:
        entry = self.entries[index]
        where = self.base.describe(entry.base)
        if entry.origin is None:
            return where
        y, x = entry.origin
        return f"tile y={y} x={x} size {self.tile_size} of {where}"

    def files(self, index: int) -> list[Path]:
        return self.base.files(self.entries[index].base)

    def fingerprint(self, index: int) -> str:
        entry = self.entries[index]
        window = "whole" if entry.origin is None else f"tile {entry.origin} {self.tile_size}"
        return f"{self.base.fingerprint(entry.base)}|{window}"

    def _select(self, positions: list[int]) -> TiledSource:
        return TiledSource(self.base, self.tile_size, [self.entries[p] for p in positions])

    def _load_base(self, base_index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._last is None or self._last[0] != base_index:
            image, mask = self.base.load(base_index)
            self._last = (base_index, image, mask)
        return self._last[1], self._last[2]

    @staticmethod
    def _name(entry: _Entry, base_names: list[str]) -> str:
        image = base_names[entry.base]
        return image if entry.origin is None else tile_name(image, entry.origin)

    def __getstate__(self) -> dict:
        """Pickled (to DataLoader workers) without the decoded image it happens to hold."""
        return {**self.__dict__, "_last": None}


def sample_size(source: SampleSource, index: int) -> tuple[int, int]:
    """``(height, width)`` of sample ``index``: from the header of its first file (the image, by
    convention), so no image is decoded; a generated sample (no files) is loaded to learn it."""
    files = source.files(index)
    if files:
        return header_size(files[0])
    image, _ = source.load(index)
    return int(image.shape[0]), int(image.shape[1])


def tile_every_image(source: SampleSource, tile_size: int) -> TiledSource:
    """Every image of ``source``, whole under its own name and as its grid of ``tile_size`` tiles.

    Holding both lets one split record name tiles for train/val and whole images for test.
    """
    sizes = [sample_size(source, index) for index in range(len(source))]
    return TiledSource.covering(source, tile_size, sizes, include_whole=True)


def expand_split(tiled: TiledSource, image_split: SplitRecord) -> SplitRecord:
    """``image_split`` (whole-image names) with train and val replaced by their images' tiles.

    Test keeps the whole images, so evaluation scores each pixel once at native resolution; the
    split stays grouped by image, since it was drawn over image names.
    """
    return {
        "train": tiled.tile_names(image_split["train"]),
        "val": tiled.tile_names(image_split["val"]),
        "test": list(image_split["test"]),
    }
