"""Per-image reduction and bootstrap intervals: hand-worked cases and a slow reference loop."""

from __future__ import annotations

import numpy as np
import pytest

from unetkit.metrics.bootstrap import bootstrap_intervals, resample_weights
from unetkit.metrics.per_image import per_image_rows, per_image_section, spread
from unetkit.metrics.summary import summarise

NAMES = ["background", "cell", "nucleus"]

# Three images' confusion matrices (rows target, columns prediction).
IMAGE_A = [[4, 0, 0], [2, 2, 0], [0, 0, 0]]  # nucleus absent from target and prediction
IMAGE_B = [[2, 2, 0], [0, 0, 0], [0, 0, 4]]  # cell predicted, never true: cell IoU 0
IMAGE_C = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]  # every pixel ignored


def stack() -> np.ndarray:
    return np.array([IMAGE_A, IMAGE_B, IMAGE_C], dtype=np.int64)


def test_spread_skips_undefined_and_uses_population_std():
    assert spread([1.0, None, 3.0, float("nan")]) == {"mean": 2.0, "std": 1.0, "images": 2}
    assert spread([None, None]) == {"mean": None, "std": None, "images": 0}


def test_per_image_means_by_hand():
    section = per_image_section(stack(), NAMES, binary=False)
    # image A: IoU background 4/6, cell 2/4, nucleus undefined -> mean 7/12
    # image B: IoU background 2/4, cell 0/2, nucleus 4/4      -> mean 1/2
    # image C: all undefined -> left out
    assert section["mean_iou"]["mean"] == pytest.approx((7 / 12 + 1 / 2) / 2)
    assert section["mean_iou"]["std"] == pytest.approx(1 / 24)
    assert section["mean_iou"]["images"] == 2
    nucleus = section["per_class"][2]
    assert nucleus["name"] == "nucleus"
    assert nucleus["iou"] == {"mean": 1.0, "std": 0.0, "images": 1}  # only image B defines it
    # without background: A -> cell 0.5; B -> cell 0 and nucleus 1 -> 0.5
    assert section["mean_iou_no_background"]["mean"] == pytest.approx(0.5)


def test_per_image_differs_from_pooled_when_images_differ_in_size():
    big = [[90, 0], [0, 10]]  # perfect
    small = [[1, 1], [1, 1]]  # foreground IoU 1/3
    matrices = np.array([big, small])
    pooled = summarise(matrices.sum(0), binary=True)["foreground_iou"]
    per_image = per_image_section(matrices, ["bg", "fg"], binary=True)["foreground_iou"]
    assert pooled == pytest.approx(11 / 13)
    assert per_image["mean"] == pytest.approx((1 + 1 / 3) / 2)


def test_per_image_rows_match_one_summary_per_image():
    rows = per_image_rows(stack(), NAMES, binary=False)
    for row, matrix in zip(rows, stack(), strict=True):
        alone = summarise(matrix, NAMES)
        assert row["mean_iou"] == alone["mean_iou"]
        assert row["iou/cell"] == alone["per_class"][1]["iou"]
        assert row["dice/nucleus"] == alone["per_class"][2]["dice"]
    assert rows[2]["pixel_accuracy"] is None


def test_resample_weights_draw_each_image_count_times():
    chunks = resample_weights(num_images=7, resamples=250, seed=1)
    weights = np.concatenate(chunks)
    assert weights.shape == (250, 7)
    assert (weights.sum(axis=1) == 7).all()
    again = np.concatenate(resample_weights(7, 250, seed=1))
    assert np.array_equal(weights, again)


def test_bootstrap_matches_a_slow_reference_loop():
    rng = np.random.default_rng(0)
    matrices = rng.integers(0, 30, size=(12, 2, 2))
    values = rng.random(12)
    values[3] = np.nan
    result = bootstrap_intervals(
        matrices, True, ["mean_iou", "foreground_iou"], {"score": values}, resamples=300, seed=5
    )
    weights = np.concatenate(resample_weights(12, 300, seed=5))
    pooled, means = [], []
    for w in weights:
        chosen = np.repeat(np.arange(12), w.astype(int))
        pooled.append(summarise(matrices[chosen].sum(0), binary=True)["foreground_iou"])
        means.append(np.nanmean(values[chosen]))
    intervals = result["intervals"]
    assert intervals["dataset.foreground_iou"] == pytest.approx(np.quantile(pooled, [0.025, 0.975]))
    assert intervals["per_image.score"] == pytest.approx(np.quantile(means, [0.025, 0.975]))
    assert result["level"] == 0.95 and result["resamples"] == 300


def test_bootstrap_interval_brackets_estimate_and_collapses_on_identical_images():
    rng = np.random.default_rng(2)
    matrices = rng.integers(0, 50, size=(40, 3, 3))
    estimate = summarise(matrices.sum(0))["mean_iou"]
    low, high = bootstrap_intervals(matrices, False, ["mean_iou"], {}, resamples=400)["intervals"][
        "dataset.mean_iou"
    ]
    assert low < estimate < high
    same = np.repeat(matrices[:1], 10, axis=0)
    low, high = bootstrap_intervals(same, False, ["mean_iou"], {}, resamples=50)["intervals"][
        "dataset.mean_iou"
    ]
    assert low == pytest.approx(high)


def test_bootstrap_rejects_bad_settings():
    matrices = np.ones((3, 2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="ci_resamples"):
        bootstrap_intervals(matrices, True, ["mean_iou"], {}, resamples=1)
    with pytest.raises(ValueError, match="ci_level"):
        bootstrap_intervals(matrices, True, ["mean_iou"], {}, level=1.5)
