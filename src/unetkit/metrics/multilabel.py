"""Metrics of a multi-label task: each label is a binary problem, scored by the binary core.

A multi-label mask is ``(L, H, W)`` of 0/1 per label (255 = that label's pixel is not counted),
and labels may overlap, so no single confusion matrix describes it. Label ``l`` is scored as the
binary task "``l`` against the rest" by the very code that scores a binary task
(:class:`~unetkit.metrics.confusion.ConfusionMatrix`, :func:`~unetkit.metrics.summary.summarise`,
:class:`~unetkit.metrics.split.SplitMetrics`); this module only feeds each label in and gathers
the answers:

* ``per_class`` rows (one per *label*, named after it) in every section, with the label's
  foreground values: IoU, Dice, precision, recall, specificity; AUC and AP; AP and PQ of its
  connected components; HD95, ASSD, boundary IoU and clDice;
* ``mean_<metric>``: the mean over the labels where the metric is defined (an undefined label is
  left out, never counted as 0 or 1), pooled (``dataset``) and per image (``per_image``: each
  image's mean over its defined labels, then mean and spread over images);
* ``per_label``: every label's full binary sections, as a binary task's ``metrics.json`` has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unetkit.config import EvalConfig
from unetkit.metrics.bootstrap import bootstrap_intervals
from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.per_image import as_float_array, mean_defined, spread
from unetkit.metrics.split import BOUNDARY_METRICS, SplitMetrics
from unetkit.metrics.summary import CLASS_METRICS, summarise
from unetkit.tasks import Task

RANKING_KEY = "mean_iou"
"""The per-image value that ranks a multi-label task's images (mean IoU over labels)."""

_IMAGE_METRICS = ("iou", "dice")  # per-image columns of each label, as for classes
_POOLED = {  # section: (the label's row in a binary per_class, settings, score -> mean's name)
    "threshold_free": (
        1,
        ("bins",),
        {"roc_auc": "mean_roc_auc", "average_precision": "mean_average_precision"},
    ),
    "instance": (
        0,
        ("min_area", "connectivity", "ground_truth"),
        {"ap": "map", "ap_50": "map_50", "ap_75": "map_75", "pq": "pq", "sq": "sq", "rq": "rq"},
    ),
}


def binary_names(label: str) -> list[str]:
    """The two class names of label ``label`` scored as a binary task."""
    return [f"no_{label}", str(label)]


