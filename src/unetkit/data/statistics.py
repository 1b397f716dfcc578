"""What a dataset holds: class pixel frequencies and image sizes, per split.

Class frequencies decide whether a run needs class weights or a Dice term, and image sizes decide
``data.img_size`` and tiling. :class:`StatisticsCollector` takes one sample at a time so the data
checker can gather these numbers in the same pass that looks for problems (reading a large
dataset twice is slow).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from unetkit.tasks import IGNORE_INDEX


@dataclass(frozen=True)
class SizeSummary:
    """Image sizes of one split: how many images, and min/median/max of height and width."""

    count: int
    height: tuple[float, float, float]
    width: tuple[float, float, float]


@dataclass
class DatasetStatistics:
    """Pixel counts per class over every split, and each split's image sizes ``(H, W)``.

    ``class_pixels[c]`` counts the mask pixels equal to class id ``c``; ignore pixels (255) are
    counted apart in ``ignored_pixels`` and values that are not class ids in ``invalid_pixels``.
    """

    class_names: list[str]
    class_pixels: np.ndarray
    ignored_pixels: int = 0
    invalid_pixels: int = 0
    sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def labelled_pixels(self) -> int:
        """Pixels holding a class id, which the class fractions are shares of."""
        return int(self.class_pixels.sum())

    def class_fractions(self) -> np.ndarray:
        """Each class's share of the labelled pixels (zeros when nothing is labelled)."""
        total = self.labelled_pixels
        if total == 0:
            return np.zeros(len(self.class_pixels))
        return self.class_pixels / total

    def size_summary(self, split: str | None = None) -> SizeSummary | None:
        """Sizes of ``split``'s readable images (every split's when ``None``); ``None`` if none."""
        chosen = self.sizes.get(split, []) if split else sum(self.sizes.values(), [])
        sizes = np.asarray(chosen, dtype=np.int64).reshape(-1, 2)
        if len(sizes) == 0:
            return None
        height, width = sizes[:, 0], sizes[:, 1]
        return SizeSummary(len(sizes), _min_median_max(height), _min_median_max(width))


class StatisticsCollector:
    """Accumulates :class:`DatasetStatistics` one ``(split, image, mask)`` at a time."""

    def __init__(self, class_names: list[str], splits: Iterable[str]) -> None:
        self.statistics = DatasetStatistics(
            class_names=list(class_names),
            class_pixels=np.zeros(len(class_names), dtype=np.int64),
            sizes={split: [] for split in splits},
        )

    def add(self, split: str, image: np.ndarray, mask: np.ndarray) -> None:
        """Count ``mask``'s pixels per value and record ``image``'s height and width."""
        stats = self.statistics
        stats.sizes.setdefault(split, []).append((int(image.shape[0]), int(image.shape[1])))
        if mask.ndim == 3:  # multi-label (L, H, W): the pixels where each label is present
            stats.class_pixels += (mask == 1).sum(axis=(1, 2))
            stats.ignored_pixels += int((mask == IGNORE_INDEX).sum())
            return
        num_classes = len(stats.class_pixels)
        counts = np.bincount(
            mask.reshape(-1).astype(np.int64, copy=False), minlength=max(256, num_classes + 1)
        )
        stats.class_pixels += counts[:num_classes]
        stats.ignored_pixels += int(counts[IGNORE_INDEX])
        stats.invalid_pixels += int(counts[num_classes:].sum() - counts[IGNORE_INDEX])


def _min_median_max(values: np.ndarray) -> tuple[float, float, float]:
    return float(values.min()), float(np.median(values)), float(values.max())


def format_statistics(stats: DatasetStatistics) -> str:
    """Two small tables for a terminal: pixels per class, then image sizes per split."""
    return "\n".join([*_class_lines(stats), "", *_size_lines(stats)])


def _class_lines(stats: DatasetStatistics) -> list[str]:
    width = max([len("class"), *(len(name) for name in stats.class_names)])
    lines = [
        f"class pixel frequencies ({stats.labelled_pixels} labelled pixels, all splits):",
        f"  {'id':>3}  {'class':<{width}}  {'pixels':>12}  {'share':>7}",
    ]
    percents = 100 * stats.class_fractions()
    for class_id, name in enumerate(stats.class_names):
        pixels = int(stats.class_pixels[class_id])
        lines.append(f"  {class_id:>3}  {name:<{width}}  {pixels:>12}  {percents[class_id]:>6.2f}%")
    lines.append(f"  ignored ({IGNORE_INDEX}, not in the shares): {stats.ignored_pixels} pixels")
    if stats.invalid_pixels:
        lines.append(f"  pixels with values that are not class ids: {stats.invalid_pixels}")
    return lines


def _size_lines(stats: DatasetStatistics) -> list[str]:
    lines = [
        "image sizes (min / median / max):",
        f"  {'split':<6}  {'images':>6}  {'height':>20}  {'width':>20}",
    ]
    for split in [*stats.sizes, None]:
        summary = stats.size_summary(split)
        label = split or "all"
        if summary is None:
            lines.append(f"  {label:<6}  {0:>6}  {'-':>20}  {'-':>20}")
            continue
        lines.append(
            f"  {label:<6}  {summary.count:>6}  {_triple(summary.height):>20}  "
            f"{_triple(summary.width):>20}"
        )
    return lines


def _triple(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:g}" for value in values)
