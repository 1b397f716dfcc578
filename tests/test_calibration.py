"""Calibration: ECE by hand and against a plain NumPy loop, temperature recovery, threshold tuning,
the stored Calibration record, and ignore pixels left out everywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetkit.checkpoint import load_checkpoint, save_checkpoint
from unetkit.inference.calibration import (
    Calibration,
    LogitSample,
    fit_calibration,
    fit_temperature,
    logits_from_probabilities,
    store_calibration,
    temper_probabilities,
    threshold_from_histogram,
    tune_threshold,
)
from unetkit.metrics.calibration import (
    CalibrationHistogram,
    expected_calibration_error,
    reliability_diagram,
)
from unetkit.metrics.curves import ScoreHistogram
from unetkit.tasks import IGNORE_INDEX, Task

pytestmark = pytest.mark.usefixtures("one_thread")

X = IGNORE_INDEX


def as_image(rows: list[list[float]]) -> np.ndarray:
    """Pixel rows (P, C) as one image (C, 1, P)."""
    return np.asarray(rows, dtype=np.float64).T[:, None, :]


# --- ECE by hand: 4 counted pixels, 2 bins (edge 0.5) ---------------------------------------

# Binary, foreground probability: 0.2 0.4 | 0.6 0.9 with targets 0 1 | 1 1, one ignored pixel.
#   bin 0: confidence 0.3, share foreground 0.5, gap 0.2 ; bin 1: 0.75, 1.0, gap 0.25
#   ECE = 2/4 * 0.2 + 2/4 * 0.25 = 0.225, MCE = 0.25
BINARY_FG = np.array([0.2, 0.4, 0.6, 0.9, 0.99])
BINARY_PROBS = np.stack([1 - BINARY_FG, BINARY_FG])[:, None, :]
BINARY_TARGET = np.array([[0, 1, 1, 1, X]])

# Three classes, top label: confidence 0.7 (right), 0.4 (wrong), 0.6 (wrong), 0.45 (right).
#   bin 0: 0.4, 0.45 -> confidence 0.425, accuracy 0.5, gap 0.075
#   bin 1: 0.7, 0.6 -> confidence 0.65, accuracy 0.5, gap 0.15
#   ECE = 0.5 * 0.075 + 0.5 * 0.15 = 0.1125; the ignored fifth pixel would be a right 0.9.
MULTI_PROBS = as_image(
    [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [0.45, 0.35, 0.2], [0.9, 0.05, 0.05]]
)
MULTI_TARGET = np.array([[0, 1, 2, 0, X]])


def test_binary_ece_by_hand() -> None:
    histogram = CalibrationHistogram(2, bins=2)
    histogram.update(BINARY_PROBS, BINARY_TARGET)
    result = histogram.result()
    assert result["measure"] == "foreground"
    assert result["pixels"] == 4
    assert result["ece"] == pytest.approx(0.225)
    assert result["mce"] == pytest.approx(0.25)
    low, high = result["table"]
    assert (low["count"], low["confidence"], low["accuracy"]) == (2, pytest.approx(0.3), 0.5)
    assert (high["count"], high["confidence"], high["accuracy"]) == (2, pytest.approx(0.75), 1.0)
    assert (low["lower"], low["upper"], high["upper"]) == (0.0, 0.5, 1.0)


def test_multiclass_top_label_ece_by_hand() -> None:
    result = _result(MULTI_PROBS, MULTI_TARGET, bins=2)
    assert result["measure"] == "top_label"
    assert result["ece"] == pytest.approx(0.1125)
    assert [row["confidence"] for row in result["table"]] == pytest.approx([0.425, 0.65])
    assert [row["accuracy"] for row in result["table"]] == [0.5, 0.5]


def test_valid_mask_and_empty_bins() -> None:
    valid = np.array([[True, True, False, False, True]])  # keeps 0.2 (bg) and 0.4 (fg)
    histogram = CalibrationHistogram(2, bins=2)
    histogram.update(BINARY_PROBS, BINARY_TARGET, valid)
    result = histogram.result()
    assert result["ece"] == pytest.approx(0.2)
    assert result["table"][1] == {
        "lower": 0.5,
        "upper": 1.0,
        "count": 0,
        "confidence": None,
        "accuracy": None,
    }
    nothing = CalibrationHistogram(2, bins=2).result()
    assert (nothing["ece"], nothing["mce"], nothing["pixels"]) == (None, None, 0)


def numpy_ece(probs: np.ndarray, target: np.ndarray, bins: int) -> float:
    """Guo et al.'s ECE written out plainly: loop over pixels, then over bins."""
    num_classes = probs.shape[1]
    confidences, rights = [], []
    for n, y, x in np.ndindex(target.shape):
        if target[n, y, x] == IGNORE_INDEX:
            continue
        pixel = probs[n, :, y, x]
        if num_classes == 2:
            confidences.append(pixel[1])
            rights.append(target[n, y, x] == 1)
        else:
            confidences.append(pixel.max())
            rights.append(np.argmax(pixel) == target[n, y, x])
    confidences, rights = np.array(confidences), np.array(rights, dtype=float)
    ece = 0.0
    for b in range(bins):
        inside = (confidences >= b / bins) & (confidences < (b + 1) / bins)
        if b == bins - 1:
            inside |= confidences == 1.0
        if inside.any():
            gap = abs(confidences[inside].mean() - rights[inside].mean())
            ece += inside.mean() * gap
    return ece


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("bins", [10, 15])
def test_ece_matches_plain_numpy(num_classes: int, bins: int) -> None:
    rng = np.random.default_rng(num_classes * 100 + bins)
    probs = rng.dirichlet(np.full(num_classes, 0.4), size=(3, 9, 11)).transpose(0, 3, 1, 2)
    target = rng.integers(0, num_classes, size=(3, 9, 11))
    target[rng.random(target.shape) < 0.1] = IGNORE_INDEX
    expected = numpy_ece(probs, target, bins)
    assert expected > 0.01
    assert expected_calibration_error(probs, target, bins=bins) == pytest.approx(expected)
    # one image at a time, and two histograms merged, add up to the same
    parts = [CalibrationHistogram(num_classes, bins) for _ in range(2)]
    for n in range(3):
        parts[n % 2].update(probs[n], target[n])
    merged = parts[0].merge(parts[1])
    assert merged.ece() == pytest.approx(expected)
    rebuilt = CalibrationHistogram.from_state(num_classes, merged.state.clone())
    assert rebuilt.result() == merged.result()


