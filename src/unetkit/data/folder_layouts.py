"""Which folder layout a dataset root uses, and pairing images with masks across split folders.

The ``folder`` dataset accepts these layouts, recognised by the folders present under the root
(the first pair of folder names found wins; see :data:`FOLDER_LAYOUT`)::

    images/<name>.<ext>           + masks/<name>[suffix].<ext>         one pool, split by ratios
    images/{train,val,test}/...   + masks/{train,val,test}/...         official splits
    img_dir/{train,val,test}/...  + ann_dir/{train,val,test}/...       MMSegmentation, official

A mask pairs with the image of the same name, optionally followed by a suffix common in the
field (``_mask``, ``_labelTrainIds`` ...): the suffix that pairs the most images is used for the
whole dataset. Split folders may also be called ``training``, ``validation`` and ``testing``
(as in ADE20K). Sample names are the image stems, so they must be unique across split folders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from unetkit.data.folder import FolderScan, SamplePair, list_image_files, pair_by_stem
from unetkit.data.sources import DataError, DataProblem

SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validation"),
    "test": ("test", "testing"),
}
FOLDER_PAIRS = (("images", "masks"), ("img_dir", "ann_dir"))
MASK_SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_labelTrainIds", "_seg", "_gt")
FOLDER_LAYOUT = (
    "expected layout: <root>/images/<name>.<png|jpg|tif|...> with <root>/masks/<name>.png "
    "(pixel values = class ids; optional mask suffix such as _mask), or the same with "
    "train/, val/, test/ sub-folders in both (official splits), or the MMSegmentation layout "
    "<root>/img_dir/{train,val,test}/ with <root>/ann_dir/{train,val,test}/; optional "
    "<root>/classes.txt (one class name per line); colour masks need data.colour_map"
)

FolderPair = tuple[Path, Path]


@dataclass
class FolderLayout:
    """The image and mask folders of a root; ``splits`` is empty for a single pool."""

    images_dir: Path
    masks_dir: Path
    splits: dict[str, FolderPair] = field(default_factory=dict)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def folder_pairs(self) -> list[FolderPair]:
        """Every (images, masks) folder pair to read."""
        return list(self.splits.values()) or [(self.images_dir, self.masks_dir)]


def detect_folder_layout(root: Path) -> FolderLayout:
    """The layout of ``root``; an error lists the layouts accepted when none is found."""
    for images_name, masks_name in FOLDER_PAIRS:
        images_dir, masks_dir = root / images_name, root / masks_name
        if not images_dir.is_dir():
            continue
        if not masks_dir.is_dir():
            raise DataError(f"{masks_dir} does not exist or is not a folder; {FOLDER_LAYOUT}")
        layout = FolderLayout(images_dir, masks_dir)
        _add_split_folders(layout)
        return layout
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(
        f"{root} holds none of the folder layouts (sub-folders found: {found or 'none'}); "
        f"{FOLDER_LAYOUT}"
    )


def _add_split_folders(layout: FolderLayout) -> None:
    """Fill ``layout.splits`` when the image folder has split sub-folders."""
    for split, aliases in SPLIT_FOLDERS.items():
        images = _first_folder(layout.images_dir, aliases)
        if images is None:
            continue
        masks = layout.masks_dir / images.name
        if masks.is_dir():
            layout.splits[split] = (images, masks)
            continue
        layout.problems.append(
            DataProblem(
                str(images),
                f"{split} images have no mask folder {masks}; they are left out",
                f"add {masks}/ with their masks (without it, {split} is drawn from train)",
                severity="warning",
            )
        )
    if (layout.splits or layout.problems) and "train" not in layout.splits:
        raise DataError(
            f"{layout.images_dir} has split sub-folders but no train/ with masks in "
            f"{layout.masks_dir}/train; {FOLDER_LAYOUT}"
        )


def _first_folder(parent: Path, names: tuple[str, ...]) -> Path | None:
    return next((parent / n for n in names if (parent / n).is_dir()), None)


def guess_mask_suffix(folder_pairs: list[FolderPair]) -> str:
    """The suffix of :data:`MASK_SUFFIXES` after which the most mask names equal image names."""
    image_stems = [p.stem for images, _ in folder_pairs for p in list_image_files(images)]
    mask_stems = {p.stem for _, masks in folder_pairs for p in list_image_files(masks)}

    def paired(suffix: str) -> int:
        return sum(stem + suffix in mask_stems for stem in image_stems)

    return max(MASK_SUFFIXES, key=paired)  # max keeps the first on ties: "" before the others


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
            if pair.name in split_of:
                other_split, other = split_of[pair.name]
                raise DataError(
                    f"{pair.image} and {other} have the same name {pair.name!r} (in {split} and "
                    f"{other_split}); sample names must be unique across the split folders",
                    fix="rename one of the two files (and its mask)",
                )
            split_of[pair.name] = (split, pair.image)
        pairs.extend(scan.pairs)
        problems.extend(scan.problems)
        names[split] = [pair.name for pair in scan.pairs]
    return FolderScan(pairs, problems), names
