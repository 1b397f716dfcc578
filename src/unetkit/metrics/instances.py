"""Instance metrics from connected components: COCO-style mask AP and panoptic quality.

An instance is a connected component of one class ``c >= 1`` (the background has none), found
separately in the prediction and in the target of each image with 8-connectivity (pixels
touching by an edge or a corner belong together, so thin diagonal structures stay whole). Where
the dataset labels its objects one by one (``target_instances``, e.g. one mask file per nucleus),
the target instances are those objects instead, so two touching nuclei are two objects to
find rather than one component; predictions are still components of the predicted mask. Pixels
whose target is 255 or whose ``valid`` is False are set to background in both first: they never
form, join or enlarge an instance. Predicted components smaller than ``min_area`` pixels are
dropped as speckle; target components are all kept, so a missed small object stays a miss.
A predicted component's score is the mean probability of its class over its pixels.

Per image and class, the IoU of every (target, prediction) pair comes from one ``bincount``
of label pairs. The accumulator then keeps per-component numbers only (scores, matches, counts),
never masks, so memory grows with the number of components, not of pixels.

AP follows COCO's ``segm`` evaluation. For each IoU threshold, within each image, predictions in
descending score order each take the unmatched target component of highest IoU >= the
threshold (the lowest label among equals). Pooled over the split, predictions are ranked by score
(stable: ties keep image order, then label order), precision is made non-increasing in recall and
read at COCO's 101 recall points ``linspace(0, 1, 101)`` (0 where recall never gets there); AP is
their mean. ``ap`` averages the thresholds; ``map`` averages ``ap`` over the classes with at least
one target instance in the split; ``map_50`` / ``map_75`` do the same at IoU 0.5 / 0.75.

PQ follows Kirillov et al. (2019): components match when their IoU exceeds 0.5 (such a match is
unique). Pooled over the split, per class: ``PQ = sum IoU(TP) / (TP + FP/2 + FN/2)``,
``SQ = sum IoU(TP) / TP``, ``RQ = TP / (TP + FP/2 + FN/2)``.

Undefined values are ``None``: ``ap`` of a class without a target instance (there is nothing
to find; its false positives still lower its PQ); ``pq`` and ``rq`` of a class with
``TP + FP + FN = 0``; ``sq`` of a class with ``TP = 0`` (panopticapi counts it as 0). Headlines
average the defined per-class values, so ``map`` spans the classes with target instances, ``pq`` and
``rq`` those with ``TP + FP + FN > 0``, ``sq`` those with ``TP > 0``; ``None`` when none is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from unetkit.metrics.per_image import mean_defined
from unetkit.tasks import IGNORE_INDEX, check_class_ids

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))
"""IoU thresholds 0.50, 0.55, ..., 0.95 of COCO's mAP."""

CONNECTIVITY = 8
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
PANOPTIC_MATCH_IOU = 0.5
_NEIGHBOURS = np.ones((3, 3), dtype=bool)  # 8-connectivity structuring element


