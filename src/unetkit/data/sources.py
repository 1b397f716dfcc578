"""Where labelled samples come from: one small interface that every dataset layout implements.

A :class:`SampleSource` is an ordered, named collection of ``(image, mask)`` pairs in the canonical
form used everywhere in unetkit: ``image`` is ``H x W x C`` uint8 (``C`` = ``in_channels``, 1 or 3)
and ``mask`` is ``H x W`` uint8 holding class ids ``0 .. num_classes - 1`` with ``255`` = ignore.
Names identify samples across runs (split files, split records, reports), so a train/val/test split
is just three lists of names, and :meth:`SampleSource.subset` turns a list back into a source.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """The data cannot be used as configured; the message names the file or setting and the fix.

    ``fix`` may be given apart from ``message`` so the data checker can show the two separately;
    ``str(error)`` always holds both.
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(f"{message}; {fix}" if fix else message)
        self.message = message
        self.fix = fix


class UnreadableFileError(DataError):
    """A file is missing, truncated, or not an image that can be decoded."""


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with the data, phrased for a person: where, what, and how to fix it.

    ``severity`` is ``"error"`` for problems that make training wrong or impossible, and
    ``"warning"`` for ones it survives (an image without a mask is simply left out).
    """

    where: str
    message: str
    fix: str
    severity: str = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class SampleSource(ABC):
    """An ordered set of named ``(image, mask)`` samples; subclasses say how to load one."""

    in_channels: int = 3

    @property
    @abstractmethod
    def names(self) -> list[str]:
        """Sample names, unique within the source, in a stable order."""

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H x W x C`` uint8 and canonical mask ``H x W`` uint8 of sample ``index``."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (file paths or a synthetic id), for messages."""

    def files(self, index: int) -> list[Path]:
        """The files sample ``index`` is read from (none for generated samples)."""
        return []

    def instances(self, index: int) -> np.ndarray | None:
        """``H x W`` int32 object ids of sample ``index`` (0 = none) where the dataset labels
        objects one by one (one mask file per nucleus, say), so instance metrics score the real
        objects; None where objects are only known as the mask's connected components."""
        return None

    def load_with_instances(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`load` and :meth:`instances` together; a dataset whose mask is made from its
        objects overrides it to decode their files once."""
        image, mask = self.load(index)
        return image, mask, self.instances(index)

    def fingerprint(self, index: int) -> str:
        """What sample ``index`` is and how it is decoded; changes whenever one of its files does.

        The sample cache keys entries by it, so an edited image or mask is decoded afresh.
        """
        parts = [type(self).__name__, str(self.in_channels), self.describe(index)]
        parts.append(repr(getattr(self, "encoding", "")))
        for path in self.files(index):
            stat = os.stat(path)
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)

    @abstractmethod
    def _select(self, positions: list[int]) -> SampleSource:
        """A source of the same kind holding only the samples at ``positions``, in that order."""

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, names: Sequence[str]) -> SampleSource:
        """The samples called ``names``, in that order; an error lists any unknown ones."""
        position_of = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in position_of]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(
                f"{len(missing)} sample name(s) not found in the dataset: {shown}{more}. "
                f"The dataset has {len(position_of)} samples (e.g. {self.names[:3]}); fix the "
                f"split list or split record so it names samples that have an image and a mask."
            )
        return self._select([position_of[name] for name in names])
