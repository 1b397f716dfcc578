"""Calibration and uncertainty of an evaluated split: the ``calibration`` and ``uncertainty``
sections of ``metrics.json`` and the per-image ``uncertainty`` column of ``per_image.csv``.

Two temperatures meet here: the one the Segmenter already applies (its model is
:class:`~unetkit.inference.calibrated.Tempered` when loaded by ``Segmenter.from_checkpoint``), and
the one to measure (by default the same; a raw Segmenter can be given a checkpoint's stored
:class:`~unetkit.inference.calibration.Calibration`). One pass gives both sides: ``before`` counts
the probabilities at ``T = 1`` (those of a raw model as they are, a tempered model's tempered back),
``after`` the same at the measured ``T``. Tempering back is exact up to float32 saturation where
the model saw the image at its own size; where the Segmenter resized or averaged probabilities
(another image size, sliding windows, TTA) it is close to but not the raw model's, since tempering
does not commute with averaging (a second pass would double the cost). Without a temperature,
``T = 1`` and ``before == after``. Uncertainty is the predictive entropy of the ``after``
probabilities; the risk-coverage curve asks whether the Segmenter's errors sit where it is unsure.
Every accumulator holds bin counts only, so a whole split costs a few kB.

A multi-label task's labels are independent sigmoids, not one class distribution, so every
(label, pixel) pair counts as one binary pixel (:func:`reliability_inputs`): one reliability
diagram of the foreground probability over all labels, a binary entropy per pair, and an error
wherever a label is predicted wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unetkit.inference.calibrated import Tempered
from unetkit.inference.calibration import Calibration, temper_probabilities
from unetkit.metrics.calibration import CalibrationHistogram
from unetkit.metrics.uncertainty import RiskCoverage, image_uncertainty, predictive_entropy
from unetkit.tasks import Task

UNCERTAINTY_COLUMN = "uncertainty"  # per_image.csv: the image's mean predictive entropy


def applied_temperature(model: Any) -> float:
    """The temperature a Segmenter's model divides its logits by: ``Tempered``'s, else 1.

    An ensemble tempers each member on its own before averaging, so no single ``T`` undoes it;
    it reads as 1 (``before`` then equals ``after``)."""
    return float(model.temperature) if isinstance(model, Tempered) else 1.0


class CalibrationCheck:
    """Reliability before and after calibration, risk-coverage and a score per image."""

    def __init__(
        self,
        task: Task,
        temperature: float | None,
        threshold: float | list[float] | None,
        applied: float = 1.0,
        after_label: str | None = None,
    ) -> None:
        self.task = task
        self.temperature = temperature  # measured: ``after`` is at this T (None: see add)
        self.after_label = after_label or f"T = {temperature:.3g}"
        self.applied = applied  # already in the probabilities given to :meth:`add`
        self.threshold = threshold
        self.before = reliability_histogram(task)
        self.after = reliability_histogram(task)
        self.risk = RiskCoverage()
        self.scores: list[float | None] = []

    def add(
        self,
        probs: np.ndarray,
        prediction: np.ndarray,
        target: np.ndarray,
        calibrated: np.ndarray | None = None,
    ) -> None:
        """One image: the Segmenter's probabilities ``(C, H, W)``, its mask and the target.

        ``calibrated``: the ``after`` probabilities where no single temperature gives them (an
        ensemble's members each at their own ``T``); ``probs`` are then the raw ones."""
        raw = temper_probabilities(probs, 1.0 / self.applied, self.task)
        if calibrated is None:
            calibrated = (
                probs
                if self.applied == self.temperature
                else temper_probabilities(raw, self.temperature, self.task)
            )
        if self.task.multilabel:
            prediction = prediction.reshape(-1, prediction.shape[-1])  # as the target below
            raw, _ = reliability_inputs(self.task, raw, target)
            calibrated, target = reliability_inputs(self.task, calibrated, target)
        self.before.update(raw, target)
        self.after.update(calibrated, target)
        entropy = predictive_entropy(calibrated)
        self.risk.update(entropy, prediction, target)
        self.scores.append(image_uncertainty(entropy, target))

    def sections(self) -> dict[str, Any]:
        """``calibration`` and ``uncertainty`` for metrics.json."""
        return {
            "calibration": {
                "temperature": self.temperature,
                "after_label": self.after_label,  # what "after" applied, for people
                "threshold": self.threshold,
                "before": self.before.result(),
                "after": self.after.result(),
            },
            "uncertainty": {"measure": "predictive_entropy", "risk_coverage": self.risk.result()},
        }

    def add_columns(self, rows: list[dict[str, Any]]) -> None:
        """Each row (in the order the images were added) gains its ``uncertainty`` score."""
        if len(rows) != len(self.scores):
            raise ValueError(
                f"{len(rows)} per-image rows for {len(self.scores)} images scored for "
                f"uncertainty: add every image to both, in the same order"
            )
        for row, score in zip(rows, self.scores, strict=True):
            row[UNCERTAINTY_COLUMN] = score


def reliability_histogram(task: Task) -> CalibrationHistogram:
    """The reliability counts of ``task``: a multi-label task's are those of a binary one."""
    return CalibrationHistogram(2 if task.multilabel else task.num_classes)


def reliability_inputs(task: Task, probs: np.ndarray, target: np.ndarray) -> tuple[Any, Any]:
    """``probs`` ``(C, H, W)`` and ``target`` as :func:`reliability_histogram` counts them: a
    multi-label image's ``(L, H, W)`` become the two-channel probabilities ``(2, L * H, W)``
    and target ``(L * H, W)`` of a binary image; other tasks' unchanged."""
    if not task.multilabel:
        return probs, target
    foreground = np.asarray(probs, dtype=np.float32).reshape(-1, probs.shape[-1])
    return np.stack([1.0 - foreground, foreground]), np.asarray(target).reshape(foreground.shape)


def calibration_check(
    task: Task, model: Any, calibration: Calibration | None = None
) -> CalibrationCheck:
    """The check of a Segmenter's ``task`` and ``model``, measuring ``calibration`` (default:
    the temperature the model applies, at the task's threshold)."""
    applied = applied_temperature(model)
    if calibration is None:
        calibration = Calibration(applied)
    return CalibrationCheck(
        task, calibration.temperature, measured_threshold(calibration, task), applied
    )


def measured_threshold(calibration: Calibration, task: Task) -> float | list[float] | None:
    """The binary threshold a calibration's ``after`` side cuts at (its own, else the task's), a
    multi-label task's threshold per label; ``None`` for a multi-class task, which takes the most
    probable class."""
    if task.multilabel:
        return calibration.with_threshold(task).cuts
    return (calibration.threshold or task.threshold) if task.is_binary else None


def most_uncertain(rows: list[dict[str, Any]], count: int = 5) -> list[int]:
    """The indices of the ``count`` rows with the highest ``uncertainty``, most uncertain first."""
    scored = [(row.get(UNCERTAINTY_COLUMN), i) for i, row in enumerate(rows)]
    scored = [(score, i) for score, i in scored if score is not None]
    return [i for _, i in sorted(scored, key=lambda pair: -pair[0])[:count]]


def after_label(calibration: dict[str, Any]) -> str:
    """What the ``after`` side of a ``calibration`` section applied, e.g. ``T = 1.24`` (older
    metrics.json files have the temperature only)."""
    return calibration.get("after_label") or f"T = {calibration['temperature']:.3g}"