class LabelConfusion:
    """One 2 x 2 :class:`ConfusionMatrix` per label, stored in one ``(L, 2, 2)`` tensor.

    :attr:`state` is that tensor (each label's matrix is a view of it), so several processes can
    all-reduce it in place as they do a single confusion matrix.
    """

    def __init__(self, num_labels: int, device: torch.device | str | None = None) -> None:
        self.state = torch.zeros((num_labels, 2, 2), dtype=torch.int64, device=device)
        self.labels = []
        for index in range(num_labels):
            confusion = ConfusionMatrix(2, device=device)
            confusion.matrix = self.state[index]  # a view: counting fills the stack
            self.labels.append(confusion)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count 0/1 predictions ``(N, L, H, W)`` against targets of the same shape."""
        if prediction.ndim != 4 or prediction.shape[1] != len(self.labels):
            raise ValueError(
                f"multi-label confusion: expected (N, {len(self.labels)}, H, W) label maps; got "
                f"shape {tuple(prediction.shape)}"
            )
        for index, confusion in enumerate(self.labels):
            confusion.update(prediction[:, index], target[:, index])


def summarise_labels(matrices: torch.Tensor | np.ndarray, label_names: Sequence[str]) -> dict:
    """The ``dataset`` section of a multi-label task from its ``(L, 2, 2)`` matrices.

    Each ``per_class`` row is the label's foreground row of :func:`summarise` (named after the
    label); ``mean_<metric>`` averages the labels where it is defined.
    """
    counts = matrices.detach().cpu().numpy() if isinstance(matrices, torch.Tensor) else matrices
    names = [str(name) for name in label_names]
    if len(names) != len(counts):
        raise ValueError(f"got {len(names)} label names {names} for {len(counts)} label matrices")
    rows = [
        {**summarise(matrix, binary_names(name), binary=True)["per_class"][1], "name": name}
        for name, matrix in zip(names, counts, strict=True)
    ]
    summary: dict[str, Any] = {
        f"mean_{key}": mean_defined(r[key] for r in rows) for key in CLASS_METRICS
    }
    summary["per_class"] = rows
    return summary


class MultilabelMetrics:
    """Feed it ``(name, probabilities, prediction, target)`` per image, each ``(L, H, W)``;
    read :meth:`result`, :meth:`rows` and :meth:`curves` as of a :class:`SplitMetrics`."""

    def __init__(self, label_names: Sequence[str], options: EvalConfig | None = None) -> None:
        self.label_names = [str(name) for name in label_names]
        self.options = options or EvalConfig()
        self.labels = [
            SplitMetrics(binary_names(name), binary=True, options=self.options)
            for name in self.label_names
        ]

    def add(
        self,
        name: str,
        probs: np.ndarray,
        prediction: np.ndarray,
        target: np.ndarray,
        target_instances: np.ndarray | None = None,
    ) -> None:
        """One image: label probabilities, predicted and true 0/1 maps, all ``(L, H, W)``."""
        expected = (len(self.label_names), *np.shape(target)[1:])
        for what, array in (("probabilities", probs), ("prediction", prediction)):
            if (
                np.ndim(target) != 3
                or np.shape(array) != np.shape(target)
                or len(target) != expected[0]
            ):
                raise ValueError(
                    f"{name}: the {what} of shape {np.shape(array)} and the target of shape "
                    f"{np.shape(target)} must both be (labels, H, W) = {expected} "
                    f"for labels {self.label_names}"
                )
        for index, label in enumerate(self.labels):
            p = np.asarray(probs[index], dtype=np.float32)
            label.add(name, np.stack([1.0 - p, p]), prediction[index], target[index])

    @property
    def matrices(self) -> np.ndarray:
        """Per-image confusion matrices of every label, ``(N, L, 2, 2)`` (what
        :func:`~unetkit.metrics.bootstrap.paired_difference` resamples)."""
        return np.stack([label.matrices for label in self.labels], axis=1)

    def result(self) -> dict[str, Any]:
        """The metric sections of ``metrics.json`` (see the module docstring)."""
        results = [label.result() for label in self.labels]
        matrices = np.stack([np.asarray(r["dataset"]["confusion_matrix"]) for r in results])
        sections: dict[str, Any] = {
            "dataset": summarise_labels(matrices, self.label_names),
            "per_image": self._per_image_section(results),
        }
        if self.options.threshold_free:
            sections["threshold_free"] = self._gathered(results, "threshold_free")
        if self.options.instances:
            sections["instance"] = self._gathered(results, "instance")
        if self.options.boundary:
            sections["boundary"] = self._boundary_section(results)
        if self.options.ci:
            sections["confidence_intervals"] = self._intervals()
        sections["per_label"] = [
            {"name": name, **result} for name, result in zip(self.label_names, results, strict=True)
        ]
        return sections

    def rows(self) -> list[dict[str, Any]]:
        """One row per image for ``per_image.csv``: name, size, the means over labels, then
        ``iou/<label>``, ``dice/<label>`` and each boundary metric per label."""
        per_label = [label.rows() for label in self.labels]
        rows = []
        for i, first in enumerate(per_label[0]):
            row: dict[str, Any] = {key: first[key] for key in ("name", "height", "width")}
            image = [label_rows[i] for label_rows in per_label]
            row["mean_iou"] = mean_defined(r["foreground_iou"] for r in image)
            row["mean_dice"] = mean_defined(r["foreground_dice"] for r in image)
            for metric in self._boundary_metrics(first):
                row[metric] = mean_defined(r[metric] for r in image)
            for name, r in zip(self.label_names, image, strict=True):
                row.update({f"{m}/{name}": r[f"foreground_{m}"] for m in _IMAGE_METRICS})
                row.update({f"{m}/{name}": r[m] for m in self._boundary_metrics(first)})
                if "pq" in r:
                    row[f"pq/{name}"] = r["pq"]
            rows.append(row)
        return rows

    def ranking_key(self) -> str:
        return RANKING_KEY

    def _intervals(self) -> dict[str, Any]:
        """Bootstrap intervals of the means over labels, pooled and per image (images, not
        labels, are resampled: an image's labels stay together)."""
        keys = [f"mean_{metric}" for metric in _IMAGE_METRICS]
        rows = self.rows()
        values = {key: as_float_array([row[key] for row in rows]) for key in keys}
        return bootstrap_intervals(
            self.matrices,
            False,
            keys,
            values,
            resamples=self.options.ci_resamples,
            level=self.options.ci_level,
        )

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """ROC and PR curve points per label, for plotting."""
        curves: dict[str, dict[str, list[float]]] = {}
        for label in self.labels:
            curves.update(label.curves())
        return {name: curves[name] for name in self.label_names if name in curves}

    def _per_image_section(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        rows = self.rows()
        section: dict[str, Any] = {
            f"mean_{m}": spread([row[f"mean_{m}"] for row in rows]) for m in _IMAGE_METRICS
        }
        section["per_class"] = [
            {**result["per_image"]["per_class"][1], "name": name}
            for name, result in zip(self.label_names, results, strict=True)
        ]
        return section

    def _gathered(self, results: list[dict[str, Any]], section: str) -> dict[str, Any]:
        """A pooled section of every label: the label's ``per_class`` row renamed to the label,
        the section's settings, and each score's mean over the labels (``_POOLED`` names them)."""
        row, settings, scores = _POOLED[section]
        rows = [
            {**result[section]["per_class"][row], "name": name}
            for name, result in zip(self.label_names, results, strict=True)
        ]
        gathered = {key: results[0][section][key] for key in settings}
        for key, mean_key in scores.items():
            gathered[mean_key] = mean_defined(r[key] for r in rows)
        return {**gathered, "per_class": rows}

    def _boundary_section(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        rows = self.rows()
        metrics = self._boundary_metrics(rows[0]) if rows else ()
        section: dict[str, Any] = {"boundary_width": results[0]["boundary"]["boundary_width"]}
        section.update({metric: spread([row[metric] for row in rows]) for metric in metrics})
        section["per_class"] = [
            {**result["boundary"]["per_class"][0], "name": name}
            for name, result in zip(self.label_names, results, strict=True)
        ]
        return section

    def _boundary_metrics(self, row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(metric for metric in BOUNDARY_METRICS if metric in row)


def split_metrics(
    task: Task, class_names: Sequence[str], options: EvalConfig
) -> SplitMetrics | MultilabelMetrics:
    """The accumulator of ``task``'s metrics over a split: label by label for a multi-label
    task (what ``evaluate`` and each ensemble member use)."""
    if task.multilabel:
        return MultilabelMetrics(class_names, options)
    return SplitMetrics(list(class_names), task.is_binary, options)
