"""Oxford-IIIT Pet (``--dataset oxford-pet``): pet segmentation from trimaps, as distributed.

Layout (the publisher's ``images.tar.gz`` and ``annotations.tar.gz`` extracted into one root)::

    ROOT/images/<Name>.jpg                 photos of any size; a few are palette or RGBA: all
                                           are read as RGB. Stray files (``.mat``) are ignored.
    ROOT/annotations/trimaps/<Name>.png    1 = pet, 2 = background, 3 = border (not classified)
    ROOT/annotations/trainval.txt          official lists, lines ``Name class_id species breed_id``
    ROOT/annotations/test.txt

``data.mode`` picks the task:

* ``binary`` (default): foreground = pet + border, background = background, as the field's
  reference code trains it (the border band is part of the animal's outline).
* ``trimap``: three classes with background first, so id 0 is the background as everywhere in
  unetkit: background = 0, pet = 1, border = 2 (the stored values 2, 1, 3).

Splits: test is the official ``test.txt``; ``trainval.txt`` is cut into train and a validation
share of 10 % drawn with ``data.split_seed`` (the dataset has no official validation list).
Images in neither list (Abyssinian_34 and Abyssinian_82 in the official release) are loaded but
left out of every split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unetkit.config import Config
from unetkit.data.contents import DatasetContents
from unetkit.data.datasets.common import check_mode, folder_contents, require_root
from unetkit.data.sources import DataError
from unetkit.data.splits import hold_out, read_name_list

NAME = "oxford-pet"
LAYOUT = (
    "expected layout: <root>/images/<Name>.jpg, <root>/annotations/trimaps/<Name>.png "
    "(1 = pet, 2 = background, 3 = border), <root>/annotations/trainval.txt and "
    "<root>/annotations/test.txt (the publisher's images.tar.gz and annotations.tar.gz, "
    "extracted; `unetkit data download oxford-pet` fetches them)"
)
VAL_FRACTION = 0.1  # share of trainval.txt held out for validation


@dataclass(frozen=True)
class PetMode:
    """How trimap values become class ids, and the names of those classes."""

    value_map: dict[int, int]
    class_names: list[str]


MODES: dict[str, PetMode] = {
    "binary": PetMode({1: 1, 2: 0, 3: 1}, ["background", "pet"]),
    "trimap": PetMode({1: 1, 2: 0, 3: 2}, ["background", "pet", "border"]),
}
DEFAULT_MODE = "binary"


def pet_mode(cfg: Config) -> PetMode:
    """The :class:`PetMode` named by ``data.mode`` (default ``binary``)."""
    return MODES[check_mode(cfg, NAME, tuple(MODES), DEFAULT_MODE) or DEFAULT_MODE]


def build_oxford_pet(cfg: Config) -> DatasetContents:
    """Every image with a trimap, the mode's class names, and the official split."""
    root = require_root(cfg, LAYOUT)
    mode = pet_mode(cfg)
    annotations = root / "annotations"
    contents = folder_contents(
        root / "images",
        annotations / "trimaps",
        cfg,
        class_names=mode.class_names,
        value_map=mode.value_map,
        layout=LAYOUT,
    )
    trainval = _official_list(annotations / "trainval.txt", contents.source.names)
    test = _official_list(annotations / "test.txt", contents.source.names)
    train, val = hold_out(
        trainval, VAL_FRACTION, cfg.data.split_seed, str(annotations / "trainval.txt")
    )
    contents.predefined_split = {"train": sorted(train), "val": sorted(val), "test": test}
    return contents


def _official_list(path: Path, available: list[str]) -> list[str]:
    """The names in list file ``path``; each must have an image and a trimap."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; {LAYOUT}")
    names = read_name_list(path)
    known = set(available)
    missing = [name for name in names if name not in known]
    if missing:
        raise DataError(
            f"{path} lists {len(missing)} sample(s) without both an image and a trimap, e.g. "
            f"{missing[:3]}",
            fix="extract both archives completely into the same root; " + LAYOUT,
        )
    return names


DATASETS = {NAME: build_oxford_pet}
