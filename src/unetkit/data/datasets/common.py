"""What the dataset modules share: the root check, the mode check, and contents from paired files.

:func:`check_mode` is the one check of ``data.mode`` (the dataset variant): every dataset says
which modes it has, and a wrong one gets the same message everywhere (dataset, value, accepted).

:func:`folder_contents` is the reusable part: any dataset stored as a folder of images and a folder
of masks paired by name (ISBI 2012, CCAgT, Oxford-IIIT Pet trimaps ...) is built with it, passing
its own folders, mask suffix, value map and class names; :func:`scan_contents` does the same for
pairs found another way (several split folders, for instance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from unetkit.config import Config
from unetkit.data.colour_map import ColourMap
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.datasets.paired_files import (
    FolderScan,
    FolderSource,
    list_image_files,
    pair_by_stem,
)
from unetkit.data.mask_files import MaskEncoding
from unetkit.data.mask_scan import (
    MaskValueScan,
    infer_mask_encoding,
    num_classes_from_values,
    scan_mask_values,
)
from unetkit.data.sources import DataError
from unetkit.data.text_files import read_text

PAIRED_LAYOUT = (
    "expected layout: an images folder and a masks folder, each image paired with the mask "
    "of the same name (pixel values = class ids)"
)


def require_root(cfg: Config, layout: str) -> Path:
    """``data.root`` as an existing folder, or an error naming it and the expected ``layout``."""
    if not cfg.data.root:
        raise DataError(f"data.root is not set for dataset {cfg.data.dataset!r}; {layout}")
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder; {layout}")
    return root


def check_mode(
    cfg: Config, dataset: str, modes: Sequence[str] = (), default: str | None = None
) -> str | None:
    """``data.mode``, or ``default`` when unset; a mode not in ``modes`` raises :class:`DataError`
    naming ``dataset``, the value seen and the accepted modes (none: the dataset has one task)."""
    mode = cfg.data.mode or default
    if mode is None or mode in modes:
        return mode
    if not modes:
        accepted, fix = "none (it has one task)", "leave data.mode unset"
    else:
        accepted = f"{', '.join(modes)} (default {default})"
        fix = f"set data.mode to one of {', '.join(modes)}, or leave it unset for {default}"
    raise DataError(f"data.mode {mode!r} is not a mode of {dataset}; modes: {accepted}", fix=fix)


def folder_contents(
    images_dir: Path,
    masks_dir: Path,
    cfg: Config,
    *,
    classes_file: Path | None = None,
    class_names: list[str] | None = None,
    mask_suffix: str = "",
    value_map: Mapping[int, int] | None = None,
    layout: str = PAIRED_LAYOUT,
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
        raise nothing_paired(images_dir, masks_dir, layout)
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


def nothing_paired(images_dir: Path, masks_dir: Path, layout: str) -> DataError:
    return DataError(
        f"no image in {images_dir} ({len(list_image_files(images_dir))} images) has a mask "
        f"of the same name in {masks_dir} ({len(list_image_files(masks_dir))} masks); {layout}"
    )


def _count(names: list[str] | None) -> int | None:
    return len(names) if names is not None else None


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
