"""Instance metrics: hand-worked AP and PQ, pycocotools and brute-force agreement, edge cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from scipy import ndimage

from unetkit.metrics.instances import COCO_IOU_THRESHOLDS, InstanceAccumulator
from unetkit.tasks import IGNORE_INDEX

X = IGNORE_INDEX
NAMES = ["background", "cell", "nucleus"]


def probs_with(scores: list[tuple[tuple, float]], shape=(10, 10), channels=3) -> np.ndarray:
    """Probabilities that are ``score`` for every class on each given region, 0 elsewhere."""
    probs = np.zeros((channels, *shape))
    for region, score in scores:
        probs[(slice(None), *region)] = score
    return probs


def test_coco_thresholds():
    assert COCO_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def found_missed_invented(invented_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 1: ground truth A (rows 0-1, cols 0-1) and B (rows 5-6, cols 5-6); the prediction
    finds A exactly (score 0.9), misses B, and adds C (rows 8-9, cols 0-1, no ground truth) at
    ``invented_score``. Returns probabilities, prediction and target."""
    target = np.zeros((10, 10), int)
    target[0:2, 0:2] = target[5:7, 5:7] = 1
    prediction = np.zeros((10, 10), int)
    prediction[0:2, 0:2] = prediction[8:10, 0:2] = 1
    probs = probs_with([(np.s_[0:2, 0:2], 0.9), (np.s_[8:10, 0:2], invented_score)])
    return probs, prediction, target


def test_one_object_found_one_missed_and_a_false_positive_ranked_below():
    # C scores 0.8. Ranked: A (TP), C (FP) -> precision 1 up to recall 1/2 = the 51 recall points
    # 0, 0.01, .., 0.50 -> AP = 51/101 at every threshold. PQ: TP 1 (IoU 1), FP 1, FN 1.
    probs, prediction, target = found_missed_invented(0.8)
    accumulator = InstanceAccumulator(3)
    image = accumulator.update(probs, prediction, target)
    assert image == {"pq": pytest.approx(1 / (1 + 1 / 2 + 1 / 2))}
    np.testing.assert_allclose(accumulator.average_precisions(1), np.full(10, 51 / 101))
    summary = accumulator.summary(NAMES)
    cell = summary["per_class"][0]
    assert cell["name"] == "cell" and len(summary["per_class"]) == 2
    assert (cell["ap"], cell["ap_50"], cell["ap_75"]) == pytest.approx((51 / 101,) * 3)
    assert (cell["pq"], cell["sq"], cell["rq"]) == pytest.approx((1 / 2, 1.0, 1 / 2))
    assert (cell["gt_instances"], cell["pred_instances"]) == (2, 2)
    assert summary["map"] == pytest.approx(51 / 101)
    assert summary["pq"] == pytest.approx(1 / 2)
    assert summary["min_area"] == 0 and summary["connectivity"] == 8
    # Nucleus (class 2) never appears: every value None, and left out of the headlines.
    assert summary["per_class"][1]["ap"] is None and summary["per_class"][1]["pq"] is None


def test_false_positive_ranked_first_halves_precision():
    # As above but C scores 0.95 > A's 0.9: ranked C (FP), A (TP): precision 1/2 at recall 1/2.
    probs, prediction, target = found_missed_invented(0.95)
    accumulator = InstanceAccumulator(3)
    accumulator.update(probs, prediction, target)
    np.testing.assert_allclose(accumulator.average_precisions(1), np.full(10, 0.5 * 51 / 101))


