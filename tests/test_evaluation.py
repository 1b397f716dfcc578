"""SplitMetrics and the evaluation outputs: sections, per-image rows, CSV files, history."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from unetkit.config import EvalConfig
from unetkit.evaluation.evaluate import Evaluation, write_evaluation, write_per_image_csv
from unetkit.metrics.split import SplitMetrics
from unetkit.metrics.summary import summarise
from unetkit.tasks import IGNORE_INDEX
from unetkit.training.history import read_history_csv, write_history_csv

NAMES = ["background", "cell", "nucleus"]


def one_hot_probs(labels: np.ndarray, num_classes: int, confidence: float = 0.9) -> np.ndarray:
    """Probabilities whose argmax is ``labels``."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *labels.shape), rest, dtype=np.float32)
    for c in range(num_classes):
        probs[c][labels == c] = confidence
    return probs


def blobs(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """A class-id mask with a few rectangles of classes 1 and 2."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.uint8)
    for c in (1, 1, 2, 2):
        top, left = rng.integers(0, shape[0] - 10), rng.integers(0, shape[1] - 10)
        mask[top : top + rng.integers(4, 10), left : left + rng.integers(4, 10)] = c
    return mask


def test_perfect_predictions_score_perfectly_in_every_family():
    metrics = SplitMetrics(NAMES, binary=False)
    for seed in range(3):
        target = blobs(seed)
        metrics.add(f"img{seed}", one_hot_probs(target, 3), target, target)
    result = metrics.result()
    assert result["dataset"]["mean_iou"] == 1.0
    assert result["per_image"]["mean_iou"] == {"mean": 1.0, "std": 0.0, "images": 3}
    assert result["threshold_free"]["mean_roc_auc"] == pytest.approx(1.0)
    assert result["threshold_free"]["mean_average_precision"] == pytest.approx(1.0)
    assert result["instance"]["map"] == pytest.approx(1.0)
    assert result["instance"]["pq"] == pytest.approx(1.0)
    assert result["boundary"]["hd95"]["mean"] == 0.0
    assert result["boundary"]["boundary_iou"]["mean"] == 1.0
    assert result["boundary"]["cldice"]["mean"] == pytest.approx(1.0)
    assert [row["name"] for row in result["boundary"]["per_class"]] == ["cell", "nucleus"]
    json.dumps(result, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_sections_agree_with_the_pooled_summary_and_ignore_pixels():
    metrics = SplitMetrics(NAMES, False, EvalConfig(boundary=False, instances=False))
    targets, predictions = [], []
    for seed in range(4):
        target, prediction = blobs(seed), blobs(seed + 10)
        target[:5] = IGNORE_INDEX
        prediction[:5] = 2  # wrong everywhere the target is ignored: must not count
        metrics.add(str(seed), one_hot_probs(prediction, 3), prediction, target)
        targets.append(target)
        predictions.append(prediction)
    result = metrics.result()
    all_targets, all_predictions = np.stack(targets), np.stack(predictions)
    keep = all_targets != IGNORE_INDEX
    pooled = np.zeros((3, 3), dtype=np.int64)
    np.add.at(pooled, (all_targets[keep], all_predictions[keep]), 1)
    expected = summarise(pooled, NAMES)
    assert result["dataset"]["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert result["dataset"]["confusion_matrix"] == pooled.tolist()
    assert "boundary" not in result and "instance" not in result
    histogram_pixels = sum(row["positives"] for row in result["threshold_free"]["per_class"])
    assert histogram_pixels == int(keep.sum())


def test_binary_rows_rank_by_foreground_iou_and_leave_undefined_blank(tmp_path):
    metrics = SplitMetrics(["background", "vessel"], binary=True)
    empty = np.zeros((16, 16), dtype=np.uint8)
    vessel = empty.copy()
    vessel[4:12, 7:9] = 1
    metrics.add("empty", one_hot_probs(empty, 2), empty, empty)
    metrics.add("vessel", one_hot_probs(vessel, 2), vessel, vessel)
    rows = metrics.rows()
    assert metrics.ranking_key() == "foreground_iou"
    assert rows[0]["name"] == "empty" and rows[0]["foreground_iou"] is None
    assert rows[0]["hd95"] is None and rows[1]["hd95"] == 0.0
    assert rows[1]["foreground_iou"] == 1.0 and rows[1]["height"] == 16
    assert set(metrics.curves()) == {"vessel"}
    path = write_per_image_csv(rows, tmp_path / "per_image.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["foreground_iou"] == "" and written[1]["foreground_iou"] == "1"
    assert "iou/vessel" in written[0] and "cldice/vessel" in written[0]


def test_split_metrics_explains_bad_input():
    metrics = SplitMetrics(NAMES, binary=False)
    with pytest.raises(ValueError, match="no image was added"):
        metrics.result()
    with pytest.raises(ValueError, match="do not fit a 3-class mask"):
        metrics.add("x", np.zeros((2, 4, 4), np.float32), np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="min_component_area"):
        SplitMetrics(NAMES, False, EvalConfig(min_component_area=-1))


def test_history_csv_round_trip(tmp_path):
    rows = [
        {"epoch": 1, "lr": 0.003, "train_loss": 0.5, "val_mean_iou": None, "seconds": 1.5},
        {"epoch": 2, "lr": 1e-05, "train_loss": 0.25, "val_mean_iou": 0.75, "seconds": 2.0},
    ]
    write_history_csv(rows, tmp_path / "history.csv")
    read = read_history_csv(tmp_path / "history.csv")
    assert read == rows
    assert type(read[0]["epoch"]) is int and type(read[1]["seconds"]) is float


def test_cldice_can_be_switched_off_and_the_report_still_renders(tmp_path):
    options = EvalConfig(cldice=False, ci=True, ci_resamples=20, panels=0)
    metrics = SplitMetrics(NAMES, False, options)
    for seed in range(3):
        target, prediction = blobs(seed), blobs(seed + 20)
        metrics.add(f"img{seed}", one_hot_probs(prediction, 3), prediction, target)
    result = metrics.result()
    assert "cldice" not in result["boundary"] and "hd95" in result["boundary"]
    assert "per_image.cldice" not in result["confidence_intervals"]["intervals"]
    assert "per_image.hd95" in result["confidence_intervals"]["intervals"]
    assert not any(key.startswith("cldice") for key in metrics.rows()[0])
    evaluation = Evaluation({"split": "test", "num_images": 3, "task": "multiclass",
                             "class_names": NAMES, **result}, metrics.rows())  # fmt: skip
    written = write_evaluation(evaluation, tmp_path, options)
    assert json.loads(written["metrics"].read_text())["boundary"]["hd95"]["images"] == 3
    assert "HD95" in written["report"].read_text()
