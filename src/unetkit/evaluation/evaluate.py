"""Evaluate a Segmenter on a split, at each mask's original resolution, and write what it found.

The model runs through the same :class:`~unetkit.inference.segmenter.Segmenter` that ``predict``
uses, so the numbers describe the path a deployed model takes. Every number comes from
:class:`~unetkit.metrics.split.SplitMetrics`; this module only drives it and writes the outputs:
``metrics.json``, ``per_image.csv`` and ``report.html``. A multi-label task is scored label by
label by :class:`~unetkit.metrics.multilabel.MultilabelMetrics`, which reads the same way.
Calibration (the ECE before and after the stored calibration) and uncertainty (risk-coverage,
a per-image score) come from :mod:`unetkit.evaluation.calibration`, in the same pass.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetkit.config import EvalConfig
from unetkit.data.sources import SampleSource
from unetkit.evaluation.calibration import (
    UNCERTAINTY_COLUMN,
    after_label,
    calibration_check,
    most_uncertain,
)
from unetkit.evaluation.members import MemberScores
from unetkit.evaluation.panels import Panel
from unetkit.evaluation.report import write_report
from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.multilabel import RANKING_KEY, split_metrics
from unetkit.metrics.split import BOUNDARY_METRICS, ranking_key
from unetkit.metrics.summary import format_table
from unetkit.tasks import Task

MOST_UNCERTAIN = 5  # images the report shows by their uncertainty
KEPT_MASK_BYTES = 256 * 2**20  # predicted masks kept for the report's panels, at most


@dataclass
class Evaluation:
    """What one evaluation produced: the metrics, one row per image, and what the report shows."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    best: list[Panel] = field(default_factory=list)
    worst: list[Panel] = field(default_factory=list)
    ranking_metric: str = "mean_iou"
    uncertain: list[Panel] = field(default_factory=list)  # by mean predictive entropy


def evaluate_source(
    segmenter: Segmenter,
    source: SampleSource,
    split: str = "test",
    options: EvalConfig | None = None,
    progress: bool = True,
    calibration: Calibration | None = None,
    members: MemberScores | None = None,
) -> Evaluation:
    """Metrics of ``segmenter`` on every sample of ``source`` (see :mod:`unetkit.metrics.split`).

    ``calibration``: the calibration the ``calibration`` section measures (default: the one the
    Segmenter applies; see :mod:`unetkit.evaluation.calibration`). It changes no other number.
    ``members``: the segmenter is a PyTorch ensemble of raw members; score each beside it (the
    ``ensemble`` section, :mod:`unetkit.evaluation.members`).
    """
    if len(source) == 0:
        raise ValueError(f"the {split} split is empty: there is nothing to evaluate")
    options = options or EvalConfig()
    started = time.perf_counter()
    metrics = split_metrics(segmenter.task, segmenter.class_names, options)
    check = (
        members.ensemble_check()
        if members is not None
        else calibration_check(segmenter.task, segmenter.model, calibration)
    )
    inference_seconds = 0.0
    kept = KeptMasks(KEPT_MASK_BYTES if options.report and options.panels > 0 else 0)
    bar = tqdm(total=len(source), desc=f"evaluate {split}", unit="img", disable=not progress)
    for names, images, targets in _batches(source, segmenter.batch_size):
        tick = time.perf_counter()
        outputs = _predicted(segmenter, images, members is not None)
        inference_seconds += time.perf_counter() - tick
        for name, (probs, prediction, each), (mask, objects) in zip(
            names, outputs, targets, strict=True
        ):
            metrics.add(name, probs, prediction, mask, objects)
            kept.add(prediction)
            calibrated = None if members is None else members.add(name, each, mask, objects)
            if check is not None:
                check.add(probs, prediction, mask, calibrated)
        bar.update(len(images))
    bar.close()
    result = {
        "split": split,
        "num_images": len(source),
        "task": segmenter.task.kind,
        "class_names": segmenter.class_names,
        **({"threshold": segmenter.task.threshold} if _thresholded(segmenter.task) else {}),
        **({"label_thresholds": segmenter.task.cuts} if segmenter.task.label_thresholds else {}),
        "inference": {  # the precision and layout it ran in, and the config that reproduces it
            **segmenter.execution_choice.to_dict(),
            "config": segmenter.inference_config().to_dict(),
        },
        **metrics.result(),
        **(check.sections() if check is not None else {}),
    }
    if members is not None:
        result["ensemble"] = members.section(metrics.matrices)
    rows = metrics.rows()
    if check is not None:
        check.add_columns(rows)
    evaluation = Evaluation(result, rows, metrics.curves(), ranking_metric=metrics.ranking_key())
    if options.report and options.panels > 0:
        evaluation.best, evaluation.worst = _extreme_panels(
            segmenter, source, evaluation, options.panels, kept
        )
        evaluation.uncertain = _uncertain_panels(segmenter, source, evaluation.rows, kept)
    total = time.perf_counter() - started
    result["seconds"] = round(total, 3)  # the rest is loading and metrics
    result["seconds_inference"] = round(inference_seconds, 3)
    return evaluation


