"""How the Segmenter runs, as one value: mode, window, overlap, TTA, post-processing, execution.

An :class:`InferenceConfig` is checked when it is made, so a bad flag fails before any model
loads. It is recorded wherever a score or a model is kept: ``evaluate`` writes it in
``metrics.json`` (``inference.config``), training writes the one its final test runs with into
every checkpoint (key :data:`RECORD_KEY`), and ``unetkit export`` copies it into the exported
file's metadata. A Segmenter loaded from a checkpoint or an export starts from that record
(:func:`recorded_options`), so with the same data it reproduces what was scored; options passed
explicitly override it. Files written before the record existed run with the defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
from unetkit.inference.tta import FLIPS, Flips, checked_flips
from unetkit.precision import LAYOUTS, PRECISIONS

__all__ = ["DEFAULT_BATCH_SIZE", "RECORD_KEY", "InferenceConfig", "recorded_options"]

RECORD_KEY = "inference"  # where a checkpoint or an export's metadata keeps the config


@dataclass(frozen=True)
class InferenceConfig:
    """The Segmenter's keyword options; ``window_size`` None is the model's input size."""

    mode: str = "auto"
    window_size: tuple[int, int] | None = None
    overlap: float = DEFAULT_OVERLAP
    tta: bool = False
    tta_flips: Flips = FLIPS  # the views TTA averages; a record without them meant all four
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
        object.__setattr__(self, "tta_flips", checked_flips(self.tta_flips))
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
        record["tta_flips"] = [list(view) for view in self.tta_flips]
        if self.postprocess is not None:
            record["postprocess"] = dataclasses.asdict(self.postprocess)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str = "the record") -> InferenceConfig:
        """The config of a :meth:`to_dict` record, checked. A record naming the window
        ``tile_size`` (the Segmenter's keyword before ``window_size``) reads too."""
        fields = dict(record)
        if "window_size" not in fields and "tile_size" in fields:
            fields["window_size"] = fields.pop("tile_size")
        try:
            if isinstance(fields.get("postprocess"), Mapping):
                fields["postprocess"] = PostProcessing(**fields["postprocess"])
            return cls(**fields)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where} records an inference config unetkit cannot read ({error}); got "
                f"{dict(record)!r}. Pass the inference options explicitly, or write the file "
                f"again with this unetkit (train, or export the checkpoint)"
            ) from error


def recorded_inference(record: Mapping[str, Any], where: str) -> InferenceConfig:
    """The config a checkpoint or an export's metadata records under :data:`RECORD_KEY`; the
    defaults for a file written before it was recorded."""
    stored = record.get(RECORD_KEY)
    return InferenceConfig() if stored is None else InferenceConfig.from_dict(stored, where)


def recorded_options(record: Mapping[str, Any], where: str, **options: Any) -> dict[str, Any]:
    """The Segmenter's keyword options: the recorded config, with ``options`` over it."""
    config = dataclasses.replace(recorded_inference(record, where), **options)
    return config.segmenter_options()
