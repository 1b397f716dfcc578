"""Segmentation metrics from a confusion matrix, and a readable table of them.

Every number unetkit reports is computed here, from the pooled counts of a
:class:`~unetkit.metrics.confusion.ConfusionMatrix` (rows = ground truth, columns = prediction).
For class ``c`` with ``tp`` = matrix[c, c], ``support`` = row sum (ground-truth pixels) and
``predicted`` = column sum:

* ``iou``      = tp / (support + predicted - tp)
* ``dice``     = 2 tp / (support + predicted)   (the F1 score of the class)
* ``accuracy`` = tp / support                   (per-class recall)

Undefined values are reported as ``None`` (JSON null) and never guessed:

* a class absent from both ground truth and prediction has ``iou``, ``dice`` and ``accuracy``
  ``None``; it is left out of every mean (counting it as 1 or 0 would reward or punish a class
  that was never tested);
* a class absent from the ground truth but predicted somewhere has ``iou`` = ``dice`` = 0 (every
  such pixel is a false positive) and ``accuracy`` ``None`` (recall of nothing is undefined).

Headline values: ``pixel_accuracy`` = trace / total; ``mean_pixel_accuracy``, ``mean_iou`` and
``mean_dice`` = the unweighted mean of the defined per-class values. With no counted pixel at all
they are ``None``. Binary summaries add ``foreground_iou`` and ``foreground_dice`` (class 1),
``None`` when the foreground is neither present nor predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def summarize(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:
    """A JSON-ready dict of metrics for a ``(C, C)`` confusion matrix (see the module docstring).

    ``class_names`` defaults to ``class_0 .. class_{C-1}``; ``binary`` requires ``C == 2``.
    """
    counts = _as_counts(matrix)
    num_classes = counts.shape[0]
    names = _class_names(class_names, num_classes)
    if binary and num_classes != 2:
        raise ValueError(
            f"a binary summary needs a 2x2 confusion matrix; got {num_classes} classes"
        )
    per_class = [_class_metrics(counts, c, names[c]) for c in range(num_classes)]
    total = int(counts.sum())
    summary: dict[str, Any] = {
        "pixel_accuracy": _ratio(int(np.trace(counts)), total),
        "mean_pixel_accuracy": _mean(row["accuracy"] for row in per_class),
        "mean_iou": _mean(row["iou"] for row in per_class),
        "mean_dice": _mean(row["dice"] for row in per_class),
    }
    if binary:
        summary["foreground_iou"] = per_class[1]["iou"]
        summary["foreground_dice"] = per_class[1]["dice"]
    summary["per_class"] = per_class
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Headline metrics, then one row per class (name, IoU, Dice, accuracy, support)."""
    headline = [
        ("pixel accuracy", "pixel_accuracy"),
        ("mean pixel accuracy", "mean_pixel_accuracy"),
        ("mean IoU", "mean_iou"),
        ("mean Dice", "mean_dice"),
        ("foreground IoU", "foreground_iou"),
        ("foreground Dice", "foreground_dice"),
    ]
    lines = [f"{label:<20} {_cell(summary[key])}" for label, key in headline if key in summary]
    rows = summary.get("per_class", [])
    width = max([len("class"), *(len(str(row["name"])) for row in rows)])
    lines.append("")
    lines.append(f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'Acc':>6}  {'Support':>12}")
    for row in rows:
        cells = "  ".join(_cell(row[key]) for key in ("iou", "dice", "accuracy"))
        lines.append(f"{row['name']:<{width}}  {cells}  {row['support']:>12,}")
    lines.append(
        "('-' = undefined: the class is absent from the ground truth and/or the prediction)"
    )
    return "\n".join(lines)


def _as_counts(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
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


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{c}" for c in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"got {len(names)} class names {names} for a {num_classes}-class confusion matrix; "
            f"give one name per class, background first"
        )
    return names


def _class_metrics(counts: np.ndarray, c: int, name: str) -> dict[str, Any]:
    true_positive = int(counts[c, c])
    support = int(counts[c, :].sum())
    predicted = int(counts[:, c].sum())
    return {
        "name": name,
        "iou": _ratio(true_positive, support + predicted - true_positive),
        "dice": _ratio(2 * true_positive, support + predicted),
        "accuracy": _ratio(true_positive, support),
        "support": support,
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _mean(values: Any) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _cell(value: float | None) -> str:
    return f"{value:6.4f}" if value is not None else f"{'-':>6}"
