"""Example panels for the report: one image, its ground truth, the prediction and where they differ.

The error map reads a prediction against its target (ground truth) pixel by pixel, with class 0 as
background:

* correct: prediction equals the target (any class), drawn black so the errors stand out;
* false positive: the target is background, the prediction is a foreground class;
* false negative: the target is a foreground class, the prediction is background;
* wrong class: target and prediction are both foreground, but different classes (multi-class only);
* ignore: the target is :data:`~unetkit.tasks.IGNORE_INDEX`; these pixels never count, whatever the
  prediction, and are drawn grey.

A multi-label panel (target and prediction ``(L, H, W)`` of 0/1) draws both as the blend of the
labels' colours; its error map marks a pixel false positive where a label is predicted but absent,
false negative where one present is missed, "wrong" where both happen, ignored where every label
is ignored.

The three error colours come from the Okabe–Ito palette, chosen to stay apart under the common
colour-vision deficiencies; :data:`ERROR_LEGEND` names them for the legend. A panel's ``score`` is
``None`` when the ranking metric is undefined for that image, never a stand-in 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from unetkit.palette import blend_labels, colourise
from unetkit.tasks import IGNORE_INDEX

__all__ = ["ERROR_LEGEND", "MAX_TILE_SIDE", "Panel", "error_map", "panel_row"]

CORRECT_COLOUR = (0, 0, 0)
FALSE_POSITIVE_COLOUR = (213, 94, 0)  # vermillion
FALSE_NEGATIVE_COLOUR = (86, 180, 233)  # sky blue
WRONG_CLASS_COLOUR = (240, 228, 66)  # yellow
IGNORE_COLOUR = (128, 128, 128)

ERROR_LEGEND: dict[str, tuple[int, int, int]] = {
    "correct": CORRECT_COLOUR,
    "false positive (background predicted as foreground)": FALSE_POSITIVE_COLOUR,
    "false negative (foreground predicted as background)": FALSE_NEGATIVE_COLOUR,
    "wrong foreground class": WRONG_CLASS_COLOUR,
    "ignored (not scored)": IGNORE_COLOUR,
}
"""Error-map colour of each kind of pixel, in the order a legend shows them."""

MAX_TILE_SIDE = 256
"""Longest side, in pixels, of each of the four pictures of a panel row (keeps the report small)."""

_GAP = 4  # white pixels between the pictures of a row


@dataclass(frozen=True)
class Panel:
    """One example image with its target and prediction, ranked by ``score`` in the report."""

    name: str
    image: np.ndarray  # (H, W, 3), (H, W) or (H, W, 1) uint8
    target: np.ndarray  # (H, W) class ids, IGNORE_INDEX = not scored; multi-label (L, H, W)
    prediction: np.ndarray  # (H, W) class ids; multi-label (L, H, W) of 0/1
    score: float | None  # the ranking metric's value for this image; None = undefined


def error_map(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of where ``prediction`` disagrees with ``target``."""
    _check_same_shape(target, prediction.shape, "prediction")
    target_foreground = target > 0
    prediction_foreground = prediction > 0
    picture = np.empty((*target.shape, 3), dtype=np.uint8)
    picture[...] = CORRECT_COLOUR
    picture[~target_foreground & prediction_foreground] = FALSE_POSITIVE_COLOUR
    picture[target_foreground & ~prediction_foreground] = FALSE_NEGATIVE_COLOUR
    picture[target_foreground & prediction_foreground & (target != prediction)] = WRONG_CLASS_COLOUR
    picture[target == IGNORE_INDEX] = IGNORE_COLOUR
    return picture


def label_error_map(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of where multi-label ``prediction`` disagrees with ``target``
    (both ``(L, H, W)``; see the module docstring)."""
    if target.shape != prediction.shape:
        raise ValueError(f"the prediction is {prediction.shape} but the target is {target.shape}")
    added = ((prediction == 1) & (target == 0)).any(axis=0)
    missed = ((prediction == 0) & (target == 1)).any(axis=0)
    picture = np.empty((*target.shape[1:], 3), dtype=np.uint8)
    picture[...] = CORRECT_COLOUR
    picture[added & ~missed] = FALSE_POSITIVE_COLOUR
    picture[missed & ~added] = FALSE_NEGATIVE_COLOUR
    picture[added & missed] = WRONG_CLASS_COLOUR
    picture[(target == IGNORE_INDEX).all(axis=0)] = IGNORE_COLOUR
    return picture


def panel_row(panel: Panel, num_classes: int, class_names: Sequence[str]) -> np.ndarray:
    """image | ground truth | prediction | error map, side by side, as one uint8 RGB picture.

    Each picture is shrunk (never enlarged) so its longest side is at most
    :data:`MAX_TILE_SIDE`; shrinking averages pixels, so thin structures such as vessels fade
    instead of vanishing. ``class_names`` must match ``num_classes`` so the colours agree with the
    legend the report prints next to the row.
    """
    if len(class_names) != num_classes:
        raise ValueError(
            f"panel {panel.name!r}: {len(class_names)} class names for {num_classes} classes; "
            "pass one name per class, background first"
        )
    if panel.target.ndim == 3:  # multi-label: ``num_classes`` labels
        _check_same_shape(panel.target[0], panel.image.shape[:2], "image")
        tiles = [
            _as_rgb(panel.image, panel.name),
            blend_labels(panel.target),
            blend_labels(panel.prediction),
            label_error_map(panel.target, panel.prediction),
        ]
        return _side_by_side([_shrink(tile) for tile in tiles])
    _check_same_shape(panel.target, panel.prediction.shape, "prediction")
    _check_same_shape(panel.target, panel.image.shape[:2], "image")
    tiles = [
        _as_rgb(panel.image, panel.name),
        colourise(panel.target, num_classes),
        colourise(panel.prediction, num_classes),
        error_map(panel.target, panel.prediction),
    ]
    return _side_by_side([_shrink(tile) for tile in tiles])


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(
            f"panel {name!r}: image dtype is {image.dtype}; pass the uint8 picture as loaded "
            "(0..255), not a normalised tensor"
        )
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 3):
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    raise ValueError(
        f"panel {name!r}: image shape is {image.shape}; expected (H, W), (H, W, 1) or (H, W, 3)"
    )


def _shrink(picture: np.ndarray) -> np.ndarray:
    height, width = picture.shape[:2]
    scale = MAX_TILE_SIDE / max(height, width)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))


def _side_by_side(tiles: list[np.ndarray]) -> np.ndarray:
    height = max(tile.shape[0] for tile in tiles)
    width = sum(tile.shape[1] for tile in tiles) + _GAP * (len(tiles) - 1)
    row = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for tile in tiles:
        row[: tile.shape[0], left : left + tile.shape[1]] = tile
        left += tile.shape[1] + _GAP
    return row


def _check_same_shape(target: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if target.ndim != 2 or tuple(shape) != target.shape:
        raise ValueError(
            f"the {what} is {tuple(shape)} but the target is {target.shape}; "
            f"both must be (H, W) at the mask's own resolution (resize the {what} first)"
        )
