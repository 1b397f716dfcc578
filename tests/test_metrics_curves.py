"""Score histograms: hand-worked curves, scikit-learn agreement, ignore handling, merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from unetkit.metrics.curves import ScoreHistogram
from unetkit.tasks import IGNORE_INDEX

X = IGNORE_INDEX


def binary_probs(foreground: list[list[float]]) -> np.ndarray:
    """(2, H, W) probabilities of a binary task from the foreground probability map."""
    p = np.asarray(foreground, dtype=np.float64)
    return np.stack([1 - p, p])


# Binary 2x3 image, 10 bins. Foreground probabilities and their bins (floor(p * 10)):
#   0.95 -> 9, 0.85 -> 8, 0.35 -> 3        target 1, 1, 0
#   0.85 -> 8, 0.15 -> 1, 1.00 -> 9 (top)  target 0, 1, X (ignored)
HAND_PROBS = binary_probs([[0.95, 0.85, 0.35], [0.85, 0.15, 1.0]])
HAND_TARGET = np.array([[1, 1, 0], [0, 1, X]])
# Class 1: positives in bins 9, 8, 1; negatives in bins 8, 3. Operating points, top bin down:
#   bin 9: TP 1 FP 0 | bin 8: TP 2 FP 1 | bin 3: TP 2 FP 2 | bin 1: TP 3 FP 2
# ROC (fpr, tpr): (0,0) (0,1/3) (1/2,2/3) (1,2/3) (1,1)
#   AUC = 1/2 * (1/3 + 2/3) / 2 + 1/2 * 2/3 = 1/4 + 1/3 = 7/12
# PR: precision 1, 2/3, 1/2, 3/5 at recall 1/3, 2/3, 2/3, 1
#   AP = 1/3 * 1 + 1/3 * 2/3 + 0 * 1/2 + 1/3 * 3/5 = 1/3 + 2/9 + 1/5 = 34/45


def hand_histogram() -> ScoreHistogram:
    histogram = ScoreHistogram(2, bins=10)
    histogram.update(HAND_PROBS, HAND_TARGET)
    return histogram


def test_hand_worked_histogram_curves_and_metrics():
    histogram = hand_histogram()
    positives, negatives = np.zeros(10, int), np.zeros(10, int)
    positives[[9, 8, 1]] = 1
    negatives[[8, 3]] = 1
    assert histogram.counts.dtype == torch.int64
    assert histogram.counts[1, 1].tolist() == positives.tolist()
    assert histogram.counts[1, 0].tolist() == negatives.tolist()
    fpr, tpr, thresholds = histogram.roc_curve(1)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 2, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.3, 0.1])
    precision, recall, thresholds = histogram.pr_curve(1)
    np.testing.assert_allclose(precision, [1, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.3, 0.1])
    assert histogram.roc_auc(1) == pytest.approx(7 / 12)
    assert histogram.average_precision(1) == pytest.approx(34 / 45)


def test_hand_worked_summary_binary_and_multiclass():
    summary = hand_histogram().summary(["background", "vessel"], binary=True)
    assert summary["bins"] == 10
    assert summary["roc_auc"] == pytest.approx(7 / 12)
    assert summary["average_precision"] == pytest.approx(34 / 45)
    assert summary["per_class"][1] == {
        "name": "vessel",
        "roc_auc": pytest.approx(7 / 12),
        "average_precision": pytest.approx(34 / 45),
        "positives": 3,
        "negatives": 2,
    }
    # Class 0 has probabilities 1 - p and is the mirror image: the same ROC AUC.
    assert summary["per_class"][0]["roc_auc"] == pytest.approx(7 / 12)
    # Three classes, class 2 never present: left out of the means, not counted as 0.
    histogram = ScoreHistogram(3, bins=10)
    probs = np.concatenate([HAND_PROBS, np.zeros((1, 2, 3))])
    histogram.update(probs, HAND_TARGET)
    summary = histogram.summary(["a", "b", "c"], binary=False)
    assert summary["mean_roc_auc"] == pytest.approx(7 / 12)
    assert summary["mean_average_precision"] == pytest.approx(34 / 45)
    assert summary["per_class"][2]["roc_auc"] is None
    assert summary["per_class"][2]["average_precision"] is None
    assert "roc_auc" not in summary


def test_undefined_classes_are_none():
    histogram = ScoreHistogram(3, bins=10)
    probs = np.full((3, 2, 2), 1 / 3)
    histogram.update(probs, np.array([[0, 0], [1, 1]]))
    assert histogram.roc_auc(2) is None and histogram.average_precision(2) is None
    assert histogram.roc_curve(2) is None and histogram.pr_curve(2) is None
    assert histogram.curve_points(2) is None
    only_positives = ScoreHistogram(2, bins=10)
    only_positives.update(binary_probs([[0.7, 0.2]]), np.array([[1, 1]]))
    assert only_positives.roc_auc(1) is None
    assert only_positives.average_precision(1) == pytest.approx(1.0)
    empty = ScoreHistogram(2).summary(["bg", "fg"], binary=True)
    assert empty["roc_auc"] is None and empty["average_precision"] is None


def quantised_case(seed: int, bins: int, num_classes: int, shape=(4, 16, 16)):
    """Random probabilities rounded to bin centres, so that binning loses nothing."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(shape[0], num_classes, *shape[1:]))
    target = rng.integers(0, num_classes, size=shape)
    logits += 1.5 * (target[:, None] == np.arange(num_classes)[None, :, None, None])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    centres = (np.floor(probs * bins) + 0.5) / bins
    return centres, target


