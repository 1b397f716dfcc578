"""Every metric of a split, accumulated one image at a time in bounded memory.

:class:`SplitMetrics` is the one entry point that evaluation (and through it the report and the
end of training) calls; it feeds each image to the metric families of this package and assembles
the sections of ``metrics.json``:

* ``dataset``: pixel metrics from the confusion matrix pooled over the split;
* ``per_image``: the same metrics per image, then mean and standard deviation over images;
* ``threshold_free``: ROC AUC and average precision from binned probability histograms;
* ``instance``: COCO-style mAP and panoptic quality of connected components;
* ``boundary``: HD95, ASSD, boundary IoU and clDice per class, per image, then over images;
* ``confidence_intervals``: bootstrap over images (when asked for).

What is kept per image is small and fixed (a ``C x C`` matrix, a few numbers per class), so memory
grows with the number of images, not their pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unetkit.config import EvalConfig
from unetkit.metrics.bootstrap import bootstrap_intervals
from unetkit.metrics.boundary import boundary_metrics
from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.curves import ScoreHistogram
from unetkit.metrics.instances import InstanceAccumulator
from unetkit.metrics.per_image import (
    as_float_array,
    mean_defined,
    per_image_rows,
    per_image_section,
    spread,
)
from unetkit.metrics.summary import headline_arrays, headline_keys, summarise

BOUNDARY_METRICS = ("hd95", "assd", "boundary_iou", "cldice")
_CI_KEYS = ("pixel_accuracy", "mean_iou", "mean_dice", "foreground_iou", "foreground_dice")


def ranking_key(binary: bool) -> str:
    """The per-image headline metric: foreground IoU for binary tasks, else mean IoU."""
    return "foreground_iou" if binary else "mean_iou"


class SplitMetrics:
    """Feed it ``(name, probabilities, prediction, target)`` per image; read ``result()``."""

    def __init__(
        self, class_names: Sequence[str], binary: bool, options: EvalConfig | None = None
    ) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.binary = binary
        self.options = options or EvalConfig()
        _check_options(self.options)
        self.histogram = (
            ScoreHistogram(self.num_classes, self.options.histogram_bins)
            if self.options.threshold_free
            else None
        )
        self.instances = (
            InstanceAccumulator(self.num_classes, self.options.min_component_area)
            if self.options.instances
            else None
        )
        self.names: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self._matrices: list[np.ndarray] = []
        self._boundary: list[dict[str, list[float | None]]] = []
        self._panoptic: list[float | None] = []

    def add(
        self,
        name: str,
        probs: np.ndarray,
        prediction: np.ndarray,
        target: np.ndarray,
        target_instances: np.ndarray | None = None,
    ) -> None:
        """One image: probabilities ``(C, H, W)``, predicted and true class ids ``(H, W)``, and
        the true object ids where the dataset labels objects one by one."""
        if probs.shape[0] != self.num_classes or probs.shape[1:] != target.shape:
            raise ValueError(
                f"{name}: probabilities of shape {probs.shape} do not fit a "
                f"{self.num_classes}-class mask of shape {target.shape}"
            )
        confusion = ConfusionMatrix(self.num_classes)
        confusion.update(prediction, target)
        self._matrices.append(confusion.matrix.numpy())
        self.names.append(name)
        self.sizes.append(target.shape)
        if self.histogram is not None:
            self.histogram.update(probs, target)
        if self.instances is not None:
            image = self.instances.update(probs, prediction, target, None, target_instances)
            self._panoptic.append(image["pq"])
        if self.options.boundary:
            width = self.options.boundary_width  # None: 2% of this image's diagonal
            self._boundary.append(
                boundary_metrics(
                    prediction,
                    target,
                    self.num_classes,
                    width=width,
                    with_cldice=self.options.cldice,
                )
            )

    @property
    def matrices(self) -> np.ndarray:
        """Per-image confusion matrices ``(N, C, C)``."""
        if not self._matrices:
            return np.zeros((0, self.num_classes, self.num_classes), dtype=np.int64)
        return np.stack(self._matrices)

    def result(self) -> dict[str, Any]:
        """The metric sections of ``metrics.json`` (see the module docstring)."""
        if not self._matrices:
            raise ValueError("no image was added: there is nothing to summarise")
        matrices = self.matrices
        dataset = summarise(matrices.sum(0), self.class_names, binary=self.binary)
        dataset["confusion_matrix"] = matrices.sum(0).tolist()
        result: dict[str, Any] = {
            "dataset": dataset,
            "per_image": per_image_section(matrices, self.class_names, self.binary),
        }
        if self.histogram is not None:
            result["threshold_free"] = self.histogram.summary(self.class_names, self.binary)
        if self.instances is not None:
            result["instance"] = self.instances.summary(self.class_names)
        if self._boundary:
            result["boundary"] = self._boundary_section()
        if self.options.ci:
            result["confidence_intervals"] = self._intervals(matrices)
        return result

    def rows(self) -> list[dict[str, Any]]:
        """One row per image for ``per_image.csv``: name, size, then its metrics."""
        pixel_rows = per_image_rows(self.matrices, self.class_names, self.binary)
        rows = []
        for i, (name, (height, width)) in enumerate(zip(self.names, self.sizes, strict=True)):
            row: dict[str, Any] = {"name": name, "height": height, "width": width}
            row.update(pixel_rows[i])
            if self._boundary:
                row.update(self._boundary_row(i))
            if self._panoptic:
                row["pq"] = self._panoptic[i]
            rows.append(row)
        return rows

    def ranking_key(self) -> str:
        """The per-image value that ranks images best to worst in the report."""
        return ranking_key(self.binary)

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """ROC and PR curve points per class, for plotting (binary: the foreground only)."""
        if self.histogram is None:
            return {}
        classes = [1] if self.binary else range(self.num_classes)
        points = {self.class_names[c]: self.histogram.curve_points(c) for c in classes}
        return {name: curve for name, curve in points.items() if curve is not None}

    def _boundary_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in BOUNDARY_METRICS if m != "cldice" or self.options.cldice)

    def _scored_classes(self) -> range:
        return range(1, self.num_classes)

    def _image_value(self, i: int, metric: str) -> float | None:
        return mean_defined([self._boundary[i][metric][c] for c in self._scored_classes()])

    def _boundary_row(self, i: int) -> dict[str, float | None]:
        row: dict[str, float | None] = {}
        for metric in self._boundary_metrics():
            row[metric] = self._image_value(i, metric)
            for c in self._scored_classes():
                row[f"{metric}/{self.class_names[c]}"] = self._boundary[i][metric][c]
        return row

    def _boundary_section(self) -> dict[str, Any]:
        images = range(len(self._boundary))
        width = self.options.boundary_width
        section: dict[str, Any] = {"boundary_width": width if width else "2% of diagonal"}
        for metric in self._boundary_metrics():
            section[metric] = spread([self._image_value(i, metric) for i in images])
        section["per_class"] = [
            {
                "name": self.class_names[c],
                **{
                    m: spread([self._boundary[i][m][c] for i in images])
                    for m in self._boundary_metrics()
                },
            }
            for c in self._scored_classes()
        ]
        return section

    def _intervals(self, matrices: np.ndarray) -> dict[str, Any]:
        keys = [key for key in _CI_KEYS if key in headline_keys(self.binary)]
        headline = headline_arrays(matrices, self.binary)
        values = {key: headline[key] for key in keys}
        if self._boundary:
            for metric in ("hd95", "cldice"):
                if metric in self._boundary_metrics():
                    images = range(len(self._boundary))
                    values[metric] = as_float_array([self._image_value(i, metric) for i in images])
        return bootstrap_intervals(
            matrices,
            self.binary,
            keys,
            values,
            resamples=self.options.ci_resamples,
            level=self.options.ci_level,
        )


def _check_options(options: EvalConfig) -> None:
    if options.histogram_bins < 2:
        raise ValueError(f"eval.histogram_bins must be at least 2; got {options.histogram_bins}")
    if options.min_component_area < 0:
        raise ValueError(
            f"eval.min_component_area is a pixel count >= 0; got {options.min_component_area}"
        )
    if options.boundary_width is not None and options.boundary_width < 1:
        raise ValueError(
            f"eval.boundary_width is a width in pixels >= 1 (or null for 2% of the image "
            f"diagonal); got {options.boundary_width}"
        )