def _predicted(
    segmenter: Segmenter, images: list[np.ndarray], with_members: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(probabilities, mask, members' probabilities or None)`` per image."""
    if with_members:
        return [(mean, mask, each) for each, mean, mask in segmenter.predict_members(images)]
    return [(probs, mask, None) for probs, mask in segmenter.predict_with_proba(images)]


def write_evaluation(
    evaluation: Evaluation,
    out_dir: Path,
    options: EvalConfig | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, and unless ``options.report`` is off ``per_image.csv`` and
    ``report.html``."""
    options = options or EvalConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"metrics": out_dir / "metrics.json"}
    written["metrics"].write_text(json.dumps(evaluation.metrics, indent=2))
    if options.report:
        written["per_image"] = write_per_image_csv(evaluation.rows, out_dir / "per_image.csv")
        written["report"] = write_report(
            evaluation.metrics,
            out_dir / "report.html",
            curves=evaluation.curves or None,
            best=evaluation.best,
            worst=evaluation.worst,
            ranking_metric=evaluation.ranking_metric,
            history=history,
            uncertain=evaluation.uncertain,
        )
    return written


def write_per_image_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per image; an empty cell is an undefined value."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return path


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


class KeptMasks:
    """The pass's predicted masks, in order, while they fit in ``limit`` bytes, so the report's
    panels need not predict their images a second time (with TTA and windows that was half the
    evaluation's time); past the limit, the rest are predicted again when shown."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.masks: list[np.ndarray] = []
        self.full = limit <= 0

    def add(self, mask: np.ndarray) -> None:
        self.full = self.full or self.size + mask.nbytes > self.limit
        if not self.full:
            self.masks.append(mask)
            self.size += mask.nbytes

    def get(self, index: int) -> np.ndarray | None:
        return self.masks[index] if index < len(self.masks) else None


def _extreme_panels(
    segmenter: Segmenter,
    source: SampleSource,
    evaluation: Evaluation,
    count: int,
    kept: KeptMasks,
) -> tuple[list[Panel], list[Panel]]:
    """The ``count`` best and worst images by the ranking metric, for the report."""
    key = evaluation.ranking_metric
    scored = [(row[key], i) for i, row in enumerate(evaluation.rows) if row.get(key) is not None]
    scored.sort()
    worst = [i for _, i in scored[:count]]
    best = [i for _, i in reversed(scored[-count:])]
    panels = {
        i: _panel(segmenter, source, i, evaluation.rows[i][key], kept) for i in set(best + worst)
    }
    return [panels[i] for i in best], [panels[i] for i in worst]


def _uncertain_panels(
    segmenter: Segmenter, source: SampleSource, rows: list[dict[str, Any]], kept: KeptMasks
) -> list[Panel]:
    """The most uncertain images (highest mean predictive entropy)."""
    return [
        _panel(segmenter, source, i, rows[i][UNCERTAINTY_COLUMN], kept)
        for i in most_uncertain(rows, MOST_UNCERTAIN)
    ]


def _panel(
    segmenter: Segmenter, source: SampleSource, index: int, score: float, kept: KeptMasks
) -> Panel:
    image, mask = source.load(index)
    prediction = kept.get(index)
    if prediction is None:  # not kept: predicted again, as the pass did
        prediction = segmenter.predict(image)
    return Panel(source.names[index], image, mask, prediction, score)


def _batches(
    source: SampleSource, batch_size: int
) -> Iterator[tuple[list[str], list[np.ndarray], list[tuple[np.ndarray, np.ndarray | None]]]]:
    """Names, images and (mask, object ids or None) of ``source``, ``batch_size`` at a time."""
    all_names = source.names
    names: list[str] = []
    images: list[np.ndarray] = []
    targets: list[tuple[np.ndarray, np.ndarray | None]] = []
    for index in range(len(source)):
        image, mask, objects = source.load_with_instances(index)
        names.append(all_names[index])
        images.append(image)
        targets.append((mask, objects))
        if len(images) == batch_size:
            yield names, images, targets
            names, images, targets = [], [], []
    if images:
        yield names, images, targets


def describe(metrics: dict[str, Any]) -> str:
    """The terminal summary: the pooled table, then one line per other section's headline."""
    lines = [format_table(metrics["dataset"]), ""]
    key = (
        RANKING_KEY if metrics["task"] == "multilabel" else ranking_key(metrics["task"] == "binary")
    )
    lines.append(f"per image: {key} {_mean_std(metrics['per_image'][key])}")
    free = metrics.get("threshold_free")
    if free:
        prefix = "" if metrics["task"] == "binary" else "mean_"
        lines.append(
            f"threshold-free: ROC AUC {_number(free[prefix + 'roc_auc'])}, "
            f"average precision {_number(free[prefix + 'average_precision'])}"
        )
    instance = metrics.get("instance")
    if instance:
        lines.append(
            f"instances: mAP@[.5:.95] {_number(instance['map'])}, mAP@.5 "
            f"{_number(instance['map_50'])}, PQ {_number(instance['pq'])}"
        )
    boundary = metrics.get("boundary")
    if boundary:
        names = [m for m in BOUNDARY_METRICS if m in boundary]
        lines.append(
            "boundary (per image): " + ", ".join(f"{m} {_mean_std(boundary[m])}" for m in names)
        )
    lines += _calibration_lines(metrics)
    lines += _ensemble_lines(metrics)
    intervals = metrics.get("confidence_intervals")
    if intervals:
        level = round(100 * intervals["level"])
        for name, bounds in intervals["intervals"].items():
            text = "undefined" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"
            lines.append(f"{level}% CI {name}: {text}")
    return "\n".join(lines)


def _calibration_lines(metrics: dict[str, Any]) -> list[str]:
    """The ECE before / after the stored calibration and the risk-coverage headline."""
    lines = []
    calibration = metrics.get("calibration")
    if calibration:
        before, after = calibration["before"]["ece"], calibration["after"]["ece"]
        lines.append(
            f"calibration: ECE {_number(before)} at T = 1, {_number(after)} calibrated "
            f"({after_label(calibration)})"
        )
    risk = (metrics.get("uncertainty") or {}).get("risk_coverage")
    if risk and risk["errors_removed"] is not None:
        lines.append(
            f"risk-coverage: referring the {risk['referred']:.0%} most uncertain pixels removes "
            f"{risk['errors_removed']:.1%} of the errors "
            f"(at random {risk['errors_removed_random']:.0%})"
        )
    return lines


def _ensemble_lines(metrics: dict[str, Any]) -> list[str]:
    """How many members, each one's score, and the ensemble's difference from the best."""
    section = metrics.get("ensemble")
    if not section:
        return []
    comparison = section["versus_best_member"]
    key, bounds = comparison["metric"], comparison["interval"]
    scores = ", ".join(_number(m["dataset"].get(key)) for m in section["members"])
    best = section["members"][section["best_member"]]["checkpoint"]
    text = "undefined" if bounds is None else f"[{bounds[0]:+.4f}, {bounds[1]:+.4f}]"
    level = round(100 * comparison["level"])
    return [
        f"ensemble of {len(section['members'])} members, pooled {key} each: {scores}",
        f"ensemble - best member ({best}): {comparison['difference']:+.4f} "
        f"({level}% paired bootstrap CI {text}, better in "
        f"{_number(comparison['share_above_zero'])} of resamples)",
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _mean_std(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f} (n={stats['images']})"


def _thresholded(task: Task) -> bool:
    """Whether the task's masks come from cutting sigmoids at ``task.threshold``."""
    return task.is_binary or task.multilabel
