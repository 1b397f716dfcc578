"""DRIVE (``--dataset drive``): retinal blood vessels in colour fundus photographs, binary.

Layout (the DRIVE release extracted; file names as distributed, ``NN`` = image number)::

    ROOT/training/images/NN_training.tif        20 RGB photographs, 565 x 584
    ROOT/training/1st_manual/NN_manual1.gif     vessel annotation: 255 = vessel, 0 = not
    ROOT/training/mask/NN_training_mask.gif     field of view (FOV): 255 inside, 0 outside
    ROOT/test/images/NN_test.tif                20 more, with the same three kinds of file
    ROOT/test/1st_manual/NN_manual1.gif
    ROOT/test/mask/NN_test_mask.gif
    ROOT/test/2nd_manual/NN_manual2.gif         optional: a second observer's annotation
                                                (palette GIF, indices 0 and 1)

Annotation and FOV files are read as their stored values (palette indices for palette GIFs):
0 is "no", any other value "yes", and only {0, 255} or {0, 1} are accepted. Sample names are the
image stems (``21_training``, ``01_test``).

Masks: 1 = vessel, 0 = background, and every pixel OUTSIDE the field of view is 255 (ignore), so
the dark border around the retina counts in no loss and no metric: vessel metrics are computed
inside the FOV only, as the DRIVE benchmark does.

``data.mode``:

* ``vessels`` (default): train and score against the first observer (``1st_manual``).
* ``second_observer``: the test split is scored against ``test/2nd_manual`` (how close a second
  human comes to the reference is the usual yardstick); train and val still use ``1st_manual``.

Splits: test is the official test folder; val is a seeded 15 % of the training images (3 of 20,
``data.split_seed``). When the test folder has no ``1st_manual/`` (the grand-challenge download
withholds the test labels) the labelled training images are split by ``data.split_ratios``
instead, with a warning.

``data.tile_size`` trains on patches inside the FOV: train and val become the tiles of their
images (a regular grid of ``tile_size`` windows, see :mod:`unetkit.data.tiles`) that hold at least
one FOV pixel; tiles wholly outside the retina (all ignore) are dropped. Test stays whole images.
The grid is fixed; augmentation varies what each tile shows. With ``data.in_channels = 1`` the
photographs are converted to luminance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.datasets.common import check_mode, require_root
from unetkit.data.datasets.paired_files import list_image_files
from unetkit.data.image_files import header_size, read_image
from unetkit.data.mask_files import read_raw_mask
from unetkit.data.sources import DataError, DataProblem, SampleSource
from unetkit.data.splits import SplitRecord, hold_out, split_by_ratios
from unetkit.data.tiles import TiledSource, tile_grid, tile_name
from unetkit.tasks import IGNORE_INDEX

NAME = "drive"
LAYOUT = (
    "expected layout: <root>/training/images/<nn>_training.tif, "
    "<root>/training/1st_manual/<nn>_manual1.gif, <root>/training/mask/<nn>_training_mask.gif, "
    "and under <root>/test/: images/<nn>_test.tif, 1st_manual/<nn>_manual1.gif, "
    "mask/<nn>_test_mask.gif (optional 2nd_manual/<nn>_manual2.gif), as in the DRIVE release"
)
CLASS_NAMES = ["background", "vessel"]
DEFAULT_MODE = "vessels"
SECOND_OBSERVER = "second_observer"
MODES = (DEFAULT_MODE, SECOND_OBSERVER)
VAL_FRACTION = 0.15  # share of the training images held out for validation
_FIRST, _SECOND = ("1st_manual", "_manual1"), ("2nd_manual", "_manual2")


@dataclass(frozen=True)
class DriveSample:
    """One photograph with its vessel annotation and its field-of-view mask."""

    name: str
    image: Path
    manual: Path
    fov: Path


def read_binary(path: Path, what: str) -> np.ndarray:
    """``H x W`` bool: True where the stored value of ``path`` is not 0 (values 0/255 or 0/1)."""
    raw = read_raw_mask(path)
    values = {int(v) for v in np.unique(raw)}
    if not (values <= {0, 255} or values <= {0, 1}):
        raise DataError(
            f"{path}: {what} holds the values {sorted(values)[:8]}; expected 0 and 255 "
            f"(or palette indices 0 and 1)",
            fix="use the files as distributed, or re-save them as black (0) and white (255)",
        )
    return raw > 0


class DriveSource(SampleSource):
    """DRIVE samples: masks are 1 = vessel, 0 = background, 255 outside the field of view."""

    def __init__(self, samples: list[DriveSample], in_channels: int = 3) -> None:
        self.samples = list(samples)
        self.in_channels = in_channels

    @property
    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = read_image(sample.image, self.in_channels)
        vessels = read_binary(sample.manual, "the vessel annotation")
        inside = read_binary(sample.fov, "the field-of-view mask")
        if not image.shape[:2] == vessels.shape == inside.shape:
            raise DataError(
                f"{sample.image} is {image.shape[:2]}, its annotation {sample.manual} "
                f"{vessels.shape} and its field of view {sample.fov} {inside.shape} (H, W)",
                fix="use the three files of the same image, as distributed",
            )
        mask = np.where(inside, vessels.astype(np.uint8), np.uint8(IGNORE_INDEX))
        return image, mask.astype(np.uint8)

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"{sample.image} (vessels {sample.manual}, field of view {sample.fov})"

    def files(self, index: int) -> list[Path]:
        sample = self.samples[index]
        return [sample.image, sample.manual, sample.fov]

    def _select(self, positions: list[int]) -> DriveSource:
        return DriveSource([self.samples[p] for p in positions], self.in_channels)


def drive_mode(cfg: Config) -> str:
    """``data.mode``, checked (default ``vessels``)."""
    return check_mode(cfg, NAME, MODES, DEFAULT_MODE) or DEFAULT_MODE


def build_drive(cfg: Config) -> DatasetContents:
    """Training and labelled test images, their official split, and FOV tiles when asked."""
    root = require_root(cfg, LAYOUT)
    mode = drive_mode(cfg)
    problems: list[DataProblem] = []
    training = scan_part(root / "training", "training", _FIRST, problems)
    if not training:
        raise DataError(f"no image in {root / 'training' / 'images'} is usable; {LAYOUT}")
    test = _labelled_test(root / "test", mode, problems)
    samples = training + test
    source: SampleSource = DriveSource(samples, cfg.data.in_channels)
    split = _image_split([s.name for s in training], [s.name for s in test], cfg)
    if cfg.data.tile_size is not None:
        source, split = _fov_tiles(source, samples, split, cfg.data.tile_size)
    names = resolve_class_names(
        cfg.task, dataset_names=CLASS_NAMES, dataset_names_from="DRIVE's classes"
    )
    return DatasetContents(source, names, problems, predefined_split=split)


def _labelled_test(test_dir: Path, mode: str, problems: list[DataProblem]) -> list[DriveSample]:
    """The test samples scored against the mode's observer; none when the labels are absent."""
    manual = _SECOND if mode == SECOND_OBSERVER else _FIRST
    if (test_dir / manual[0]).is_dir():
        return scan_part(test_dir, "test", manual, problems)
    if mode == SECOND_OBSERVER:
        raise DataError(
            f"data.mode {SECOND_OBSERVER} needs the second observer's annotations in "
            f"{test_dir / manual[0]}, which does not exist",
            fix="use the DRIVE release that includes test/2nd_manual, or leave data.mode unset",
        )
    problems.append(
        DataProblem(
            str(test_dir / manual[0]),
            "no test annotations (the grand-challenge download withholds them); train, val "
            "and test are drawn from the training images by data.split_ratios",
            f"put the test annotations in {test_dir / manual[0]} to score the official test set",
            severity="warning",
        )
    )
    return []


