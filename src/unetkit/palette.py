"""Class colours and overlays: how a mask is shown to a person.

It sits at the bottom of the package (numpy only) so the data layer (sample previews) and
inference (prediction overlays) share one palette without depending on each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["blend_labels", "class_palette", "colourise", "label_overlay", "overlay"]

_BASE_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
]


def class_palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: black background, then well-separated hues."""
    colours = list(_BASE_COLOURS)
    rng = np.random.default_rng(0)
    while len(colours) < num_classes:
        colours.append(tuple(int(c) for c in rng.integers(40, 256, size=3)))
    return np.asarray(colours[:num_classes], dtype=np.uint8)


def colourise(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """An RGB picture of a class-id mask (ignore pixels white)."""
    palette = np.vstack([class_palette(max(num_classes, 1)), np.zeros((256 - num_classes, 3))])
    palette[255] = 255
    return palette.astype(np.uint8)[mask]


def overlay(
    image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5
) -> np.ndarray:
    """``image`` with non-background classes tinted by their colour."""
    return _tinted(image, colourise(mask, num_classes), mask > 0, alpha)


def _tinted(image: np.ndarray, colours: np.ndarray, where: np.ndarray, alpha: float) -> np.ndarray:
    """``image`` (RGB, or grey shown as RGB) blended with ``colours`` at the ``where`` pixels."""
    rgb = (
        image
        if image.ndim == 3 and image.shape[2] == 3
        else np.repeat(image.reshape(*where.shape, 1), 3, 2)
    )
    blended = rgb.astype(np.float32)
    colours = colours.astype(np.float32)
    blended[where] = (1 - alpha) * blended[where] + alpha * colours[where]
    return blended.round().clip(0, 255).astype(np.uint8)


def blend_labels(labels: np.ndarray) -> np.ndarray:
    """An RGB picture of multi-label maps ``(L, H, W)``: each pixel the mean colour of the labels
    present there (label ``l`` has class colour ``l + 1``), black where none is, white where every
    label is ignored (255)."""
    labels = np.asarray(labels)
    colours = class_palette(len(labels) + 1)[1:].astype(np.float32)
    present = (labels == 1).astype(np.float32)
    count = present.sum(axis=0)
    mixed = np.einsum("lhw,lc->hwc", present, colours) / np.maximum(count, 1)[..., None]
    mixed[(labels == 255).all(axis=0)] = 255
    return mixed.round().clip(0, 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` tinted, where any label is present, by the blend of those labels' colours."""
    labels = np.asarray(labels)
    return _tinted(image, blend_labels(labels), (labels == 1).any(axis=0), alpha)
