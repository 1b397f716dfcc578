"""How the Segmenter runs, as one value: mode, window, overlap, TTA, post-processing, execution.

An :class:`InferenceConfig` is checked when it is made, so a bad flag fails before any model
loads, and it is what ``evaluate`` records in ``metrics.json`` (``inference.config``): with the
same checkpoint and data, these settings reproduce what was scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from unetkit.inference.modes import check_mode
from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.sliding_window import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    check_overlap,
    checked_window_size,
)
from unetkit.precision import LAYOUTS, PRECISIONS

__all__ = ["DEFAULT_BATCH_SIZE", "InferenceConfig"]


@dataclass(frozen=True)
class InferenceConfig:
    """The Segmenter's keyword options; ``window_size`` None is the model's input size."""

    mode: str = "auto"
    window_size: tuple[int, int] | None = None
    overlap: float = DEFAULT_OVERLAP
    tta: bool = False
    postprocess: PostProcessing | None = None
    precision: str = "fp32"
    channels_last: bool | str = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.window_size is not None:
            object.__setattr__(self, "window_size", checked_window_size(self.window_size))
        object.__setattr__(self, "overlap", check_overlap(self.overlap))
        if not isinstance(self.tta, bool):
            raise ValueError(f"tta is True or False; got {self.tta!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision is one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.channels_last not in LAYOUTS:
            raise ValueError(f"channels_last is True, False or 'auto'; got {self.channels_last!r}")

    def segmenter_options(self) -> dict[str, Any]:
        """The keyword options of :class:`~unetkit.inference.segmenter.Segmenter`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: the window as ``[h, w]``, post-processing as its fields or None."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.window_size is not None:
            record["window_size"] = list(self.window_size)
        if self.postprocess is not None:
            record["postprocess"] = dataclasses.asdict(self.postprocess)
        return record
