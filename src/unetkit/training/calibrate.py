"""The end of training: fit temperature scaling (with a bias per sigmoid channel, and a binary
task's threshold) on the validation split and store it in ``best.pt`` (and ``ema.pt``), so the
final test and every inference path apply it (see :mod:`unetkit.inference.calibration`).

Each checkpoint is fitted on its own weights, on a bounded sample of validation pixels
(:class:`~unetkit.inference.view_calibration.ViewSample`: up to 10 000 per image, then one share
of every image, 250 000 in the fit), so it costs a validation pass per flip at full resolution.
With TTA the sample holds each flip's logits and the fit is for the mean of the calibrated
flips, which is what the Segmenter returns (the calibration maps each flip's logits inside the
model; a map fitted on the flip-averaged probabilities would not be the one applied). The
binary threshold is tuned for the monitored metric when that is a binary headline metric
(``val_foreground_dice``, ...), else for the Dice.
A multi-label task gets one ``T`` over all its labels, one bias and one threshold per label, each
threshold tuned for the label's own value of the monitored mean (``val_mean_iou``: the label's
IoU), so their mean is the one monitored. A binary or multi-label task's bias (Platt scaling on
the logit) is fitted jointly with ``T`` unless ``eval.calibration_bias=false``; a multi-class task
gets ``T`` only. ``eval.calibrate=false`` turns it all off. What it found is written to
``calibration.json`` in the run folder and printed as one line.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.checkpoint import LoadedModel, model_from_checkpoint
from unetkit.data.sources import SampleSource
from unetkit.inference.calibration import (
    Calibration,
    ThresholdChoice,
    checked_tta,
    store_calibration,
    tune_label_thresholds,
    tune_threshold,
)
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.tta import FlippedModel
from unetkit.inference.view_calibration import ViewSample, averaged_logits, fit_for_views
from unetkit.metrics.calibration import expected_calibration_error
from unetkit.metrics.per_image import mean_defined
from unetkit.metrics.summary import headline_arrays
from unetkit.tasks import IGNORE_INDEX, Task
from unetkit.training.tta_check import choose_views, planned_tta

RECORD_FILE = "calibration.json"
DEFAULT_METRIC = "foreground_dice"


def calibrate_run(
    run_dir: Path,
    val: SampleSource,
    monitor: str,
    device: Any,
    batch_size: int,
    bias: bool = True,
    tta_check: bool = True,
) -> list[str]:
    """Fit and store the calibration of each final checkpoint (``bias``: with a logit bias for
    a binary or multi-label task, ``eval.calibration_bias``; ``tta_check``: keep the planned TTA
    only where it scores higher on ``val``, ``eval.tta_check``); the lines to print."""
    checkpoints = [run_dir / "checkpoints" / name for name in ("best.pt", "ema.pt")]
    present = [path for path in checkpoints if path.is_file()]
    if len(val) == 0:
        return ["calibration: skipped (the validation split is empty)"]
    records, lines = {}, []
    for path in present:
        segmenter = sampling_segmenter(model_from_checkpoint(path), device, batch_size, tta_check)
        try:
            record = fit_checkpoint(segmenter, val, monitor, bias, tta_check)
        except ValueError as error:  # e.g. no foreground in val to tune a threshold on
            lines.append(f"calibration of {path.name}: skipped ({error})")
            continue
        store_record(path, record)
        records[path.name] = record
        lines.append(calibration_line(record, path.name if len(present) > 1 else None))
    if records:
        (run_dir / RECORD_FILE).write_text(json.dumps(records, indent=2))
    return lines


def sampling_segmenter(
    loaded: LoadedModel, device: Any, batch_size: int, tta_check: bool
) -> Segmenter:
    """The raw Segmenter a calibration samples: with ``tta_check``, over the TTA the run
    planned (:func:`~unetkit.training.tta_check.planned_tta`), so an earlier check's choice is
    measured again; else as the checkpoint records."""
    asked = {"tta": planned_tta(loaded.checkpoint)} if tta_check else {}
    return Segmenter.from_loaded(loaded, device, batch_size, **asked)


def store_record(path: Path, record: dict[str, Any]) -> None:
    """Write a fitted record's calibration, and the TTA its check chose, into ``path``."""
    store_calibration(path, Calibration.from_dict(record["calibration"]), checked_tta(record))


