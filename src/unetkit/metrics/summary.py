"""Pixel metrics from confusion matrices, and a readable table of them.

Every pixel metric unetkit reports is computed here, from the counts of a
:class:`~unetkit.metrics.confusion.ConfusionMatrix` (rows = target, columns = prediction).
For class ``c`` with ``tp`` = matrix[c, c], ``support`` = row sum (target pixels),
``predicted`` = column sum and ``total`` = all counted pixels:

* ``iou``         = tp / (support + predicted - tp)
* ``dice``        = 2 tp / (support + predicted)          (the F1 score of the class)
* ``precision``   = tp / predicted
* ``recall``      = tp / support                          (the class's pixel accuracy, sensitivity)
* ``specificity`` = tn / (total - support), tn = total - support - predicted + tp

Headline values, each in two versions: over all classes, and with ``_no_background`` over classes
``1 .. C-1`` only (class 0 is the background by unetkit's convention):

* ``pixel_accuracy``      = correct pixels / pixels (without background: of the pixels whose
  target is a foreground class, the fraction predicted as that class)
* ``mean_pixel_accuracy`` = mean of the defined per-class ``recall``
* ``mean_iou``, ``mean_dice`` = mean of the defined per-class values
* ``fw_iou``              = frequency-weighted IoU, sum over classes of support / pixels x IoU

Binary tasks add ``foreground_iou``, ``foreground_dice``, ``foreground_precision``,
``foreground_recall`` and ``foreground_specificity`` (class 1).

Undefined values are ``None`` (JSON null), never guessed: a ratio whose denominator is 0 is
undefined. So a class absent from both target and prediction has no IoU or Dice, and it is
left out of every mean: counting it as 1 would reward, and as 0 punish, a class that was never
tested. A class absent from the target but predicted has IoU = Dice = 0 (its pixels are all
false positives) and recall ``None``. With no counted pixel at all every value is ``None``.

The same rules give per-image metrics (one confusion matrix per image) and dataset metrics (one
matrix pooled over the split): :func:`headline_arrays` computes them for any stack of matrices at
once, which also serves the bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CLASS_METRICS = ("iou", "dice", "precision", "recall", "specificity")
_BASE_HEADLINE = ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "mean_dice", "fw_iou")
HEADLINE_METRICS = _BASE_HEADLINE + tuple(f"{key}_no_background" for key in _BASE_HEADLINE)
BINARY_METRICS = tuple(f"foreground_{key}" for key in CLASS_METRICS)


def headline_keys(binary: bool) -> tuple[str, ...]:
    """The headline metric names of a task, in report order."""
    return HEADLINE_METRICS + (BINARY_METRICS if binary else ())


def class_arrays(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class metrics of a stack of confusion matrices ``(..., C, C)`` as ``(..., C)`` arrays.

    Undefined entries are NaN here (so stacks compute in one go); :func:`summarise` turns them
    into ``None``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    support = counts.sum(axis=-1)
    predicted = counts.sum(axis=-2)
    total = counts.sum(axis=(-2, -1))[..., None]
    negatives = total - support
    true_negative = negatives - predicted + tp
    return {
        "iou": divide(tp, support + predicted - tp),
        "dice": divide(2 * tp, support + predicted),
        "precision": divide(tp, predicted),
        "recall": divide(tp, support),
        "specificity": divide(true_negative, negatives),
        "support": support,
        "predicted": predicted,
    }


def headline_arrays(counts: np.ndarray, binary: bool = False) -> dict[str, np.ndarray]:
    """Headline metrics (:data:`HEADLINE_METRICS`) of a stack ``(..., C, C)``, shape ``(...)``."""
    counts = np.asarray(counts, dtype=np.float64)
    per_class = class_arrays(counts)
    support = per_class["support"]
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    result: dict[str, np.ndarray] = {}
    for suffix, classes in (("", slice(None)), ("_no_background", slice(1, None))):
        weights = support[..., classes]
        result["pixel_accuracy" + suffix] = divide(tp[..., classes].sum(-1), weights.sum(-1))
        result["mean_pixel_accuracy" + suffix] = _nanmean(per_class["recall"][..., classes])
        result["mean_iou" + suffix] = _nanmean(per_class["iou"][..., classes])
        result["mean_dice" + suffix] = _nanmean(per_class["dice"][..., classes])
        weighted = np.nan_to_num(per_class["iou"][..., classes]) * weights
        result["fw_iou" + suffix] = divide(weighted.sum(-1), weights.sum(-1))
    if binary:
        for key in CLASS_METRICS:
            result[f"foreground_{key}"] = per_class[key][..., 1]
    return result


def summarise(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:
    """A JSON-ready dict of metrics for one ``(C, C)`` confusion matrix (see the module docstring).

    ``class_names`` defaults to ``class_0 .. class_{C-1}``; ``binary`` requires ``C == 2``.
    """
    counts = as_counts(matrix)
    num_classes = counts.shape[0]
    names = class_names_or_default(class_names, num_classes)
    if binary and num_classes != 2:
        raise ValueError(
            f"a binary summary needs a 2x2 confusion matrix; got {num_classes} classes"
        )
    headline = headline_arrays(counts, binary)
    per_class = class_arrays(counts)
    summary: dict[str, Any] = {key: to_optional(value) for key, value in headline.items()}
    summary["per_class"] = [
        {
            "name": names[c],
            **{key: to_optional(per_class[key][c]) for key in CLASS_METRICS},
            "support": int(per_class["support"][c]),
            "predicted": int(per_class["predicted"][c]),
        }
        for c in range(num_classes)
    ]
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Headline metrics, then one row per class (name, IoU, Dice, precision, recall, support)."""
    headline = [
        key for key in ("pixel_accuracy", "mean_iou", "mean_dice", "fw_iou") if key in summary
    ]
    headline += [key + "_no_background" for key in headline]
    headline += [key for key in BINARY_METRICS if key in summary]
    lines = [f"{key:<32} {_cell(summary[key])}" for key in headline if key in summary]
    rows = summary.get("per_class", [])
    width = max([len("class"), *(len(str(row["name"])) for row in rows)])
    columns = ("iou", "dice", "precision", "recall")
    lines.append("")
    lines.append(
        f"{'class':<{width}}  " + "  ".join(f"{c[:6]:>6}" for c in columns) + f"  {'support':>12}"
    )
    for row in rows:
        cells = "  ".join(_cell(row[key]) for key in columns)
        lines.append(f"{row['name']:<{width}}  {cells}  {row['support']:>12,}")
    lines.append(
        "('-' = undefined: the class is absent from the ground truth and/or the prediction)"
    )
    return "\n".join(lines)


def as_counts(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """``matrix`` as a checked int64 NumPy array of shape ``(C, C)``, ``C >= 2``."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 2:
        raise ValueError(f"expected a square (C, C) confusion matrix, C >= 2; got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"a confusion matrix holds integer counts; got dtype {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("a confusion matrix holds counts >= 0; got a negative entry")
    return counts.astype(np.int64)


def class_names_or_default(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``class_names`` checked against ``num_classes``, or ``class_0 .. class_{C-1}``."""
    if class_names is None:
        return [f"class_{c}" for c in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"got {len(names)} class names {names} for a {num_classes}-class confusion matrix; "
            f"give one name per class, background first"
        )
    return names


def to_optional(value: float | np.floating) -> float | None:
    """A plain float, or ``None`` for an undefined (NaN) value."""
    value = float(value)
    return None if np.isnan(value) else value


def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where the denominator is positive, NaN (undefined) elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def _nanmean(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    count = defined.sum(-1)
    return divide(np.where(defined, values, 0.0).sum(-1), count)


def _cell(value: float | None) -> str:
    return f"{value:6.4f}" if value is not None else f"{'-':>6}"
