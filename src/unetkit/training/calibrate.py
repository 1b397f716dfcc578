"""The end of training: fit temperature scaling (and a binary task's threshold) on the validation
split and store it in ``best.pt`` (and ``ema.pt``), so the final test and every inference path
apply it (see :mod:`unetkit.inference.calibration`).

Each checkpoint is fitted on its own weights, on a bounded sample of validation pixels
(:class:`~unetkit.inference.calibration.LogitSample`, 10 000 per image, 250 000 in the fit), so it
costs one validation pass at original resolution. The binary threshold is tuned for the monitored
metric when that is a binary headline metric (``val_foreground_dice``, ...), else for the Dice.
``eval.calibrate=false`` turns it off; multi-label tasks are skipped (not supported yet). What it
found is written to ``calibration.json`` in the run folder and printed as one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.checkpoint import model_from_checkpoint
from unetkit.data.sources import SampleSource
from unetkit.inference.calibration import (
    Calibration,
    LogitSample,
    fit_temperature,
    logits_from_probabilities,
    store_calibration,
    tune_threshold,
)
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.calibration import expected_calibration_error
from unetkit.metrics.summary import headline_arrays
from unetkit.tasks import Task

RECORD_FILE = "calibration.json"
DEFAULT_METRIC = "foreground_dice"


def calibrate_run(
    run_dir: Path, val: SampleSource, monitor: str, device: Any, batch_size: int
) -> list[str]:
    """Fit and store the calibration of each final checkpoint; the lines to print."""
    checkpoints = [run_dir / "checkpoints" / name for name in ("best.pt", "ema.pt")]
    present = [path for path in checkpoints if path.is_file()]
    if len(val) == 0:
        return ["calibration: skipped (the validation split is empty)"]
    records, lines = {}, []
    for path in present:
        segmenter = Segmenter.from_loaded(model_from_checkpoint(path), device, batch_size)
        if segmenter.task.multilabel:
            return ["calibration: skipped (multi-label tasks are not supported yet)"]
        try:
            record = fit_checkpoint(segmenter, val, monitor)
        except ValueError as error:  # e.g. no foreground in val to tune a threshold on
            lines.append(f"calibration of {path.name}: skipped ({error})")
            continue
        store_calibration(path, Calibration.from_dict(record["calibration"]))
        records[path.name] = record
        lines.append(calibration_line(record, path.name if len(present) > 1 else None))
    if records:
        (run_dir / RECORD_FILE).write_text(json.dumps(records, indent=2))
    return lines


def fit_checkpoint(segmenter: Segmenter, val: SampleSource, monitor: str) -> dict[str, Any]:
    """The calibration of the Segmenter's raw model on ``val``, with the validation ECE (and the
    binary metric) of the sampled pixels before and after it."""
    task = segmenter.task
    sample = LogitSample(task)
    for probs, target in _pairs(segmenter, val):
        sample.add(logits_from_probabilities(probs, task), target)
    logits, targets = sample.logits, sample.targets
    temperature = fit_temperature(logits, targets, task)
    record: dict[str, Any] = {
        "pixels": len(targets),
        "ece": {
            "before": _ece(logits, targets, task, 1.0),
            "after": _ece(logits, targets, task, temperature),
        },
    }
    threshold = None
    if task.is_binary:
        metric = threshold_metric(monitor)
        raw = torch.sigmoid(logits[:, 0])
        before = tune_threshold(raw, targets, metric, thresholds=(round(task.threshold, 3),))
        choice = tune_threshold(torch.sigmoid(logits[:, 0] / temperature), targets, metric)
        threshold = choice.threshold
        record["metric"] = {"name": metric, "before": before.score, "after": choice.score}
    record["calibration"] = Calibration(temperature, threshold).to_dict()
    return record


def threshold_metric(monitor: str) -> str:
    """The binary headline metric named by ``train.monitor`` (``val_``/``val_ema_`` dropped), or
    the foreground Dice when the monitor is none (a loss, say)."""
    name = monitor.removeprefix("val_").removeprefix("ema_")
    return name if name in headline_arrays(np.ones((2, 2)), binary=True) else DEFAULT_METRIC


def calibration_line(record: dict[str, Any], name: str | None = None) -> str:
    """``calibration: T = 1.42, threshold 0.46 (val foreground_dice 0.81 -> 0.83, ECE ...)``."""
    calibration, ece = record["calibration"], record["ece"]
    where = "" if name is None else f" of {name}"
    head = f"calibration{where}: T = {calibration['temperature']:.2f}"
    details = []
    if calibration["threshold"] is not None:
        head += f", threshold {calibration['threshold']:.2f}"
        metric = record["metric"]
        details.append(f"val {metric['name']} {metric['before']:.2f} -> {metric['after']:.2f}")
    details.append(f"ECE {_text(ece['before'])} -> {_text(ece['after'])}")
    return f"{head} ({', '.join(details)})"


def _pairs(segmenter: Segmenter, source: SampleSource) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probabilities at T = 1, target) of each image, a batch of images at a time."""
    for start in range(0, len(source), segmenter.batch_size):
        indices = range(start, min(start + segmenter.batch_size, len(source)))
        loaded = [source.load(index) for index in indices]
        probs = segmenter.predict_proba([image for image, _ in loaded])
        yield from zip(probs, (mask for _, mask in loaded), strict=True)


def _ece(logits: torch.Tensor, targets: torch.Tensor, task: Task, temperature: float) -> float:
    """The ECE of sampled pixels ``(P, out_channels)`` at ``temperature``."""
    probs = task.probabilities((logits / temperature).T[None, :, :, None])
    return expected_calibration_error(probs, targets[None, :, None]) or 0.0


def _text(value: float) -> str:
    return f"{value:.3f}"