def fit_checkpoint(
    segmenter: Segmenter,
    val: SampleSource,
    monitor: str,
    bias: bool = True,
    tta_check: bool = False,
) -> dict[str, Any]:
    """The calibration of the Segmenter's raw model on ``val``, with the validation ECE (and the
    binary metric) of the sampled pixels before and after it; with ``tta_check``, of the image
    alone where its TTA does not score higher (:mod:`unetkit.training.tta_check`)."""
    sample = ViewSample(segmenter.task)
    sample_views(flip_views(segmenter), val, sample)
    return fit_checked(sample, segmenter.class_names, monitor, bias, tta_check)


def fit_checked(
    sample: ViewSample, class_names: list[str], monitor: str, bias: bool, tta_check: bool
) -> dict[str, Any]:
    """:func:`fit_sample`, or with ``tta_check`` the record
    :func:`~unetkit.training.tta_check.choose_views` keeps, its check under ``"tta"``."""
    if not tta_check:
        return fit_sample(sample, class_names, monitor, bias)
    record, check = choose_views(
        sample, lambda views: fit_sample(views, class_names, monitor, bias), monitor
    )
    return record if check is None else {**record, "tta": check}


def fit_sample(
    sample: ViewSample, class_names: list[str], monitor: str, bias: bool = True
) -> dict[str, Any]:
    """:func:`fit_checkpoint`'s record, from pixels already sampled (of one model or of several
    alike, :mod:`unetkit.training.calibrate_folds`)."""
    task = sample.task
    view_logits, targets = sample.logits, sample.targets
    calibration = fit_for_views(view_logits, targets, task, bias)
    logits = averaged_logits(view_logits, task, Calibration())  # the raw Segmenter's
    calibrated_logits = averaged_logits(view_logits, task, calibration)
    record: dict[str, Any] = {
        "pixels": len(targets),
        "views": view_logits.shape[1],
        "ece": {
            "before": _ece(logits, targets, task, Calibration()),
            "after": _ece(calibrated_logits, targets, task, Calibration()),
        },
    }
    calibrated = torch.sigmoid(calibrated_logits)
    if task.is_binary:
        metric = threshold_metric(monitor)
        raw = torch.sigmoid(logits[:, 0])
        before = tune_threshold(raw, targets, metric, thresholds=(round(task.threshold, 3),))
        choice = tune_threshold(calibrated[:, 0], targets, metric)
        calibration = dataclasses.replace(calibration, threshold=choice.threshold)
        record["metric"] = {"name": metric, "before": before.score, "after": choice.score}
    elif task.multilabel:
        cuts, record["metric"] = _label_thresholds(
            logits, targets, calibrated, class_names, label_metric(monitor), task
        )
        calibration = dataclasses.replace(calibration, label_thresholds=cuts)
    record["calibration"] = calibration.to_dict()
    return record


def _label_thresholds(
    logits: torch.Tensor,
    targets: torch.Tensor,
    calibrated: torch.Tensor,
    names: list[str],
    metric: str,
    task: Task,
) -> tuple[tuple[float, ...], dict[str, Any]]:
    """One threshold per label on the ``calibrated`` probabilities, with each label's ``metric``
    at the task's threshold before calibration and at its tuned one after, and their means over
    the labels where defined."""
    default = task.threshold
    raw = torch.sigmoid(logits)
    before = tune_label_thresholds(raw, targets, metric, default, (round(default, 3),))
    after = tune_label_thresholds(calibrated, targets, metric, default)
    labels = {
        name: {"threshold": a.threshold, "before": _defined(b), "after": _defined(a)}
        for name, b, a in zip(names, before, after, strict=True)
    }
    summary = {
        "name": f"mean_{metric.removeprefix('foreground_')}",
        "before": mean_defined([row["before"] for row in labels.values()]),
        "after": mean_defined([row["after"] for row in labels.values()]),
        "labels": labels,
    }
    return tuple(choice.threshold for choice in after), summary


def threshold_metric(monitor: str) -> str:
    """The binary headline metric named by ``train.monitor`` (``val_``/``val_ema_`` dropped), or
    the foreground Dice when the monitor is none (a loss, say)."""
    name = monitor.removeprefix("val_").removeprefix("ema_")
    return name if name in headline_arrays(np.ones((2, 2)), binary=True) else DEFAULT_METRIC


