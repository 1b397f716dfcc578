"""Boundary distances between two masks of one class: Hausdorff, ASSD and Boundary IoU.

Region metrics (IoU, Dice) barely move when an object's outline is wrong by a few pixels; these
measure the outline itself, in pixels (unit spacing, Euclidean).

Definitions:

* A **boundary pixel** of a mask is a mask pixel with at least one of its 4 neighbours outside the
  mask. The image border counts as outside, so every non-empty mask has a boundary (a mask filling
  the image has the image frame as its boundary), and a boundary pixel is never more than one step
  from the outside.
* **Surface distances** are, for each boundary pixel of one mask, the distance to the nearest
  boundary pixel of the other, in both directions. They come from the Euclidean distance transform
  of the other mask's boundary map (``scipy.ndimage.distance_transform_edt``), never from pairwise
  distances, so the cost is linear in the pixel count.
* **Hausdorff distance** at percentile ``q``: the ``q``-th percentile of each direction's distances
  (linear interpolation between ranks, numpy's default), then the larger of the two, as MONAI's
  ``compute_hausdorff_distance`` does. ``q = 100`` is the classic Hausdorff distance; ``q = 95``
  (HD95) ignores the worst 5 % of outline pixels, so one stray pixel does not dominate.
* **ASSD** (average symmetric surface distance): the sum of both directions' distances divided by
  the number of boundary pixels of both masks.
* **Boundary IoU** (Cheng et al. 2021) with width ``w``: each mask's band is its pixels closer
  than ``w`` to its own boundary pixels, i.e. its ``w`` outermost layers (``w = 1`` gives the
  boundary pixels themselves); the score is ``|P_w & G_w| / |P_w | G_w|``. The paper's reference
  code peels layers by erosion with a 3x3 square (chessboard distance), so its band is the same on
  axis-parallel edges but wider along slanted and curved ones (at ``w = 1`` it also holds pixels
  that touch the outside only diagonally); the Euclidean band used here is as thick in every
  direction, so rotating an object does not change its band, and it reuses the distance transforms
  computed for the surface distances. :func:`default_boundary_width` is the paper's default, 2 % of
  the image diagonal.

Empty masks (the rule every caller relies on; ``None`` is left out of means):

* both masks empty: every metric is ``None`` (there is no outline to compare);
* exactly one empty: Hausdorff and ASSD are the image diagonal ``sqrt(H**2 + W**2)``, larger than
  any distance between two pixels of the image (the BraTS challenge convention of a fixed
  worst-case value rather than infinity or omission, which would hide a missed or hallucinated
  object), and Boundary IoU is 0 (the bands do not overlap at all);
* :func:`surface_distances` itself needs two non-empty masks and raises otherwise.

Speed: the work is two distance transforms per pair of masks, shared by all three metrics
(:func:`surface_scores`), over the bounding box of ``prediction | target`` plus a one-pixel
background frame (:func:`crop_to_union`) rather than the whole image. The crop is exact, not an
approximation: every boundary and band pixel of both masks lies inside it, distances between them
do not depend on where the window sits, and the frame supplies the outside neighbours that the
boundary test looks at, exactly as the pixels beyond the crop (or the image border) would.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage


class SurfaceScores(NamedTuple):
    """The three outline metrics of one pair of masks (see the module docstring)."""

    hausdorff: float | None
    assd: float | None
    boundary_iou: float | None


def crop_to_union(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of ``prediction | target``, framed by a background pixel.

    Measurements that look only at mask pixels, their 4 or 8 neighbours and distances between mask
    pixels give the same result on the crop as on the full image (see the module docstring). Two
    empty masks have nothing to crop to and come back unchanged.
    """
    prediction, target = _check_pair(prediction, target)
    union = prediction | target
    if not union.any():
        return prediction, target
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.pad(prediction[window], 1), np.pad(target[window], 1)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (beyond the image border is outside)."""
    framed = np.pad(_check_mask(mask, "mask"), 1)
    interior = (
        framed[1:-1, 1:-1]
        & framed[:-2, 1:-1]
        & framed[2:, 1:-1]
        & framed[1:-1, :-2]
        & framed[1:-1, 2:]
    )
    return framed[1:-1, 1:-1] & ~interior


def surface_distances(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each boundary pixel of ``prediction`` to ``target``'s boundary, and back.

    float64, one array per direction.

    Both masks must be non-empty (see the module docstring for the empty-mask rules).
    """
    prediction, target = _check_pair(prediction, target)
    for name, mask in (("prediction", prediction), ("target", target)):
        if not mask.any():
            raise ValueError(
                f"surface_distances needs two non-empty masks; the {name} is empty (use "
                f"hausdorff_distance or average_symmetric_surface_distance, which handle it)"
            )
    prediction_outline, target_outline = (
        _Outline(mask) for mask in crop_to_union(prediction, target)
    )
    forward = target_outline.distances_to(prediction_outline.boundary)
    return forward, prediction_outline.distances_to(target_outline.boundary)


