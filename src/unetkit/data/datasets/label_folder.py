"""The ``folder`` dataset of a multi-label task (``task.type=multilabel``): overlapping labels.

The images are laid out as for any ``folder`` dataset (``images/``, optionally with split
sub-folders); under ``masks/`` (or each ``masks/<split>/``) the labels are stored one of three
ways, recognised by what the folder holds::

    masks/<label>/<name>.png     one binary image per label, a folder per label (its name)
    masks/<name>.tif             a multi-page TIFF per image, one page per label
    masks/<name>.npz             an NPZ per image, one (L, H, W) array of 0/1

The label names are ``task.class_names``, else for label folders the folder names (sorted), else
``root/labels.txt`` (one per line), else ``label_1 .. label_L`` with ``L`` read off the first
file. An image that has some label masks but lacks another is an error naming the missing file;
an image with none is left out with a warning. Masks are read by :mod:`unetkit.data.label_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unetkit.config import Config
from unetkit.data.contents import DatasetContents
from unetkit.data.datasets.paired_files import (
    FolderPair,
    claim_name,
    index_by_stem,
    list_image_files,
)
from unetkit.data.image_files import read_image
from unetkit.data.label_masks import (
    NPZ_SUFFIX,
    TIFF_SUFFIXES,
    check_label_mask,
    read_label_file,
    read_label_images,
)
from unetkit.data.sources import DataError, DataProblem, SampleSource
from unetkit.data.text_files import read_text

if TYPE_CHECKING:
    from unetkit.data.datasets.folder import FolderLayout

LABEL_LAYOUT = (
    "expected multi-label layout: <root>/images/<name>.<ext> with either <root>/masks/<label>/"
    "<name>.png (one binary mask per label, a folder per label), <root>/masks/<name>.tif (one "
    "page per label) or <root>/masks/<name>.npz (one (labels, H, W) array of 0/1); the same "
    "under train/, val/, test/ sub-folders for official splits; optional <root>/labels.txt"
)
LABEL_FILE_SUFFIXES = (NPZ_SUFFIX, *TIFF_SUFFIXES)


@dataclass(frozen=True)
class LabelSample:
    """One named image and its label masks: one file per label, or one file holding them all."""

    name: str
    image: Path
    masks: tuple[Path, ...]


@dataclass
class LabelScan:
    """The samples of one (images, masks) folder pair, how their labels are stored, problems."""

    samples: list[LabelSample]
    labels: list[str] | None  # the label folders' names; None for one file per image
    problems: list[DataProblem] = field(default_factory=list)


class LabelFolderSource(SampleSource):
    """Images with ``(L, H, W)`` label masks (see :mod:`unetkit.data.label_masks`)."""

    def __init__(
        self,
        samples: list[LabelSample],
        num_labels: int,
        in_channels: int = 3,
        ignore_index: int | None = None,
        per_label_files: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.num_labels = num_labels
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.per_label_files = per_label_files
        self.encoding = ("multilabel", ignore_index)  # part of the cache fingerprint

    @property
    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H x W x C`` uint8 and its label masks ``(L, H, W)`` uint8."""
        sample = self.samples[index]
        image = read_image(sample.image, self.in_channels, allow_colour=False)
        if self.per_label_files:
            mask = read_label_images(sample.masks, self.ignore_index)
        else:
            mask = read_label_file(sample.masks[0], self.ignore_index)
        check_label_mask(image, mask, self.num_labels, sample.image, sample.masks[0])
        return image, mask

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"{sample.image} (label masks {', '.join(str(p) for p in sample.masks)})"

    def files(self, index: int) -> list[Path]:
        return [self.samples[index].image, *self.samples[index].masks]

    def _select(self, positions: list[int]) -> LabelFolderSource:
        return LabelFolderSource(
            [self.samples[p] for p in positions],
            self.num_labels,
            self.in_channels,
            self.ignore_index,
            self.per_label_files,
        )


def label_folder_contents(
    layout: FolderLayout, cfg: Config, root: Path
) -> tuple[DatasetContents, dict[str, list[str]] | None]:
    """The contents of a multi-label folder dataset, and its official split names if any."""
    pairs = layout.splits or {"all": (layout.images_dir, layout.masks_dir)}
    scans = {split: scan_label_pair(pair, cfg.task.class_names) for split, pair in pairs.items()}
    _check_unique_names(scans)
    samples = [sample for scan in scans.values() for sample in scan.samples]
    problems = [*layout.problems, *(p for scan in scans.values() for p in scan.problems)]
    if not samples:
        raise DataError(
            f"no image in {layout.images_dir} has label masks in {layout.masks_dir}; {LABEL_LAYOUT}"
        )
    first = next(iter(scans.values()))
    names = _label_names(cfg, root, first, samples[0])
    source = LabelFolderSource(
        samples, len(names), cfg.data.in_channels, cfg.task.ignore_index, first.labels is not None
    )
    official = None
    if layout.splits:
        official = {split: [s.name for s in scan.samples] for split, scan in scans.items()}
    return DatasetContents(source, names, problems), official


