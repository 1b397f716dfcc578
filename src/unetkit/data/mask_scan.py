"""Settling how a dataset's masks are encoded, from one look at every mask.

The rules are in :mod:`unetkit.data.mask_files`; this module applies them. A dataset is read as
binary (1, 255 and 65535 all foreground) when every mask holds 0 and at most one of 1, 255 or 65535,
judged per mask, so 0/1 and 0/255 masks, and 8- and 16-bit ones, may be mixed in one folder.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from unetkit.data._progress import tqdm_disable
from unetkit.data.mask_files import FULL_SCALE_WHITE, MaskEncoding, read_stored_mask
from unetkit.data.sources import DataError, DataProblem
from unetkit.tasks import IGNORE_INDEX

_BINARY_SETS = [frozenset({0, 1}), *(frozenset({0, white}) for white in FULL_SCALE_WHITE)]


@dataclass
class MaskValueScan:
    """The distinct value sets of the masks scanned, and warnings about how they were read."""

    value_sets: set[frozenset[int]] = field(default_factory=set)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def values(self) -> set[int]:
        """Every value seen in any mask."""
        return set().union(*self.value_sets)


def scan_mask_values(
    paths: Iterable[Path],
    stop_unless_binary: bool = False,
    progress: bool | None = None,
    ignore_index: int | None = None,
) -> MaskValueScan:
    """The stored values of the masks at ``paths``, mask by mask.

    Unreadable masks are skipped here: this scan only guesses the encoding, and
    :func:`unetkit.data.checks.check_splits` reports those files. With ``stop_unless_binary``
    the scan ends at the first mask that is not binary, which already rules out a binary dataset.
    JPEG masks snapped to black and white are counted in one warning.
    """
    paths = list(paths)
    scan = MaskValueScan()
    snapped: dict[Path, int] = {}
    disable = tqdm_disable(len(paths), progress)
    for path in tqdm(paths, desc="scanning masks", unit="mask", disable=disable):
        try:
            stored = read_stored_mask(path)
        except DataError:
            continue  # reported with its file name by check_splits
        if stored.snapped_pixels:
            snapped[path] = stored.snapped_pixels
        values = frozenset(int(v) for v in np.unique(stored.values))
        scan.value_sets.add(values)
        if stop_unless_binary and not _is_binary(values, ignore_index):
            break
    if snapped:
        scan.problems.append(_snapped_warning(snapped))
    return scan


def infer_mask_encoding(
    value_sets: Collection[frozenset[int]],
    num_classes: int | None,
    ignore_index: int | None = None,
    value_map: Mapping[int, int] | None = None,
) -> MaskEncoding:
    """The dataset-wide encoding: binary only when no mask and no setting contradicts it."""
    binary = (
        num_classes in (None, 2)
        and ignore_index != IGNORE_INDEX
        and not value_map
        and all(_is_binary(values, ignore_index) for values in value_sets)
        and any(values & FULL_SCALE_WHITE for values in value_sets)
    )
    return MaskEncoding(binary, ignore_index, value_map)


def num_classes_from_values(stored_values: set[int], encoding: MaskEncoding) -> int:
    """Class count implied by the masks: largest canonical id + 1, at least 2.

    Ignore and values that cannot be class ids (beyond 254: a 16-bit mask of instance ids, say)
    are left out; loading those masks reports them with their file.
    """
    ids = {encoding.decode_value(v) for v in stored_values}
    return max(2, max((i for i in ids if 0 <= i < IGNORE_INDEX), default=0) + 1)


def _is_binary(values: frozenset[int], ignore_index: int | None) -> bool:
    meaningful = values - {ignore_index}
    return any(meaningful <= allowed for allowed in _BINARY_SETS)


def _snapped_warning(snapped: dict[Path, int]) -> DataProblem:
    first = next(iter(snapped))
    others = f" and {len(snapped) - 1} more JPEG masks" if len(snapped) > 1 else ""
    return DataProblem(
        f"{first}{others}",
        f"JPEG compression noise: {sum(snapped.values())} pixels were neither black nor white "
        f"and were snapped to the nearer of the two (threshold 128)",
        "save the masks as PNG to keep them exact (the snapped masks are used meanwhile)",
        severity="warning",
    )