@pytest.mark.parametrize("bins", [7, 100, 1000])
def test_quantised_scores_match_sklearn_exactly(bins):
    probs, target = quantised_case(seed=bins, bins=bins, num_classes=3)
    histogram = ScoreHistogram(3, bins=bins)
    histogram.update(probs, target)
    for c in range(3):
        is_positive = (target == c).ravel()
        scores = probs[:, c].ravel()
        assert histogram.roc_auc(c) == pytest.approx(roc_auc_score(is_positive, scores), abs=1e-12)
        expected_ap = average_precision_score(is_positive, scores)
        assert histogram.average_precision(c) == pytest.approx(expected_ap, abs=1e-12)


def within_bin_bounds(histogram: ScoreHistogram, c: int) -> tuple[float, float]:
    """How far unbinned ROC AUC and AP can be from the binned ones, from the histogram alone.

    ROC AUC: only positive/negative pairs in the same bin change (from 0 or 1 to a tie, 1/2), so
    the gap is at most half their fraction. AP is the mean over positives of the precision at their
    rank; in bin k, with A pixels and T positives above it and p positives, n negatives inside,
    every such precision, binned or not, lies in [(T + 1) / (A + 1 + n), (T + p) / (A + p)].
    """
    negatives, positives = histogram.counts[c].numpy().astype(float)
    auc_bound = 0.5 * np.sum(positives * negatives) / (positives.sum() * negatives.sum())
    above_pos = np.cumsum(positives[::-1])[::-1] - positives
    above_all = np.cumsum((positives + negatives)[::-1])[::-1] - positives - negatives
    has = positives > 0
    high = (above_pos + positives)[has] / (above_all + positives)[has]
    low = (above_pos + 1)[has] / (above_all + 1 + negatives)[has]
    ap_bound = np.sum(positives[has] * (high - low)) / positives.sum()
    return auc_bound, ap_bound


def test_unquantised_scores_close_to_sklearn_within_bin_ties():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, size=(2, 32, 32))
    foreground = np.clip(rng.normal(0.35 + 0.3 * target, 0.2), 0, 1).astype(np.float32)
    probs = np.stack([1 - foreground, foreground], axis=1)
    histogram = ScoreHistogram(2, bins=1000)
    histogram.update(torch.from_numpy(probs), torch.from_numpy(target))
    auc_bound, ap_bound = within_bin_bounds(histogram, 1)
    assert 0 < auc_bound < 1e-3 and 0 < ap_bound < 0.02  # the bounds are informative
    is_positive, scores = target.ravel() == 1, foreground.ravel()
    assert abs(histogram.roc_auc(1) - roc_auc_score(is_positive, scores)) <= auc_bound + 1e-12
    assert abs(histogram.average_precision(1) - average_precision_score(is_positive, scores)) <= (
        ap_bound + 1e-12
    )