def test_bad_input_is_refused() -> None:
    histogram = CalibrationHistogram(3)
    with pytest.raises(ValueError, match="logits"):
        histogram.update(MULTI_PROBS * 3, MULTI_TARGET)
    with pytest.raises(ValueError, match="C = 3"):
        histogram.update(BINARY_PROBS, BINARY_TARGET)
    with pytest.raises(ValueError, match="outside 0..2"):
        histogram.update(MULTI_PROBS, np.array([[0, 1, 7, 0, X]]))


def test_reliability_diagram_is_a_png() -> None:
    before = _result(MULTI_PROBS, MULTI_TARGET, bins=2)
    after = _result(MULTI_PROBS**0.5 / (MULTI_PROBS**0.5).sum(0), MULTI_TARGET, bins=2)
    assert reliability_diagram(before).startswith(b"\x89PNG")
    assert reliability_diagram(before, after, ("raw", "T = 2")).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="table"):
        reliability_diagram({"ece": 0.1})


def _result(probs: np.ndarray, target: np.ndarray, bins: int) -> dict:
    histogram = CalibrationHistogram(probs.shape[0], bins)
    histogram.update(probs, target)
    return histogram.result()


# --- temperature scaling ---------------------------------------------------------------------


def calibrated_logits(task: Task, seed: int, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a calibrated model and targets drawn from its own probabilities."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((6, task.out_channels, size, size), generator=generator) * 2.0
    probs = task.probabilities(logits).permute(0, 2, 3, 1).reshape(-1, task.num_classes)
    target = torch.multinomial(probs, 1, generator=generator).reshape(6, size, size)
    return logits, target


@pytest.mark.parametrize("num_classes", [2, 4])
def test_temperature_recovers_an_overconfident_scale(num_classes: int) -> None:
    task = Task(num_classes)
    logits, target = calibrated_logits(task, seed=num_classes)
    overconfident = logits * 3.0
    temperature = fit_temperature(overconfident, target, task)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(task.probabilities(overconfident), target)
    after = expected_calibration_error(
        task.probabilities(Calibration(temperature).apply(overconfident)), target
    )
    assert after < before / 2
    # an under-confident model gets T < 1
    assert fit_temperature(logits * 0.5, target, task) == pytest.approx(0.5, rel=0.1)


def test_temperature_fit_leaves_ignored_pixels_out() -> None:
    task = Task(3)
    logits, target = calibrated_logits(task, seed=7, size=24)
    reference = fit_temperature(logits, target, task)
    noisy_logits, noisy_target = logits.clone(), target.clone()
    noisy_logits[:, :, :4] = 50.0 * torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)
    noisy_target[:, :4] = X  # confidently wrong pixels, but ignored
    assert fit_temperature(noisy_logits, noisy_target, task) == pytest.approx(
        fit_temperature(logits[:, :, 4:], target[:, 4:], task)
    )
    # per-image lists, a pixel table and a subsample agree closely; a seed repeats exactly
    per_image = fit_temperature(list(logits), list(target), task)
    table = fit_temperature(logits.permute(0, 2, 3, 1).reshape(-1, 3), target.reshape(-1), task)
    assert per_image == pytest.approx(reference) and table == pytest.approx(reference)
    subsampled = fit_temperature(logits, target, task, max_pixels=2000, seed=1)
    assert subsampled == pytest.approx(reference, rel=0.15)
    assert subsampled == fit_temperature(logits, target, task, max_pixels=2000, seed=1)
    with pytest.raises(ValueError, match="no pixel counts"):
        fit_temperature(logits, torch.full_like(target, X), task)


