"""Bootstrap confidence intervals over images for the headline metrics.

A test split is a sample of the images a model will meet; a second sample would give other
numbers. Resampling the split's images with replacement (Efron's percentile bootstrap) shows how
much: each resample re-pools the chosen images' confusion matrices for the dataset metrics and
re-averages their values for the per-image metrics, and the interval is the central ``level``
quantile range of the resampled values. Images, not pixels, are resampled, because pixels of one
image are not independent. Resamples whose value is undefined are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unetkit.metrics.summary import divide, headline_arrays

_CHUNK = 100  # resamples pooled at once: bounds memory to CHUNK x images weights


def resample_weights(num_images: int, resamples: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """How often each image is drawn in each resample: chunks of ``(chunk, num_images)`` counts."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        draws = rng.integers(0, num_images, size=(size, num_images))
        counts = np.zeros((size, num_images), dtype=np.float64)
        np.add.at(counts, (np.arange(size)[:, None], draws), 1.0)
        chunks.append(counts)
    return tuple(chunks)


def bootstrap_intervals(
    matrices: np.ndarray,
    binary: bool,
    dataset_keys: Sequence[str],
    per_image_values: Mapping[str, np.ndarray],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``confidence_intervals`` section of ``metrics.json``.

    ``matrices`` are the per-image confusion matrices ``(N, C, C)`` (a multi-label task's
    ``(N, L, 2, 2)``, bounding ``mean_iou`` / ``mean_dice``); ``dataset_keys`` the pooled
    headline metrics to bound (``dataset.<key>``); ``per_image_values`` maps a name to one value
    per image (NaN = undefined) whose mean is bounded (``per_image.<name>``).
    """
    _check_settings(resamples, level)
    flat = _flat(matrices)
    draws: dict[str, list[np.ndarray]] = {}
    for weights in resample_weights(len(matrices), resamples, seed):
        headline = _pooled_headline(weights, flat, binary)
        for key in dataset_keys:
            draws.setdefault(f"dataset.{key}", []).append(headline[key])
        for name, values in per_image_values.items():
            draws.setdefault(f"per_image.{name}", []).append(_weighted_mean(weights, values))
    intervals = {key: _interval(np.concatenate(chunks), level) for key, chunks in draws.items()}
    return {"level": level, "resamples": resamples, "seed": seed, "intervals": intervals}


def _check_settings(resamples: int, level: float) -> None:
    if resamples < 2:
        raise ValueError(f"eval.ci_resamples must be at least 2; got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"eval.ci_level must lie strictly between 0 and 1; got {level}")


def _flat(matrices: np.ndarray) -> np.ndarray:
    """Per-image confusion matrices ``(N, C, C)`` as ``(N, C * C)`` float64, to pool by ``@``
    (a multi-label task's ``(N, L, 2, 2)`` as ``(N, L, 4)``)."""
    return matrices.reshape(*matrices.shape[:-2], -1).astype(np.float64)


def _resampled_headline(
    weights: np.ndarray, flat: np.ndarray, binary: bool
) -> dict[str, np.ndarray]:
    """The headline metrics of each resample: its images' matrices pooled with ``weights``."""
    classes = int(round(np.sqrt(flat.shape[1])))
    return headline_arrays((weights @ flat).reshape(-1, classes, classes), binary)


def _pooled_headline(weights: np.ndarray, flat: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    """:func:`_resampled_headline` of :func:`_flat` matrices; of a multi-label task's
    ``(N, L, 4)``, its ``mean_iou`` and ``mean_dice`` over the labels defined."""
    if flat.ndim == 2:
        return _resampled_headline(weights, flat, binary)
    labels = [_resampled_headline(weights, flat[:, i], True) for i in range(flat.shape[1])]
    means = {}
    for metric in ("iou", "dice"):
        values = np.stack([label[f"foreground_{metric}"] for label in labels])
        defined = ~np.isnan(values)
        means[f"mean_{metric}"] = divide(np.where(defined, values, 0.0).sum(0), defined.sum(0))
    return means


def _weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    return divide(weights @ np.where(defined, values, 0.0), weights @ defined.astype(np.float64))


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return [float(low), float(high)]


def paired_difference(
    first: np.ndarray,
    second: np.ndarray,
    binary: bool,
    key: str,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``key(first) - key(second)`` of two models' per-image confusion matrices ``(N, C, C)`` of
    the same N images, with its paired percentile bootstrap interval: both are re-pooled from the
    same resampled images, so what the images have in common (hard ones, easy ones) cancels.
    A multi-label task's matrices are ``(N, L, 2, 2)``: each label is pooled as a binary task and
    ``mean_iou`` / ``mean_dice`` are the means over the labels where defined, as in its
    ``dataset`` section.

    ``share_above_zero`` is the share of resamples where ``first`` scores higher, a one-sided
    bootstrap answer to "is ``first`` better?".
    """
    if first.shape != second.shape:
        raise ValueError(
            f"a paired difference needs both models' matrices over the same images; got shapes "
            f"{first.shape} and {second.shape}"
        )
    _check_settings(resamples, level)
    flats = [_flat(first), _flat(second)]
    draws = []
    for weights in resample_weights(len(first), resamples, seed):
        values = [_pooled_headline(weights, flat, binary)[key] for flat in flats]
        draws.append(values[0] - values[1])
    differences = np.concatenate(draws)
    everything = np.ones((1, len(first)))
    pooled = [_pooled_headline(everything, flat, binary)[key][0] for flat in flats]
    defined = differences[~np.isnan(differences)]
    return {
        "metric": key,
        "difference": float(pooled[0] - pooled[1]),
        "interval": _interval(differences, level),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "share_above_zero": float(np.mean(defined > 0)) if defined.size else None,
    }