def hausdorff_distance(
    prediction: np.ndarray, target: np.ndarray, percentile: float = 95.0
) -> float | None:
    """The larger of the two directed ``percentile``-th surface distances (100: classic HD)."""
    return surface_scores(prediction, target, width=1, percentile=percentile).hausdorff


def average_symmetric_surface_distance(prediction: np.ndarray, target: np.ndarray) -> float | None:
    """Mean distance over the boundary pixels of both masks to the other mask's boundary."""
    return surface_scores(prediction, target, width=1).assd


def boundary_iou(prediction: np.ndarray, target: np.ndarray, width: int) -> float | None:
    """IoU of the masks' ``width``-pixel inner bands along their outlines (Cheng et al. 2021)."""
    return surface_scores(prediction, target, width=width).boundary_iou


def default_boundary_width(height: int, width: int) -> int:
    """The Boundary IoU paper's band width for an image: 2 % of its diagonal, at least 1 pixel."""
    if height < 1 or width < 1:
        raise ValueError(f"an image has a positive size; got height {height}, width {width}")
    return max(1, round(0.02 * math.hypot(height, width)))


def surface_scores(
    prediction: np.ndarray, target: np.ndarray, width: int, percentile: float = 95.0
) -> SurfaceScores:
    """Hausdorff (at ``percentile``), ASSD and Boundary IoU (at ``width``) from one computation.

    The single-metric functions are shortcuts into this; callers wanting several metrics of the
    same pair (per-image evaluation) save the repeated distance transforms.
    """
    prediction, target = _check_pair(prediction, target)
    _check_width(width)
    _check_percentile(percentile)
    prediction_empty, target_empty = not prediction.any(), not target.any()
    if prediction_empty and target_empty:
        return SurfaceScores(None, None, None)
    if prediction_empty or target_empty:
        worst = math.hypot(*prediction.shape)
        return SurfaceScores(worst, worst, 0.0)
    prediction_outline, target_outline = (
        _Outline(mask) for mask in crop_to_union(prediction, target)
    )
    prediction_to_target = target_outline.distances_to(prediction_outline.boundary)
    target_to_prediction = prediction_outline.distances_to(target_outline.boundary)
    prediction_band, target_band = prediction_outline.band(width), target_outline.band(width)
    return SurfaceScores(
        hausdorff=max(
            float(np.percentile(prediction_to_target, percentile)),
            float(np.percentile(target_to_prediction, percentile)),
        ),
        assd=float(prediction_to_target.sum() + target_to_prediction.sum())
        / (prediction_to_target.size + target_to_prediction.size),
        boundary_iou=int((prediction_band & target_band).sum())
        / int((prediction_band | target_band).sum()),
    )


class _Outline:
    """A non-empty mask's boundary pixels and, for every pixel, its nearest boundary pixel."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.boundary = boundary_map(mask)
        self._nearest = ndimage.distance_transform_edt(
            ~self.boundary, return_distances=False, return_indices=True
        )

    def distances_to(self, pixels: np.ndarray) -> np.ndarray:
        """Distance from each True pixel of ``pixels`` (row-major order) to this outline."""
        return np.sqrt(self._squared_distances(pixels).astype(np.float64))

    def band(self, width: int) -> np.ndarray:
        """Mask pixels closer than ``width`` to this outline: its ``width`` outermost layers."""
        band = np.zeros_like(self.mask)
        band[self.mask] = self._squared_distances(self.mask) < width * width
        return band

    def _squared_distances(self, pixels: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(pixels)
        nearest_rows, nearest_cols = self._nearest[:, rows, cols]
        return (rows - nearest_rows) ** 2 + (cols - nearest_cols) ** 2


def _check_pair(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = _check_mask(prediction, "prediction"), _check_mask(target, "target")
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction mask shape {prediction.shape} differs from target mask shape "
            f"{target.shape}; resize the prediction to the target first"
        )
    return prediction, target


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(
            f"the {name} must be a boolean (H, W) mask; got dtype {mask.dtype}, shape "
            f"{mask.shape} (for one class of a label map pass `labels == class_id`)"
        )
    return mask


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(
            f"the boundary width is a whole number of pixels >= 1; got {width!r} "
            f"(default_boundary_width gives the usual value for an image size)"
        )


def _check_percentile(percentile: float) -> None:
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(
            f"the Hausdorff percentile lies in [0, 100]; got {percentile} (95: HD95, 100: classic)"
        )
