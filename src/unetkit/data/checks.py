"""Check a whole dataset before training and report every problem at once, each with its fix.

One pass reads every sample once and looks for what would crash or silently spoil training:
files that cannot be read, image/mask size mismatches, mask values that are not class ids, images
with the wrong number of channels, and empty splits. Problems found while pairing files (an image
without a mask, a mask without an image) come along from :class:`DatasetSplits`.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from unetkit.data._progress import tqdm_disable
from unetkit.data.registry import DatasetSplits
from unetkit.data.sources import DataError, DataProblem, SampleSource, UnreadableFileError
from unetkit.tasks import IGNORE_INDEX

__all__ = ["DataProblem", "check_sample", "check_splits", "format_problems"]

_REEXPORT = "re-export the file (it may be truncated or not an image), or remove the sample"


def check_splits(
    splits: DatasetSplits, num_classes: int | None = None, progress: bool | None = None
) -> list[DataProblem]:
    """Every problem of ``splits``: discovery problems, empty splits, then each sample's.

    ``num_classes`` defaults to the number of class names of ``splits``.
    """
    num_classes = num_classes or splits.num_classes
    problems = list(splits.problems)
    named = splits.named()
    for split, source in named.items():
        if len(source) == 0:
            problems.append(
                DataProblem(
                    f"{split} split",
                    "is empty",
                    "add samples, or change data.split_ratios or the split list files",
                )
            )
    total = sum(len(source) for source in named.values())
    with tqdm(
        total=total, desc="checking data", unit="sample", disable=tqdm_disable(total, progress)
    ) as bar:
        for source in named.values():
            for index in range(len(source)):
                problems.extend(check_sample(source, index, num_classes))
                bar.update()
    return problems


def check_sample(source: SampleSource, index: int, num_classes: int) -> list[DataProblem]:
    """The problems of one sample (reads it once)."""
    where = source.describe(index)
    try:
        image, mask = source.load(index)
    except UnreadableFileError as error:
        return [DataProblem(where, str(error), _REEXPORT)]
    except DataError as error:
        return [DataProblem(where, error.message, error.fix or _REEXPORT)]
    except OSError as error:  # from sources that read files without unetkit's readers
        return [DataProblem(where, f"cannot be read: {error}", _REEXPORT)]
    return [
        *_shape_problems(where, image, mask, source.in_channels),
        *_value_problems(where, mask, num_classes),
    ]


def _shape_problems(
    where: str, image: np.ndarray, mask: np.ndarray, in_channels: int
) -> list[DataProblem]:
    problems = []
    if image.ndim != 3 or image.shape[2] != in_channels:
        problems.append(
            DataProblem(
                where,
                f"image has shape {image.shape}, expected H x W x {in_channels} "
                f"(data.in_channels={in_channels})",
                "set data.in_channels to the images' channel count (1 grey, 3 RGB)",
            )
        )
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