def scan_label_pair(pair: FolderPair, class_names: list[str] | None = None) -> LabelScan:
    """The samples of ``images_dir`` with their label masks in ``masks_dir`` (either layout)."""
    images_dir, masks_dir = pair
    label_dirs = sorted(p for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems: list[DataProblem] = []  # names given twice, found while indexing
    images = index_by_stem(list_image_files(images_dir), "", problems)
    if not label_dirs:
        files = [p for p in masks_dir.iterdir() if p.suffix.lower() in LABEL_FILE_SUFFIXES]
        scan = _pair_label_files(images, index_by_stem(sorted(files), "", problems), masks_dir)
        scan.problems[:0] = problems
        return scan
    by_name = {d.name: d for d in label_dirs}
    labels = list(class_names or by_name)
    missing = [label for label in labels if label not in by_name]
    if missing:
        raise DataError(
            f"{masks_dir} has no folder for the label(s) {missing} (label folders found: "
            f"{sorted(by_name)})",
            fix="add a folder of masks per label, or list only those labels in task.class_names",
        )
    masks = {
        label: index_by_stem(list_image_files(by_name[label]), "", problems) for label in labels
    }
    scan = _pair_label_folders(images, masks, labels, masks_dir)
    scan.problems[:0] = problems
    return scan


def _pair_label_folders(
    images: dict[str, Path], masks: dict[str, dict[str, Path]], labels: list[str], masks_dir: Path
) -> LabelScan:
    samples, problems = [], []
    for stem, image in sorted(images.items()):
        found = [masks[label].get(stem) for label in labels]
        if all(found):
            samples.append(LabelSample(stem, image, tuple(found)))  # type: ignore[arg-type]
            continue
        absent = [label for label, path in zip(labels, found, strict=True) if path is None]
        if len(absent) == len(labels):
            problems.append(_warning(image, "image without label masks; it is left out", masks_dir))
            continue
        problems.append(
            DataProblem(
                str(image),
                f"has label masks but none for the label(s) {absent}: "
                + ", ".join(f"{masks_dir / label / stem}.png is missing" for label in absent),
                "add the missing label masks (an empty, all-black PNG where the label is absent)",
            )
        )
    return LabelScan(samples, labels, problems)


def _pair_label_files(
    images: dict[str, Path], files: dict[str, Path], masks_dir: Path
) -> LabelScan:
    samples = [
        LabelSample(stem, image, (files[stem],))
        for stem, image in sorted(images.items())
        if stem in files
    ]
    problems = [
        _warning(image, "image without a label mask file; it is left out", masks_dir)
        for stem, image in sorted(images.items())
        if stem not in files
    ]
    return LabelScan(samples, None, problems)


def _warning(image: Path, what: str, masks_dir: Path) -> DataProblem:
    fix = f"add its label masks under {masks_dir} ({LABEL_LAYOUT}), or move the image away"
    return DataProblem(str(image), what, fix, severity="warning")


def _check_unique_names(scans: dict[str, LabelScan]) -> None:
    split_of: dict[str, tuple[str, Path]] = {}
    for split, scan in scans.items():
        for sample in scan.samples:
            claim_name(split_of, split, sample.name, sample.image)


def _label_names(cfg: Config, root: Path, scan: LabelScan, sample: LabelSample) -> list[str]:
    """The label names (module docstring), checked against ``task.num_classes``."""
    labels_file = root / "labels.txt"
    if cfg.task.class_names:
        names = list(cfg.task.class_names)
    elif scan.labels is not None:
        names = scan.labels
    elif labels_file.is_file():
        names = [line.strip() for line in read_text(labels_file, "label names").splitlines()]
        names = [name for name in names if name]
    else:
        count = len(read_label_file(sample.masks[0], cfg.task.ignore_index))
        names = [f"label_{i}" for i in range(1, count + 1)]
    declared = cfg.task.num_classes
    if declared is not None and declared != len(names):
        raise DataError(
            f"task.num_classes says {declared} labels but the dataset has {len(names)}: {names}",
            fix="set task.num_classes to the number of labels (no background in a multi-label "
            "task), or leave it unset",
        )
    if len(set(names)) != len(names) or not names:
        raise DataError(f"label names must be unique and at least one; got {names}")
    return names