def test_split_object_matches_only_at_low_thresholds():
    # Ground truth: one 2x6 bar (12 px). Prediction: columns 0-3 (8 px, IoU 2/3, score 0.6) and
    # column 5 (2 px, IoU 1/6, score 0.9), apart by the empty column 4.
    # Thresholds 0.50..0.65 (2/3 >= t): ranked small (FP), big (TP) -> precision 1/2 at recall 1
    # -> AP 1/2. Thresholds 0.70..0.95: no match -> AP 0. ap = 4 * 1/2 / 10 = 1/5.
    # PQ: TP 1 with IoU 2/3, FP 1, FN 0 -> PQ = (2/3) / 1.5 = 4/9, SQ = 2/3, RQ = 2/3.
    target = np.zeros((4, 8), int)
    target[0:2, 0:6] = 1
    prediction = np.zeros((4, 8), int)
    prediction[0:2, 0:4] = prediction[0:2, 5] = 1
    probs = probs_with([(np.s_[0:2, 0:4], 0.6), (np.s_[0:2, 5], 0.9)], shape=(4, 8))
    accumulator = InstanceAccumulator(3)
    accumulator.update(probs, prediction, target)
    np.testing.assert_allclose(accumulator.average_precisions(1), [0.5] * 4 + [0.0] * 6)
    cell = accumulator.summary(NAMES)["per_class"][0]
    assert (cell["ap"], cell["ap_50"], cell["ap_75"]) == pytest.approx((1 / 5, 1 / 2, 0.0))
    assert (cell["pq"], cell["sq"], cell["rq"]) == pytest.approx((4 / 9, 2 / 3, 2 / 3))


def test_min_area_drops_small_predictions_but_keeps_small_ground_truth():
    # A 2-pixel object predicted exactly, and a 1-pixel false positive, with min_area 3: both
    # predictions go, the object becomes a miss. A 3x3 object predicted exactly stays a match.
    target = np.zeros((8, 8), int)
    target[0, 0:2] = 1
    target[4:7, 4:7] = 1
    prediction = target.copy()
    prediction[7, 0] = 1
    probs = probs_with([(np.s_[0:8, 0:8], 0.7)], shape=(8, 8))
    accumulator = InstanceAccumulator(3, min_area=3)
    assert accumulator.update(probs, prediction, target) == {"pq": pytest.approx(1 / 1.5)}
    cell = accumulator.summary(NAMES)["per_class"][0]
    assert (cell["gt_instances"], cell["pred_instances"]) == (2, 1)
    assert cell["ap"] == pytest.approx(51 / 101)
    assert accumulator.summary(NAMES)["min_area"] == 3


def test_connectivity_is_eight_and_classes_separate_instances():
    # Two squares touching at a corner are one instance; a class-2 block touching a class-1
    # block is its own instance of class 2.
    target = np.zeros((6, 6), int)
    target[0:2, 0:2] = target[2:4, 2:4] = 1
    target[0:2, 2:4] = 2
    accumulator = InstanceAccumulator(3)
    accumulator.update(probs_with([], shape=(6, 6)), target, target)
    rows = accumulator.summary(NAMES)["per_class"]
    assert [row["gt_instances"] for row in rows] == [1, 1]
    assert [row["pq"] for row in rows] == [1.0, 1.0]


def test_empty_and_all_ignore_images_change_nothing():
    accumulator = InstanceAccumulator(3)
    assert accumulator.summary(NAMES)["map"] is None and accumulator.summary(NAMES)["pq"] is None
    target = np.zeros((5, 5), int)
    target[1:3, 1:3] = 1
    accumulator.update(probs_with([(np.s_[1:3, 1:3], 0.8)], shape=(5, 5)), target, target)
    before = accumulator.summary(NAMES)
    empty, full, all_ignore = np.zeros((5, 5), int), np.ones((5, 5), int), np.full((5, 5), X)
    outside_valid = np.zeros((5, 5), bool)
    counting_nothing = [(empty, empty, None), (full, all_ignore, None), (full, full, outside_valid)]
    for prediction, target, valid in counting_nothing:
        assert accumulator.update(probs_with([], shape=(5, 5)), prediction, target, valid) == {
            "pq": None
        }
    assert accumulator.summary(NAMES) == before
    assert before["map"] == 1.0 and before["pq"] == 1.0


