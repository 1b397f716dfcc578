"""Expected calibration error and the reliability diagram, from bin counts of bounded size.

A model is calibrated when, of the pixels it gives probability 0.8, 80% are right. The check bins
the pixels by that probability into ``bins`` equal-width bins on [0, 1] (a pixel with value ``q``
falls in bin ``min(floor(q * bins), bins - 1)``) and compares, per bin, the mean probability
(``confidence``) with the share of pixels for which it was right (``accuracy``):

* multi-class: top-label, ``q`` = the largest class probability, right = its class is the target;
* binary: ``q`` = the foreground probability, right = the target is foreground (the reliability
  curve of a sigmoid, as scikit-learn's ``calibration_curve`` draws it).

``ece = sum_b (n_b / n) |accuracy_b - confidence_b|`` (Guo et al., 2017), ``mce`` the largest
gap of a non-empty bin. :class:`CalibrationHistogram` keeps only ``3 x bins`` numbers per split
(pixels, summed confidence, pixels right), which add up across images, batches and processes
(all-reduce :attr:`~CalibrationHistogram.state`). Pixels whose target is 255 or whose ``valid`` is
False count nowhere. Undefined values (no pixel counted; an empty bin's means) are ``None``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unetkit.metrics.confusion import as_tensor
from unetkit.metrics.curves import ScoreHistogram

DEFAULT_BINS = 15


class CalibrationHistogram:
    """Per confidence bin: pixels, summed confidence and pixels right, over every update."""

    def __init__(self, num_classes: int, bins: int = DEFAULT_BINS, device: Any = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it is >= 2; got {num_classes}")
        if bins < 1:
            raise ValueError(f"bins must be a positive number of calibration bins; got {bins}")
        self.num_classes = num_classes
        self.bins = bins
        # rows: pixels, summed confidence, pixels right; float64 counts are exact below 2**53
        self.sums = torch.zeros((3, bins), dtype=torch.float64, device=device)

    @property
    def measure(self) -> str:
        """``foreground`` (binary) or ``top_label`` (multi-class): what ``q`` is."""
        return "foreground" if self.num_classes == 2 else "top_label"

    @classmethod
    def from_state(cls, num_classes: int, state: torch.Tensor | np.ndarray) -> CalibrationHistogram:
        """Rebuild from a ``(3, bins)`` :attr:`state`, e.g. one all-reduced across processes."""
        state = torch.as_tensor(state, dtype=torch.float64)
        if state.ndim != 2 or state.shape[0] != 3:
            raise ValueError(
                f"calibration histogram state has shape (3, bins); got {tuple(state.shape)}"
            )
        histogram = cls(num_classes, state.shape[1], device=state.device)
        histogram.sums = state.clone()
        return histogram

    @property
    def state(self) -> torch.Tensor:
        """The sums tensor itself (not a copy), for in-place all-reduce."""
        return self.sums

    def update(self, probs: Any, target: Any, valid: Any = None) -> None:
        """Count ``probs`` (C, H, W) or (N, C, H, W) against ``target`` (H, W) or (N, H, W).

        ``probs`` are :meth:`Task.probabilities` (two channels for a binary task).
        """
        probs, target, valid = _checked(probs, target, valid, self.num_classes, self.sums.device)
        if self.num_classes == 2:
            confidence, right = probs[:, 1], target == 1
        else:
            confidence, predicted = probs.max(dim=1)
            right = predicted == target
        confidence, right = confidence[valid].double(), right[valid].double()
        bin_index = (confidence * self.bins).floor_().long().clamp_(0, self.bins - 1)
        for row, values in enumerate((torch.ones_like(confidence), confidence, right)):
            self.sums[row].index_add_(0, bin_index, values)

    def merge(self, other: CalibrationHistogram) -> CalibrationHistogram:
        """Add ``other``'s sums into this histogram (in place) and return self."""
        if not isinstance(other, CalibrationHistogram) or other.sums.shape != self.sums.shape:
            raise ValueError(
                f"can only merge calibration histograms of {self.bins} bins; got {other!r}"
            )
        self.sums += other.sums.to(self.sums.device)
        return self

    def ece(self) -> float | None:
        """The expected calibration error; ``None`` when no pixel was counted."""
        pixels, confidence, right = self.sums.cpu().numpy()
        if pixels.sum() == 0:
            return None
        return float(np.abs(right - confidence).sum() / pixels.sum())

    def result(self) -> dict[str, Any]:
        """The JSON-ready summary: ``ece``, ``mce`` and the reliability table, one row per bin."""
        pixels, confidence, right = self.sums.cpu().numpy()
        filled = pixels > 0
        gaps = np.abs(right - confidence)[filled] / pixels[filled]
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        table = [
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(pixels[b]),
                "confidence": float(confidence[b] / pixels[b]) if filled[b] else None,
                "accuracy": float(right[b] / pixels[b]) if filled[b] else None,
            }
            for b in range(self.bins)
        ]
        return {
            "measure": self.measure,
            "bins": self.bins,
            "pixels": int(pixels.sum()),
            "ece": self.ece(),
            "mce": float(gaps.max()) if gaps.size else None,
            "table": table,
        }

    def __repr__(self) -> str:
        return (
            f"CalibrationHistogram(num_classes={self.num_classes}, bins={self.bins}, "
            f"pixels={int(self.sums[0].sum())})"
        )


