"""Calibration and uncertainty of an evaluated split: the ``calibration`` and ``uncertainty``
sections of ``metrics.json`` and the per-image ``uncertainty`` column of ``per_image.csv``.

Two calibrations (temperature, and a sigmoid task's bias) meet here: the one the Segmenter
already applies (its model is :class:`~unetkit.inference.calibrated.Tempered` when loaded by
``Segmenter.from_checkpoint``), and the one to measure (by default the same; a raw Segmenter can
be given a checkpoint's stored :class:`~unetkit.inference.calibration.Calibration`). One pass gives
both sides: ``before`` counts the raw probabilities (those of a raw model as they are, a tempered
model's with its calibration undone), ``after`` the same under the measured calibration. Undoing
is exact up to float32 saturation where the model saw the image at its own size; where the
Segmenter resized or averaged probabilities (another image size, sliding windows, TTA) it is close
to but not the raw model's, since the logit map does not commute with averaging (a second pass
would double the cost). Without a calibration, ``T = 1`` and ``before == after``. Uncertainty is
the predictive entropy of the ``after`` probabilities; the risk-coverage curve asks whether the
Segmenter's errors sit where it is unsure. Every accumulator holds bin counts only, so a whole
split costs a few kB.

A multi-label task's labels are independent sigmoids, not one class distribution, so every
(label, pixel) pair counts as one binary pixel (:func:`reliability_inputs`): one reliability
diagram of the foreground probability over all labels, a binary entropy per pair, and an error
wherever a label is predicted wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unetkit.inference.calibration import Calibration
from unetkit.metrics.calibration import CalibrationHistogram
from unetkit.metrics.uncertainty import RiskCoverage, image_uncertainty, predictive_entropy
from unetkit.tasks import Task

UNCERTAINTY_COLUMN = "uncertainty"  # per_image.csv: the image's mean predictive entropy


def model_calibration(model: Any) -> Calibration:
    """The logit map a Segmenter's model applies: ``Tempered``'s or an ensemble's pooled one,
    else the identity.

    An ensemble that calibrates each member on its own before averaging has no single map that
    undoes it; it reads as the identity (``before`` then equals ``after``)."""
    calibration = getattr(model, "calibration", None)  # Tempered's, ProbabilityAverage's
    return calibration if isinstance(calibration, Calibration) else Calibration()


class CalibrationCheck:
    """Reliability before and after calibration, risk-coverage and a score per image."""

    def __init__(
        self,
        task: Task,
        calibration: Calibration | None,
        threshold: float | list[float] | None,
        applied: Calibration | None = None,
        after_label: str | None = None,
    ) -> None:
        self.task = task
        # measured: ``after`` is under this logit map (None: given to :meth:`add`)
        self.calibration = None if calibration is None else calibration.logit_map()
        self.after_label = after_label or self.calibration.describe()
        # already in the probabilities given to :meth:`add`
        self.applied = Calibration() if applied is None else applied.logit_map()
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

        ``calibrated``: the ``after`` probabilities where no single calibration gives them (an
        ensemble's members each at their own); ``probs`` are then the raw ones."""
        raw = self.applied.undo_on_probabilities(probs, self.task)
        if calibrated is None:
            calibrated = (
                probs
                if self.applied == self.calibration
                else self.calibration.apply_to_probabilities(raw, self.task)
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
                "temperature": None if self.calibration is None else self.calibration.temperature,
                "bias": None if self.calibration is None else _listed(self.calibration.bias),
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
    applied = model_calibration(model)
    if calibration is None:
        calibration = applied
    return CalibrationCheck(task, calibration, measured_threshold(calibration, task), applied)


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


def _listed(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else list(values)


def after_label(calibration: dict[str, Any]) -> str:
    """What the ``after`` side of a ``calibration`` section applied, e.g. ``T = 1.24`` (older
    metrics.json files have the temperature only)."""
    return calibration.get("after_label") or f"T = {calibration['temperature']:.2f}"
