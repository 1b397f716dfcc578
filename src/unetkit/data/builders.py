"""Dataset builders: ``Config -> DatasetContents`` for the built-in layouts (synthetic, folder).

:func:`folder_contents` is the reusable part: any dataset stored as a folder of images and a folder
of masks paired by name (ISBI 2012, CCAgT, Oxford-IIIT Pet trimaps ...) is built with it, passing
its own folders, mask suffix, value map and class names; :func:`scan_contents` does the same for
pairs found another way (several split folders, for instance).

The ``folder`` dataset reads the layouts of :mod:`unetkit.data.folder_layouts` (``images/`` +
``masks/``, with or without split sub-folders, and MMSegmentation's ``img_dir/`` + ``ann_dir/``).
With split sub-folders the split is official: a missing ``val/`` is drawn from train by
``data.split_ratios`` (val share of train + val), and so is a missing ``test/`` (test share of
train + test). ``data.colour_map`` reads RGB colour masks (see :mod:`unetkit.data.colour_map`);
its names are the class names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from unetkit.config import Config, DataConfig
from unetkit.data.colour_map import ColourMap, read_colour_map
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.folder import (
    FolderScan,
    FolderSource,
    MaskEncoding,
    list_image_files,
    pair_by_stem,
    read_class_names,
)
from unetkit.data.folder_layouts import (
    FOLDER_LAYOUT,
    detect_folder_layout,
    guess_mask_suffix,
    pair_split_folders,
)
from unetkit.data.mask_scan import (
    MaskValueScan,
    infer_mask_encoding,
    num_classes_from_values,
    scan_mask_values,
)
from unetkit.data.preprocess import image_size
from unetkit.data.sources import DataError
from unetkit.data.splits import split_from_name_lists
from unetkit.data.synthetic import DEFAULT_NUM_CLASSES, SyntheticSource, synthetic_class_names


def build_synthetic(cfg: Config) -> DatasetContents:
    """The procedural demo dataset at the model's input size (default 4 classes)."""
    task = cfg.task
    num_classes = task.num_classes or (len(task.class_names) if task.class_names else None)
    source = SyntheticSource(
        count=cfg.data.synthetic_count,
        size=image_size(cfg.data.img_size),
        num_classes=num_classes or DEFAULT_NUM_CLASSES,
        seed=cfg.data.synthetic_seed,
        in_channels=cfg.data.in_channels,
    )
    class_names = resolve_class_names(
        task, detected_num_classes=source.num_classes, default_names=synthetic_class_names
    )
    return DatasetContents(source, class_names)


def build_folder(cfg: Config) -> DatasetContents:
    """``data.root`` in one of the folder layouts, with its official split when it has one."""
    root = require_root(cfg, FOLDER_LAYOUT)
    layout = detect_folder_layout(root)
    suffix = guess_mask_suffix(layout.folder_pairs)
    colour_map = _colour_map(cfg.data, root)
    if not layout.splits:
        scan, official = pair_by_stem(layout.images_dir, layout.masks_dir, suffix), None
    else:
        scan, official = pair_split_folders(layout.splits, suffix)
    scan.problems[:0] = layout.problems
    if not scan.pairs:
        raise _nothing_paired(layout.images_dir, layout.masks_dir, FOLDER_LAYOUT)
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
    """The split folders' names; a missing test split is drawn from train (seeded).

    A missing val split is left out here: the registry draws it from train.
    """
    split = {name: names for name, names in official.items() if name != "test" or names}
    if "test" in split:
        return split
    train_share, _, test_share = data.split_ratios
    carved = split_from_name_lists(
        split["train"],
        split["train"],
        test=[],
        ratios=(train_share, test_share, test_share),  # the "val" drawn here is the test split
        seed=data.split_seed,
        where="train folder (no test folder: test is drawn from it)",
    )
    return {**split, "train": carved["train"], "test": carved["val"]}


def require_root(cfg: Config, layout: str) -> Path:
    """``data.root`` as an existing folder, or an error naming it and the expected ``layout``."""
    if not cfg.data.root:
        raise DataError(f"data.root is not set for dataset {cfg.data.dataset!r}; {layout}")
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder; {layout}")
    return root


def folder_contents(
    images_dir: Path,
    masks_dir: Path,
    cfg: Config,
    *,
    classes_file: Path | None = None,
    class_names: list[str] | None = None,
    mask_suffix: str = "",
    value_map: Mapping[int, int] | None = None,
    layout: str = FOLDER_LAYOUT,
) -> DatasetContents:
    """Pair ``images_dir`` with ``masks_dir`` and settle the class count and mask encoding.

    Class names come from the config, else ``classes_file`` (when it exists), else
    ``class_names`` (a dataset's known names), else the masks are scanned: binary 0/255 gives 2
    classes, anything else the largest id + 1.
    """
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist or is not a folder; {layout}")
    scan = pair_by_stem(images_dir, masks_dir, mask_suffix)
    if not scan.pairs:
        raise _nothing_paired(images_dir, masks_dir, layout)
    return scan_contents(
        scan, cfg, classes_file=classes_file, class_names=class_names, value_map=value_map
    )


def scan_contents(
    scan: FolderScan,
    cfg: Config,
    *,
    classes_file: Path | None = None,
    class_names: list[str] | None = None,
    value_map: Mapping[int, int] | None = None,
    colour_map: ColourMap | None = None,
) -> DatasetContents:
    """The contents of paired files: class names and mask encoding settled as in
    :func:`folder_contents`; with ``colour_map`` its names are the dataset's class names."""
    names_from = str(classes_file) if classes_file and classes_file.is_file() else None
    dataset_names = read_class_names(classes_file) if names_from else class_names
    if colour_map is not None:
        _check_names_agree(colour_map, dataset_names, names_from)
        names_from, dataset_names = colour_map.source, list(colour_map.class_names)
    task = cfg.task
    declared = task.num_classes or _count(task.class_names) or _count(dataset_names)
    masks = MaskValueScan()
    if colour_map is not None:
        encoding = MaskEncoding(colour_map=colour_map)
    else:
        if declared is None or (declared == 2 and not value_map):
            masks = scan_mask_values(
                [p.mask for p in scan.pairs],
                stop_unless_binary=declared == 2,
                ignore_index=task.ignore_index,
            )
        encoding = infer_mask_encoding(masks.value_sets, declared, task.ignore_index, value_map)
    names = resolve_class_names(
        task,
        dataset_names=dataset_names,
        dataset_names_from=names_from or "the dataset's class names",
        detected_num_classes=None if declared else num_classes_from_values(masks.values, encoding),
    )
    source = FolderSource(scan.pairs, cfg.data.in_channels, encoding)
    return DatasetContents(source, names, [*scan.problems, *masks.problems])


def _check_names_agree(
    colour_map: ColourMap, names: list[str] | None, names_from: str | None
) -> None:
    if names_from and names != list(colour_map.class_names):
        raise DataError(
            f"{names_from} names the classes {names} but the colour map {colour_map.source} "
            f"names {list(colour_map.class_names)}",
            fix=f"make them agree, or delete {names_from} (the colour map names the classes)",
        )


def _nothing_paired(images_dir: Path, masks_dir: Path, layout: str) -> DataError:
    return DataError(
        f"no image in {images_dir} ({len(list_image_files(images_dir))} images) has a mask "
        f"of the same name in {masks_dir} ({len(list_image_files(masks_dir))} masks); {layout}"
    )


def _count(names: list[str] | None) -> int | None:
    return len(names) if names is not None else None
