"""The built-in multi-label demo (``task.type=multilabel`` on ``synthetic``): overlapping labels.

Each image holds one to three cells on the smooth noisy background of the class demo. Label
``cell`` is a disc, ``nucleus`` a smaller disc inside it (so every nucleus pixel is a cell pixel
too), and ``mark`` a bar that crosses a cell and its nucleus: the three overlap, which one class
id per pixel cannot express. Colours are jittered per object, the mark is painted
semi-transparent (so the structures under it stay visible) and Gaussian noise is added last.
Everything is drawn from ``(seed, index)``, at any size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from unetkit.config import Config
from unetkit.data.contents import DatasetContents
from unetkit.data.datasets.synthetic import _LUMA, _background
from unetkit.data.preprocess import size_hw
from unetkit.data.sources import DataError, SampleSource

LABEL_NAMES = ("cell", "nucleus", "mark")
_COLOURS = {"cell": (225.0, 150.0, 170.0), "nucleus": (90.0, 50.0, 140.0)}
_MARK_TINT = np.array([40.0, 220.0, 90.0], dtype=np.float32)


def build_synthetic_labels(cfg: Config) -> DatasetContents:
    """The multi-label demo: labels ``cell``, ``nucleus``, ``mark`` (or the first
    ``task.num_classes`` of them)."""
    names = list(cfg.task.class_names or LABEL_NAMES[: cfg.task.num_classes or len(LABEL_NAMES)])
    if not 1 <= len(names) <= len(LABEL_NAMES):
        raise DataError(
            f"the synthetic multi-label demo has the labels {list(LABEL_NAMES)}; got "
            f"{len(names)} labels {names}",
            fix=f"set task.num_classes to 1..{len(LABEL_NAMES)} or leave it unset",
        )
    source = SyntheticLabelSource(
        count=cfg.data.synthetic_count,
        size=size_hw(cfg.data.img_size),
        num_labels=len(names),
        seed=cfg.data.synthetic_seed,
        in_channels=cfg.data.in_channels,
    )
    return DatasetContents(source, names)


class SyntheticLabelSource(SampleSource):
    """``count`` drawn samples of ``size = (H, W)`` with ``(num_labels, H, W)`` label masks."""

    def __init__(
        self,
        count: int,
        size: tuple[int, int] = (96, 96),
        num_labels: int = len(LABEL_NAMES),
        seed: int = 0,
        in_channels: int = 3,
        indices: list[int] | None = None,
    ) -> None:
        if count < 1 or min(size) < 8 or in_channels not in (1, 3):
            raise DataError(
                f"synthetic multi-label data needs count >= 1, images of at least 8x8 and 1 or 3 "
                f"channels; got count={count}, size={tuple(size)}, in_channels={in_channels}"
            )
        self.count = count
        self.size = (int(size[0]), int(size[1]))
        self.num_labels = num_labels
        self.seed = seed
        self.in_channels = in_channels
        self.indices = list(range(count)) if indices is None else list(indices)

    @property
    def names(self) -> list[str]:
        return [f"synthetic_{i:05d}" for i in self.indices]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.indices[index], 1])
        image, labels = draw_label_sample(rng, self.size)
        if self.in_channels == 1:
            image = (image.astype(np.float32) @ _LUMA)[..., None].astype(np.uint8)
        return image, labels[: self.num_labels]

    def describe(self, index: int) -> str:
        height, width = self.size
        sample = self.indices[index]
        return f"synthetic multi-label sample {sample} (seed {self.seed}, {height}x{width})"

    def _select(self, positions: list[int]) -> SyntheticLabelSource:
        return SyntheticLabelSource(
            self.count,
            self.size,
            self.num_labels,
            self.seed,
            self.in_channels,
            indices=[self.indices[p] for p in positions],
        )


def draw_label_sample(
    rng: np.random.Generator, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image ``H x W x 3`` uint8 and its ``(3, H, W)`` uint8 maps of cell, nucleus, mark."""
    height, width = size
    short = min(height, width)
    maps = {name: Image.new("L", (width, height), 0) for name in LABEL_NAMES}
    draws = {name: ImageDraw.Draw(image) for name, image in maps.items()}
    centres = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.14, 0.24) * short
        x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        draws["cell"].ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)
        inner = radius * rng.uniform(0.35, 0.5)
        shift = (radius - inner) * 0.5 * rng.uniform(-1, 1, size=2)
        nx, ny = x + shift[0], y + shift[1]
        draws["nucleus"].ellipse((nx - inner, ny - inner, nx + inner, ny + inner), fill=1)
        centres.append((nx, ny))
    bar_x, bar_y = centres[int(rng.integers(len(centres)))]
    angle, reach = rng.uniform(0, np.pi), 0.45 * short
    end = np.array([np.cos(angle), np.sin(angle)]) * reach
    draws["mark"].line(
        [(bar_x - end[0], bar_y - end[1]), (bar_x + end[0], bar_y + end[1])],
        fill=1,
        width=max(2, round(0.07 * short)),
    )
    labels = np.stack([np.asarray(maps[name], dtype=np.uint8) for name in LABEL_NAMES])
    return _paint(rng, labels), labels


def _paint(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """The image of ``labels``: cells, then nuclei over them, then the see-through mark."""
    image = _background(rng, labels.shape[1:])
    for index, name in enumerate(("cell", "nucleus")):
        colour = np.asarray(_COLOURS[name]) + rng.normal(0, 15, size=3)
        image[labels[index] == 1] = colour
    mark = labels[2] == 1
    image[mark] = 0.45 * image[mark] + 0.55 * _MARK_TINT
    image += rng.normal(0.0, rng.uniform(4.0, 10.0), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
