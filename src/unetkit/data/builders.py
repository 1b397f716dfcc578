"""Dataset builders: ``Config -> DatasetContents`` for the built-in layouts (synthetic, folder).

:func:`folder_contents` is the reusable part: any dataset stored as a folder of images and a folder
of masks paired by name (ISBI 2012, CCAgT, Oxford-IIIT Pet trimaps ...) is built with it, passing
its own folders, mask suffix, value map and class names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.folder import (
    FolderSource,
    infer_mask_encoding,
    list_image_files,
    num_classes_from_values,
    pair_by_stem,
    read_class_names,
    scan_mask_values,
)
from unetkit.data.preprocess import image_size
from unetkit.data.sources import DataError
from unetkit.data.synthetic import DEFAULT_NUM_CLASSES, SyntheticSource, synthetic_class_names

FOLDER_LAYOUT = (
    "expected layout: <root>/images/<name>.<png|jpg|tif|...>, <root>/masks/<name>.png "
    "(pixel values = class ids), optional <root>/classes.txt (one class name per line)"
)


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
    """``data.root`` laid out as images/, masks/ and an optional classes.txt."""
    root = require_root(cfg, FOLDER_LAYOUT)
    return folder_contents(root / "images", root / "masks", cfg, classes_file=root / "classes.txt")


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
        raise DataError(
            f"no image in {images_dir} ({len(list_image_files(images_dir))} images) has a mask "
            f"of the same name in {masks_dir} ({len(list_image_files(masks_dir))} masks); {layout}"
        )
    names_from = str(classes_file) if classes_file and classes_file.is_file() else None
    dataset_names = read_class_names(classes_file) if names_from else class_names
    task = cfg.task
    declared = task.num_classes or _count(task.class_names) or _count(dataset_names)
    values: set[int] = set()
    if declared is None or (declared == 2 and not value_map):
        values = scan_mask_values([p.mask for p in scan.pairs], stop_on_class_ids=declared == 2)
    encoding = infer_mask_encoding(values, declared, task.ignore_index, value_map)
    names = resolve_class_names(
        task,
        dataset_names=dataset_names,
        dataset_names_from=names_from or "the dataset's class names",
        detected_num_classes=None if declared else num_classes_from_values(values, encoding),
    )
    source = FolderSource(scan.pairs, cfg.data.in_channels, encoding)
    return DatasetContents(source, names, scan.problems)


def _count(names: list[str] | None) -> int | None:
    return len(names) if names is not None else None
