"""The report's charts, drawn with matplotlib and returned as PNG bytes ready to inline.

Each function builds its own :class:`~matplotlib.figure.Figure` (no pyplot, so no global state and
no display needed) and returns the encoded PNG. Undefined values (``None``) are never drawn as 0:
an undefined IoU gets no bar and the word "undefined", a confusion-matrix row without ground-truth
pixels stays grey, and a missing history value leaves a gap in its curve.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from unetkit.evaluation.calibration import after_label
from unetkit.metrics.calibration import reliability_diagram
from unetkit.metrics.uncertainty import risk_coverage_plot
from unetkit.palette import class_palette

__all__ = [
    "class_iou_chart",
    "confusion_heatmap",
    "reliability_before_after",
    "risk_coverage",
    "roc_pr_curves",
    "row_shares",
    "training_curves",
]

_DPI = 100
_ANNOTATE_UP_TO = 12  # classes; beyond that the confusion cells are too small for numbers


def class_iou_chart(
    class_names: Sequence[str],
    dataset_iou: Sequence[float | None],
    image_mean: Sequence[float | None] | None = None,
    image_std: Sequence[float | None] | None = None,
) -> bytes:
    """Horizontal bars of each class's pooled IoU, with the per-image mean ± std when given."""
    _check_lengths(class_names, dataset_iou=dataset_iou, image_mean=image_mean, image_std=image_std)
    count = len(class_names)
    fig = Figure(figsize=(6.4, 0.42 * count + 1.4), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    rows = np.arange(count)
    colours = class_palette(count) / 255
    value_column = ax.get_yaxis_transform()  # x in axes fractions, y in rows
    for row, value in zip(rows, dataset_iou, strict=True):
        label = "–" if value is None else f"{value:.3f}"
        ax.text(1.02, row, label, transform=value_column, va="center", fontsize=9)
        if value is None:
            ax.text(0.01, row, "undefined", va="center", color="0.4", fontstyle="italic")
        else:
            ax.barh(row, value, height=0.6, color=colours[row], alpha=0.85, edgecolor="0.2")
    if image_mean is not None:
        _draw_image_spread(ax, rows, image_mean, image_std)
    ax.set_yticks(rows, [_plain(name) for name in class_names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.grid(axis="x", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    pooled = Patch(facecolor="0.6", edgecolor="0.2", label="pooled over the split")
    ax.legend(
        handles=[pooled, *handles],
        loc="lower left",
        bbox_to_anchor=(0, 1.01),
        ncols=2,
        frameon=False,
        fontsize=9,
    )
    return _png(fig)


def confusion_heatmap(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix: each target row shows where its pixels were predicted."""
    counts = np.asarray(matrix, dtype=np.float64)
    count = len(class_names)
    if counts.shape != (count, count):
        raise ValueError(
            f"the confusion matrix is {counts.shape} but there are {count} class names; "
            "pass the (C, C) matrix of the same metrics.json"
        )
    shares = row_shares(counts)
    side = min(max(3.6, 0.55 * count + 2.2), 12.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = _colormap("Blues")
    image = ax.imshow(shares, cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the ground-truth row")
    if count <= _ANNOTATE_UP_TO:
        _annotate_cells(ax, shares)
    ticks = np.arange(count)
    labels = [_plain(name) for name in class_names]
    crowded = count > 3 or max(map(len, labels), default=0) > 10
    ax.set_xticks(ticks, labels, rotation=40 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    return _png(fig)


def row_shares(matrix: Sequence[Sequence[int]] | np.ndarray) -> np.ma.MaskedArray:
    """Each row of a confusion matrix divided by its sum; a row with no pixel stays masked."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.where(totals > 0, totals, 1.0)
    return np.ma.masked_array(shares, mask=np.broadcast_to(totals == 0, counts.shape))


def roc_pr_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    summaries: Mapping[str, Mapping[str, Any]] | None = None,
    class_names: Sequence[str] | None = None,
) -> bytes:
    """ROC and precision-recall curves side by side, one line per class.

    ``curves`` maps a class name to its ``fpr``, ``tpr``, ``precision`` and ``recall`` points;
    ``summaries`` (the ``threshold_free.per_class`` entries by name) supplies the AUC and AP shown
    in the legends and, from ``positives``/``negatives``, the chance level of the PR plot;
    ``class_names`` (all classes, in order) gives each line its class's mask colour.
    """
    summaries = summaries or {}
    colours = _curve_colours(list(curves), class_names)
    fig = Figure(figsize=(10, 4.2), dpi=_DPI, layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for (name, points), colour in zip(curves.items(), colours, strict=True):
        _check_curve(name, points)
        summary = summaries.get(name, {})
        auc = _format(summary.get("roc_auc"))
        ap = _format(summary.get("average_precision"))
        roc_ax.plot(points["fpr"], points["tpr"], color=colour, label=f"{_plain(name)} (AUC {auc})")
        pr_ax.plot(
            points["recall"], points["precision"], color=colour, label=f"{_plain(name)} (AP {ap})"
        )
        prevalence = _prevalence(summary)
        if prevalence is not None:
            pr_ax.axhline(prevalence, linestyle="--", color=colour, alpha=0.5, linewidth=1)
    _style_axes(roc_ax, "false positive rate", "true positive rate", "ROC")
    _style_axes(pr_ax, "recall", "precision", "Precision-recall (dashed: chance)")
    return _png(fig)


# The validation metrics drawn as training curves (here and in the run's plots/metrics.png);
# history.csv and TensorBoard keep every one.
TRAINING_METRICS = (
    "val_mean_iou",
    "val_mean_dice",
    "val_pixel_accuracy",
    "val_foreground_iou",
    "val_foreground_dice",
)


def reliability_before_after(calibration: Mapping[str, Any]) -> bytes:
    """The reliability diagram of metrics.json's ``calibration`` section: at ``T = 1`` and at the
    stored calibration (one curve when the two are the same: ``T = 1``, no bias)."""
    if calibration["temperature"] == 1.0 and not calibration.get("bias"):
        return reliability_diagram(calibration["after"], labels=("T = 1", ""))
    labels = ("before (T = 1)", f"after ({after_label(calibration)})")
    return reliability_diagram(calibration["before"], calibration["after"], labels)


def risk_coverage(uncertainty: Mapping[str, Any]) -> bytes | None:
    """The risk-coverage curve of metrics.json's ``uncertainty`` section; ``None`` without any
    error to remove (a perfect split)."""
    result = uncertainty["risk_coverage"]
    if result["errors_removed"] is None:
        return None
    label = uncertainty.get("measure", "predictive_entropy").replace("_", " ")
    return risk_coverage_plot(result, label)


def training_curves(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Losses (left) and validation metrics (right) per epoch, from the rows of ``history.csv``."""
    if not history:
        raise ValueError("the training history is empty: there is no epoch to plot")
    epochs = [_number(row.get("epoch")) for row in history]
    columns = list(dict.fromkeys(key for row in history for key in row))
    metric_keys = [key for key in TRAINING_METRICS if key in columns]
    fig = Figure(figsize=(10, 3.8), dpi=_DPI, layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        if key in columns:
            loss_ax.plot(epochs, _series(history, key), marker="o", markersize=3, label=key)
    for key in metric_keys:
        metric_ax.plot(epochs, _series(history, key), marker="o", markersize=3, label=key)
    _style_axes(loss_ax, "epoch", "loss", "Loss", unit_square=False)
    _style_axes(metric_ax, "epoch", "validation metric", "Validation metrics", unit_square=False)
    if _all_within_unit_interval(history, metric_keys):
        metric_ax.set_ylim(0, 1)
    return _png(fig)


def _draw_image_spread(
    ax: Axes,
    rows: np.ndarray,
    image_mean: Sequence[float | None],
    image_std: Sequence[float | None] | None,
) -> None:
    stds = image_std if image_std is not None else [None] * len(rows)
    shown = [(row, mean, std) for row, mean, std in zip(rows, image_mean, stds, strict=True)]
    defined = [(row, mean, std or 0.0) for row, mean, std in shown if mean is not None]
    if not defined:
        return
    ys, means, errors = zip(*defined, strict=True)
    ax.errorbar(
        means,
        ys,
        xerr=errors,
        fmt="D",
        color="0.1",
        markerfacecolor="white",
        markersize=6,
        capsize=3,
        label="per-image mean ± std",
    )


def _annotate_cells(ax: Axes, shares: np.ma.MaskedArray) -> None:
    fontsize = 11 if len(shares) <= 4 else 8
    for (row, column), share in np.ndenumerate(shares.filled(np.nan)):
        undefined = math.isnan(share)
        text = "–" if undefined else f"{share:.2f}"
        colour = "white" if not undefined and share > 0.6 else "0.15"
        ax.text(column, row, text, ha="center", va="center", fontsize=fontsize, color=colour)


def _style_axes(ax: Axes, xlabel: str, ylabel: str, title: str, unit_square: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if unit_square:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _colormap(name: str) -> Any:
    return colormaps[name].with_extremes(bad="0.85")


def _curve_colours(names: list[str], class_names: Sequence[str] | None) -> list[np.ndarray]:
    """Each class's mask colour; without the class list, the foreground colours in order."""
    known = list(class_names or [])
    if all(name in known for name in names):
        palette = class_palette(len(known)) / 255
        return [palette[known.index(name)] for name in names]
    return list(class_palette(len(names) + 1)[1:] / 255)


def _prevalence(summary: Mapping[str, Any]) -> float | None:
    positives, negatives = summary.get("positives"), summary.get("negatives")
    if not positives or negatives is None:
        return None
    return positives / (positives + negatives)


def _check_curve(name: str, points: Mapping[str, Sequence[float]]) -> None:
    for x_key, y_key in (("fpr", "tpr"), ("recall", "precision")):
        if x_key not in points or y_key not in points:
            raise ValueError(
                f"curve {name!r} has keys {sorted(points)}; it needs 'fpr', 'tpr', 'precision' "
                "and 'recall' point lists"
            )
        if len(points[x_key]) != len(points[y_key]):
            raise ValueError(
                f"curve {name!r}: {len(points[x_key])} {x_key} points but "
                f"{len(points[y_key])} {y_key} points; they must pair up"
            )


def _check_lengths(class_names: Sequence[str], **columns: Sequence[Any] | None) -> None:
    for label, values in columns.items():
        if values is not None and len(values) != len(class_names):
            raise ValueError(
                f"{label} has {len(values)} values for {len(class_names)} classes; "
                "pass one value (or None) per class"
            )


def _all_within_unit_interval(history: Sequence[Mapping[str, Any]], keys: list[str]) -> bool:
    values = [value for key in keys for value in _series(history, key) if not math.isnan(value)]
    return bool(values) and all(0.0 <= value <= 1.0 for value in values)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [_number(row.get(key)) for row in history]


def _number(value: Any) -> float:
    """A plottable float; None or an empty CSV cell becomes NaN (a gap in the curve)."""
    return float("nan") if value is None or value == "" else float(value)


def _format(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _plain(text: str) -> str:
    """``text`` with ``$`` escaped, so a class name is never typeset as mathtext."""
    return str(text).replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()
