"""Outline and topology metrics of every class of one image: the per-image entry point.

For each foreground class ``c`` the masks ``prediction == c`` and ``target == c`` are compared with
HD95, ASSD and Boundary IoU (:mod:`unetkit.metrics.surface`) and clDice
(:mod:`unetkit.metrics.topology`); those modules state the definitions and the empty-mask rules
(both masks empty -> ``None``).

* Pixels that must not count (``target == 255`` or ``valid`` False) become background in both
  maps before anything is measured. Outline metrics need a complete mask, so the pixels cannot
  simply be dropped; since the cut is the same in both maps, it adds matching boundary pixels
  (distance 0) where a class meets an ignored region rather than errors.
* The background (class 0) is always ``None``: its outline is the union of the other classes'
  outlines, so scoring it would count every error a second time.
"""

from __future__ import annotations

import numpy as np

from unetkit.metrics.surface import default_boundary_width, surface_scores
from unetkit.metrics.topology import cl_dice
from unetkit.tasks import IGNORE_INDEX, check_class_ids


def boundary_metrics(
    prediction: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    valid: np.ndarray | None = None,
    width: int | None = None,
    with_cldice: bool = True,
) -> dict[str, list[float | None]]:
    """Per-class ``hd95``, ``assd``, ``boundary_iou`` and ``cldice`` of one (H, W) image.

    Each list is indexed by class id (entry 0, the background, is ``None``). ``width`` is the
    Boundary IoU band width, by default :func:`default_boundary_width` of the image size. With
    ``with_cldice`` False the ``cldice`` key is absent (not computed, as opposed to undefined).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background, so it is >= 2; got {num_classes}")
    prediction, target = _label_map(prediction, "prediction"), _label_map(target, "target")
    valid = _valid_pixels(prediction, target, valid)
    for name, labels in (("prediction", prediction), ("target", target)):
        check_class_ids(labels, num_classes, f"boundary metrics: the {name}", valid)
    prediction, target = np.where(valid, prediction, 0), np.where(valid, target, 0)
    if width is None:
        width = default_boundary_width(*target.shape)
    metrics: dict[str, list[float | None]] = {
        "hd95": [None],
        "assd": [None],
        "boundary_iou": [None],
    }
    if with_cldice:
        metrics["cldice"] = [None]
    for class_id in range(1, num_classes):
        predicted, expected = prediction == class_id, target == class_id
        scores = surface_scores(predicted, expected, width=width, percentile=95.0)
        metrics["hd95"].append(scores.hausdorff)
        metrics["assd"].append(scores.assd)
        metrics["boundary_iou"].append(scores.boundary_iou)
        if with_cldice:
            metrics["cldice"].append(cl_dice(predicted, expected))
    return metrics


def _label_map(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"boundary metrics: the {name} must be an (H, W) map of integer class ids; got dtype "
            f"{labels.dtype}, shape {labels.shape} (take the argmax of (C, H, W) scores first)"
        )
    return labels


def _valid_pixels(
    prediction: np.ndarray, target: np.ndarray, valid: np.ndarray | None
) -> np.ndarray:
    if prediction.shape != target.shape:
        raise ValueError(
            f"boundary metrics: prediction shape {prediction.shape} differs from target shape "
            f"{target.shape}; resize the prediction to the mask first"
        )
    not_ignored = target != IGNORE_INDEX
    if valid is None:
        return not_ignored
    valid = np.asarray(valid)
    if valid.shape != target.shape or valid.dtype != np.bool_:
        raise ValueError(
            f"boundary metrics: valid must be a boolean mask of the target's shape {target.shape}; "
            f"got dtype {valid.dtype}, shape {valid.shape}"
        )
    return not_ignored & valid