def label_metric(monitor: str) -> str:
    """The binary metric each label is tuned for, so that the labels' mean is the monitor:
    ``val_mean_iou`` -> ``foreground_iou``; the foreground Dice when the monitor is none."""
    name = monitor.removeprefix("val_").removeprefix("ema_").removeprefix("mean_")
    return threshold_metric(f"foreground_{name}")


def calibration_line(record: dict[str, Any], name: str | None = None) -> str:
    """``calibration: T = 1.42, bias -0.12, threshold 0.46 (val foreground_dice 0.81 -> 0.83,
    ECE ...)``."""
    calibration, ece = record["calibration"], record["ece"]
    where = "" if name is None else f" of {name}"
    head = f"calibration{where}: T = {calibration['temperature']:.2f}"
    if calibration.get("bias") is not None:
        head += ", bias " + " ".join(f"{value:+.2f}" for value in calibration["bias"])
    details = []
    cuts = calibration.get("label_thresholds")
    if calibration["threshold"] is not None or cuts is not None:
        head += (
            f", threshold {calibration['threshold']:.2f}"
            if cuts is None
            else f", thresholds {' '.join(f'{cut:.2f}' for cut in cuts)}"
        )
        metric = record["metric"]
        scores = f"{_text(metric['before'], 2)} -> {_text(metric['after'], 2)}"
        details.append(f"val {metric['name']} {scores}")
    details.append(f"ECE {_text(ece['before'])} -> {_text(ece['after'])}")
    line = f"{head} ({', '.join(details)})"
    return line if record.get("tta") is None else f"{line}; {check_line(record['tta'])}"


def check_line(check: dict[str, Any]) -> str:
    """``TTA kept (val mean_iou 0.7976 with 2 flips, 0.7962 without)``, or ``TTA off: one
    pass (...)``: what :func:`~unetkit.training.tta_check.choose_views` measured."""
    verdict = "kept" if check["kept"] else "off: one pass"
    return (
        f"TTA {verdict} (val {check['metric']} {_text(check['with'], 4)} with {check['views']} "
        f"flips, {_text(check['without'], 4)} without)"
    )


def flip_views(segmenter: Segmenter) -> list[Segmenter]:
    """The Segmenters whose mean is ``segmenter``'s prediction: one per flip of its TTA, each
    running one :class:`~unetkit.inference.tta.FlippedModel`; itself alone without TTA."""
    if not segmenter.tta:
        return [segmenter]
    views = []
    for dims in segmenter.tta_flips:
        view = copy.copy(segmenter)  # the same model, device, execution and windows
        view.tta, view.model = False, FlippedModel(segmenter.model, dims)
        views.append(view)
    return views


def sample_views(views: list[Segmenter], source: SampleSource, sample: ViewSample) -> None:
    """Every image of ``source`` into ``sample``, a batch of images and one view at a time."""
    batch_size = views[0].batch_size
    for start in range(0, len(source), batch_size):
        indices = range(start, min(start + batch_size, len(source)))
        loaded = [source.load(index) for index in indices]
        images = [image for image, _ in loaded]
        picks = [sample.pick(mask) for _, mask in loaded]
        values: list[list[torch.Tensor]] = [[] for _ in loaded]
        for view in views:
            for index, probs in enumerate(view.predict_proba(images)):
                values[index].append(sample.values_at(probs, picks[index].positions))
        for picked, per_view in zip(picks, values, strict=True):
            sample.add(per_view, picked)


def _ece(
    logits: torch.Tensor, targets: torch.Tensor, task: Task, calibration: Calibration
) -> float:
    """The ECE of sampled pixels ``(P, out_channels)`` under ``calibration``; of a multi-label
    task, of every counted (pixel, label) pair as one binary pixel."""
    logits = calibration.apply(logits, channel_axis=-1)
    if task.multilabel:
        counted = targets != IGNORE_INDEX
        logits, targets, task = logits[counted][:, None], targets[counted], Task(2)
    probs = task.probabilities(logits.T[None, :, :, None])
    return expected_calibration_error(probs, targets[None, :, None]) or 0.0


def _defined(choice: ThresholdChoice) -> float | None:
    return None if math.isnan(choice.score) else choice.score


def _text(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
