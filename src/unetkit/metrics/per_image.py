"""Per-image reduction: a metric computed on each image, then its mean and spread over images.

Pooling pixels over a split (``dataset`` metrics) lets large images and large objects dominate;
averaging per-image values weighs every image alike, which is what a reader means by "a typical
image". Both are reported, under those two names.

Rules for undefined values, the same as for pooled metrics:

* within an image, a class absent from both its target and its prediction has no IoU or Dice
  for that image and is left out of that image's means (never counted as 1 or 0);
* an image on which a metric is undefined (e.g. ``foreground_iou`` of an image with neither
  foreground nor a prediction of it, or an image whose pixels are all ignored) is left out of that
  metric's mean; ``images`` says how many images each mean is over;
* ``std`` is the population standard deviation (``ddof = 0``) of the defined values; with no
  defined value both ``mean`` and ``std`` are ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from unetkit.metrics.summary import CLASS_METRICS, class_arrays, headline_arrays, to_optional


def as_float_array(values: np.ndarray | Sequence[float | None]) -> np.ndarray:
    """Values as float64, ``None`` as NaN (the array form of "undefined")."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def mean_defined(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when none is."""
    defined = [value for value in values if value is not None]
    return sum(defined) / len(defined) if defined else None


def spread(values: np.ndarray | Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "images"}`` of the defined (non-None, non-NaN) ``values``."""
    array = as_float_array(values)
    defined = array[~np.isnan(array)]
    if defined.size == 0:
        return {"mean": None, "std": None, "images": 0}
    return {
        "mean": float(defined.mean()),
        "std": float(defined.std()),
        "images": int(defined.size),
    }


def per_image_section(
    matrices: np.ndarray, class_names: Sequence[str], binary: bool
) -> dict[str, Any]:
    """The ``per_image`` section of ``metrics.json``, from confusion matrices ``(N, C, C)``."""
    headline = headline_arrays(matrices, binary)
    per_class = class_arrays(matrices)
    section: dict[str, Any] = {key: spread(values) for key, values in headline.items()}
    section["per_class"] = [
        {"name": name, **{key: spread(per_class[key][:, c]) for key in CLASS_METRICS}}
        for c, name in enumerate(class_names)
    ]
    return section


def per_image_rows(
    matrices: np.ndarray, class_names: Sequence[str], binary: bool
) -> list[dict[str, float | None]]:
    """One dict per image: its headline metrics, then ``iou/<class>`` and ``dice/<class>``."""
    headline = headline_arrays(matrices, binary)
    per_class = class_arrays(matrices)
    rows = []
    for i in range(len(matrices)):
        row = {key: to_optional(values[i]) for key, values in headline.items()}
        for key in ("iou", "dice"):
            for c, name in enumerate(class_names):
                row[f"{key}/{name}"] = to_optional(per_class[key][i, c])
        rows.append(row)
    return rows
