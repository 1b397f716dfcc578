"""Issue 15, calibration in training and evaluation: the end of training fits a temperature (and a
binary threshold) on val into best.pt / ema.pt; evaluate reports the ECE before and after the
stored temperature, risk-coverage on predictive entropy and a per-image uncertainty score."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.data.datasets.synthetic import SyntheticSource
from unetkit.evaluation.calibration import model_calibration, most_uncertain
from unetkit.evaluation.evaluate import evaluate_source, write_evaluation
from unetkit.inference.calibration import fit_calibration, store_calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.calibration import CalibrationHistogram
from unetkit.training.calibrate import threshold_metric

TINY = [
    "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--no-progress", "--seed", "5",
    "--precision", "fp32", "--no-channels-last",
]  # fmt: skip
TINY_KEYS = ["data.synthetic_count=16", "model.options.base_width=4", "model.options.depth=2"]
LINE = re.compile(
    r"calibration of best\.pt: T = \d+\.\d\d, bias [+-]\d+\.\d\d, threshold 0\.\d\d "
    r"\(val \w+ \d\.\d\d -> \d\.\d\d, ECE \d\.\d{3} -> \d\.\d{3}\)"
)
FAST_EVAL = ["eval.boundary=false", "eval.instances=false"]


def _train(out, capsys, *keys: str) -> str:
    code = main(["train", *TINY, "--out", str(out), *TINY_KEYS, *FAST_EVAL, *keys])
    assert code == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """One binary run with EMA, its printed output kept (a module fixture cannot take capsys)."""
    out = tmp_path_factory.mktemp("binary") / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(
            ["train", *TINY, "--out", str(out), *TINY_KEYS, *FAST_EVAL]
            + ["task.num_classes=2", "train.ema=0.9"]
        )
    assert code == 0
    return out, buffer.getvalue()


def test_training_stores_a_fitted_calibration_in_best_and_ema(binary_run):
    out, printed = binary_run
    assert LINE.search(printed), printed
    assert "calibration of ema.pt: T = " in printed
    record = json.loads((out / "calibration.json").read_text())
    for name in ("best.pt", "ema.pt"):
        stored = load_checkpoint(out / "checkpoints" / name)["calibration"]
        assert stored == record[name]["calibration"]
        assert stored["temperature"] > 0 and 0 < stored["threshold"] < 1
        assert len(stored["bias"]) == 1  # binary: one sigmoid channel, fitted with T
    assert "calibration" not in load_checkpoint(out / "checkpoints" / "last.pt")
    # the final test measured the stored calibration; its masks are the raw model's at the
    # task's threshold, as `unetkit evaluate` gives them
    metrics = json.loads((out / "metrics.json").read_text())
    stored = load_checkpoint(out / "checkpoints" / "best.pt")["calibration"]
    assert metrics["calibration"]["temperature"] == pytest.approx(stored["temperature"])
    assert metrics["calibration"]["threshold"] == pytest.approx(stored["threshold"])
    assert metrics["calibration"]["bias"] == pytest.approx(stored["bias"])
    assert metrics["threshold"] == 0.5


def test_calibrate_false_stores_nothing_and_reports_t_one(tmp_path, capsys):
    printed = _train(tmp_path / "run", capsys, "eval.calibrate=false")
    assert "calibration: off (eval.calibrate=false)" in printed
    assert "calibration" not in load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert not (tmp_path / "run" / "calibration.json").exists()
    section = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibration"]
    assert section["temperature"] == 1.0 and section["threshold"] is None  # multi-class
    assert section["before"] == section["after"]


def _over_confident(binary_run, path, scale: float = 8.0) -> None:
    """best.pt with its head (the logits) multiplied by ``scale`` and no calibration."""
    checkpoint = load_checkpoint(binary_run[0] / "checkpoints" / "best.pt")
    checkpoint.pop("calibration")
    for key in ("head.weight", "head.bias"):
        checkpoint["model"][key] = checkpoint["model"][key] * scale
    save_checkpoint(checkpoint, path)


def _pairs(segmenter, source):
    for index in range(len(source)):
        image, mask = source.load(index)
        yield segmenter.predict_proba(image), mask


def test_evaluate_reports_ece_falling_under_a_stored_temperature(binary_run, tmp_path):
    path = tmp_path / "sharp.pt"
    _over_confident(binary_run, path)
    val = SyntheticSource(6, size=(32, 32), num_classes=2, seed=11)
    test = SyntheticSource(5, size=(32, 32), num_classes=2, seed=12)  # the model's size
    raw = Segmenter.from_loaded(model_from_checkpoint(path), "cpu", 4)
    calibration = fit_calibration(_pairs(raw, val), raw.task, metric="dice")
    assert calibration.temperature > 1.5  # the head was sharpened 8 times
    store_calibration(path, calibration)

    segmenter = Segmenter.from_checkpoint(path, device="cpu", batch_size=4)
    assert model_calibration(segmenter.model).temperature == pytest.approx(calibration.temperature)
    evaluation = evaluate_source(segmenter, test, progress=False)
    section = evaluation.metrics["calibration"]
    assert section["temperature"] == pytest.approx(calibration.temperature)
    assert section["threshold"] == pytest.approx(calibration.threshold)
    assert section["after"]["ece"] < section["before"]["ece"]

    # before: the raw model's ECE (probabilities tempered back in the same pass), by hand; exact
    # where the probabilities are not resized (resizing them does not commute with tempering)
    by_hand = CalibrationHistogram(2)
    for probs, mask in _pairs(raw, test):
        by_hand.update(probs, mask)
    assert section["before"]["ece"] == pytest.approx(by_hand.ece(), abs=1e-6)
    untempered = evaluate_source(raw, test, progress=False).metrics["calibration"]
    assert untempered["temperature"] == 1.0 and untempered["before"] == untempered["after"]
    # a raw Segmenter given the stored calibration measures the same (the final test's way), up
    # to float32 resolution: tempering a raw probability near 1 moves some pixels across bins
    measured = evaluate_source(raw, test, progress=False, calibration=calibration).metrics
    for side in ("before", "after"):
        expected = section[side]["ece"]
        assert measured["calibration"][side]["ece"] == pytest.approx(expected, abs=2e-3)

    written = write_evaluation(evaluation, tmp_path / "eval")
    metrics = json.loads(written["metrics"].read_text())
    for side in ("before", "after"):
        assert {"ece", "mce", "table"} <= set(metrics["calibration"][side])
    risk = metrics["uncertainty"]["risk_coverage"]
    assert {"errors_removed", "errors_removed_random", "curve"} <= set(risk)
    assert risk["errors_removed_random"] == pytest.approx(0.1)
    with open(written["per_image"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(test) and all(0 <= float(r["uncertainty"]) <= 1 for r in rows)
    report = written["report"].read_text()
    assert "Reliability diagram" in report and "Risk-coverage curve" in report
    assert "Most uncertain 5" in report


def test_the_per_image_score_is_the_mean_entropy_of_the_valid_pixels(binary_run):
    segmenter = Segmenter.from_checkpoint(binary_run[0] / "checkpoints" / "best.pt", "cpu", 4)
    source = SyntheticSource(3, size=(32, 32), num_classes=2, seed=4)
    rows = evaluate_source(segmenter, source, progress=False).rows
    for row, (probs, mask) in zip(rows, _pairs(segmenter, source), strict=True):
        p = probs.astype(np.float64).clip(1e-300, 1)
        entropy = -(p * np.log(p)).sum(axis=0) / np.log(2)
        assert row["uncertainty"] == pytest.approx(entropy[mask != 255].mean(), abs=1e-5)
    order = most_uncertain(rows, 2)
    scores = sorted((row["uncertainty"] for row in rows), reverse=True)
    assert [rows[i]["uncertainty"] for i in order] == scores[:2]


@pytest.mark.parametrize(
    ("monitor", "metric"),
    [("val_foreground_dice", "foreground_dice"), ("val_ema_mean_iou", "mean_iou"),
     ("val_loss", "foreground_dice")],
)  # fmt: skip
def test_the_threshold_is_tuned_for_the_monitored_metric(monitor, metric):
    assert threshold_metric(monitor) == metric


def test_unetkit_evaluate_measures_the_stored_calibration_as_the_final_test(binary_run, tmp_path):
    out, _ = binary_run
    best = out / "checkpoints" / "best.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            ["evaluate", "--checkpoint", str(best), "--out", str(tmp_path), "--no-progress"]
        )
    assert code == 0
    final = json.loads((out / "metrics.json").read_text())["calibration"]
    again = json.loads((tmp_path / "metrics.json").read_text())["calibration"]
    stored = load_checkpoint(best)["calibration"]["temperature"]
    assert again["temperature"] == pytest.approx(stored) and stored != 1.0
    assert again["after"]["ece"] == pytest.approx(final["after"]["ece"], abs=1e-6)
