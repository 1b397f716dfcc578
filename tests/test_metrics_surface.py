"""Boundary and topology metrics: hand-worked cases, brute-force references, empty masks, ignore."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist, directed_hausdorff
from skimage.morphology import skeletonize

from unetkit.metrics.boundary import boundary_metrics
from unetkit.metrics.surface import (
    average_symmetric_surface_distance,
    boundary_iou,
    boundary_map,
    crop_to_union,
    default_boundary_width,
    hausdorff_distance,
    surface_distances,
    surface_scores,
)
from unetkit.metrics.topology import cl_dice
from unetkit.tasks import IGNORE_INDEX


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def ring(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    """The one-pixel-wide outline of a size x size square."""
    mask = box(shape, slice(top, top + size), slice(left, left + size))
    mask[top + 1 : top + size - 1, left + 1 : left + size - 1] = False
    return mask


def blobs(rng: np.random.Generator, shape: tuple[int, int], canvas: tuple[int, int]) -> np.ndarray:
    """Random smooth blobs of ``shape`` placed at a random spot of a larger empty canvas."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(1.0, 2.5))
    mask = noise > np.quantile(noise, rng.uniform(0.4, 0.8))
    top = rng.integers(0, canvas[0] - shape[0] + 1)
    left = rng.integers(0, canvas[1] - shape[1] + 1)
    placed = np.zeros(canvas, dtype=bool)
    placed[top : top + shape[0], left : left + shape[1]] = mask
    return placed


