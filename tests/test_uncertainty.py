"""Uncertainty maps and risk-coverage, by hand: entropy, mutual information between members that
agree or disagree, per-image scores, and which share of the errors referring pixels removes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_calibration import as_image

from unetkit.metrics.uncertainty import (
    RiskCoverage,
    image_uncertainty,
    mutual_information,
    predictive_entropy,
    risk_coverage_plot,
    uncertainty_image,
)
from unetkit.tasks import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")

X = IGNORE_INDEX


def test_entropy_by_hand() -> None:
    two = predictive_entropy(as_image([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]))
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    np.testing.assert_allclose(two, [[1.0, 0.0, h]], atol=1e-6)
    three = predictive_entropy(as_image([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(three, [[1.0, 1.5 * math.log(2) / math.log(3)]], atol=1e-6)
    assert isinstance(two, np.ndarray) and two.dtype == np.float32


def test_entropy_keeps_kind_and_batch_shape() -> None:
    probs = torch.softmax(torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0)), 1)
    entropy = predictive_entropy(probs)
    assert isinstance(entropy, torch.Tensor) and entropy.shape == (2, 5, 6)
    assert float(entropy.min()) >= 0.0 and float(entropy.max()) <= 1.0
    with pytest.raises(ValueError, match="class axis third from last"):
        predictive_entropy(np.ones((4, 4)))


def test_mutual_information_agreeing_and_disagreeing_members() -> None:
    agree = np.stack([as_image([[0.9, 0.1], [0.5, 0.5]])] * 2)
    np.testing.assert_allclose(mutual_information(agree), [[0.0, 0.0]], atol=1e-6)
    opposite = np.stack([as_image([[1.0, 0.0], [0.9, 0.1]]), as_image([[0.0, 1.0], [0.1, 0.9]])])
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    # mean (0.5, 0.5): entropy 1; members' entropies 0 and h
    np.testing.assert_allclose(mutual_information(opposite), [[1.0, 1.0 - h]], atol=1e-6)
    batched = mutual_information(torch.tensor(opposite)[:, None].repeat(1, 3, 1, 1, 1))
    assert batched.shape == (3, 1, 2)
    with pytest.raises(ValueError, match="stacked first"):
        mutual_information(as_image([[0.5, 0.5]]))


def test_image_uncertainty_counts_valid_pixels_only() -> None:
    uncertainty = np.array([[0.2, 0.4], [0.9, 1.0]])
    assert image_uncertainty(uncertainty) == pytest.approx(0.625)
    assert image_uncertainty(uncertainty, np.array([[0, 1], [X, X]])) == pytest.approx(0.3)
    valid = np.array([[True, False], [True, False]])
    assert image_uncertainty(uncertainty, valid=valid) == pytest.approx(0.55)
    assert image_uncertainty(uncertainty, np.full((2, 2), X)) is None


def test_uncertainty_image_is_rgb() -> None:
    image = uncertainty_image(np.array([[0.0, 1.0]]))
    assert image.shape == (1, 2, 3) and image.dtype == np.uint8
    assert image[0, 1].sum() > image[0, 0].sum()  # unsure is bright


# 100 pixels, uncertainty (i + 0.5) / 100: each in its own of 1000 bins, pixel 99 most uncertain.
UNCERTAINTY = (np.arange(100) + 0.5) / 100
TARGET = np.zeros(100, dtype=np.int64)


def wrong_at(indices: np.ndarray) -> np.ndarray:
    prediction = TARGET.copy()
    prediction[indices] = 1
    return prediction


@pytest.mark.parametrize(
    ("wrong", "removed"),
    [
        (np.arange(95, 100), 1.0),  # 5 errors, all among the 10 most uncertain
        (np.arange(80, 100), 0.5),  # 20 errors on the most uncertain: 10 of them referred
        (np.arange(0, 10), 0.0),  # errors on the surest pixels: none referred
        (np.array([0, 95]), 0.5),
    ],
)
def test_risk_coverage_by_hand(wrong: np.ndarray, removed: float) -> None:
    risk = RiskCoverage()
    risk.update(UNCERTAINTY, wrong_at(wrong), TARGET)
    result = risk.result()
    assert (result["pixels"], result["errors"]) == (100, len(wrong))
    assert result["errors_removed"] == pytest.approx(removed)
    assert result["errors_removed_random"] == 0.1
    assert result["error_rate"] == pytest.approx(len(wrong) / 100)
    curve = result["curve"]
    assert curve["referred"][10] == pytest.approx(0.1)
    assert curve["errors_removed"][10] == pytest.approx(removed)
    kept_errors = len(wrong) * (1 - removed)
    assert curve["remaining_error_rate"][10] == pytest.approx(kept_errors / 90)
    assert curve["errors_removed"][-1] == pytest.approx(1.0)
    assert curve["remaining_error_rate"][-1] is None


def test_risk_coverage_leaves_ignored_pixels_out_and_adds_up() -> None:
    wrong = wrong_at(np.arange(80, 100))
    target = TARGET.copy()
    target[90:] = X  # ten of the most uncertain errors ignored: 10 errors in 90 pixels remain
    risk = RiskCoverage()
    risk.update(UNCERTAINTY, wrong, target)
    assert (risk.result()["pixels"], risk.result()["errors"]) == (90, 10)
    # referring 9 pixels (10% of 90) takes the 9 most uncertain counted ones: 9 of 10 errors
    assert risk.errors_removed(0.1) == pytest.approx(0.9)
    halves = RiskCoverage()
    halves.update(UNCERTAINTY[:50], wrong[:50], target[:50])
    other = RiskCoverage()
    other.update(UNCERTAINTY[50:], wrong[50:], target[50:], valid=np.ones(50, dtype=bool))
    halves.merge(other)
    assert torch.equal(halves.state, risk.state)
    assert RiskCoverage.from_counts(risk.state).result() == risk.result()


def test_one_bin_of_ties_refers_errors_in_proportion() -> None:
    risk = RiskCoverage(bins=10)
    risk.update(np.full(50, 0.55), wrong_at(np.arange(5))[:50], TARGET[:50])
    np.testing.assert_allclose(risk.errors_removed([0.0, 0.1, 0.5, 1.0]), [0.0, 0.1, 0.5, 1.0])


def test_risk_coverage_without_errors_and_refusals() -> None:
    risk = RiskCoverage()
    risk.update(UNCERTAINTY, TARGET, TARGET)
    result = risk.result()
    assert result["errors_removed"] is None and result["errors_removed_random"] is None
    assert result["curve"]["errors_removed"] is None
    with pytest.raises(ValueError, match="nothing to plot"):
        risk_coverage_plot(result)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        risk.update(UNCERTAINTY * 2, TARGET, TARGET)
    with pytest.raises(ValueError, match="one shape"):
        risk.update(UNCERTAINTY[:5], TARGET, TARGET)


def test_risk_coverage_plot_is_a_png() -> None:
    risk = RiskCoverage()
    risk.update(UNCERTAINTY, wrong_at(np.arange(80, 100)), TARGET)
    assert risk_coverage_plot(risk.result()).startswith(b"\x89PNG")