def expected_calibration_error(
    probs: Any, target: Any, bins: int = DEFAULT_BINS, valid: Any = None
) -> float | None:
    """The ECE of one batch of probabilities ``(N, C, H, W)`` (or ``(C, H, W)``) in one call."""
    num_classes = as_tensor(probs).shape[-3]
    histogram = CalibrationHistogram(num_classes, bins)
    histogram.update(probs, target, valid)
    return histogram.ece()


def reliability_diagram(
    before: Mapping[str, Any],
    after: Mapping[str, Any] | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> bytes:
    """PNG of the reliability curves of :meth:`CalibrationHistogram.result` dicts (as stored in
    metrics.json), ``before`` and optionally ``after`` calibration, on one figure.

    Top: accuracy against confidence per non-empty bin, the diagonal being perfect calibration,
    the ECE in the legend. Bottom: the share of pixels per bin (log scale), where most pixels sit.
    """
    from matplotlib.figure import Figure  # the metrics core itself needs no plotting library

    results = [(before, labels[0], "tab:red")]
    if after is not None:
        results.append((after, labels[1], "tab:blue"))
    fig = Figure(figsize=(5.2, 6.0), dpi=100, layout="constrained")
    curve_ax, share_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    curve_ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="calibrated")
    for result, label, colour in results:
        rows = _filled_rows(result)
        ece = "–" if result.get("ece") is None else f"{result['ece']:.4f}"
        confidence = [row["confidence"] for row in rows]
        curve_ax.plot(
            confidence,
            [row["accuracy"] for row in rows],
            marker="o",
            markersize=4,
            color=colour,
            label=f"{label} (ECE {ece})",
        )
        total = max(sum(row["count"] for row in rows), 1)
        share_ax.plot(
            confidence,
            [row["count"] / total for row in rows],
            marker=".",
            color=colour,
            label=label,
        )
    foreground = before.get("measure") == "foreground"
    curve_ax.set_ylabel("share of foreground pixels" if foreground else "accuracy")
    curve_ax.set_xlim(0, 1)
    curve_ax.set_ylim(0, 1.02)
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8, loc="upper left")
    curve_ax.set_title("Reliability diagram", fontsize=10)
    share_ax.set_yscale("log")
    share_ax.set_ylabel("share of pixels")
    share_ax.set_xlabel("foreground probability" if foreground else "confidence (top-class prob.)")
    share_ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _filled_rows(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "table" not in result:
        raise ValueError(
            f"a reliability diagram needs CalibrationHistogram.result() dicts with a 'table'; "
            f"got keys {sorted(result)}"
        )
    return [row for row in result["table"] if row["count"] > 0]


def _checked(
    probs: Any, target: Any, valid: Any, num_classes: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs as (N, C, H, W) probabilities, (N, H, W) targets and the mask of the pixels that
    count, under the score histograms' rules (one copy of the shape and value checks)."""
    checker = ScoreHistogram(num_classes, bins=1, device=device)
    probs, target, valid = checker._batched(probs, target, valid)
    checker._check_values(probs, target, valid)
    return probs, target, valid
