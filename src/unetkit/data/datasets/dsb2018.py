"""2018 Data Science Bowl nuclei (``--dataset dsb2018``): nucleus vs background, from object masks.

Layout (``stage1_train.zip`` of the Kaggle competition, also BBBC038v1, extracted)::

    ROOT/stage1_train/<id>/images/<id>.png        8-bit RGBA (or RGB) PNG, any size
    ROOT/stage1_train/<id>/masks/<mask id>.png    one binary 0/255 PNG per nucleus, image-sized

``ROOT`` may also be the ``stage1_train`` folder itself (``ROOT/<id>/images/...``). Sample names
are the ids. Every id folder must hold ``images/`` (``<id>.png``, or its one image) and at least one
mask in ``masks/``; anything else is an error naming the folder, since a half-copied folder would
otherwise train on an empty mask. ``stage1_test`` folders have no masks and are not read.

The semantic mask is the union of the nucleus masks: 1 = nucleus, 0 = background (2 classes). The
image is read as RGB with the alpha channel dropped, or as luminance with ``data.in_channels = 1``
(the set mixes grey fluorescence with colour brightfield and histology images).
:meth:`NucleiSource.instances` gives the objects themselves, for instance-level scoring: an
``int32`` map with 0 = background and ``1 .. N`` numbering the masks in file-name order.

There is no official split of the labelled images: train, val and test are drawn by
``data.split_ratios`` and ``data.split_seed``. Images range from 256 x 256 to 1388 x 1040;
``data.tile_size`` trains on native-resolution tiles (see :mod:`unetkit.data.registry`).
Loading a sample decodes every one of its masks (up to a few hundred: about 0.3 s), so turn on
``data.cache`` for training.
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
from unetkit.data.sources import DataError, SampleSource

NAME = "dsb2018"
TRAIN_FOLDER = "stage1_train"
LAYOUT = (
    f"expected layout: <root>/{TRAIN_FOLDER}/<id>/images/<id>.png and "
    f"<root>/{TRAIN_FOLDER}/<id>/masks/<mask id>.png (one binary 0/255 PNG per nucleus, the "
    f"size of the image), or the same id folders directly under <root>, as in the 2018 Data "
    f"Science Bowl's stage1_train.zip"
)
CLASS_NAMES = ["background", "nucleus"]


@dataclass(frozen=True)
class NucleiSample:
    """One image and its nucleus masks (sorted by file name: the instance numbering order)."""

    name: str
    image: Path
    masks: tuple[Path, ...]


def build_dsb2018(cfg: Config) -> DatasetContents:
    """Every id folder under ``stage1_train/`` (or the root itself), split later by ratios."""
    root = require_root(cfg, LAYOUT)
    check_mode(cfg, NAME)
    folder = root / TRAIN_FOLDER if (root / TRAIN_FOLDER).is_dir() else root
    samples = [scan_sample(path) for path in id_folders(folder)]
    if not samples:
        raise DataError(f"{folder} holds no id folder; {LAYOUT}")
    source = NucleiSource(samples, cfg.data.in_channels)
    names = resolve_class_names(
        cfg.task, dataset_names=CLASS_NAMES, dataset_names_from="DSB 2018's classes"
    )
    return DatasetContents(source, names)


def id_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder``, sorted; hidden ones (``.ipynb_checkpoints``) skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_sample(folder: Path) -> NucleiSample:
    """The image and the nucleus masks of id folder ``folder``; missing either is an error."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        held = sorted(p.name for p in folder.iterdir())
        raise DataError(
            f"{folder} has no images/ folder (it holds {held[:5]})",
            fix=f"put the image at {images_dir / (folder.name + '.png')}, or move the folder "
            f"out of the dataset; {LAYOUT}",
        )
    masks = tuple(list_image_files(masks_dir)) if masks_dir.is_dir() else ()
    if not masks:
        raise DataError(
            f"{folder} has no nucleus mask ({masks_dir} is missing or holds no PNG)",
            fix="copy the id folder from stage1_train completely (stage1_test folders have no "
            "masks and cannot be trained on), or move it out of the dataset",
        )
    return NucleiSample(folder.name, _the_image(images_dir, folder.name), masks)


def _the_image(images_dir: Path, name: str) -> Path:
    """``images/<id>.png``, else the folder's only image."""
    expected = images_dir / f"{name}.png"
    if expected.is_file():
        return expected
    found = list_image_files(images_dir)
    if len(found) != 1:
        raise DataError(
            f"{images_dir} holds {len(found)} images ({[p.name for p in found[:3]]}) and no "
            f"{expected.name}",
            fix=f"keep the one image of the sample, named {expected.name}",
        )
    return found[0]


def read_nucleus(path: Path, size: tuple[int, int], image: Path) -> np.ndarray:
    """Nucleus mask ``path`` as ``H x W`` bool; it must be ``size`` (its image's) and binary."""
    raw = read_raw_mask(path)
    if raw.shape != size:
        raise DataError(
            f"{path} is {raw.shape[0]} x {raw.shape[1]} (H x W) but its image {image} is "
            f"{size[0]} x {size[1]}",
            fix="use the masks of this image as distributed: every mask is the size of its image",
        )
    inside = raw != 0
    values = raw[inside]
    if values.size and (values.min() != values.max() or int(values[0]) not in (1, 255)):
        shown = sorted({int(v) for v in np.unique(values)} | {0})[:8]
        raise DataError(
            f"{path} holds the values {shown}; a nucleus mask is 0 (background) and 255 (nucleus)",
            fix="use the masks as distributed, or re-save this one as black (0) and white (255)",
        )
    return inside


class NucleiSource(SampleSource):
    """DSB 2018 samples: the image, and the union of its nucleus masks as 1 = nucleus."""

    def __init__(self, samples: list[NucleiSample], in_channels: int = 3) -> None:
        if in_channels not in (1, 3):
            raise DataError(f"in_channels must be 1 (grey) or 3 (RGB); got {in_channels}")
        self.samples = list(samples)
        self.in_channels = in_channels

    @property
    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = self.load_with_instances(index)
        return image, mask

    def load_with_instances(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image, the union mask and the nucleus ids, each mask file decoded once."""
        image = read_image(self.samples[index].image, self.in_channels)
        labels = self._labels(index, (image.shape[0], image.shape[1]))
        return image, (labels > 0).astype(np.uint8), labels

    def instances(self, index: int) -> np.ndarray:
        """``H x W`` int32 map of sample ``index``'s nuclei: 0 = background, ``k`` = mask ``k``.

        Masks are numbered ``1 .. N`` in file-name order (``files(index)[1:]``); a pixel claimed by
        two masks keeps the first (the release's masks do not overlap, community fixes may).
        """
        return self._labels(index, header_size(self.samples[index].image))

    def _labels(self, index: int, size: tuple[int, int]) -> np.ndarray:
        sample = self.samples[index]
        labels = np.zeros(size, dtype=np.int32)
        for number, path in enumerate(sample.masks, start=1):
            labels[read_nucleus(path, size, sample.image) & (labels == 0)] = number
        return labels

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"{sample.image} ({len(sample.masks)} nucleus masks in {sample.masks[0].parent})"

    def files(self, index: int) -> list[Path]:
        """The image, then every mask: editing any of them changes :meth:`fingerprint`."""
        sample = self.samples[index]
        return [sample.image, *sample.masks]

    def _select(self, positions: list[int]) -> NucleiSource:
        return NucleiSource([self.samples[p] for p in positions], self.in_channels)


DATASETS = {NAME: build_dsb2018}
