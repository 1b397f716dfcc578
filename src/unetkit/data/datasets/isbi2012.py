"""ISBI 2012 EM membranes (``--dataset isbi2012``): neuronal membranes in Drosophila ssTEM slices.

Two layouts are read, the first one found wins:

* the challenge's files: ``ROOT/train-volume.tif`` and ``ROOT/train-labels.tif``, multi-page
  TIFF stacks of 30 greyscale 512 x 512 slices; slice ``i`` is the sample named ``"i"``;
* PNG folders (as in the widely copied zhixuhao/unet ``data/membrane``): ``ROOT/train/image/*.png``
  and ``ROOT/train/label/*.png`` paired by name (``0.png`` .. ``29.png``).

Labels hold 255 = cell interior and 0 = membrane. The task is binary with the MEMBRANE as
foreground (class 1, value map ``{0: 1, 255: 0}``): the membranes are the thin structure the
challenge scores, and a foreground class makes the binary metrics (IoU, Dice) measure them
rather than the 78 % of pixels that are interior. Images are greyscale; with
``data.in_channels = 3`` the grey channel is replicated, with ``data.in_channels = 1`` (what
this dataset calls for) it is used as it is.

The challenge never released test labels (``test-volume.tif`` and ``ROOT/test/`` are ignored),
so train, val and test are drawn from the 30 labelled slices by ``data.split_ratios``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageSequence

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.datasets.common import check_mode, folder_contents, require_root
from unetkit.data.image_files import DECODE_ERRORS, open_lazily, unreadable
from unetkit.data.mask_files import MaskEncoding
from unetkit.data.sources import DataError, SampleSource

NAME = "isbi2012"
LAYOUT = (
    "expected layout: <root>/train-volume.tif and <root>/train-labels.tif (multi-page TIFF "
    "stacks of the same number of greyscale slices; labels 255 = cell interior, 0 = membrane), "
    "or <root>/train/image/<n>.png and <root>/train/label/<n>.png"
)
CLASS_NAMES = ["cell_interior", "membrane"]
MODES = ("binary",)  # membrane vs cell interior
VALUE_MAP = {0: 1, 255: 0}  # membrane (stored 0) is the foreground
VOLUME_FILE = "train-volume.tif"
LABELS_FILE = "train-labels.tif"


def build_isbi2012(cfg: Config) -> DatasetContents:
    """The labelled training slices, from the TIFF stacks when present, else the PNG folders."""
    root = require_root(cfg, LAYOUT)
    check_mode(cfg, NAME, MODES, default=MODES[0])
    volume, labels = root / VOLUME_FILE, root / LABELS_FILE
    if volume.is_file() or labels.is_file():
        return _stack_contents(volume, labels, cfg)
    return folder_contents(
        root / "train" / "image",
        root / "train" / "label",
        cfg,
        class_names=CLASS_NAMES,
        value_map=VALUE_MAP,
        layout=LAYOUT,
    )


def _stack_contents(volume: Path, labels: Path, cfg: Config) -> DatasetContents:
    for path in (volume, labels):
        if not path.is_file():
            raise DataError(f"{path} does not exist; {LAYOUT}")
    encoding = MaskEncoding(ignore_index=cfg.task.ignore_index, value_map=VALUE_MAP)
    source = TiffStackSource(volume, labels, cfg.data.in_channels, encoding)
    names = resolve_class_names(
        cfg.task, dataset_names=CLASS_NAMES, dataset_names_from="ISBI 2012's class names"
    )
    return DatasetContents(source, names)


def page_count(path: Path) -> int:
    """The number of pages (slices) of the TIFF at ``path``."""
    with open_lazily(path) as stack:
        try:
            return sum(1 for _ in ImageSequence.Iterator(stack))
        except DECODE_ERRORS as error:
            raise unreadable(path, error) from error


def read_page(path: Path, index: int, *, labels: bool = False) -> np.ndarray:
    """Page ``index`` of the TIFF at ``path`` as an ``H x W`` uint8 array.

    Image pages in colour are converted to luminance; label pages keep their stored values
    (palette indices for a palette page), since those are the labels.
    """
    with open_lazily(path) as stack:
        try:
            page = ImageSequence.Iterator(stack)[index]
            page.load()
        except DECODE_ERRORS as error:
            raise unreadable(path, error, page=index) from error
        if not labels and page.mode in ("RGB", "P"):
            page = page.convert("L")
        if page.mode not in ("L", "P"):
            raise DataError(
                f"{path} page {index}: mode {page.mode}, expected 8-bit greyscale",
                fix="save the stack as 8-bit greyscale (e.g. Fiji: Image > Type > 8-bit)",
            )
        return np.array(page)


class TiffStackSource(SampleSource):
    """Slices of an image stack with the same slices of a label stack, named "0", "1", ..."""

    def __init__(
        self,
        volume: Path,
        labels: Path,
        in_channels: int = 1,
        encoding: MaskEncoding | None = None,
        pages: list[int] | None = None,
    ) -> None:
        if in_channels not in (1, 3):
            raise DataError(f"in_channels must be 1 (grey) or 3 (RGB); got {in_channels}")
        self.volume = Path(volume)
        self.labels = Path(labels)
        self.in_channels = in_channels
        self.encoding = encoding or MaskEncoding()
        self.pages = pages if pages is not None else self._matching_pages()

    def _matching_pages(self) -> list[int]:
        image_pages, label_pages = page_count(self.volume), page_count(self.labels)
        if image_pages != label_pages:
            raise DataError(
                f"{self.volume} has {image_pages} slices but {self.labels} has {label_pages}",
                fix="use the image and label stacks of the same release",
            )
        return list(range(image_pages))

    @property
    def names(self) -> list[str]:
        return [str(page) for page in self.pages]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        page = self.pages[index]
        grey = read_page(self.volume, page)
        image = np.repeat(grey[..., None], self.in_channels, axis=2)
        raw = read_page(self.labels, page, labels=True)
        try:
            mask = self.encoding.decode(raw)
        except DataError as error:
            raise DataError(f"{self.labels} page {page}: {error.message}", fix=error.fix) from error
        return image, mask

    def describe(self, index: int) -> str:
        page = self.pages[index]
        return f"{self.volume} slice {page} (labels {self.labels} slice {page})"

    def files(self, index: int) -> list[Path]:
        return [self.volume, self.labels]

    def _select(self, positions: list[int]) -> TiffStackSource:
        pages = [self.pages[p] for p in positions]
        return TiffStackSource(self.volume, self.labels, self.in_channels, self.encoding, pages)


DATASETS = {NAME: build_isbi2012}
