"""Image files paired with mask files by name, and the source that reads such pairs.

Shared by every dataset stored as images and masks side by side (folder, CamVid, CCAgT, ISBI 2012's
PNG folders, Oxford-IIIT Pet): :func:`pair_by_stem` pairs ``images_dir/<stem>.*`` with
``masks_dir/<stem>[suffix].*``, :func:`pair_split_folders` does it for each split folder, and
:class:`FolderSource` reads the pairs (images by :func:`unetkit.data.image_files.read_image`, masks
by :func:`unetkit.data.mask_files.read_mask`). Sample names are the file stems in Unicode NFC form,
so an image and a mask named alike by different systems still pair.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetkit.data.image_files import IMAGE_EXTENSIONS, read_image
from unetkit.data.mask_files import MaskEncoding, check_same_size, read_mask
from unetkit.data.sources import DataError, DataProblem, SampleSource

FolderPair = tuple[Path, Path]
"""An (images folder, masks folder) pair."""


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
    images = index_by_stem(list_image_files(images_dir), "", problems)
    masks = index_by_stem(list_image_files(masks_dir), mask_suffix, problems)
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
    problems += _orphans(images, masks, "image without a mask; it is left out", missing_mask_fix)
    problems += _orphans(masks, images, "mask without an image; it is left out", missing_image_fix)
    return FolderScan(pairs, problems)


def _orphans(
    files: dict[str, Path], others: dict[str, Path], what: str, fix: str
) -> list[DataProblem]:
    """A warning for each stem of ``files`` that ``others`` lacks (``fix`` may name ``{stem}``)."""
    return [
        DataProblem(str(files[stem]), what, fix.format(stem=stem), severity="warning")
        for stem in sorted(files.keys() - others.keys())
    ]


def index_by_stem(files: list[Path], suffix: str, problems: list[DataProblem]) -> dict[str, Path]:
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


def pair_split_folders(
    splits: Mapping[str, FolderPair], mask_suffix: str = ""
) -> tuple[FolderScan, dict[str, list[str]]]:
    """All pairs of every split folder, and each split's sample names (the official split).

    A name found in two split folders raises :class:`DataError`: a split lists names, so each
    name must denote one sample.
    """
    pairs: list[SamplePair] = []
    problems: list[DataProblem] = []
    names: dict[str, list[str]] = {}
    split_of: dict[str, tuple[str, Path]] = {}
    for split, (images_dir, masks_dir) in splits.items():
        scan = pair_by_stem(images_dir, masks_dir, mask_suffix)
        for pair in scan.pairs:
            claim_name(split_of, split, pair.name, pair.image)
        pairs.extend(scan.pairs)
        problems.extend(scan.problems)
        names[split] = [pair.name for pair in scan.pairs]
    return FolderScan(pairs, problems), names


def claim_name(split_of: dict[str, tuple[str, Path]], split: str, name: str, image: Path) -> None:
    """Record that sample ``name`` (read from ``image``) is in ``split``; a name another split
    has already claimed raises :class:`DataError`, since a split lists names."""
    if name in split_of:
        other_split, other = split_of[name]
        raise DataError(
            f"{image} and {other} have the same name {name!r} (in {split} and "
            f"{other_split}); sample names must be unique across the split folders",
            fix="rename one of the two files (and its mask)",
        )
    split_of[name] = (split, image)


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