def test_pixels_outside_valid_never_form_join_or_enlarge_instances():
    # A ground-truth bar split by an invalid column becomes two instances; the prediction covers
    # the bar and spills into an invalid region: both cut, both pieces match exactly.
    target = np.zeros((6, 7), int)
    target[0:2, 0:7] = 1
    prediction = np.zeros((6, 7), int)
    prediction[0:4, 0:7] = 1
    valid = np.ones((6, 7), bool)
    valid[:, 3] = False
    valid[2:, :] = False
    target[5, 5] = X  # ignored pixels count nowhere either
    accumulator = InstanceAccumulator(3)
    assert accumulator.update(probs_with([], shape=(6, 7)), prediction, target, valid) == {
        "pq": 1.0
    }
    cell = accumulator.summary(NAMES)["per_class"][0]
    assert (cell["gt_instances"], cell["pred_instances"], cell["ap"]) == (2, 2, 1.0)


def test_class_only_predicted_has_no_ap_but_zero_pq():
    target = np.zeros((5, 5), int)
    prediction = np.zeros((5, 5), int)
    prediction[1:3, 1:3] = 2
    accumulator = InstanceAccumulator(3)
    assert accumulator.update(probs_with([], shape=(5, 5)), prediction, target) == {"pq": 0.0}
    nucleus = accumulator.summary(NAMES)["per_class"][1]
    assert nucleus["ap"] is None and nucleus["sq"] is None
    assert nucleus["pq"] == 0.0 and nucleus["rq"] == 0.0


