"""Confusion matrix and metric summary: hand-worked cases, scikit-learn agreement, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from unetkit.metrics import ConfusionMatrix, format_table, summarise
from unetkit.metrics.confusion import as_tensor
from unetkit.metrics.summary import HEADLINE_METRICS, headline_arrays
from unetkit.tasks import IGNORE_INDEX

X = IGNORE_INDEX

# A 3-class 4x4 case worked by hand. Pixels with target X (ignore) are not counted: 13 remain.
HAND_TARGET = [
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 2, X],
    [2, 2, X, X],
]
HAND_PRED = [
    [0, 1, 1, 1],
    [0, 0, 1, 2],
    [2, 2, 0, 0],
    [2, 1, 2, 2],
]
# true 0 at (0,0) (0,1) (1,0) (1,1) -> predicted 0, 1, 0, 0    -> row [3, 1, 0]
# true 1 at (0,2) (0,3) (1,2) (1,3) -> predicted 1, 1, 1, 2    -> row [0, 3, 1]
# true 2 at (2,0) (2,1) (2,2) (3,0) (3,1) -> predicted 2, 2, 0, 2, 1 -> row [1, 1, 3]
HAND_MATRIX = [[3, 1, 0], [0, 3, 1], [1, 1, 3]]
# class 0: tp 3, support 4, predicted 4 -> IoU 3/5, Dice 6/8, accuracy 3/4
# class 1: tp 3, support 4, predicted 5 -> IoU 3/6, Dice 6/9, accuracy 3/4
# class 2: tp 3, support 5, predicted 4 -> IoU 3/6, Dice 6/9, accuracy 3/5
# pixel accuracy = trace / total = 9/13


def hand_confusion() -> ConfusionMatrix:
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor(HAND_PRED), torch.tensor(HAND_TARGET))
    return confusion


def test_hand_worked_matrix_and_metrics():
    confusion = hand_confusion()
    assert confusion.matrix.dtype == torch.int64
    assert confusion.matrix.tolist() == HAND_MATRIX
    summary = summarise(confusion.matrix, ["sky", "road", "car"], binary=False)
    assert summary["pixel_accuracy"] == pytest.approx(9 / 13)
    assert summary["mean_iou"] == pytest.approx((3 / 5 + 3 / 6 + 3 / 6) / 3)
    assert summary["mean_dice"] == pytest.approx((6 / 8 + 6 / 9 + 6 / 9) / 3)
    assert summary["mean_pixel_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 3 / 5) / 3)
    rows = summary["per_class"]
    assert [row["name"] for row in rows] == ["sky", "road", "car"]
    assert [row["support"] for row in rows] == [4, 4, 5]
    assert [row["iou"] for row in rows] == pytest.approx([3 / 5, 3 / 6, 3 / 6])
    assert [row["dice"] for row in rows] == pytest.approx([6 / 8, 6 / 9, 6 / 9])
    assert [row["recall"] for row in rows] == pytest.approx([3 / 4, 3 / 4, 3 / 5])
    assert "foreground_iou" not in summary


def test_summary_is_json_ready_python_floats():
    summary = summarise(hand_confusion().matrix, None, binary=False)
    assert json.loads(json.dumps(summary)) == summary
    assert type(summary["mean_iou"]) is float
    assert type(summary["per_class"][0]["support"]) is int
    assert summary["per_class"][2]["name"] == "class_2"


def test_agrees_with_scikit_learn_on_random_data_with_ignore():
    torch.manual_seed(0)
    num_classes = 5
    target = torch.randint(0, num_classes - 1, (3, 16, 16))  # class 4 never in the target
    prediction = torch.randint(0, num_classes, (3, 16, 16))
    target[torch.rand(target.shape) < 0.15] = IGNORE_INDEX
    confusion = ConfusionMatrix(num_classes)
    confusion.update(prediction, target)

    keep = target.flatten() != IGNORE_INDEX
    y_true, y_pred = target.flatten()[keep].numpy(), prediction.flatten()[keep].numpy()
    labels = list(range(num_classes))
    assert (
        confusion.matrix.numpy().tolist()
        == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    )

    summary = summarise(confusion.matrix, None, binary=False)
    rows = summary["per_class"]
    iou = jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels[:4], average=None)
    assert [row["iou"] for row in rows] == pytest.approx(iou.tolist())  # class 4: IoU 0
    assert [row["dice"] for row in rows] == pytest.approx(f1.tolist())
    assert [row["recall"] for row in rows[:4]] == pytest.approx(recall.tolist())
    assert rows[4]["recall"] is None  # predicted but never true: recall undefined
    assert summary["pixel_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert summary["mean_iou"] == pytest.approx(iou.mean())
    assert summary["mean_dice"] == pytest.approx(f1.mean())
    with pytest.warns(UserWarning, match="not in y_true"):
        balanced = balanced_accuracy_score(y_true, y_pred)
    assert summary["mean_pixel_accuracy"] == pytest.approx(balanced)


def test_class_never_seen_nor_predicted_is_none_and_left_out():
    confusion = ConfusionMatrix(4)
    confusion.update(torch.tensor(HAND_PRED), torch.tensor(HAND_TARGET))  # class 3 nowhere
    summary = summarise(confusion.matrix, None, binary=False)
    absent = summary["per_class"][3]
    assert absent == {
        "name": "class_3",
        **dict.fromkeys(("iou", "dice", "precision", "recall"), None),
        "specificity": 1.0,  # 13 negatives, none predicted as class 3
        "support": 0,
        "predicted": 0,
    }
    assert summary["mean_iou"] == pytest.approx((3 / 5 + 3 / 6 + 3 / 6) / 3)
    assert summary["mean_pixel_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 3 / 5) / 3)


def test_predicted_only_class_counts_zero_iou():
    # target all class 0; one pixel predicted as class 1
    summary = summarise(np.array([[3, 1], [0, 0]]), ["bg", "fg"], binary=True)
    fg = summary["per_class"][1]
    assert fg["iou"] == 0.0 and fg["dice"] == 0.0 and fg["recall"] is None
    assert summary["foreground_iou"] == 0.0
    assert summary["mean_iou"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert summary["mean_pixel_accuracy"] == pytest.approx(3 / 4)


def test_empty_mask_all_background():
    confusion = ConfusionMatrix(2)
    zeros = torch.zeros(2, 8, 8, dtype=torch.long)
    confusion.update(zeros, zeros)
    summary = summarise(confusion.matrix, ["background", "lesion"], binary=True)
    assert summary["pixel_accuracy"] == 1.0
    assert summary["mean_iou"] == 1.0  # the foreground is undefined, not counted as 0 or 1
    assert summary["foreground_iou"] is None and summary["foreground_dice"] is None
    assert summary["per_class"][0]["support"] == 128


def test_all_ignore_input():
    confusion = ConfusionMatrix(3)
    confusion.update(torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), IGNORE_INDEX))
    assert int(confusion.matrix.sum()) == 0
    summary = summarise(confusion.matrix, None, binary=False)
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "mean_dice"):
        assert summary[key] is None
    assert all(row["iou"] is None and row["support"] == 0 for row in summary["per_class"])
    assert "-" in format_table(summary)


def test_merge_equals_one_big_update():
    torch.manual_seed(1)
    prediction = torch.randint(0, 3, (4, 10, 10))
    target = torch.randint(0, 3, (4, 10, 10))
    target[:, 0] = IGNORE_INDEX
    whole = ConfusionMatrix(3)
    whole.update(prediction, target)
    first, second = ConfusionMatrix(3), ConfusionMatrix(3)
    first.update(prediction[:1], target[:1])
    second.update(prediction[1:], target[1:])
    combined = first + second
    assert torch.equal(combined.matrix, whole.matrix)
    assert not torch.equal(first.matrix, whole.matrix)  # + made a new matrix
    assert torch.equal(first.merge(second).matrix, whole.matrix)
    rebuilt = ConfusionMatrix.from_matrix(whole.state.clone())
    assert rebuilt.num_classes == 3 and torch.equal(rebuilt.matrix, whole.matrix)
    whole.reset()
    assert int(whole.matrix.sum()) == 0


def test_valid_mask_excludes_pixels():
    target = torch.tensor([[0, 1], [1, 1]])
    prediction = torch.tensor([[1, 1], [0, 1]])
    valid = torch.tensor([[True, True], [False, True]])
    confusion = ConfusionMatrix(2)
    confusion.update(prediction, target, valid=valid)
    assert confusion.matrix.tolist() == [[0, 1], [0, 2]]


def test_numpy_inputs_accepted():
    confusion = ConfusionMatrix(3)
    confusion.update(np.array(HAND_PRED, dtype=np.uint8), np.array(HAND_TARGET, dtype=np.uint8))
    assert confusion.matrix.tolist() == HAND_MATRIX


def test_bad_updates_are_explained():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="shape"):
        confusion.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        confusion.update(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="merge"):
        confusion.merge(ConfusionMatrix(2))
    assert int(confusion.matrix.sum()) == 0  # failed updates counted nothing
    with pytest.raises(ValueError, match="class names"):
        summarise(confusion.matrix, ["a", "b"], binary=False)
    with pytest.raises(ValueError, match="2x2"):
        summarise(confusion.matrix, None, binary=True)


def test_format_table():
    summary = summarise(np.array([[3, 1], [0, 0]]), ["background", "lesion"], binary=True)
    table = format_table(summary)
    assert "mean_iou " in table and "foreground_iou " in table and "mean_iou_no_background" in table
    background_row = next(line for line in table.splitlines() if line.startswith("background"))
    assert background_row.split() == ["background", "0.7500", "0.8571", "1.0000", "0.7500", "4"]
    lesion_row = next(line for line in table.splitlines() if line.startswith("lesion"))
    assert lesion_row.split() == ["lesion", "0.0000", "0.0000", "0.0000", "-", "0"]


def test_precision_specificity_and_background_free_headline_by_hand():
    summary = summarise(np.array(HAND_MATRIX), None, binary=False)
    rows = summary["per_class"]
    assert [row["precision"] for row in rows] == pytest.approx([3 / 4, 3 / 5, 3 / 4])
    # specificity = tn / negatives: class 0 (8/9), class 1 (7/9), class 2 (7/8)
    assert [row["specificity"] for row in rows] == pytest.approx([8 / 9, 7 / 9, 7 / 8])
    assert [row["predicted"] for row in rows] == [4, 5, 4]
    assert summary["fw_iou"] == pytest.approx((4 * 3 / 5 + 4 * 3 / 6 + 5 * 3 / 6) / 13)
    assert summary["pixel_accuracy_no_background"] == pytest.approx(6 / 9)
    assert summary["mean_pixel_accuracy_no_background"] == pytest.approx((3 / 4 + 3 / 5) / 2)
    assert summary["mean_iou_no_background"] == pytest.approx(0.5)
    assert summary["mean_dice_no_background"] == pytest.approx(6 / 9)
    assert summary["fw_iou_no_background"] == pytest.approx(0.5)


def test_precision_and_specificity_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 4, 500))
    summary = summarise(confusion_matrix(y_true, y_pred, labels=range(4)), None)
    precision = precision_score(y_true, y_pred, labels=range(4), average=None)
    assert [row["precision"] for row in summary["per_class"]] == pytest.approx(precision.tolist())
    for c, row in enumerate(summary["per_class"]):
        assert row["specificity"] == pytest.approx(recall_score(y_true != c, y_pred != c))
    weights = np.bincount(y_true, minlength=4) / len(y_true)
    iou = jaccard_score(y_true, y_pred, labels=range(4), average=None)
    assert summary["fw_iou"] == pytest.approx(float(weights @ iou))


def test_binary_summary_names_the_foreground():
    # target: 6 foreground, 4 background; prediction: 5 true positives, 2 false positives
    summary = summarise(np.array([[2, 2], [1, 5]]), ["background", "vessel"], binary=True)
    assert summary["foreground_iou"] == pytest.approx(5 / 8)
    assert summary["foreground_dice"] == pytest.approx(10 / 13)
    assert summary["foreground_precision"] == pytest.approx(5 / 7)
    assert summary["foreground_recall"] == pytest.approx(5 / 6)
    assert summary["foreground_specificity"] == pytest.approx(2 / 4)
    assert summary["mean_iou_no_background"] == summary["foreground_iou"]


def test_stacked_headline_equals_one_matrix_at_a_time():
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 20, (6, 3, 3))
    stack[2] = 0  # an all-ignore image: everything undefined
    stack[3, 2, :] = stack[3, :, 2] = 0  # class 2 absent from target and prediction
    arrays = headline_arrays(stack)
    for i, counts in enumerate(stack):
        one = summarise(counts)
        for key in HEADLINE_METRICS:
            expected = one[key]
            value = arrays[key][i]
            assert (np.isnan(value) and expected is None) or value == pytest.approx(expected)
    assert summarise(stack[2])["mean_iou"] is None


def test_read_only_arrays_are_counted_from_a_copy():
    prediction = np.array(HAND_PRED, dtype=np.uint8)
    target = np.array(HAND_TARGET, dtype=np.uint8)
    prediction.flags.writeable = target.flags.writeable = False  # as np.asarray(PIL image) gives
    confusion = ConfusionMatrix(3)
    confusion.update(prediction, target)
    assert confusion.matrix.tolist() == HAND_MATRIX
    # torch's "not writable" warning comes once per process, so a warning check here could pass
    # vacuously; what prevents it is the copy: as_tensor never views a read-only array
    tensor = as_tensor(prediction)
    assert not np.shares_memory(tensor.numpy(), prediction) and tensor.tolist() == HAND_PRED
