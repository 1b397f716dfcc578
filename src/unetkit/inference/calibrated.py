"""The one route from checkpoint files to the model every inference path runs: one checkpoint or
several (an ensemble, :mod:`unetkit.inference.ensemble`), each with its stored calibration
(:mod:`unetkit.inference.calibration`) applied.

* **Temperature and bias**: each member's logits become ``logits / T + b`` with its own ``T``
  and bias (:class:`Tempered`) before the ensemble averages probabilities, so an ensemble
  averages calibrated probabilities. A ``unetkit cv`` folder with an ensemble calibration
  (:mod:`unetkit.inference.ensemble_calibration`) instead averages its raw members and maps the
  mean with that one ``T`` and bias. Inside the model, so an export bakes them into its graph
  and every runtime agrees.
* **Threshold** (binary, multi-label): the stored one becomes the task's threshold (a multi-label
  task's stored per-label thresholds its ``label_thresholds``); for an ensemble the mean of its
  members' stored ones, label by label (or the ensemble calibration's own); ``threshold``
  (``--threshold``) overrides, for every label alike.

The result's checkpoint no longer holds ``calibration`` but ``calibrated`` (the temperatures and
threshold applied), so calibrating twice is impossible and exports can record what they hold.
A checkpoint without ``calibration`` and no ``threshold`` loads exactly as
:func:`~unetkit.checkpoint.model_from_checkpoint` gives it. ``Segmenter.from_loaded`` applies
nothing: fitting a calibration needs the raw probabilities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetkit.checkpoint import LoadedModel
from unetkit.inference.calibration import CHECKPOINT_KEY, Calibration, checked_tta
from unetkit.inference.ensemble import load_ensemble
from unetkit.inference.ensemble_calibration import pooled_record
from unetkit.tasks import Task

APPLIED_KEY = "calibrated"  # in the loaded checkpoint and exported metadata: what was applied

Sources = str | Path | Sequence[str | Path]


class Tempered(nn.Module):
    """A model whose logits are divided by ``temperature`` (temperature scaling) and shifted by
    ``bias``, one per output channel (None: no shift)."""

    def __init__(
        self, model: nn.Module, temperature: float, bias: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.bias = None if bias is None else tuple(float(value) for value in bias)
        if self.bias is not None:
            shift = torch.tensor(self.bias, dtype=torch.float32).reshape(1, -1, 1, 1)
            self.register_buffer("logit_bias", shift, persistent=False)

    @property
    def calibration(self) -> Calibration:
        """The logit map it applies."""
        return Calibration(self.temperature, bias=self.bias)

    @property
    def size_multiple(self) -> int | None:
        return getattr(self.model, "size_multiple", None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images) / self.temperature
        return logits if self.bias is None else logits + self.logit_bias.to(logits.dtype)


def as_sources(sources: Sources) -> list[str | Path]:
    """One checkpoint (a path) or several as a list."""
    return [sources] if isinstance(sources, str | Path) else list(sources)


def source_names(sources: Sources) -> str:
    """One checkpoint's path, or several joined, for messages."""
    return ", ".join(str(source) for source in as_sources(sources))


def load_model(
    sources: Sources, threshold: float | None = None, weights: str = "model"
) -> LoadedModel:
    """The calibrated model of one checkpoint, several (averaged), or a ``unetkit cv`` folder
    (its ensemble calibration when it has one); ``threshold`` overrides the stored one (a binary
    or multi-label task only)."""
    loaded, calibrations, pooled = _calibrated_members(as_sources(sources), weights)
    stored = [c.threshold for c in calibrations if c.threshold is not None]
    chosen = threshold if threshold is not None else _mean(stored)
    task = with_threshold(loaded.task, chosen, "--threshold" if threshold is not None else None)
    per_label = None if threshold is not None else _label_means(calibrations)
    if per_label is not None:
        task = Calibration(label_thresholds=per_label).with_threshold(task)
    if chosen is None and per_label is None and not any(c.maps_logits for c in calibrations):
        return loaded
    applied = {"temperatures": [c.temperature for c in calibrations], "threshold": chosen}
    if any(c.bias is not None for c in calibrations):
        applied["biases"] = [None if c.bias is None else list(c.bias) for c in calibrations]
    if per_label is not None:
        applied["label_thresholds"] = list(per_label)
    if pooled:
        applied["pooled"] = True  # one calibration of the ensemble's mean, not one per member
    checkpoint = {**loaded.checkpoint, APPLIED_KEY: applied}
    return dataclasses.replace(loaded, task=task, checkpoint=checkpoint)


def _calibrated_members(
    sources: list[str | Path], weights: str
) -> tuple[LoadedModel, list[Calibration], bool]:
    """The model with its logit maps applied, the calibrations whose thresholds it takes, and
    whether that is one calibration of a cv ensemble's mean (fitted on the ``model`` weights)."""
    record = pooled_record(sources) if weights == "model" else None
    if record is not None:
        pooled = Calibration.from_dict(record["calibration"])
        loaded = load_ensemble(sources, weights, calibration=pooled, tta=checked_tta(record))
        pooled.check_channels(loaded.task)
        return _without_stored_calibration(loaded), [pooled], True
    calibrations: list[Calibration] = []

    def tempered(member: LoadedModel) -> LoadedModel:
        calibration = Calibration.from_checkpoint(member.checkpoint)
        calibrations.append(calibration)
        return with_calibration(member, calibration)

    return load_ensemble(sources, weights, prepare=tempered), calibrations, False


def with_calibration(loaded: LoadedModel, calibration: Calibration) -> LoadedModel:
    """``loaded`` with ``calibration``'s temperature and bias on its logits (its thresholds are
    the caller's to apply); its checkpoint without the ``calibration`` record (now applied)."""
    calibration.check_channels(loaded.task)
    model = loaded.model
    if calibration.maps_logits:
        model = Tempered(model, calibration.temperature, calibration.bias).eval()
    return dataclasses.replace(_without_stored_calibration(loaded), model=model)


def _without_stored_calibration(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` whose checkpoint no longer holds the ``calibration`` record (it is applied)."""
    checkpoint = {k: v for k, v in loaded.checkpoint.items() if k != CHECKPOINT_KEY}
    return dataclasses.replace(loaded, checkpoint=checkpoint)


def with_threshold(task: Task, threshold: float | None, where: str | None = None) -> Task:
    """``task`` cut at ``threshold`` (None: unchanged); refused for a multi-class task, naming
    ``where`` the threshold came from."""
    if threshold is None:
        return task
    try:
        return Calibration(threshold=threshold).with_threshold(task)
    except ValueError as error:
        if where is None:
            raise
        raise ValueError(f"{where} {threshold}: {error}") from error


def applied_calibration(record: dict[str, Any]) -> dict[str, Any] | None:
    """What a loaded checkpoint's (or an export's) model has applied, or None."""
    return record.get(APPLIED_KEY)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _label_means(calibrations: list[Calibration]) -> tuple[float, ...] | None:
    """Each label's mean stored threshold over the members that store per-label ones (members
    share one task, so one label count; the task checks it)."""
    stored = [c.label_thresholds for c in calibrations if c.label_thresholds is not None]
    if not stored:
        return None
    return tuple(sum(values) / len(values) for values in zip(*stored, strict=True))