def random_pairs(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Blob pairs: some filling the canvas (touching the image border), some small (cropped)."""
    rng = np.random.default_rng(seed)
    canvas = (28, 36)
    pairs = []
    for index in range(count):
        shape = canvas if index % 2 == 0 else (12, 15)
        pairs.append((blobs(rng, shape, canvas), blobs(rng, shape, canvas)))
    return [
        (prediction, target) for prediction, target in pairs if prediction.any() and target.any()
    ]


# ---- independent references -------------------------------------------------------------------


def reference_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion by the 4-neighbour cross, the image border counting as outside."""
    cross = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def reference_distances(
    prediction: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise distances between boundary pixels, then the minimum per pixel."""
    prediction_points = np.argwhere(reference_boundary(prediction))
    target_points = np.argwhere(reference_boundary(target))
    pairwise = cdist(prediction_points, target_points)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def reference_band(mask: np.ndarray, width: int) -> np.ndarray:
    points = np.argwhere(mask)
    closest = cdist(points, np.argwhere(reference_boundary(mask))).min(axis=1)
    band = np.zeros_like(mask)
    band[tuple(points[closest < width].T)] = True
    return band


def reference_cl_dice(prediction: np.ndarray, target: np.ndarray) -> float:
    prediction_skeleton, target_skeleton = skeletonize(prediction), skeletonize(target)
    precision = np.count_nonzero(prediction_skeleton & target) / np.count_nonzero(
        prediction_skeleton
    )
    sensitivity = np.count_nonzero(target_skeleton & prediction) / np.count_nonzero(target_skeleton)
    if precision + sensitivity == 0:
        return 0.0
    return 2 * precision * sensitivity / (precision + sensitivity)


# ---- boundary pixels --------------------------------------------------------------------------


def test_boundary_pixels_have_a_4_neighbour_outside_and_the_image_border_is_outside():
    plus = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    # (1, 2), (2, 1) and (2, 2) have all four neighbours inside; (1, 1) has (0, 1) outside
    expected = plus.copy()
    expected[1, 2] = expected[2, 1] = expected[2, 2] = False
    assert boundary_map(plus).tolist() == expected.tolist()
    full = np.ones((4, 5), dtype=bool)
    frame = ~box((4, 5), slice(1, 3), slice(1, 4))
    assert boundary_map(full).tolist() == frame.tolist()


def test_a_pixel_whose_only_outside_neighbour_is_diagonal_is_interior():
    notch = np.ones((5, 5), dtype=bool)
    notch[0, 0] = False
    # (1, 1) touches the hole at (0, 0) only diagonally: interior. The image frame is boundary.
    assert not boundary_map(notch)[1, 1]
    assert boundary_map(notch).sum() == 16 - 1


def test_crop_keeps_a_one_pixel_background_frame_around_the_union():
    prediction = box((10, 12), slice(2, 4), slice(3, 5))
    target = box((10, 12), slice(5, 6), slice(7, 9))
    cropped_prediction, cropped_target = crop_to_union(prediction, target)
    assert cropped_prediction.shape == (4 + 2, 6 + 2)
    assert cropped_prediction.sum() == 4 and cropped_target.sum() == 2
    assert not (cropped_prediction | cropped_target)[[0, -1], :].any()
    empty = np.zeros((3, 3), dtype=bool)
    assert crop_to_union(empty, empty)[0].shape == (3, 3)


# ---- hand-worked distances --------------------------------------------------------------------

# Two 5x5 squares, the target two columns right of the prediction (relative columns 0..4 and
# 2..6). Distances from the prediction's outline to the target's:
#   top and bottom rows, columns 0..4:  2, 1, 0, 0, 0  (columns 2..4 lie on the target's rows)
#   left side, rows 1..3:               2, 2, 2        (to the target's left side, column 2)
#   right side, rows 1..3:              1, 2, 1        (rows 1 and 3 are one step from a target row)
# 16 distances: six 0, four 1, six 2; sum 16. The reverse direction is the mirror image.
SQUARE_DISTANCES = sorted([2, 1, 0, 0, 0] * 2 + [2, 2, 2] + [1, 2, 1])


def offset_squares() -> tuple[np.ndarray, np.ndarray]:
    prediction = box((9, 12), slice(2, 7), slice(1, 6))
    target = box((9, 12), slice(2, 7), slice(3, 8))
    return prediction, target


def test_squares_offset_by_two_columns():
    prediction, target = offset_squares()
    prediction_to_target, target_to_prediction = surface_distances(prediction, target)
    assert sorted(prediction_to_target) == SQUARE_DISTANCES
    assert sorted(target_to_prediction) == SQUARE_DISTANCES
    assert hausdorff_distance(prediction, target, percentile=100) == 2.0
    assert (
        hausdorff_distance(prediction, target) == 2.0
    )  # rank 0.95 * 15 = 14.25 falls among the 2s
    assert average_symmetric_surface_distance(prediction, target) == (16 + 16) / (16 + 16)


def test_a_stray_pixel_moves_hd95_by_interpolation_and_hd100_fully():
    target = box((10, 12), slice(1, 4), slice(1, 4))  # 3x3: 8 boundary pixels
    prediction = target.copy()
    prediction[1, 9] = True  # 6 columns right of the target's corner (1, 3)
    # prediction -> target: eight 0s and one 6; rank 0.95 * 8 = 7.6 -> 0 + 0.6 * (6 - 0) = 3.6
    assert hausdorff_distance(prediction, target) == pytest.approx(3.6, abs=1e-12)
    assert hausdorff_distance(prediction, target, percentile=100) == 6.0
    assert average_symmetric_surface_distance(prediction, target) == pytest.approx(6 / (9 + 8))


def test_one_pixel_lines():
    prediction = box((8, 10), slice(2, 3), slice(1, 9))  # a line of 8 pixels, all boundary
    shifted = box((8, 10), slice(5, 6), slice(1, 9))  # the same line 3 rows lower
    assert hausdorff_distance(prediction, shifted, percentile=100) == 3.0
    assert average_symmetric_surface_distance(prediction, shifted) == 3.0
    end = box((8, 10), slice(2, 3), slice(1, 2))  # the line's left end alone
    # line -> end: 0, 1, ..., 7; end -> line: 0. HD95 of 0..7: rank 0.95 * 7 = 6.65.
    assert hausdorff_distance(prediction, end, percentile=100) == 7.0
    assert hausdorff_distance(prediction, end) == pytest.approx(6.65)
    assert average_symmetric_surface_distance(prediction, end) == pytest.approx(28 / 9)


def test_a_mask_filling_the_image_has_the_image_frame_as_outline():
    full = np.ones((5, 5), dtype=bool)
    centre = box((5, 5), slice(2, 3), slice(2, 3))
    # frame -> centre: 4 corners sqrt(8), 4 edge middles 2, 8 others sqrt(5); centre -> frame: 2
    assert hausdorff_distance(full, centre, percentile=100) == pytest.approx(math.sqrt(8))
    expected = (4 * math.sqrt(8) + 4 * 2 + 8 * math.sqrt(5) + 2) / (16 + 1)
    assert average_symmetric_surface_distance(full, centre) == pytest.approx(expected)
    assert hausdorff_distance(full, full) == 0.0
    assert boundary_iou(full, full, width=1) == 1.0


# ---- boundary IoU -----------------------------------------------------------------------------


def test_boundary_iou_of_offset_squares_layer_by_layer():
    prediction, target = offset_squares()
    # width 1: the 16-pixel outlines share 3 pixels on the top and bottom rows -> 6 / 26
    assert boundary_iou(prediction, target, width=1) == pytest.approx(6 / 26)
    # width 2: each square but its centre (24 pixels); the 15-pixel overlap loses both centres
    assert boundary_iou(prediction, target, width=2) == pytest.approx(13 / 35)
    # width 3 covers the whole squares: plain IoU 15 / 35
    assert boundary_iou(prediction, target, width=3) == pytest.approx(15 / 35)
    assert boundary_iou(prediction, target, width=50) == pytest.approx(15 / 35)


@pytest.mark.parametrize("width", [1, 3, 10])
def test_boundary_iou_of_one_pixel_rings_is_their_plain_iou(width):
    first = ring((10, 12), 2, 2, 6)
    second = ring((10, 12), 2, 3, 6)
    # every ring pixel is a boundary pixel; the rings share 5 + 5 pixels of 20 each -> 10 / 30
    assert boundary_iou(first, second, width=width) == pytest.approx(10 / 30)


def test_default_boundary_width_is_two_percent_of_the_diagonal():
    assert default_boundary_width(3000, 4000) == 100  # diagonal 5000
    assert default_boundary_width(512, 512) == 14  # 0.02 * 724.08 = 14.48
    assert default_boundary_width(6, 8) == 1  # 0.2 rounds to 0: at least one pixel
    with pytest.raises(ValueError, match="positive size"):
        default_boundary_width(0, 8)


# ---- empty masks ------------------------------------------------------------------------------


def test_both_masks_empty_are_undefined():
    empty = np.zeros((6, 8), dtype=bool)
    assert hausdorff_distance(empty, empty) is None
    assert hausdorff_distance(empty, empty, percentile=100) is None
    assert average_symmetric_surface_distance(empty, empty) is None
    assert boundary_iou(empty, empty, width=2) is None
    assert cl_dice(empty, empty) is None


@pytest.mark.parametrize("empty_side", ["prediction", "target"])
def test_one_empty_mask_scores_the_worst_value(empty_side):
    empty = np.zeros((6, 8), dtype=bool)
    present = box((6, 8), slice(1, 3), slice(2, 5))
    prediction, target = (empty, present) if empty_side == "prediction" else (present, empty)
    assert hausdorff_distance(prediction, target) == 10.0  # the diagonal of a 6x8 image
    assert hausdorff_distance(prediction, target, percentile=100) == 10.0
    assert average_symmetric_surface_distance(prediction, target) == 10.0
    assert boundary_iou(prediction, target, width=1) == 0.0
    assert cl_dice(prediction, target) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(prediction, target)


# ---- agreement with brute force on random masks -----------------------------------------------


def test_distances_match_pairwise_brute_force_on_random_blobs():
    for prediction, target in random_pairs(16, seed=0):
        prediction_to_target, target_to_prediction = surface_distances(prediction, target)
        expected_forward, expected_back = reference_distances(prediction, target)
        np.testing.assert_allclose(prediction_to_target, expected_forward, rtol=0, atol=1e-9)
        np.testing.assert_allclose(target_to_prediction, expected_back, rtol=0, atol=1e-9)
        hd95 = max(np.percentile(expected_forward, 95), np.percentile(expected_back, 95))
        assert hausdorff_distance(prediction, target) == pytest.approx(hd95, abs=1e-9)
        assd = (expected_forward.sum() + expected_back.sum()) / (
            expected_forward.size + expected_back.size
        )
        assert average_symmetric_surface_distance(prediction, target) == pytest.approx(
            assd, abs=1e-9
        )


def test_classic_hausdorff_matches_scipy_directed_hausdorff():
    for prediction, target in random_pairs(16, seed=1):
        prediction_points = np.argwhere(reference_boundary(prediction))
        target_points = np.argwhere(reference_boundary(target))
        expected = max(
            directed_hausdorff(prediction_points, target_points)[0],
            directed_hausdorff(target_points, prediction_points)[0],
        )
        assert hausdorff_distance(prediction, target, percentile=100) == pytest.approx(
            expected, abs=1e-9
        )


def test_boundary_iou_matches_brute_force_bands_on_random_blobs():
    for index, (prediction, target) in enumerate(random_pairs(12, seed=2)):
        width = 1 + index % 4
        prediction_band, target_band = (
            reference_band(prediction, width),
            reference_band(target, width),
        )
        expected = (prediction_band & target_band).sum() / (prediction_band | target_band).sum()
        assert boundary_iou(prediction, target, width=width) == pytest.approx(expected, abs=1e-12)


def test_surface_scores_gives_all_three_at_its_percentile_and_width():
    prediction, target = random_pairs(2, seed=3)[0]
    scores = surface_scores(prediction, target, width=2, percentile=90)
    forward, back = reference_distances(prediction, target)
    hd90 = max(np.percentile(forward, 90), np.percentile(back, 90))
    assd = (forward.sum() + back.sum()) / (forward.size + back.size)
    prediction_band, target_band = reference_band(prediction, 2), reference_band(target, 2)
    band_iou = (prediction_band & target_band).sum() / (prediction_band | target_band).sum()
    assert scores.hausdorff == pytest.approx(hd90, abs=1e-9)
    assert scores.assd == pytest.approx(assd, abs=1e-9)
    assert scores.boundary_iou == pytest.approx(band_iou, abs=1e-12)


# ---- clDice -----------------------------------------------------------------------------------


def test_cl_dice_of_straight_lines():
    line = box((5, 16), slice(2, 3), slice(0, 10))  # a line's skeleton is the line itself
    along = box((5, 16), slice(2, 3), slice(4, 14))  # shifted 4 along itself: 6 of 10 shared
    assert cl_dice(line, along) == pytest.approx(0.6)  # Tprec = Tsens = 6/10
    below = box((5, 16), slice(3, 4), slice(0, 10))  # shifted 1 across: no pixel shared
    assert cl_dice(line, below) == 0.0  # Tprec + Tsens == 0
    shorter = box((5, 16), slice(2, 3), slice(0, 5))
    # Tprec = 5/10 of the long skeleton is inside, Tsens = 5/5 -> 2 * 0.5 / 1.5
    assert cl_dice(line, shorter) == pytest.approx(2 / 3)
    bar = box((5, 16), slice(1, 4), slice(0, 10))  # three rows thick, around the line
    assert cl_dice(bar, bar) == 1.0


def test_cl_dice_of_a_line_inside_a_bar():
    line = box((5, 16), slice(2, 3), slice(0, 10))
    bar = box((5, 16), slice(1, 4), slice(0, 10))
    # Zhang-Suen thins the bar to row 2, columns 0..7, ending diagonally at (1, 8)
    bar_skeleton = box((5, 16), slice(2, 3), slice(0, 8))
    bar_skeleton[1, 8] = True
    assert skeletonize(bar).tolist() == bar_skeleton.tolist()
    # Tprec = 10/10 (the line is inside the bar), Tsens = 8/9 -> 2 * (8/9) / (17/9) = 16/17
    assert cl_dice(line, bar) == pytest.approx(16 / 17)


def test_cl_dice_matches_the_formula_on_full_image_skeletons():
    for prediction, target in random_pairs(16, seed=4):
        assert cl_dice(prediction, target) == pytest.approx(
            reference_cl_dice(prediction, target), abs=1e-12
        )


# ---- one image, all classes -------------------------------------------------------------------


def random_label_maps(
    seed: int, num_classes: int, shape: tuple[int, int] = (30, 40)
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma=3)
    edges = np.quantile(field, np.linspace(0, 1, num_classes + 1)[1:-1])
    target = np.digitize(field, edges).astype(np.uint8)
    noisy = field + ndimage.gaussian_filter(rng.normal(size=field.shape), sigma=2) * 0.01
    prediction = np.digitize(noisy, edges).astype(np.uint8)
    return prediction, target


def test_entry_point_equals_per_class_calls_and_background_is_none():
    prediction, target = random_label_maps(seed=5, num_classes=4, shape=(60, 80))
    prediction[prediction == 3] = 1  # class 3 exists only in the target
    target[target == 2] = 0
    prediction[prediction == 2] = 0  # class 2 absent from both -> undefined
    metrics = boundary_metrics(prediction, target, num_classes=5)
    assert sorted(metrics) == ["assd", "boundary_iou", "cldice", "hd95"]
    assert all(len(values) == 5 and values[0] is None for values in metrics.values())
    width = default_boundary_width(60, 80)
    assert width == 2  # 2 % of the diagonal 100
    for c in range(1, 5):
        p, t = prediction == c, target == c
        assert metrics["hd95"][c] == hausdorff_distance(p, t, percentile=95)
        assert metrics["assd"][c] == average_symmetric_surface_distance(p, t)
        assert metrics["boundary_iou"][c] == boundary_iou(p, t, width=width)
        assert metrics["cldice"][c] == cl_dice(p, t)
    assert [metrics[key][2] for key in sorted(metrics)] == [None] * 4
    assert [metrics[key][4] for key in sorted(metrics)] == [None] * 4
    assert metrics["hd95"][3] == 100.0  # class 3 missed: the 60x80 diagonal
    assert metrics["boundary_iou"][1] is not None and 0 < metrics["boundary_iou"][1] < 1
    assert {type(value) for values in metrics.values() for value in values} == {float, type(None)}


def test_width_and_cldice_switch_are_honoured():
    prediction, target = random_label_maps(seed=6, num_classes=3)
    metrics = boundary_metrics(prediction, target, num_classes=3, width=1, with_cldice=False)
    assert "cldice" not in metrics
    assert metrics["boundary_iou"][1] == boundary_iou(prediction == 1, target == 1, width=1)


def test_ignored_and_invalid_pixels_become_background_in_both_maps():
    target = np.zeros((12, 14), dtype=np.uint8)
    target[2:6, 2:6] = 1
    target[8:, :] = IGNORE_INDEX
    prediction = target.copy()
    prediction[8:, :] = 0
    prediction[9:11, 3:7] = 1  # a spurious object under the ignore label
    prediction[2:6, 10:13] = 200  # junk ids outside the region of interest
    valid = np.ones_like(target, dtype=bool)
    valid[:, 9:] = False
    metrics = boundary_metrics(prediction, target, num_classes=2, valid=valid)
    perfect = {"hd95": [None, 0.0], "assd": [None, 0.0], "boundary_iou": [None, 1.0]}
    assert metrics == {**perfect, "cldice": [None, 1.0]}
    unmasked = boundary_metrics(
        np.where(prediction == 200, 0, prediction), np.where(target == 1, 1, 0), 2
    )
    assert unmasked["hd95"][1] > 0  # without the ignore rule the spurious object would count


def test_entry_point_rejects_bad_inputs_with_the_value_seen():
    prediction, target = random_label_maps(seed=7, num_classes=3)
    with pytest.raises(ValueError, match=r"\[7\]"):
        boundary_metrics(np.where(prediction == 1, 7, prediction), target, num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        boundary_metrics(prediction[:-1], target, num_classes=3)
    with pytest.raises(ValueError, match="integer class ids"):
        boundary_metrics(prediction.astype(np.float32), target, num_classes=3)
    with pytest.raises(ValueError, match="valid"):
        boundary_metrics(prediction, target, num_classes=3, valid=np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match=">= 2"):
        boundary_metrics(prediction, target, num_classes=1)


def test_mask_functions_reject_bad_inputs():
    mask = box((6, 6), slice(1, 3), slice(1, 3))
    with pytest.raises(ValueError, match="labels == class_id"):
        hausdorff_distance(mask.astype(np.uint8), mask)
    with pytest.raises(ValueError, match="differs"):
        boundary_iou(mask, mask[:-1], width=1)
    with pytest.raises(ValueError, match="width"):
        boundary_iou(mask, mask, width=0)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(mask, mask, percentile=101)