class InstanceAccumulator:
    """Per-component scores and matches over a split, for mask AP and panoptic quality."""

    def __init__(
        self,
        num_classes: int,
        min_area: int = 0,
        iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it is >= 2; got {num_classes}")
        if min_area < 0:
            raise ValueError(f"min_area is a pixel count >= 0; got {min_area}")
        if len(iou_thresholds) == 0 or not all(0 <= t <= 1 for t in iou_thresholds):
            raise ValueError(f"iou_thresholds are IoU values in [0, 1]; got {list(iou_thresholds)}")
        self.num_classes = num_classes
        self.min_area = min_area
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._matches: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.num_target_instances = np.zeros(num_classes, dtype=np.int64)
        self.num_predicted_instances = np.zeros(num_classes, dtype=np.int64)
        self.true_positives = np.zeros(num_classes, dtype=np.int64)
        self.true_positive_iou = np.zeros(num_classes, dtype=np.float64)
        self.given_instances = False  # target instances from labelled objects, not components

    def update(
        self,
        probs: np.ndarray,
        prediction: np.ndarray,
        target: np.ndarray,
        valid: np.ndarray | None = None,
        target_instances: np.ndarray | None = None,
    ) -> dict[str, float | None]:
        """Add one image: ``probs`` (C, H, W), ``prediction`` and ``target`` (H, W) class ids, and
        where known the target's object ids ``target_instances`` (H, W, 0 = none).

        Returns the image's ``{"pq": ...}``: the mean over classes with ``TP + FP + FN > 0`` of
        the image's own PQ, ``None`` if the image has no instance at all.
        """
        probs, prediction, target = self._checked(probs, prediction, target, valid)
        if target_instances is not None:
            self.given_instances = True
            target_instances = np.where(target > 0, np.asarray(target_instances), 0)
        present = np.bincount(prediction.ravel(), minlength=self.num_classes) > 0
        present |= np.bincount(target.ravel(), minlength=self.num_classes) > 0
        image_pq = []
        for c in np.flatnonzero(present[1:]) + 1:
            objects = None if target_instances is None else target_instances * (target == c)
            iou, scores = self._components(target == c, prediction == c, probs[c], objects)
            num_targets, num_predictions = iou.shape
            if num_targets + num_predictions == 0:
                continue
            self._scores[c].append(scores)
            self._matches[c].append(_greedy_matches(iou, scores, self.iou_thresholds))
            panoptic = iou > PANOPTIC_MATCH_IOU
            true_pos, matched_iou = int(panoptic.sum()), float(iou[panoptic].sum())
            self.num_target_instances[c] += num_targets
            self.num_predicted_instances[c] += num_predictions
            self.true_positives[c] += true_pos
            self.true_positive_iou[c] += matched_iou
            image_pq.append(matched_iou / _panoptic_denominator(num_targets, num_predictions))
        return {"pq": mean_defined(image_pq)}

    def average_precisions(self, c: int) -> np.ndarray | None:
        """Class ``c``'s AP at each IoU threshold; ``None`` without a target instance."""
        if self.num_target_instances[c] == 0:
            return None
        scores = np.concatenate([np.zeros(0), *self._scores[c]])
        matches = np.concatenate([np.zeros((0, len(self.iou_thresholds)), bool), *self._matches[c]])
        hits = matches[np.argsort(-scores, kind="stable")]
        true_pos = np.cumsum(hits, axis=0)
        recall = true_pos / self.num_target_instances[c]
        precision = true_pos / np.arange(1, len(hits) + 1)[:, None]
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        result = np.zeros(len(self.iou_thresholds))
        for t in range(len(self.iou_thresholds)):
            first = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
            result[t] = envelope[first[first < len(hits)], t].sum() / len(RECALL_POINTS)
        return result

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The ``instance`` section of metrics.json, one ``per_class`` row per class ``c >= 1``."""
        names = [str(name) for name in class_names]
        if len(names) != self.num_classes:
            raise ValueError(
                f"got {len(names)} class names {names} for {self.num_classes} classes; give one "
                f"name per class, background first"
            )
        rows = [self._class_row(c, names[c]) for c in range(1, self.num_classes)]
        ground_truth = "labelled objects" if self.given_instances else "connected components"
        summary: dict[str, Any] = {"min_area": self.min_area, "connectivity": CONNECTIVITY,
                                   "ground_truth": ground_truth}  # fmt: skip
        for key in ("ap", "ap_50", "ap_75"):
            summary[f"m{key}"] = mean_defined(row[key] for row in rows)
        for key in ("pq", "sq", "rq"):
            summary[key] = mean_defined(row[key] for row in rows)
        summary["per_class"] = rows
        return summary

    def _class_row(self, c: int, name: str) -> dict[str, Any]:
        ap = self.average_precisions(c)
        true_pos = int(self.true_positives[c])
        denominator = _panoptic_denominator(
            int(self.num_target_instances[c]), int(self.num_predicted_instances[c])
        )
        return {
            "name": name,
            "ap": None if ap is None else float(ap.mean()),
            "ap_50": self._ap_at(ap, 0.5),
            "ap_75": self._ap_at(ap, 0.75),
            "pq": _ratio(float(self.true_positive_iou[c]), denominator),
            "sq": _ratio(float(self.true_positive_iou[c]), true_pos),
            "rq": _ratio(true_pos, denominator),
            "gt_instances": int(self.num_target_instances[c]),
            "pred_instances": int(self.num_predicted_instances[c]),
        }

    def _ap_at(self, ap: np.ndarray | None, threshold: float) -> float | None:
        at = np.flatnonzero(np.isclose(self.iou_thresholds, threshold))
        return None if ap is None or len(at) == 0 else float(ap[at[0]])

    def _components(
        self,
        target_mask: np.ndarray,
        prediction_mask: np.ndarray,
        prob: np.ndarray,
        target_objects: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """IoU (target x kept prediction) and the kept predictions' scores, for one class;
        the target's instances are ``target_objects``' ids where given, else its components."""
        if target_objects is None:
            target_labels, num_targets = ndimage.label(target_mask, structure=_NEIGHBOURS)
        else:  # ids renumbered 1..N in order, objects without a pixel of this class dropped
            ids, target_labels = np.unique(target_objects, return_inverse=True)
            target_labels = target_labels.reshape(target_objects.shape) + (0 if ids[0] == 0 else 1)
            num_targets = int(np.count_nonzero(ids))
        prediction_labels, num_predictions = ndimage.label(prediction_mask, structure=_NEIGHBOURS)
        either = np.flatnonzero(target_mask | prediction_mask)
        target_ids = target_labels.ravel()[either].astype(np.int64)
        prediction_ids = prediction_labels.ravel()[either].astype(np.int64)
        pairs = np.bincount(
            target_ids * (num_predictions + 1) + prediction_ids,
            minlength=(num_targets + 1) * (num_predictions + 1),
        )
        pairs = pairs.reshape(num_targets + 1, num_predictions + 1)
        score_sums = np.bincount(
            prediction_ids, weights=prob.ravel()[either], minlength=num_predictions + 1
        )
        target_area, prediction_area = pairs[1:, :].sum(axis=1), pairs[:, 1:].sum(axis=0)
        kept = prediction_area >= self.min_area
        overlap = pairs[1:, 1:][:, kept]
        iou = overlap / (target_area[:, None] + prediction_area[kept][None, :] - overlap)
        return iou, score_sums[1:][kept] / prediction_area[kept]

    def _checked(
        self, probs: Any, prediction: Any, target: Any, valid: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inputs as arrays, with ignored and invalid pixels set to background in both masks."""
        probs, prediction, target = np.asarray(probs), np.asarray(prediction), np.asarray(target)
        valid = np.ones(target.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
        if (
            probs.ndim != 3
            or probs.shape[0] != self.num_classes
            or not (prediction.shape == target.shape == valid.shape == probs.shape[1:])
        ):
            raise ValueError(
                f"instance update: expected probabilities (C, H, W) with C = {self.num_classes} "
                f"and prediction, target, valid (H, W) of the same image; got {probs.shape}, "
                f"{prediction.shape}, {target.shape}, {valid.shape}"
            )
        valid = valid & (target != IGNORE_INDEX)
        for name, labels in (("prediction", prediction), ("target", target)):
            check_class_ids(labels, self.num_classes, f"instance update: the {name}", valid)
        return probs, np.where(valid, prediction, 0), np.where(valid, target, 0)


def _greedy_matches(iou: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Whether each prediction (in label order) matches a target instance, at each threshold.

    Two components of one mask cannot both overlap a third by IoU >= 0.5, so at COCO's thresholds
    every candidate pair is uncontested; the greedy walk in score order settles lower thresholds.
    """
    matched = np.zeros((len(scores), len(thresholds)), dtype=bool)
    for t, threshold in enumerate(thresholds):
        candidates = iou >= threshold
        if (candidates.sum(axis=0) <= 1).all() and (candidates.sum(axis=1) <= 1).all():
            matched[:, t] = candidates.any(axis=0)  # no contest: every candidate pair stands
            continue
        free = np.ones(iou.shape[0], dtype=bool)
        for d in np.argsort(-scores, kind="stable"):
            options = np.where(free & candidates[:, d], iou[:, d], -1.0)
            best = int(options.argmax())
            if options[best] >= 0:
                matched[d, t], free[best] = True, False
    return matched


def _panoptic_denominator(num_targets: int, num_predictions: int) -> float:
    """``TP + FP/2 + FN/2``, which is ``(targets + predictions) / 2`` whatever TP is."""
    return (num_targets + num_predictions) / 2


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None