def scan_part(
    part_dir: Path, part: str, manual: tuple[str, str], problems: list[DataProblem]
) -> list[DriveSample]:
    """The complete samples of ``training`` or ``test``; incomplete ones become warnings."""
    manual_folder, manual_suffix = manual
    folders = [part_dir / "images", part_dir / manual_folder, part_dir / "mask"]
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist or is not a folder; {LAYOUT}")
    images, manuals, fovs = ({p.stem: p for p in list_image_files(f)} for f in folders)
    samples = []
    for stem, image in sorted(images.items()):
        number = stem.removesuffix(f"_{part}")
        wanted = (manuals.get(number + manual_suffix), fovs.get(f"{stem}_mask"))
        if number == stem or None in wanted:
            problems.append(_incomplete(image, number == stem, folders, part, manual_suffix))
            continue
        samples.append(DriveSample(stem, image, *wanted))
    return samples


def _incomplete(
    image: Path, misnamed: bool, folders: list[Path], part: str, manual_suffix: str
) -> DataProblem:
    if misnamed:
        return DataProblem(
            str(image),
            f"is not named <nn>_{part}.<ext>; it is left out",
            "keep the file names of the DRIVE release, or move the file away",
            severity="warning",
        )
    number = image.stem.removesuffix(f"_{part}")
    return DataProblem(
        str(image),
        "has no vessel annotation or no field-of-view mask; it is left out",
        f"add {folders[1] / (number + manual_suffix)}.gif and "
        f"{folders[2] / (image.stem + '_mask')}.gif",
        severity="warning",
    )


def _image_split(train: list[str], test: list[str], cfg: Config) -> SplitRecord:
    """Official test folder and a seeded val share of training, else ratios over training."""
    if not test:
        return split_by_ratios(train, cfg.data.split_ratios, cfg.data.split_seed)
    kept, val = hold_out(train, VAL_FRACTION, cfg.data.split_seed, "DRIVE training images")
    return {"train": sorted(kept), "val": sorted(val), "test": sorted(test)}


def _fov_tiles(
    source: SampleSource, samples: list[DriveSample], split: SplitRecord, tile_size: int
) -> tuple[TiledSource, SplitRecord]:
    """Whole images plus their tiles; train and val become the tiles that touch the FOV."""
    sizes = [header_size(sample.image) for sample in samples]
    tiled = TiledSource.covering(source, tile_size, sizes, include_whole=True)
    by_name = {sample.name: (sample, size) for sample, size in zip(samples, sizes, strict=True)}
    tiles = {
        part: [t for name in split[part] for t in fov_tile_names(*by_name[name], tile_size)]
        for part in ("train", "val")
    }
    return tiled, {**tiles, "test": split["test"]}


def fov_tile_names(sample: DriveSample, size: tuple[int, int], tile_size: int) -> list[str]:
    """Names of the ``tile_size`` grid tiles of ``sample`` that hold a field-of-view pixel."""
    inside = read_binary(sample.fov, "the field-of-view mask")
    return [
        tile_name(sample.name, (y, x))
        for y, x in tile_grid(*size, tile_size)
        if inside[y : y + tile_size, x : x + tile_size].any()
    ]


DATASETS = {NAME: build_drive}