def test_ignore_and_valid_pixels_do_not_count():
    probs, target = quantised_case(seed=5, bins=50, num_classes=3, shape=(1, 8, 8))
    probs, target = probs[0], target[0]
    valid = np.ones((8, 8), bool)
    valid[:, :3] = False
    ignored = target.copy()
    ignored[5:, :] = X
    histogram = ScoreHistogram(3, bins=50)
    histogram.update(probs, ignored, valid)
    # Reference: only pixels outside both exclusions, i.e. the block rows 0..4, columns 3..7.
    reference = ScoreHistogram(3, bins=50)
    reference.update(probs[:, :5, 3:], target[:5, 3:])
    assert torch.equal(histogram.counts, reference.counts)
    assert int(histogram.counts[0].sum()) == 25
    # Garbage probabilities under ignored pixels are never looked at.
    noisy = probs.copy()
    noisy[:, 5:, :] = 7.0
    again = ScoreHistogram(3, bins=50)
    again.update(noisy, ignored, valid)
    assert torch.equal(again.counts, reference.counts)


def test_all_ignore_image_changes_nothing():
    histogram = hand_histogram()
    before = histogram.counts.clone()
    histogram.update(np.zeros((2, 3, 3)), np.full((3, 3), X))
    histogram.update(np.zeros((2, 3, 3)), np.zeros((3, 3), int), np.zeros((3, 3), bool))
    assert torch.equal(histogram.counts, before)


def test_merge_and_batches_equal_one_accumulator():
    probs, target = quantised_case(seed=9, bins=20, num_classes=3)
    whole = ScoreHistogram(3, bins=20)
    whole.update(probs, target)  # one (N, C, H, W) batch
    per_image = [ScoreHistogram(3, bins=20) for _ in range(len(probs))]
    for histogram, image_probs, image_target in zip(per_image, probs, target, strict=True):
        histogram.update(image_probs, image_target)
    merged = per_image[0]
    for histogram in per_image[1:]:
        assert merged.merge(histogram) is merged
    assert torch.equal(merged.counts, whole.counts)
    assert int(whole.counts[0].sum()) == target.size
    rebuilt = ScoreHistogram.from_counts(whole.state.numpy())
    assert rebuilt.roc_auc(1) == whole.roc_auc(1)


def test_curve_points_are_thinned_and_keep_both_ends():
    probs, target = quantised_case(seed=2, bins=1000, num_classes=2, shape=(2, 32, 32))
    histogram = ScoreHistogram(2, bins=1000)
    histogram.update(probs, target)
    points = histogram.curve_points(1, max_points=50)
    assert set(points) == {"fpr", "tpr", "precision", "recall"}
    assert 40 <= len(points["fpr"]) == len(points["tpr"]) <= 50
    assert 40 <= len(points["precision"]) == len(points["recall"]) <= 50
    assert (points["fpr"][0], points["tpr"][0]) == (0.0, 0.0)
    assert (points["fpr"][-1], points["tpr"][-1]) == (1.0, 1.0)
    assert points["recall"][-1] == 1.0
    assert np.all(np.diff(points["fpr"]) >= 0) and np.all(np.diff(points["recall"]) >= 0)
    few = hand_histogram().curve_points(1, max_points=200)
    assert len(few["fpr"]) == 5 and len(few["precision"]) == 4


def test_top_bin_holds_probability_one():
    histogram = ScoreHistogram(2, bins=4)
    histogram.update(binary_probs([[1.0, 0.0, 0.25, 0.2499]]), np.array([[1, 0, 1, 0]]))
    assert histogram.counts[1, 1].tolist() == [0, 1, 0, 1]
    assert histogram.counts[1, 0].tolist() == [2, 0, 0, 0]


@pytest.mark.parametrize(
    ("probs", "target", "message"),
    [
        (np.full((2, 2, 2), 3.0), np.zeros((2, 2), int), "must lie in \\[0, 1\\]"),
        (np.full((2, 2, 2), np.nan), np.zeros((2, 2), int), "such as \\[nan"),
        (np.full((2, 2, 2), 0.5), np.full((2, 2), 4), "class ids \\[4\\]"),
        (np.full((3, 2, 2), 0.5), np.zeros((2, 2), int), "C = 2.*\\(3, 2, 2\\)"),
        (np.full((2, 2, 2), 0.5), np.zeros((3, 2), int), "same images.*\\(3, 2\\)"),
    ],
)
def test_bad_inputs_are_explained(probs, target, message):
    with pytest.raises(ValueError, match=message):
        ScoreHistogram(2, bins=10).update(probs, target)


def test_merge_and_rebuild_check_shapes():
    with pytest.raises(ValueError, match="1000 bins"):
        ScoreHistogram(2).merge(ScoreHistogram(2, bins=10))
    with pytest.raises(ValueError, match="shape \\(classes, 2, bins\\)"):
        ScoreHistogram.from_counts(np.zeros((2, 3, 10), int))