def test_ties_in_iou_go_to_the_lowest_ground_truth_label():
    # Ground truth: columns 0-1 (label 1) and 3-4 (label 2), rows 0-4, 10 px each. Predictions:
    # P = rows 0-1 (10 px, score 0.9) has IoU 4/16 = 1/4 with both; Q = rows 3-4, cols 3-4
    # (score 0.8) and R = rows 3-4, cols 0-1 (score 0.7) have IoU 4/10 with label 2 and 1.
    # At t = 1/4: P takes label 1, Q label 2, R finds label 1 taken -> hits 1, 1, 0 -> AP 1.
    # (Were the tie given to label 2: hits 1, 0, 1 -> AP (51 + 50 * 2/3) / 101.)
    target = np.zeros((5, 5), int)
    target[:, 0:2] = target[:, 3:5] = 1
    prediction = np.zeros((5, 5), int)
    prediction[0:2, :] = prediction[3:5, 3:5] = prediction[3:5, 0:2] = 1
    scores = [
        (np.s_[0:2, 0:5], 0.9),
        (np.s_[3:5, 3:5], 0.8),
        (np.s_[3:5, 0:2], 0.7),
    ]
    accumulator = InstanceAccumulator(3, iou_thresholds=[0.25])
    accumulator.update(probs_with(scores, shape=(5, 5)), prediction, target)
    np.testing.assert_allclose(accumulator.average_precisions(1), [1.0])
    assert accumulator.summary(NAMES)["map_50"] is None  # 0.5 is not among the thresholds


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 4, 4), (4, 4), (4, 4)), "C = 3"),
        (((3, 4, 4), (4, 5), (4, 4)), "same image"),
    ],
)
def test_bad_shapes_are_explained(shapes, message):
    probs, prediction, target = (np.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        InstanceAccumulator(3).update(probs, prediction.astype(int), target.astype(int))


def test_bad_class_ids_are_explained():
    with pytest.raises(ValueError, match="prediction holds class ids \\[7\\]"):
        InstanceAccumulator(3).update(np.zeros((3, 2, 2)), np.full((2, 2), 7), np.zeros((2, 2)))


# --- random blob images against pycocotools and a brute-force panoptic quality ----------------

SIZE, CLASSES, MIN_AREA = 40, 4, 3
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def random_blob_images(seed: int, count: int = 6) -> list[tuple[np.ndarray, ...]]:
    """(probs, prediction, target, valid) of images with rectangles of several classes.

    The prediction is the ground truth shifted and partly repainted, and each is cut by its own
    background lines, so that objects are found, missed, split, merged and invented; an ignore
    strip and an invalid border cut through both.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        target = np.zeros((SIZE, SIZE), dtype=np.int64)
        for _ in range(rng.integers(4, 10)):
            (row, col), (height, width) = rng.integers(0, SIZE - 4, 2), rng.integers(2, 11, 2)
            target[row : row + height, col : col + width] = rng.integers(1, CLASSES)
        prediction = np.roll(target, rng.integers(-2, 3, 2), axis=(0, 1))
        for _ in range(rng.integers(2, 7)):
            (row, col), (height, width) = rng.integers(0, SIZE - 3, 2), rng.integers(1, 9, 2)
            prediction[row : row + height, col : col + width] = rng.integers(0, CLASSES)
        for mask in (target, prediction):  # cuts in one but not the other: splits and merges
            mask[rng.integers(0, SIZE, 3), :] = 0
            mask[:, rng.integers(0, SIZE, 3)] = 0
        row = rng.integers(0, SIZE - 3)
        target[row : row + 2, :] = X
        valid = np.ones((SIZE, SIZE), dtype=bool)
        valid[:, :2] = False
        images.append((rng.random((CLASSES, SIZE, SIZE)), prediction, target, valid))
    return images


def reference_components(image, c: int, min_area: int):
    """Ground-truth masks and (mask, score) predictions of class ``c``, by the definition."""
    probs, prediction, target, valid = image
    valid = valid & (target != X)
    target_labels, num_targets = ndimage.label(valid & (target == c), structure=EIGHT_CONNECTED)
    prediction_labels, num_predictions = ndimage.label(
        valid & (prediction == c), structure=EIGHT_CONNECTED
    )
    gts = [target_labels == k for k in range(1, num_targets + 1)]
    preds = [prediction_labels == k for k in range(1, num_predictions + 1)]
    return gts, [(mask, probs[c][mask].mean()) for mask in preds if mask.sum() >= min_area]


def brute_force_iou(gts, preds) -> np.ndarray:
    return np.array(
        [[(gt & mask).sum() / (gt | mask).sum() for mask, _ in preds] for gt in gts]
    ).reshape(len(gts), len(preds))


def coco_average_precisions(images, thresholds) -> tuple[dict[int, np.ndarray | None], float]:
    """COCOeval (segm) AP per class and IoU threshold, and its mAP, for our components."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def encoded(mask):
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    annotations, detections = [], []
    for image_id, image in enumerate(images, start=1):
        for c in range(1, CLASSES):
            gts, preds = reference_components(image, c, MIN_AREA)
            # COCOeval gives an IoU tie to the last ground truth listed; ours goes to the lowest
            # label, so list them from the highest label down.
            for mask in reversed(gts):
                rle = encoded(mask)
                annotations.append(
                    {
                        **{"id": len(annotations) + 1, "image_id": image_id, "category_id": c},
                        **{"segmentation": rle, "area": float(mask.sum()), "iscrowd": 0},
                        "bbox": mask_utils.toBbox(rle).tolist(),
                    }
                )
            for mask, score in preds:
                detections.append(
                    {"image_id": image_id, "category_id": c, "segmentation": encoded(mask)}
                    | {"score": float(score)}
                )
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": [{"id": i, "height": SIZE, "width": SIZE} for i in range(1, len(images) + 1)],
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(1, CLASSES)],
        }
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="segm")
        evaluation.params.iouThrs = np.asarray(thresholds, dtype=np.float64)
        evaluation.params.maxDets = [10_000]
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, 0]  # (threshold, recall point, class)
    per_class = {
        c: None if (precision[:, :, k] < 0).any() else precision[:, :, k].mean(axis=1)
        for k, c in enumerate(evaluation.params.catIds)
    }
    return per_class, float(precision[precision > -1].mean())


@pytest.mark.parametrize("thresholds", [COCO_IOU_THRESHOLDS, (0.05, 0.1, 0.3, 0.5)])
def test_average_precision_equals_cocoeval(thresholds):
    images = random_blob_images(seed=11)
    accumulator = InstanceAccumulator(CLASSES, min_area=MIN_AREA, iou_thresholds=thresholds)
    for image in images:
        accumulator.update(*image)
    expected, expected_map = coco_average_precisions(images, thresholds)
    assert all(ap is not None for ap in expected.values())  # every class has ground truth
    for c, expected_ap in expected.items():
        np.testing.assert_allclose(accumulator.average_precisions(c), expected_ap, atol=1e-9)
    assert accumulator.summary(["bg", "a", "b", "c"])["map"] == pytest.approx(
        expected_map, abs=1e-9
    )


