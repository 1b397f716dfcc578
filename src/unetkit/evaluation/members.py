"""An ensemble's members scored beside it, in the ensemble's own pass.

Whether averaging several models was worth it is a question about the same images: the
``ensemble`` section of ``metrics.json`` gives every member's headline metrics and calibration,
and the ensemble's difference from its best member with a paired bootstrap interval
(:func:`~unetkit.metrics.bootstrap.paired_difference`). The members' probabilities come from
:meth:`~unetkit.inference.segmenter.Segmenter.predict_members`, so each member is run once, through
the path the ensemble takes, and the ensemble's probabilities are their mean.

Calibration: each member is measured at its own stored calibration (temperature and bias); the
ensemble's ``after`` side is what ``predict`` and ``serve`` deliver: the mean of its calibrated
members, or, for a cv folder calibrated as a whole (``pooled``), that calibration on the raw
mean, with the mean of calibrated members' ECE beside it for comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unetkit.config import EvalConfig
from unetkit.evaluation.calibration import (
    CalibrationCheck,
    measured_threshold,
    reliability_histogram,
    reliability_inputs,
)
from unetkit.inference.calibration import Calibration
from unetkit.metrics.bootstrap import paired_difference
from unetkit.metrics.multilabel import split_metrics
from unetkit.metrics.split import ranking_key
from unetkit.metrics.summary import headline_keys
from unetkit.tasks import Task


class MemberScores:
    """Per-member metrics and calibration of an ensemble, fed one image at a time."""

    def __init__(
        self,
        checkpoints: Sequence[str],
        calibrations: Sequence[Calibration],
        task: Task,
        class_names: Sequence[str],
        options: EvalConfig,
        pooled: Calibration | None = None,
    ) -> None:
        if len(checkpoints) != len(calibrations) or len(checkpoints) < 2:
            raise ValueError(
                f"an ensemble's members need one calibration each and there must be at least "
                f"two; got {len(checkpoints)} checkpoints and {len(calibrations)} calibrations"
            )
        lean = dataclasses.replace(
            options, boundary=False, instances=False, threshold_free=False, ci=False
        )
        self.task = task
        self.checkpoints = list(checkpoints)
        self.calibrations = list(calibrations)
        self.pooled = pooled
        self.options = options
        self.metrics = [split_metrics(task, class_names, lean) for _ in checkpoints]
        # ECE at T = 1 and at each member's own T: histograms only, no per-member uncertainty
        self.reliability = [
            (reliability_histogram(task), reliability_histogram(task)) for _ in checkpoints
        ]
        self.members_mean = reliability_histogram(task)  # beside a pooled calibration

    def add(
        self,
        name: str,
        member_probs: np.ndarray,
        target: np.ndarray,
        objects: np.ndarray | None = None,
    ) -> np.ndarray:
        """One image: the members' raw probabilities ``(M, C, H, W)`` and the target. Returns the
        ensemble's calibrated probabilities: the mean of each member at its own ``T``, or the
        pooled calibration on the raw mean."""
        tempered = []
        members = zip(self.metrics, self.reliability, self.calibrations, member_probs, strict=True)
        for metrics, (before, after), calibration, probs in members:
            metrics.add(name, probs, self._labels(probs), target, objects)
            tempered.append(calibration.apply_to_probabilities(probs, self.task))
            before.update(*reliability_inputs(self.task, probs, target))
            after.update(*reliability_inputs(self.task, tempered[-1], target))
        members_mean = np.mean(tempered, axis=0, dtype=np.float32)
        if self.pooled is None:
            return members_mean
        self.members_mean.update(*reliability_inputs(self.task, members_mean, target))
        raw_mean = np.mean(member_probs, axis=0, dtype=np.float32)
        return self.pooled.apply_to_probabilities(raw_mean, self.task)

    def ensemble_check(self) -> CalibrationCheck:
        """The ensemble's check: raw mean before, the calibrated mean :meth:`add` returns after."""
        if self.pooled is not None:
            label = f"the mean at one pooled {self.pooled.describe()}"
            threshold = measured_threshold(self.pooled, self.task)
            return CalibrationCheck(self.task, self.pooled, threshold, after_label=label)
        temperatures = [c.temperature for c in self.calibrations]
        label = f"each member at its own T, {min(temperatures):.3g} to {max(temperatures):.3g}"
        if any(c.bias is not None for c in self.calibrations):
            label += ", and its own bias"
        thresholds = [measured_threshold(c, self.task) for c in self.calibrations]
        # as predict: the members' mean (per label for a multi-label task)
        threshold = None if None in thresholds else np.mean(thresholds, axis=0).tolist()
        return CalibrationCheck(self.task, None, threshold, after_label=label)

    def section(self, ensemble_matrices: np.ndarray) -> dict[str, Any]:
        """The ``ensemble`` section of ``metrics.json``."""
        key = ranking_key(self.task.is_binary)
        members = [self._member(i) for i in range(len(self.checkpoints))]
        best = max(range(len(members)), key=lambda i: _or_minus_inf(members[i]["dataset"][key]))
        comparison = paired_difference(
            ensemble_matrices,
            self.metrics[best].matrices,
            self.task.is_binary,
            key,
            resamples=self.options.ci_resamples,
            level=self.options.ci_level,
        )
        section = {"members": members, "best_member": best, "versus_best_member": comparison}
        if self.pooled is not None:
            section["pooled_calibration"] = {
                **self.pooled.to_dict(),
                "ece_mean_of_calibrated_members": self.members_mean.result()["ece"],
            }
        return section

    def _member(self, index: int) -> dict[str, Any]:
        result = self.metrics[index].result()
        keys = headline_keys(self.task.is_binary)
        before, after = self.reliability[index]
        return {
            "checkpoint": self.checkpoints[index],
            "dataset": {k: result["dataset"][k] for k in keys if k in result["dataset"]},
            "per_image": {
                k: result["per_image"][k]["mean"] for k in keys if k in result["per_image"]
            },
            "calibration": {
                "temperature": self.calibrations[index].temperature,
                "bias": self.calibrations[index].to_dict().get("bias"),
                "ece_before": before.result()["ece"],
                "ece_after": after.result()["ece"],
            },
        }

    def _labels(self, probs: np.ndarray) -> np.ndarray:
        labels = self.task.labels_from_probabilities(torch.from_numpy(probs)[None])[0]
        return labels.to(torch.uint8).numpy()


def _or_minus_inf(value: float | None) -> float:
    return float("-inf") if value is None else value
