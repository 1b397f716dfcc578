"""Check a whole dataset before training and report every problem at once, each with its fix.

One pass reads every sample once and looks for what would crash or silently spoil training:
files that cannot be read, image/mask size mismatches, mask values that are not class ids, images
with the wrong number of channels, and empty splits. Problems found while pairing files (an image
without a mask, a mask without an image) come along from :class:`DatasetSplits`. The same pass
gathers the dataset's statistics (class pixel frequencies, image sizes): see
:func:`inspect_splits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from unetkit.data._progress import tqdm_disable
from unetkit.data.contents import default_class_names
from unetkit.data.registry import DatasetSplits
from unetkit.data.sources import DataError, DataProblem, SampleSource
from unetkit.data.statistics import DatasetStatistics, StatisticsCollector
from unetkit.tasks import IGNORE_INDEX

__all__ = [
    "DataProblem",
    "DataReport",
    "check_sample",
    "check_splits",
    "dataset_statistics",
    "format_problems",
    "inspect_splits",
]

_REEXPORT = "re-export the file (it may be truncated or not an image), or remove the sample"


@dataclass
class DataReport:
    """What one pass over a dataset found: its problems and its statistics."""

    problems: list[DataProblem]
    statistics: DatasetStatistics

    @property
    def errors(self) -> list[DataProblem]:
        return [problem for problem in self.problems if problem.is_error]


def check_splits(
    splits: DatasetSplits, num_classes: int | None = None, progress: bool | None = None
) -> list[DataProblem]:
    """Every problem of ``splits``: discovery problems, empty splits, then each sample's.

    ``num_classes`` defaults to the number of class names of ``splits``.
    """
    return inspect_splits(splits, num_classes, progress).problems


def dataset_statistics(
    splits: DatasetSplits, num_classes: int | None = None, progress: bool | None = None
) -> DatasetStatistics:
    """Class pixel counts and image sizes of ``splits`` (unreadable samples are left out)."""
    return inspect_splits(splits, num_classes, progress).statistics


def inspect_splits(
    splits: DatasetSplits, num_classes: int | None = None, progress: bool | None = None
) -> DataReport:
    """Problems and statistics of ``splits`` from one read of every sample."""
    num_classes = num_classes or splits.num_classes
    named = splits.named()
    problems = [*splits.problems, *_empty_split_problems(named)]
    collector = StatisticsCollector(_class_names(splits, num_classes), named)
    total = sum(len(source) for source in named.values())
    with tqdm(
        total=total, desc="checking data", unit="sample", disable=tqdm_disable(total, progress)
    ) as bar:
        for split, source in named.items():
            for index in range(len(source)):
                sample_problems, sample = _inspect_sample(source, index, num_classes)
                problems.extend(sample_problems)
                if sample is not None:
                    collector.add(split, *sample)
                bar.update()
    return DataReport(problems, collector.statistics)


def check_sample(source: SampleSource, index: int, num_classes: int) -> list[DataProblem]:
    """The problems of one sample (reads it once)."""
    return _inspect_sample(source, index, num_classes)[0]


def _inspect_sample(
    source: SampleSource, index: int, num_classes: int
) -> tuple[list[DataProblem], tuple[np.ndarray, np.ndarray] | None]:
    """The sample's problems, and the sample itself when it could be read."""
    where = source.describe(index)
    try:
        image, mask = source.load(index)
    except DataError as error:  # UnreadableFileError included
        return [DataProblem(where, error.message, error.fix or _REEXPORT)], None
    except OSError as error:  # from sources that read files without unetkit's readers
        return [DataProblem(where, f"cannot be read: {error}", _REEXPORT)], None
    if mask.ndim == 3:  # a multi-label task: one 0/1 map per label, read and checked as such
        return _image_problems(where, image, source.in_channels), (image, mask)
    problems = [
        *_shape_problems(where, image, mask, source.in_channels),
        *_value_problems(where, mask, num_classes),
    ]
    return problems, (image, mask)


def _empty_split_problems(named: dict[str, SampleSource]) -> list[DataProblem]:
    return [
        DataProblem(
            f"{split} split",
            "is empty",
            "add samples, or change data.split_ratios or the split list files",
        )
        for split, source in named.items()
        if len(source) == 0
    ]


def _class_names(splits: DatasetSplits, num_classes: int) -> list[str]:
    """The dataset's names when they match ``num_classes``, else generic ones."""
    if len(splits.class_names) == num_classes:
        return list(splits.class_names)
    return default_class_names(num_classes)


def _image_problems(where: str, image: np.ndarray, in_channels: int) -> list[DataProblem]:
    if image.ndim == 3 and image.shape[2] == in_channels:
        return []
    return [
        DataProblem(
            where,
            f"image has shape {image.shape}, expected H x W x {in_channels} "
            f"(data.in_channels={in_channels})",
            "set data.in_channels to the images' channel count (1 grey, 3 RGB)",
        )
    ]


def _shape_problems(
    where: str, image: np.ndarray, mask: np.ndarray, in_channels: int
) -> list[DataProblem]:
    problems = _image_problems(where, image, in_channels)
    if mask.ndim != 2:
        problems.append(
            DataProblem(
                where,
                f"mask has shape {mask.shape}, expected H x W",
                "save masks as single-channel class-index images",
            )
        )
    elif image.shape[:2] != mask.shape:
        problems.append(
            DataProblem(
                where,
                f"image is {image.shape[0]}x{image.shape[1]} (HxW) but its mask is "
                f"{mask.shape[0]}x{mask.shape[1]}",
                "masks must match their image pixel for pixel; re-export the mask at the "
                "image's size",
            )
        )
    return problems


def _value_problems(where: str, mask: np.ndarray, num_classes: int) -> list[DataProblem]:
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)].tolist()
    if not bad:
        return []
    return [
        DataProblem(
            where,
            f"mask values {bad} are outside the class ids 0..{num_classes - 1} "
            f"({IGNORE_INDEX} = ignore)",
            f"set task.num_classes to at least {max(bad) + 1}, map void values with "
            f"task.ignore_index, or fix the mask",
        )
    ]


def format_problems(problems: list[DataProblem]) -> str:
    """A readable report: a count line, then one entry per problem with its fix."""
    if not problems:
        return "no data problems found"
    errors = sum(p.is_error for p in problems)
    warnings = len(problems) - errors
    lines = [f"{len(problems)} data problem(s): {errors} error(s), {warnings} warning(s)"]
    for problem in problems:
        lines.append(f"  [{problem.severity}] {problem.where}: {problem.message}")
        lines.append(f"      fix: {problem.fix}")
    return "\n".join(lines)