def test_low_thresholds_hold_contests_that_greedy_matching_must_settle():
    """The second COCO case is only a test of contested matching if contests occur in it."""
    contests = 0
    for image in random_blob_images(seed=11):
        for c in range(1, CLASSES):
            candidates = brute_force_iou(*reference_components(image, c, MIN_AREA)) >= 0.05
            contests += int((candidates.sum(axis=0) > 1).sum() + (candidates.sum(axis=1) > 1).sum())
    assert contests > 0


def test_panoptic_quality_equals_brute_force():
    images = random_blob_images(seed=4, count=8)
    accumulator = InstanceAccumulator(CLASSES, min_area=MIN_AREA)
    totals = np.zeros((CLASSES, 4))  # per class: TP, sum of TP IoU, ground truths, predictions
    for image in images:
        image_pq = []
        for c in range(1, CLASSES):
            gts, preds = reference_components(image, c, MIN_AREA)
            iou = brute_force_iou(gts, preds)
            true_pos, matched_iou = (iou > 0.5).sum(), iou[iou > 0.5].sum()
            totals[c] += true_pos, matched_iou, len(gts), len(preds)
            if gts or preds:
                image_pq.append(
                    matched_iou / (true_pos + (len(gts) + len(preds) - 2 * true_pos) / 2)
                )
        expected = np.mean(image_pq) if image_pq else None
        assert accumulator.update(*image) == {"pq": pytest.approx(expected, abs=1e-12)}
    rows = accumulator.summary(["bg", "a", "b", "c"])["per_class"]
    for c, row in enumerate(rows, start=1):
        true_pos, matched_iou, num_targets, num_predictions = totals[c]
        base = true_pos + (num_targets + num_predictions - 2 * true_pos) / 2
        assert (row["gt_instances"], row["pred_instances"]) == (num_targets, num_predictions)
        assert row["pq"] == pytest.approx(matched_iou / base, abs=1e-12)
        assert row["sq"] == pytest.approx(matched_iou / true_pos, abs=1e-12)
        assert row["rq"] == pytest.approx(true_pos / base, abs=1e-12)


def test_labelled_objects_are_the_ground_truth_where_the_dataset_gives_them():
    """Two touching nuclei: one connected component, but two objects to find."""
    target = np.zeros((10, 10), np.uint8)
    target[2:6, 1:5] = target[2:6, 5:9] = 1  # touching along column 4 | 5
    objects = np.zeros((10, 10), np.int32)
    objects[2:6, 1:5], objects[2:6, 5:9] = 7, 9  # any ids: renumbered per image
    probs = probs_with([((slice(2, 6), slice(1, 9)), 0.9)], channels=2)
    merged = target.copy()  # predicted as one blob covering both

    as_components = InstanceAccumulator(2)
    assert as_components.update(probs, merged, target)["pq"] == 1.0
    as_objects = InstanceAccumulator(2)
    assert as_objects.update(probs, merged, target, target_instances=objects)["pq"] == 0.0
    summary = as_objects.summary(["background", "nucleus"])
    assert summary["ground_truth"] == "labelled objects"
    # IoU exactly 0.5 with each: at COCO's 0.50 one of two found (AP 51/101), none above it
    assert summary["map"] == pytest.approx(51 / 101 / 10)
    assert as_objects.num_target_instances[1] == 2 and as_objects.num_predicted_instances[1] == 1
    assert as_components.summary(["background", "nucleus"])["ground_truth"] == (
        "connected components"
    )

    split = merged.copy()
    split[:, 4:6] = 0  # predicted apart: 4x3 and 4x3 against 4x4 each, IoU 0.75
    separate = InstanceAccumulator(2)
    assert separate.update(probs, split, target, target_instances=objects)["pq"] == 0.75
