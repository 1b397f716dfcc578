"""The ``folder`` dataset (``--dataset folder``): a user's images and masks in one of three layouts.

It accepts these layouts, recognised by the folders present under the root
(the first pair of folder names found wins; see :data:`FOLDER_LAYOUT`)::

    images/<name>.<ext>           + masks/<name>[suffix].<ext>         one pool, split by ratios
    images/{train,val,test}/...   + masks/{train,val,test}/...         official splits
    img_dir/{train,val,test}/...  + ann_dir/{train,val,test}/...       MMSegmentation, official

A mask pairs with the image of the same name, optionally followed by a suffix common in the
field (``_mask``, ``_labelTrainIds`` ...): the suffix that pairs the most images is used for the
whole dataset. Split folders may also be called ``training``, ``validation`` and ``testing``
(as in ADE20K). Sample names are the image stems, so they must be unique across split folders.
Masks are read by the rules of :mod:`unetkit.data.mask_files`; ``root/classes.txt`` (optional)
names the classes, one per line, background first.

With split sub-folders the split is official: a missing ``val/`` is drawn from train by
``data.split_ratios`` (val share of train + val), and so is a missing ``test/`` (test share of
train + test). ``data.colour_map`` reads RGB colour masks (see :mod:`unetkit.data.colour_map`);
its names are the class names. A multi-label task (``task.type=multilabel``) reads label masks
instead (:mod:`unetkit.data.datasets.label_folder`), in the same image layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unetkit.config import Config, DataConfig
from unetkit.data.colour_map import ColourMap, read_colour_map
from unetkit.data.contents import DatasetContents
from unetkit.data.datasets.common import nothing_paired, require_root, scan_contents
from unetkit.data.datasets.label_folder import label_folder_contents
from unetkit.data.datasets.paired_files import (
    FolderPair,
    list_image_files,
    pair_by_stem,
    pair_split_folders,
)
from unetkit.data.sources import DataError, DataProblem
from unetkit.data.splits import hold_out, pool_share

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


def build_folder(cfg: Config) -> DatasetContents:
    """``data.root`` in one of the folder layouts, with its official split when it has one."""
    root = require_root(cfg, FOLDER_LAYOUT)
    layout = detect_folder_layout(root)
    if cfg.task.type == "multilabel":
        contents, official = label_folder_contents(layout, cfg, root)
        if official is not None:
            contents.predefined_split = _complete_official_split(official, cfg.data)
        return contents
    suffix = guess_mask_suffix(layout.folder_pairs)
    colour_map = _colour_map(cfg.data, root)
    if not layout.splits:
        scan, official = pair_by_stem(layout.images_dir, layout.masks_dir, suffix), None
    else:
        scan, official = pair_split_folders(layout.splits, suffix)
    scan.problems[:0] = layout.problems
    if not scan.pairs:
        raise nothing_paired(layout.images_dir, layout.masks_dir, FOLDER_LAYOUT)
    contents = scan_contents(scan, cfg, classes_file=root / "classes.txt", colour_map=colour_map)
    if official is not None:
        contents.predefined_split = _complete_official_split(official, cfg.data)
    return contents


def _colour_map(data: DataConfig, root: Path) -> ColourMap | None:
    """``data.colour_map`` read, as given or relative to the root; None when unset."""
    if not data.colour_map:
        return None
    given = Path(data.colour_map).expanduser()
    return read_colour_map(given if given.is_file() or given.is_absolute() else root / given)


def _complete_official_split(official: dict[str, list[str]], data: DataConfig) -> dict:
    """The split folders' names; with no test folder, a seeded test share of train is held out.

    The share is test / (train + test) of ``data.split_ratios``. A missing val split is left out
    here: the registry draws it from train.
    """
    split = {name: names for name, names in official.items() if name != "test" or names}
    if "test" in split:
        return split
    train_share, _, test_share = data.split_ratios
    train, test = hold_out(
        split["train"],
        pool_share(train_share, test_share),
        data.split_seed,
        where="train folder (no test folder: test is drawn from it)",
    )
    return {**split, "train": sorted(train), "test": sorted(test)}


DATASETS = {"folder": build_folder}
