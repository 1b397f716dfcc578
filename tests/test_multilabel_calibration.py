"""Calibration of multi-label tasks: one temperature over every (pixel, label) pair, one tuned
threshold per label, applied by predict / serve / export, measured by evaluate, averaged by
ensembles."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_multilabel import TINY

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.main import main
from unetkit.evaluation.calibration import reliability_inputs
from unetkit.inference.calibrated import load_model
from unetkit.inference.calibration import (
    Calibration,
    LogitSample,
    fit_calibration,
    fit_temperature,
    logits_from_probabilities,
    store_calibration,
    temper_probabilities,
    tune_label_thresholds,
)
from unetkit.inference.segmenter import Segmenter
from unetkit.losses.build import build_loss
from unetkit.metrics.bootstrap import bootstrap_intervals, paired_difference
from unetkit.metrics.calibration import expected_calibration_error
from unetkit.models import build_model
from unetkit.precision import Execution
from unetkit.precision_probe import training_step_timer
from unetkit.tasks import IGNORE_INDEX, Task
from unetkit.training.calibrate import calibration_line, label_metric

LABELS = Task(2, multilabel=True)


def _bernoulli(seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(4, 2, 32, 32)`` and 0/1 targets drawn from their own sigmoid: calibrated."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 2, 32, 32, generator=generator) * scale
    targets = (torch.rand(logits.shape, generator=generator) < torch.sigmoid(logits)).long()
    return logits, targets


# --- the fit --------------------------------------------------------------------------------------


def test_the_temperature_of_logits_three_times_too_sharp_is_three():
    logits, targets = _bernoulli()
    targets[0, 0, :8] = IGNORE_INDEX  # label 0 not counted there: label 1 still is
    assert fit_temperature(3.0 * logits, targets, LABELS) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(logits, targets, LABELS) == pytest.approx(1.0, rel=0.05)


def test_the_sample_keeps_a_pixel_while_any_of_its_labels_counts():
    logits, targets = _bernoulli()
    targets[0, 0, :8] = IGNORE_INDEX
    targets[0, :, 8:12] = IGNORE_INDEX  # no label counts in these 4 rows
    sample = LogitSample(LABELS, per_image=10**6)
    sample.add(logits[0], targets[0])
    assert sample.logits.shape == sample.targets.shape == (32 * 32 - 4 * 32, 2)
    assert int((sample.targets == IGNORE_INDEX).sum()) == 8 * 32  # label 0's, kept as ignored


def test_each_label_gets_the_threshold_of_its_own_best_dice():
    # label 0: foreground at 0.3, background at 0.1 -> any cut in (0.1, 0.3] is perfect;
    # label 1: foreground at 0.85, background at 0.72 -> a cut in (0.72, 0.85]; label 2 is empty
    probs = torch.tensor([[0.3, 0.85, 0.2]] * 5 + [[0.1, 0.72, 0.6]] * 5)
    targets = torch.tensor([[1, 1, 0]] * 5 + [[0, 0, 0]] * 5)
    first, second, empty = tune_label_thresholds(probs, targets, "dice", default=0.45)
    assert 0.1 < first.threshold <= 0.3 and first.score == 1.0
    assert 0.72 < second.threshold <= 0.85 and second.score == 1.0
    assert empty.threshold == 0.45 and math.isnan(empty.score)  # nothing to tune on: kept


def test_fit_calibration_of_a_multilabel_split_tunes_every_label():
    logits, targets = _bernoulli(1)
    probs = torch.sigmoid(2.0 * logits)  # twice too sharp
    calibration = fit_calibration(list(zip(probs, targets, strict=True)), LABELS, "dice")
    assert calibration.temperature == pytest.approx(2.0, rel=0.05)
    assert calibration.threshold is None and len(calibration.label_thresholds) == 2


def test_probabilities_go_back_to_logits_and_temper_per_label():
    logits, _ = _bernoulli()
    probs = torch.sigmoid(logits[0])
    back = logits_from_probabilities(probs, LABELS).float()
    torch.testing.assert_close(back, logits[0], atol=1e-4, rtol=1e-4)
    tempered = temper_probabilities(probs, 2.0, LABELS)
    torch.testing.assert_close(tempered, torch.sigmoid(logits[0] / 2.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("monitor", "metric"),
    [("val_mean_iou", "foreground_iou"), ("val_ema_mean_dice", "foreground_dice"),
     ("val_loss", "foreground_dice")],
)  # fmt: skip
def test_each_label_is_tuned_for_its_part_of_the_monitored_mean(monitor, metric):
    assert label_metric(monitor) == metric


# --- the task and the stored record ---------------------------------------------------------------


def test_each_label_is_cut_at_its_own_threshold():
    task = Calibration(label_thresholds=(0.3, 0.7)).with_threshold(LABELS)
    probs = torch.full((1, 2, 1, 1), 0.5)
    assert task.labels_from_probabilities(probs).flatten().tolist() == [1, 0]
    assert task.labels(torch.logit(probs)).flatten().tolist() == [1, 0]
    assert task.cuts == [0.3, 0.7] and LABELS.cuts == [0.5, 0.5] and Task(2).cuts is None
    assert Task.from_dict(task.to_dict()) == task
    # one threshold (--threshold) cuts every label alike again
    assert Calibration(threshold=0.6).with_threshold(task).cuts == [0.6, 0.6]


def test_per_label_thresholds_are_refused_where_they_do_not_fit():
    with pytest.raises(ValueError, match="one value strictly between 0 and 1 per label"):
        Task(3, multilabel=True, label_thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="apply to a multi-label task"):
        Task(2, label_thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="apply to a multi-label task; this one is binary"):
        Calibration(label_thresholds=(0.4, 0.6)).with_threshold(Task(2))
    with pytest.raises(ValueError, match="each lie strictly between 0 and 1"):
        Calibration(label_thresholds=(0.4, 1.0))


def test_the_record_reads_back_and_older_records_still_do():
    calibration = Calibration(1.3, label_thresholds=(0.2, 0.6))
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert Calibration(1.3, 0.4).to_dict() == {"temperature": 1.3, "threshold": 0.4}


def test_the_speed_probe_hands_a_multilabel_loss_one_map_per_label():
    model = build_model("unet", 3, LABELS.out_channels, base_width=4, depth=2)
    criterion = build_loss("ce,dice", LABELS)
    timer = training_step_timer(model, criterion, (2, 3, 16, 16), LABELS, torch.device("cpu"))
    assert 0 < timer(Execution()) < math.inf


def test_a_paired_difference_over_labels_by_hand():
    # two images, two labels; per label a 2x2 [[tn, fp], [fn, tp]]
    perfect = np.array([[[5, 0], [0, 5]], [[5, 0], [0, 5]]])
    half = np.array([[[5, 0], [5, 5]], [[5, 5], [0, 5]]])  # IoU 0.5 on each label
    first = np.stack([perfect, perfect])  # (N=2, L=2, 2, 2)
    second = np.stack([half, half])
    result = paired_difference(first, second, False, "mean_iou", resamples=50)
    assert result["difference"] == pytest.approx(0.5)
    assert result["interval"] == pytest.approx([0.5, 0.5]) and result["share_above_zero"] == 1.0


def test_bootstrap_intervals_of_the_mean_over_labels_by_hand():
    # every image alike: label 0 perfect (IoU 1), label 1 IoU 0.5 -> mean IoU 0.75 in every resample
    image = np.array([[[5, 0], [0, 5]], [[5, 5], [0, 5]]])
    matrices = np.stack([image] * 4)
    per_image = {"mean_iou": np.array([0.75, 0.75, 0.75, math.nan])}
    section = bootstrap_intervals(matrices, False, ["mean_iou", "mean_dice"], per_image, 20)
    intervals = section["intervals"]
    assert intervals["dataset.mean_iou"] == pytest.approx([0.75, 0.75])
    assert intervals["dataset.mean_dice"] == pytest.approx([(1.0 + 2 / 3) / 2] * 2)
    assert intervals["per_image.mean_iou"] == pytest.approx([0.75, 0.75])


# --- end to end: train, predict, serve, export, evaluate, ensembles -------------------------------


@pytest.fixture(scope="module")
def calibrated_runs(tmp_path_factory):
    """A tiny multi-label run (calibrated at the end of training) and a copy whose checkpoint
    holds a known calibration, so every cut below is checkable by hand."""
    out = tmp_path_factory.mktemp("ml-calibrated")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["train", "--out", str(out / "run"), *TINY]) == 0
    known = out / "known.pt"
    shutil.copy(out / "run" / "checkpoints" / "best.pt", known)
    store_calibration(known, Calibration(1.5, label_thresholds=(0.2, 0.5, 0.8)))
    return out, printed.getvalue(), known


def test_training_stores_one_temperature_and_a_threshold_per_label(calibrated_runs):
    out, printed, _ = calibrated_runs
    record = json.loads((out / "run" / "calibration.json").read_text())["best.pt"]
    stored = load_checkpoint(out / "run" / "checkpoints" / "best.pt")["calibration"]
    assert stored == record["calibration"] and stored["threshold"] is None
    assert len(stored["label_thresholds"]) == 3 and stored["temperature"] > 0
    metric = record["metric"]
    assert metric["name"] == "mean_iou" and list(metric["labels"]) == ["cell", "nucleus", "mark"]
    cuts = [row["threshold"] for row in metric["labels"].values()]
    assert cuts == stored["label_thresholds"]
    assert calibration_line(record) in printed and "thresholds" in calibration_line(record)


def test_predict_cuts_each_label_of_the_tempered_probabilities_at_its_own(calibrated_runs):
    _, _, known = calibrated_runs
    # at the model's own input size: resizing does not commute with tempering
    picture = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    raw = Segmenter.from_loaded(model_from_checkpoint(known), "cpu", 2).predict_proba(picture)
    calibrated = Segmenter.from_checkpoint(known, device="cpu")
    assert calibrated.task.label_thresholds == (0.2, 0.5, 0.8)
    tempered = torch.sigmoid(torch.logit(torch.from_numpy(raw).double()) / 1.5).numpy()
    np.testing.assert_allclose(calibrated.predict_proba(picture), tempered, atol=1e-4)
    expected = tempered > np.array([0.2, 0.5, 0.8])[:, None, None]
    assert (calibrated.predict(picture) == expected).mean() > 0.999  # a pixel at a cut may round
    overridden = Segmenter.from_checkpoint(known, threshold=0.3, device="cpu")
    assert overridden.task.cuts == [0.3, 0.3, 0.3]


def test_serve_and_export_carry_the_label_thresholds(calibrated_runs, tmp_path):
    from test_serve import get_json, running

    from unetkit.inference.onnx_backend import read_metadata
    from unetkit.serve import build_server

    _, _, known = calibrated_runs
    server = build_server(known, port=0, device="cpu", batch_size=2, log_level="warning")
    with running(server) as url:
        status, info = get_json(f"{url}/model")
    assert status == 200 and info["label_thresholds"] == [0.2, 0.5, 0.8]
    onnx_file = tmp_path / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["export", "--checkpoint", str(known), "--format", "onnx", "--out", str(onnx_file)]
        assert main(args) == 0
    metadata = read_metadata(onnx_file)
    assert metadata["task"]["label_thresholds"] == [0.2, 0.5, 0.8]
    assert metadata["calibrated"]["label_thresholds"] == [0.2, 0.5, 0.8]


def test_evaluate_measures_every_label_pixel_as_a_binary_pixel(calibrated_runs, tmp_path):
    out, _, known = calibrated_runs
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["evaluate", "--checkpoint", str(known), "--out", str(tmp_path), "--no-progress"]
        assert main([*args, "eval.boundary=false", "eval.instances=false"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] == 1.5 and calibration["threshold"] == [0.2, 0.5, 0.8]
    before, after = calibration["before"], calibration["after"]
    assert before["measure"] == after["measure"] == "foreground"
    pixels = sum(row["height"] * row["width"] for row in _rows(tmp_path))
    assert before["pixels"] == 3 * pixels  # three labels, none ignored in the synthetic masks
    assert before["ece"] != after["ece"]
    assert 0 < metrics["uncertainty"]["risk_coverage"]["errors_removed"] <= 1


def test_ci_bounds_the_means_over_labels(calibrated_runs, tmp_path):
    _, _, known = calibrated_runs
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["evaluate", "--checkpoint", str(known), "--out", str(tmp_path), "--no-progress"]
        fast = ["eval.boundary=false", "eval.instances=false", "eval.ci_resamples=50"]
        assert main([*args, "--ci", *fast]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    intervals = metrics["confidence_intervals"]["intervals"]
    assert set(intervals) == {
        "dataset.mean_iou", "dataset.mean_dice", "per_image.mean_iou", "per_image.mean_dice"
    }  # fmt: skip
    low, high = intervals["dataset.mean_iou"]
    assert 0.0 <= low <= high <= 1.0
    assert "95% CI" in (tmp_path / "report.html").read_text()


def test_reliability_inputs_turn_labels_into_binary_pixels_by_hand():
    probs = np.array([[[0.9, 0.2]], [[0.4, 0.7]]], dtype=np.float32)  # (L=2, H=1, W=2)
    target = np.array([[[1, 0]], [[IGNORE_INDEX, 1]]])
    pairs, flat = reliability_inputs(LABELS, probs, target)
    assert pairs.shape == (2, 2, 2) and flat.tolist() == [[1, 0], [IGNORE_INDEX, 1]]
    # three counted pairs: 0.9 right (|1 - 0.9|), 0.2 (|0 - 0.2|), 0.7 (|1 - 0.7|), one per bin
    ece = expected_calibration_error(pairs, flat, bins=10)
    assert ece == pytest.approx((0.1 + 0.2 + 0.3) / 3)


def test_an_ensemble_averages_the_label_thresholds_and_evaluate_scores_its_members(
    calibrated_runs, tmp_path
):
    out, _, known = calibrated_runs
    other = tmp_path / "other.pt"
    shutil.copy(known, other)
    store_calibration(other, Calibration(1.0, label_thresholds=(0.4, 0.3, 0.6)))
    loaded = load_model([known, other])
    assert loaded.task.label_thresholds == pytest.approx((0.3, 0.4, 0.7))
    assert load_model([known, other], threshold=0.45).task.cuts == [0.45] * 3
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["evaluate", "--checkpoint", str(known), str(other), "--out", str(tmp_path / "e")]
        assert main([*args, "--no-progress", "eval.boundary=false", "eval.instances=false"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    section = metrics["ensemble"]
    assert [m["calibration"]["temperature"] for m in section["members"]] == [1.5, 1.0]
    assert section["versus_best_member"]["metric"] == "mean_iou"
    assert metrics["calibration"]["threshold"] == pytest.approx([0.3, 0.4, 0.7])
    # same weights: the ensemble's masks are its members' (at the same raw threshold)
    assert section["versus_best_member"]["difference"] == pytest.approx(0.0, abs=1e-9)


def _rows(folder):
    import csv

    with open(folder / "per_image.csv") as handle:
        return [
            {"height": int(row["height"]), "width": int(row["width"])}
            for row in csv.DictReader(handle)
        ]


def test_a_picture_file_predicts_with_the_stored_cuts(calibrated_runs, tmp_path):
    _, _, known = calibrated_runs
    picture = np.random.default_rng(3).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "x.png")
    args = ["predict", "--checkpoint", str(known), "--input", str(tmp_path / "x.png")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    expected = Segmenter.from_checkpoint(known, device="cpu").predict(picture)
    for index, label in enumerate(("cell", "nucleus", "mark")):
        mask = np.asarray(Image.open(tmp_path / "out" / label / "x.png")) > 0
        assert (mask == expected[index].astype(bool)).mean() > 0.999