def test_temperature_stops_at_its_bounds() -> None:
    task = Task(2)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 1, 16, 16), generator=generator) * 5
    coin_flips = torch.randint(0, 2, (2, 16, 16), generator=generator)  # labels unrelated to logits
    assert fit_temperature(logits, coin_flips, task, bounds=(0.1, 10.0)) == pytest.approx(10.0)


def test_a_sample_of_mixed_image_sizes_fits_the_pooled_pixels_temperature() -> None:
    """One large over-confident image (needs T = 2) among nine small calibrated ones: the
    pooled test ECE counts the large image's 160 000 pixels five times the small ones' 32 400,
    so the fit must too; a fixed 3 000 pixels per image would fit the small ones (T near 1)."""
    task = Task(2)
    generator = torch.Generator().manual_seed(0)

    def image(size: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn((1, size, size), generator=generator) * 3
        odds = torch.sigmoid(logits[0] / temperature)
        return logits, (torch.rand((size, size), generator=generator) < odds).long()

    images = [image(400, 2.0)] + [image(60, 1.0) for _ in range(9)]
    sample = LogitSample(task, per_image=3_000, seed=0)
    for logits, target in images:
        sample.add(logits, target)
    assert len(sample.targets) == 3_000 + 9 * round(3_600 * 3_000 / 160_000)
    every_pixel = fit_temperature([lg for lg, _ in images], [t for _, t in images], task, 10**6)
    assert every_pixel == pytest.approx(1.8, abs=0.15)
    assert fit_temperature(sample.logits, sample.targets, task) == pytest.approx(
        every_pixel, abs=0.15
    )


def test_logit_sample_caps_pixels_per_image_and_fits_alike() -> None:
    task = Task(2)
    logits, target = calibrated_logits(task, seed=3, size=32)
    target[:, :2] = X
    sample = LogitSample(task, per_image=500, seed=0)
    for image_logits, image_target in zip(logits, target, strict=True):
        sample.add(image_logits, image_target)
    assert sample.logits.shape == (6 * 500, 1) and sample.targets.shape == (6 * 500,)
    assert int((sample.targets == X).sum()) == 0
    fitted = fit_temperature(sample.logits * 3, sample.targets, task)
    assert fitted == pytest.approx(fit_temperature(logits * 3, target, task), rel=0.15)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_tempering_probabilities_matches_tempering_logits(num_classes: int) -> None:
    task = Task(num_classes)
    logits, _ = calibrated_logits(task, seed=5, size=8)
    probs = task.probabilities(logits)
    back = logits_from_probabilities(probs, task)
    if task.is_binary:
        assert torch.allclose(back.float(), logits, atol=1e-3)
    else:  # log-probabilities: the logits up to a constant per pixel
        assert torch.allclose(torch.softmax(back, 1).float(), probs, atol=1e-6)
    expected = task.probabilities(logits / 2.5)
    tempered = temper_probabilities(probs[0].numpy(), 2.5, task)  # one image, NumPy
    assert isinstance(tempered, np.ndarray) and tempered.shape == probs[0].shape
    np.testing.assert_allclose(tempered, expected[0].numpy(), atol=1e-5)
    calibration = Calibration(2.5)
    assert torch.allclose(calibration.apply_to_probabilities(probs, task), expected, atol=1e-5)
    assert temper_probabilities(probs, 1.0, task) is probs


# --- threshold tuning ------------------------------------------------------------------------

# Foreground probabilities off the 0.01 grid; targets: positives 0.305, 0.805, 0.955.
#   t <= 0.055: TP 3 FP 3 -> Dice 6/9 | (0.055, 0.305]: TP 3 FP 2 -> 6/8
#   (0.305, 0.455]: TP 2 FP 2 FN 1 -> 4/7 | (0.455, 0.625]: TP 2 FP 1 FN 1 -> 4/6
#   (0.625, 0.805]: TP 2 FP 0 FN 1 -> 4/5 (best; IoU 2/3) | (0.805, 0.955]: TP 1 FN 2 -> 2/4
#   above 0.955: nothing predicted -> 0. Best plateau 0.63 .. 0.80; nearest 0.5 is 0.63.
THRESHOLD_FG = np.array([0.055, 0.305, 0.455, 0.625, 0.805, 0.955, 0.7])
THRESHOLD_TARGET = np.array([0, 1, 0, 0, 1, 1, X])


def test_threshold_by_hand() -> None:
    choice = tune_threshold(THRESHOLD_FG, THRESHOLD_TARGET, metric="dice")
    assert (choice.metric, choice.threshold) == ("foreground_dice", 0.63)
    assert choice.score == pytest.approx(0.8)
    curve = dict(zip(choice.thresholds.round(2).tolist(), choice.scores.tolist(), strict=True))
    assert curve[0.05] == pytest.approx(6 / 9)
    assert curve[0.1] == pytest.approx(6 / 8)
    assert curve[0.4] == pytest.approx(4 / 7)
    assert curve[0.5] == pytest.approx(4 / 6)
    assert curve[0.8] == pytest.approx(0.8)
    assert curve[0.81] == pytest.approx(0.5)
    assert curve[0.99] == 0.0
    iou = tune_threshold(THRESHOLD_FG, THRESHOLD_TARGET, metric="val_foreground_iou")
    assert (iou.threshold, iou.score) == (0.63, pytest.approx(2 / 3))
    # what Task cuts at the tuned threshold scores the same
    task = Calibration(threshold=choice.threshold).with_threshold(Task(2))
    probs = torch.tensor(np.stack([1 - THRESHOLD_FG, THRESHOLD_FG]))[None, :, None]
    predicted = task.labels_from_probabilities(probs)[0, 0].numpy()[:6]
    tp = int(((predicted == 1) & (THRESHOLD_TARGET[:6] == 1)).sum())
    assert 2 * tp / (predicted.sum() + 3) == pytest.approx(0.8)
    record = choice.to_dict()
    assert record["threshold"] == 0.63 and len(record["curve"]["score"]) == 99


def test_threshold_metric_names_and_refusals() -> None:
    valid = np.array([True] * 6 + [False])
    choice = tune_threshold(THRESHOLD_FG, np.where(valid, THRESHOLD_TARGET, 0), "iou", valid)
    assert choice.threshold == 0.63  # the ignored pixel, now masked by valid, still counts nowhere
    assert tune_threshold(THRESHOLD_FG, THRESHOLD_TARGET, "val_mean_iou").metric == "mean_iou"
    with pytest.raises(ValueError, match="cannot tune a threshold for 'hd95'"):
        tune_threshold(THRESHOLD_FG, THRESHOLD_TARGET, "hd95")
    with pytest.raises(ValueError, match="multiples of 1/1000"):
        tune_threshold(THRESHOLD_FG, THRESHOLD_TARGET, thresholds=[0.12345])
    with pytest.raises(ValueError, match="binary"):
        threshold_from_histogram(ScoreHistogram(3))


# --- the stored record -----------------------------------------------------------------------


def test_calibration_record_round_trips_through_a_checkpoint(tmp_path) -> None:
    calibration = Calibration(temperature=2.5, threshold=0.42)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert Calibration.from_checkpoint({"task": {}}) == Calibration()
    path = tmp_path / "best.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "task": {"num_classes": 2}}, path)
    store_calibration(path, calibration)
    payload = load_checkpoint(path)
    assert payload["calibration"] == {"temperature": 2.5, "threshold": 0.42}
    assert torch.equal(payload["model"]["w"], torch.ones(2))
    assert Calibration.from_checkpoint(payload) == calibration


def test_calibration_applies_and_refuses() -> None:
    logits = torch.tensor([[[[3.0]], [[-1.5]]]])
    assert torch.equal(Calibration(1.5).apply(logits), logits / 1.5)
    assert Calibration().apply(logits) is logits
    assert Calibration(threshold=0.3).with_threshold(Task(2)).threshold == 0.3
    assert Calibration().with_threshold(Task(2, threshold=0.6)).threshold == 0.6
    with pytest.raises(ValueError, match="binary task"):
        Calibration(threshold=0.3).with_threshold(Task(3))
    for temperature in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive finite"):
            Calibration(temperature)
    with pytest.raises(ValueError, match="strictly between"):
        Calibration(threshold=1.0)
    with pytest.raises(ValueError, match="unknown keys"):
        Calibration.from_dict({"temperature": 2.0, "shift": 1.0})
    with pytest.raises(ValueError, match="bias must be a list"):
        Calibration.from_dict({"temperature": 2.0, "bias": 1.0})


def test_fit_calibration_from_segmenter_probabilities() -> None:
    task = Task(2)
    logits, target = calibrated_logits(task, seed=11, size=32)
    probs = task.probabilities(logits * 3)  # what an over-confident model's Segmenter returns
    pairs = [(p.numpy(), t.numpy()) for p, t in zip(probs, target, strict=True)]
    calibration = fit_calibration(pairs, task, metric="dice")
    assert calibration.temperature == pytest.approx(3.0, rel=0.1)
    tempered = torch.sigmoid(logits.reshape(-1) * 3 / calibration.temperature)
    expected = tune_threshold(tempered, target.reshape(-1), "dice").threshold
    assert calibration.threshold == pytest.approx(expected, abs=0.02)
    assert fit_calibration(pairs, task, metric=None).threshold is None
    multi = Task(3)
    logits3, target3 = calibrated_logits(multi, seed=12, size=16)
    pairs3 = zip(multi.probabilities(logits3 * 2), target3, strict=True)
    assert fit_calibration(pairs3, multi).temperature == pytest.approx(2.0, rel=0.15)
