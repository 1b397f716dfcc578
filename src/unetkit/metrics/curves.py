"""Threshold-free metrics (ROC AUC, average precision) from probability histograms of bounded size.

For every class ``c`` a :class:`ScoreHistogram` counts the probability ``p = probs[c]`` of the
counted pixels in bin ``min(floor(p * bins), bins - 1)``, separately for pixels whose target
is ``c`` (positives) and for all others (negatives): ``C x 2 x bins`` integers however large the
split, which add up across images, batches and processes (all-reduce :attr:`~ScoreHistogram.state`).

Operating points predict ``c`` where ``p`` reaches a bin's lower edge, one per non-empty bin, top
bin first; scores in one bin tie. Numbers are thus exact for scores constant within each bin, and
otherwise off only through pixels sharing a bin (``roc_auc`` by at most half the fraction of
positive/negative pairs that share one). The definitions are scikit-learn's:

* ``roc_auc``: trapezoidal area under (false positive rate, true positive rate), a tie counting
  one half (``roc_auc_score``);
* ``average_precision``: ``sum_n (R_n - R_{n-1}) P_n`` over the operating points, ``R_0 = 0``,
  step-wise, not interpolated (``average_precision_score``).

Undefined values are ``None``, never NaN: ``roc_auc`` and the ROC curve when the class has no
positive or no negative pixel, ``average_precision`` and the PR curve when it has no positive pixel.
:meth:`ScoreHistogram.summary` reports, for a binary task, the values of class 1 (the foreground);
for a multi-class task, the means over classes ``1 .. C-1`` of their defined values (background
left out as in every ``*_no_background`` headline; ``None`` when no class has a defined value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unetkit.metrics.confusion import as_tensor
from unetkit.metrics.per_image import mean_defined
from unetkit.tasks import IGNORE_INDEX, check_class_ids

Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


class ScoreHistogram:
    """Per class, histograms of predicted probability over positive and over negative pixels."""

    def __init__(self, num_classes: int, bins: int = 1000, device: Any = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it is >= 2; got {num_classes}")
        if bins < 1:
            raise ValueError(f"bins must be a positive number of histogram bins; got {bins}")
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros((num_classes, 2, bins), dtype=torch.int64, device=device)

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray) -> ScoreHistogram:
        """Rebuild from a ``(C, 2, bins)`` count tensor, e.g. one all-reduced across processes."""
        counts = torch.as_tensor(counts)
        if counts.ndim != 3 or counts.shape[1] != 2:
            raise ValueError(
                f"score histogram counts have shape (classes, 2, bins); got {tuple(counts.shape)}"
            )
        if counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise ValueError(f"score histograms hold integer counts; got dtype {counts.dtype}")
        histogram = cls(counts.shape[0], counts.shape[2], device=counts.device)
        histogram.counts = counts.to(torch.int64).clone()
        return histogram

    @property
    def state(self) -> torch.Tensor:
        """The count tensor itself (not a copy), for in-place all-reduce."""
        return self.counts

    def update(self, probs: Any, target: Any, valid: Any = None) -> None:
        """Count ``probs`` (C, H, W) or (N, C, H, W) against ``target`` (H, W) or (N, H, W).

        Pixels whose target is 255 or whose optional boolean ``valid`` is False are not counted.
        """
        probs, target, valid = self._batched(probs, target, valid)
        self._check_values(probs, target, valid)
        bin_index = (probs.double() * self.bins).floor_().long().clamp_(max=self.bins - 1)
        classes = torch.arange(self.num_classes, device=self.counts.device).view(1, -1, 1, 1)
        is_positive = target[:, None] == classes
        index = (classes * 2 + is_positive) * self.bins + bin_index
        dropped = self.counts.numel()  # one bin past the end, for the pixels that do not count
        index = torch.where(valid[:, None], index, dropped)
        counts = torch.bincount(index.flatten(), minlength=dropped + 1)[:dropped]
        self.counts += counts.view_as(self.counts)

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add ``other``'s counts into this histogram (in place) and return self."""
        if not isinstance(other, ScoreHistogram) or other.counts.shape != self.counts.shape:
            raise ValueError(
                f"can only merge score histograms of {self.num_classes} classes and {self.bins} "
                f"bins; got {other!r}"
            )
        self.counts += other.counts.to(self.counts.device)
        return self

    def roc_curve(self, c: int) -> Curve | None:
        """False positive rates, true positive rates and thresholds, thresholds descending.

        The first point (0, 0) has threshold ``inf`` (nothing predicted), as in scikit-learn.
        """
        true_pos, false_pos, thresholds = self._operating_points(c)
        if true_pos[-1] == 0 or false_pos[-1] == 0:
            return None
        fpr = np.concatenate([[0.0], false_pos / false_pos[-1]])
        tpr = np.concatenate([[0.0], true_pos / true_pos[-1]])
        return fpr, tpr, np.concatenate([[np.inf], thresholds])

    def pr_curve(self, c: int) -> Curve | None:
        """Precisions, recalls and thresholds, thresholds descending (so recall ascending)."""
        true_pos, false_pos, thresholds = self._operating_points(c)
        if true_pos[-1] == 0:
            return None
        return true_pos / (true_pos + false_pos), true_pos / true_pos[-1], thresholds

    def roc_auc(self, c: int) -> float | None:
        curve = self.roc_curve(c)
        if curve is None:
            return None
        fpr, tpr, _ = curve
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

    def average_precision(self, c: int) -> float | None:
        curve = self.pr_curve(c)
        if curve is None:
            return None
        precision, recall, _ = curve
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))

    def curve_points(self, c: int, max_points: int = 200) -> dict[str, list[float]] | None:
        """Both curves thinned to at most ``max_points`` points each, for plotting.

        ``None`` unless both are defined (the class has positive and negative pixels).
        """
        if max_points < 2:
            raise ValueError(f"a curve needs max_points >= 2 (its two ends); got {max_points}")
        roc, pr = self.roc_curve(c), self.pr_curve(c)
        if roc is None or pr is None:
            return None
        keep_roc, keep_pr = _thinned(len(roc[0]), max_points), _thinned(len(pr[0]), max_points)
        return {
            "fpr": roc[0][keep_roc].tolist(),
            "tpr": roc[1][keep_roc].tolist(),
            "precision": pr[0][keep_pr].tolist(),
            "recall": pr[1][keep_pr].tolist(),
        }

    def summary(self, class_names: Sequence[str], binary: bool) -> dict[str, Any]:
        """The ``threshold_free`` section of metrics.json (see the module docstring)."""
        names = [str(name) for name in class_names]
        if len(names) != self.num_classes:
            raise ValueError(
                f"got {len(names)} class names {names} for a {self.num_classes}-class histogram; "
                f"give one name per class, background first"
            )
        if binary and self.num_classes != 2:
            raise ValueError(f"a binary summary needs 2 classes; got {self.num_classes}")
        negatives, positives = self.counts.sum(dim=2).cpu().T.tolist()
        rows = [
            {
                "name": name,
                "roc_auc": self.roc_auc(c),
                "average_precision": self.average_precision(c),
                "positives": positives[c],
                "negatives": negatives[c],
            }
            for c, name in enumerate(names)
        ]
        summary: dict[str, Any] = {"bins": self.bins}
        for key in ("roc_auc", "average_precision"):
            if binary:
                summary[key] = rows[1][key]
            else:
                summary[f"mean_{key}"] = mean_defined(row[key] for row in rows[1:])
        summary["per_class"] = rows
        return summary

    def __repr__(self) -> str:
        pixels = int(self.counts[0].sum())
        return f"ScoreHistogram(num_classes={self.num_classes}, bins={self.bins}, pixels={pixels})"

    def _operating_points(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative true and false positives per non-empty bin, top bin first."""
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class index {c} is outside 0..{self.num_classes - 1}")
        negatives, positives = self.counts[c].cpu().numpy()[:, ::-1]
        non_empty = (negatives + positives) > 0
        if not non_empty.any():
            return np.zeros(1), np.zeros(1), np.zeros(1)
        lower_edges = np.arange(self.bins - 1, -1, -1) / self.bins
        true_pos = np.cumsum(positives)[non_empty].astype(np.float64)
        false_pos = np.cumsum(negatives)[non_empty].astype(np.float64)
        return true_pos, false_pos, lower_edges[non_empty]

    def _batched(
        self, probs: Any, target: Any, valid: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs as (N, C, H, W) probabilities, (N, H, W) targets and ``valid``, the mask of
        the pixels that count (``valid`` and not ignored)."""
        device = self.counts.device
        probs = as_tensor(probs, device=device)
        target = as_tensor(target, device=device)
        valid = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        valid = as_tensor(valid, device=device).bool()
        given = ", ".join(str(tuple(tensor.shape)) for tensor in (probs, target, valid))
        if probs.ndim == 3:
            probs, target, valid = probs[None], target[None], valid[None]
        if (
            probs.ndim != 4
            or probs.shape[1] != self.num_classes
            or not (target.shape == valid.shape == (probs.shape[0], *probs.shape[2:]))
        ):
            raise ValueError(
                f"score histogram update: expected probabilities (C, H, W) or (N, C, H, W) with "
                f"C = {self.num_classes}, and target and valid (H, W) or (N, H, W) of the same "
                f"images; got {given}"
            )
        return probs, target, (target != IGNORE_INDEX) & valid

    def _check_values(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        outside = ~((probs >= 0) & (probs <= 1)) & valid[:, None]
        if bool(outside.any()):
            raise ValueError(
                f"score histogram update: probabilities must lie in [0, 1]; got values such as "
                f"{probs[outside][:5].tolist()}; pass softmax/sigmoid outputs, not logits"
            )
        check_class_ids(target, self.num_classes, "score histogram update: the target", valid)


def _thinned(length: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices spread evenly over ``0 .. length - 1``, both ends kept."""
    return np.unique(np.linspace(0, length - 1, min(length, max_points)).round().astype(int))
