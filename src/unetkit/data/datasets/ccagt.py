"""CCAgT (``--dataset ccagt``): cervical cells stained with AgNOR, 8-class semantic segmentation.

Layout (as distributed, in any sub-folder structure, e.g. one folder per slide)::

    ROOT/images/**/<name>.jpg                 1600 x 1200 RGB photos
    ROOT/masks/**/<name>.png                  semantic masks, pixel values = class ids 0..7
    ROOT/CCAgT_dataset_metadata.json          optional: class names ("categories": id, name)

Images and masks pair by file name (stem) wherever they sit below ``images/`` and ``masks/``.
Masks under a folder whose name contains ``panoptic`` (CCAgT-utils ships
``masks/panoptic_segmentation`` next to ``masks/semantic_segmentation``) are instance
encodings, not class ids, and are skipped. Class names come from the config, else the metadata
file (background = id 0, then its categories by id), else CCAgT's published list.

Splits are drawn over IMAGES with ``data.split_ratios`` (default 0.7/0.1/0.2) and
``data.split_seed``. With ``data.tile_size`` set, train and val are the tiles of their images
(a regular grid of ``tile_size`` windows, last ones aligned to the border, named
``<name>@<y>,<x>``; see :mod:`unetkit.data.tiles`), so the model learns at native resolution and
no image has tiles in two splits; test stays whole images, so evaluation scores every pixel of
each image once, at its original resolution. The same seed picks the same test images with and
without tiles. Without ``data.tile_size`` every split holds whole images (resized by the
transforms like any other dataset).
"""

from __future__ import annotations

import json
from pathlib import Path

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.datasets.common import check_mode, require_root
from unetkit.data.datasets.paired_files import FolderScan, FolderSource, match_stems
from unetkit.data.image_files import IMAGE_EXTENSIONS, header_size
from unetkit.data.mask_files import MaskEncoding
from unetkit.data.sources import DataError, DataProblem
from unetkit.data.splits import split_by_ratios
from unetkit.data.tiles import TiledSource

NAME = "ccagt"
LAYOUT = (
    "expected layout: <root>/images/**/<name>.jpg and <root>/masks/**/<name>.png (semantic "
    "masks, pixel values = class ids 0..7, paired with the images by file name in any "
    "sub-folders), optional <root>/CCAgT_dataset_metadata.json"
)
METADATA_FILE = "CCAgT_dataset_metadata.json"
CLASS_NAMES = [
    "background",
    "Nucleus",
    "Cluster",
    "Satellite",
    "Nucleus_out_of_focus",
    "Overlapped_Nuclei",
    "non_viable_nucleus",
    "Leukocyte_Nucleus",
]
SKIPPED_MASK_FOLDER = "panoptic"


def build_ccagt(cfg: Config) -> DatasetContents:
    """Images paired with semantic masks; tiles for train/val when ``data.tile_size`` is set."""
    root = require_root(cfg, LAYOUT)
    check_mode(cfg, NAME)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist or is not a folder; {LAYOUT}")
    scan = pair_recursively(images_dir, masks_dir)
    if not scan.pairs:
        raise DataError(
            f"no image below {images_dir} has a mask of the same name below {masks_dir}"
        )
    class_names = _class_names(cfg, root / METADATA_FILE)
    encoding = MaskEncoding(ignore_index=cfg.task.ignore_index)
    images = FolderSource(scan.pairs, cfg.data.in_channels, encoding)
    if cfg.data.tile_size is None:
        return DatasetContents(images, class_names, scan.problems)
    return _tiled_contents(images, cfg, class_names, scan.problems)


def _tiled_contents(
    images: FolderSource, cfg: Config, class_names: list[str], problems: list[DataProblem]
) -> DatasetContents:
    """Whole images plus their tiles, and an image-grouped split: tiles for train/val."""
    sizes = [header_size(pair.image) for pair in images.pairs]
    source = TiledSource.covering(images, cfg.data.tile_size, sizes, include_whole=True)
    by_image = split_by_ratios(images.names, cfg.data.split_ratios, cfg.data.split_seed)
    split = {
        "train": source.tile_names(by_image["train"]),
        "val": source.tile_names(by_image["val"]),
        "test": by_image["test"],
    }
    return DatasetContents(source, class_names, problems, predefined_split=split)


def _class_names(cfg: Config, metadata: Path) -> list[str]:
    if metadata.is_file():
        return resolve_class_names(
            cfg.task,
            dataset_names=read_metadata_class_names(metadata),
            dataset_names_from=str(metadata),
        )
    return resolve_class_names(
        cfg.task, dataset_names=CLASS_NAMES, dataset_names_from="CCAgT's class list"
    )


def read_metadata_class_names(path: Path) -> list[str]:
    """Class names by id from ``CCAgT_dataset_metadata.json``; id 0 is ``background`` if absent."""
    try:
        categories = json.loads(path.read_text()).get("categories")
    except (json.JSONDecodeError, AttributeError) as error:
        raise DataError(
            f"{path} is not a JSON object with a 'categories' list ({error})"
        ) from error
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
        for c in categories
    ):
        raise DataError(
            f"{path}: 'categories' must be a list of objects with an integer 'id' and a 'name'"
        )
    by_id = {0: "background"} | {c["id"]: c["name"] for c in categories}
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(
            f"{path}: category ids {sorted(by_id)} are not 0..{len(by_id) - 1}",
            fix="number the categories 1, 2, ... without gaps (0 is the background)",
        )
    return [by_id[i] for i in range(len(by_id))]


def pair_recursively(images_dir: Path, masks_dir: Path) -> FolderScan:
    """Pair every image below ``images_dir`` with the mask of the same stem below ``masks_dir``."""
    problems: list[DataProblem] = []
    images = _files_by_stem(images_dir, IMAGE_EXTENSIONS, problems)
    masks = _files_by_stem(masks_dir, frozenset({".png"}), problems, skip=SKIPPED_MASK_FOLDER)
    return match_stems(
        images,
        masks,
        problems,
        missing_mask_fix=f"add {{stem}}.png below {masks_dir}, or move the image away",
        missing_image_fix=f"add the image {{stem}}.jpg below {images_dir}, or delete the mask",
    )


def _files_by_stem(
    folder: Path, extensions: frozenset[str], problems: list[DataProblem], skip: str | None = None
) -> dict[str, Path]:
    """Files below ``folder`` with one of ``extensions``, by stem.

    Hidden files and folders are skipped, and so are folders whose name contains ``skip``.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            not path.is_file()
            or path.suffix.lower() not in extensions
            or any(part.startswith(".") for part in relative.parts)
            or (skip is not None and any(skip in part.lower() for part in relative.parts[:-1]))
        ):
            continue
        if path.stem in found:
            problems.append(
                DataProblem(
                    str(path),
                    f"has the same name as {found[path.stem]}; only the first is used",
                    "give every sample one file below each folder (rename or remove one)",
                )
            )
            continue
        found[path.stem] = path
    return found


DATASETS = {NAME: build_ccagt}
