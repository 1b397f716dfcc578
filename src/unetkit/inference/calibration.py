"""Calibrated probabilities and a tuned binary threshold, fitted on validation and stored in the
checkpoint, so every inference path applies the same two numbers.

* **Temperature scaling** (Guo et al., 2017): logits are divided by one scalar ``T > 0`` before the
  sigmoid / softmax. ``T > 1`` softens an over-confident model; the predicted class of a
  multi-class pixel never changes (a binary pixel's can, at a threshold other than 0.5).
  :func:`fit_temperature` picks the ``T`` that minimises the negative log-likelihood of validation
  pixels: Newton's method on ``1 / T`` within ``bounds``, bisecting wherever a step would leave
  them (the likelihood is convex in ``1 / T``, so this finds its one minimum in about ten passes),
  on at most ``max_pixels`` valid pixels drawn with a seeded generator.
* **Threshold**: :func:`tune_threshold` scores the foreground Dice (or any pooled headline metric
  of a binary task) at thresholds 0.01, 0.02, ... 0.99 from a probability histogram, and keeps
  the best; ties go to the threshold nearest 0.5. Tune it on probabilities already tempered by the
  fitted ``T``, since those are what inference will cut.
* **Bias** (binary, multi-label; ``eval.calibration_bias``, on by default): beside ``T``, one
  bias per sigmoid channel, ``sigmoid(z / T + b)``, fitted jointly by maximum likelihood
  (:func:`fit_temperature_and_bias`: Platt scaling on the logit, :mod:`unetkit.inference.platt`).
  ``T`` alone only sharpens or softens around 0.5; a model whose errors lean one way needs the
  shift too. On the issue-15 cross-validation folds (benchmarks/README) it halved the test ECE
  where even the best possible ``T`` could not. A multi-class task keeps ``T`` only: a bias per
  class would move its most probable class, i.e. its predictions.
* **Multi-label**: every (pixel, label) pair is one Bernoulli, so one ``T`` is fitted on all of
  them as for a binary task (and one bias per label), and each label gets its own threshold
  (:func:`tune_label_thresholds`: an organ and the small lesion inside it rarely share the best
  cut). A label without foreground in the sample keeps the task's threshold.

:class:`Calibration` holds both, and travels in a checkpoint as ``checkpoint["calibration"]``
(:meth:`Calibration.to_dict`); a checkpoint without it reads as the identity (``T = 1``, the
task's own threshold). Pixels whose target is 255 never count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.checkpoint import load_checkpoint, save_checkpoint
from unetkit.inference.options import RECORD_KEY
from unetkit.inference.platt import fit_scale_and_biases
from unetkit.metrics.confusion import as_tensor
from unetkit.metrics.curves import ScoreHistogram
from unetkit.metrics.summary import headline_arrays
from unetkit.tasks import IGNORE_INDEX, Task, check_class_ids

CHECKPOINT_KEY = "calibration"
TEMPERATURE_BOUNDS = (0.05, 20.0)
THRESHOLDS = tuple(round(k / 100, 2) for k in range(1, 100))
METRIC_ALIASES = {"dice": "foreground_dice", "iou": "foreground_iou"}
_SEARCH_STEPS = 100  # Newton / bisection steps at most; Newton needs about 10
_SATURATED = 2.0**-24  # float32 resolution of a probability near 1: sigmoid logits up to ~16.6


@dataclass(frozen=True)
class Calibration:
    """How logits become calibrated probabilities and a mask: ``logits / temperature + bias``
    (``bias``: one per sigmoid channel, or None), cut at ``threshold`` (binary; ``None``: the
    task's own threshold) or at ``label_thresholds`` (one per label of a multi-label task)."""

    temperature: float = 1.0
    threshold: float | None = None
    label_thresholds: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"calibration temperature must be a positive finite number; got {self.temperature}"
            )
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(
                f"calibration threshold must lie strictly between 0 and 1; got {self.threshold}"
            )
        if self.label_thresholds is not None:
            values = tuple(float(value) for value in self.label_thresholds)
            if not values or not all(0.0 < value < 1.0 for value in values):
                raise ValueError(
                    f"calibration label_thresholds must each lie strictly between 0 and 1; got "
                    f"{list(values)}"
                )
            object.__setattr__(self, "label_thresholds", values)
        if self.bias is not None:
            bias = tuple(float(value) for value in self.bias)
            if not bias or not all(math.isfinite(value) for value in bias):
                raise ValueError(
                    f"calibration bias must be finite numbers, one per sigmoid channel; got "
                    f"{list(bias)}"
                )
            object.__setattr__(self, "bias", bias)

    @property
    def maps_logits(self) -> bool:
        """Whether it changes logits at all (a temperature other than 1, or a bias)."""
        return self.temperature != 1.0 or self.bias is not None

    def logit_map(self) -> Calibration:
        """Only what changes logits (temperature and bias), thresholds dropped: two calibrations
        give the same probabilities exactly when their logit maps are equal."""
        return Calibration(self.temperature, bias=self.bias)

    def apply(self, logits: Any, channel_axis: int = -3) -> Any:
        """``logits / temperature + bias`` (tensor or NumPy array; the bias along
        ``channel_axis``: -3 for ``(C, H, W)`` and ``(N, C, H, W)``, -1 for pixels ``(P, C)``)."""
        scaled = logits if self.temperature == 1.0 else logits / self.temperature
        return scaled if self.bias is None else scaled + self._bias_for(scaled, channel_axis)

    def undo(self, logits: Any, channel_axis: int = -3) -> Any:
        """The logits :meth:`apply` was given back from its output."""
        shifted = logits if self.bias is None else logits - self._bias_for(logits, channel_axis)
        return shifted if self.temperature == 1.0 else shifted * self.temperature

    def apply_to_probabilities(self, probs: Any, task: Task) -> Any:
        """``probs`` as they would be with this calibration on the logits behind them, for paths
        that hold probabilities (same shape and kind, float32)."""
        return _mapped_probabilities(probs, task, self.apply) if self.maps_logits else probs

    def undo_on_probabilities(self, probs: Any, task: Task) -> Any:
        """The raw probabilities behind calibrated ones (:meth:`apply_to_probabilities` undone)."""
        return _mapped_probabilities(probs, task, self.undo) if self.maps_logits else probs

    def check_channels(self, task: Task) -> None:
        """Refuse a bias that does not fit ``task``: one per sigmoid channel of a binary or
        multi-label task; a multi-class task takes none."""
        if self.bias is None:
            return
        if not (task.is_binary or task.multilabel):
            raise ValueError(
                f"a calibration bias {list(self.bias)} applies to sigmoid channels; this task has "
                f"{task.num_classes} softmax classes (calibrate it with a temperature only)"
            )
        if len(self.bias) != task.out_channels:
            raise ValueError(
                f"a calibration bias needs one value per sigmoid channel ({task.out_channels}); "
                f"got {len(self.bias)}: {list(self.bias)}"
            )

    def describe(self) -> str:
        """``T = 1.24`` or ``T = 1.24, bias -0.12`` (one bias per label of a multi-label task)."""
        text = f"T = {self.temperature:.2f}"
        if self.bias is not None:
            text += ", bias " + " ".join(f"{value:+.2f}" for value in self.bias)
        return text

    def _bias_for(self, logits: Any, channel_axis: int) -> Any:
        shape = [1] * logits.ndim
        shape[channel_axis] = len(self.bias)
        if isinstance(logits, torch.Tensor):
            return torch.tensor(self.bias, dtype=logits.dtype, device=logits.device).reshape(shape)
        return np.asarray(self.bias, dtype=logits.dtype).reshape(shape)

    def with_threshold(self, task: Task) -> Task:
        """``task`` with the tuned threshold(s) where set: one threshold replaces every label's
        of a multi-label task; ``label_thresholds`` need one value per label."""
        if self.label_thresholds is not None:
            if not task.multilabel:
                raise ValueError(
                    f"calibration label_thresholds {list(self.label_thresholds)} apply to a "
                    f"multi-label task; this one is {task.kind}"
                )
            return dataclasses.replace(task, label_thresholds=self.label_thresholds)
        if self.threshold is None:
            return task
        if not task.is_binary and not task.multilabel:
            raise ValueError(
                f"a calibration threshold ({self.threshold}) applies to a binary task; this task "
                f"has {task.num_classes} classes and takes the most probable one"
            )
        return dataclasses.replace(task, threshold=self.threshold, label_thresholds=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``checkpoint["calibration"]`` and metrics.json (``label_thresholds``
        only where set, so binary and multi-class records read as before)."""
        threshold = None if self.threshold is None else float(self.threshold)
        record: dict[str, Any] = {"temperature": float(self.temperature), "threshold": threshold}
        if self.label_thresholds is not None:
            record["label_thresholds"] = list(self.label_thresholds)
        if self.bias is not None:
            record["bias"] = list(self.bias)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> Calibration:
        """From :meth:`to_dict`'s form; ``None`` (a checkpoint written before calibration
        existed) is the identity."""
        if record is None:
            return cls()
        unknown = sorted(set(record) - {"temperature", "threshold", "label_thresholds", "bias"})
        if unknown:
            raise ValueError(
                f"calibration record has unknown keys {unknown}; it holds 'temperature', "
                f"'threshold', 'label_thresholds' and 'bias' (written by Calibration.to_dict)"
            )
        threshold, label_thresholds = record.get("threshold"), record.get("label_thresholds")
        bias = record.get("bias")
        if bias is not None and not isinstance(bias, list | tuple):
            raise ValueError(
                f"calibration bias must be a list of numbers, one per sigmoid channel; got {bias!r}"
            )
        return cls(
            temperature=float(record.get("temperature", 1.0)),
            threshold=None if threshold is None else float(threshold),
            label_thresholds=None if label_thresholds is None else tuple(label_thresholds),
            bias=None if bias is None else tuple(bias),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> Calibration:
        """The calibration a loaded checkpoint (or exported metadata) records, else the identity."""
        return cls.from_dict(checkpoint.get(CHECKPOINT_KEY))


def checked_tta(record: Mapping[str, Any] | None) -> bool | None:
    """The TTA a calibration record's TTA check chose (:mod:`unetkit.training.tta_check`):
    a run's, the shared fold calibration's or a cv ensemble's; None where nothing was checked."""
    check = (record or {}).get("tta")
    return None if check is None else bool(check["kept"])


def store_calibration(path: str | Path, calibration: Calibration, tta: bool | None = None) -> None:
    """Write ``calibration`` into the checkpoint file at ``path`` (atomically, all else kept);
    with ``tta``, in the same write, the TTA its inference record runs with (the calibration
    is fitted for that many views: :mod:`unetkit.training.tta_check`)."""
    payload = load_checkpoint(path)
    payload[CHECKPOINT_KEY] = calibration.to_dict()
    if tta is not None:
        payload[RECORD_KEY] = {**(payload.get(RECORD_KEY) or {}), "tta": tta}
    save_checkpoint(payload, path)


def fit_temperature(
    logits: Any,
    targets: Any,
    task: Task,
    max_pixels: int = 250_000,
    seed: int = 0,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The temperature minimising the NLL of ``targets`` under ``softmax(logits / T)`` (binary:
    ``sigmoid``), searched within ``bounds``.

    ``logits``: ``(N, out_channels, H, W)``, ``(out_channels, H, W)``, pixels ``(P, out_channels)``
    (as :class:`LogitSample` holds them), or a sequence of per-image tensors; ``targets`` the
    matching class ids (255 = ignore), or a multi-label task's 0/1 maps of the logits' shape.
    """
    values, labels = _sampled(max_pixels, seed, *_valid_pixels(logits, targets, task))
    low, high = _checked_bounds(bounds)
    slope = _binary_slope if task.is_binary or task.multilabel else _softmax_slope
    return 1.0 / _convex_minimiser(lambda beta: slope(values, labels, beta), 1.0 / high, 1.0 / low)


def fit_temperature_and_bias(
    logits: Any,
    targets: Any,
    task: Task,
    max_pixels: int = 250_000,
    seed: int = 0,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> Calibration:
    """The temperature (within ``bounds``) and bias per sigmoid channel maximising the likelihood
    of ``targets`` under ``sigmoid(logits / T + b)``: of a binary task one bias, of a multi-label
    task one per label with ``T`` shared (inputs as :func:`fit_temperature`'s). A label whose
    counted pixels are all one kind keeps bias 0."""
    if not (task.is_binary or task.multilabel):
        raise ValueError(
            f"a logit bias is fitted for sigmoid channels (binary, multi-label); this task has "
            f"{task.num_classes} softmax classes: use fit_temperature"
        )
    if task.multilabel:
        rows, labels = _label_rows(logits, targets, task)
        channels = torch.arange(task.num_classes).expand_as(labels)
        counted = labels != IGNORE_INDEX
        values, labels, channels = rows[counted], labels[counted], channels[counted]
    else:
        values, labels = _valid_pixels(logits, targets, task)
        values, channels = values[:, 0], torch.zeros(len(labels), dtype=torch.int64)
    values, labels, channels = _sampled(max_pixels, seed, values, labels, channels)
    low, high = _checked_bounds(bounds)
    scale, bias = fit_scale_and_biases(
        values, labels, channels, task.out_channels, (1.0 / high, 1.0 / low)
    )
    return Calibration(1.0 / scale, bias=tuple(bias))


def _sampled(max_pixels: int, seed: int, *columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same seeded random ``max_pixels`` rows of each column (all where fewer)."""
    if len(columns[1]) == 0:
        raise ValueError("calibration fitting: no pixel counts (every target is 255 or empty)")
    if len(columns[1]) <= max_pixels:
        return columns
    keep = torch.randperm(len(columns[1]), generator=torch.Generator().manual_seed(seed))
    return tuple(column[keep[:max_pixels]] for column in columns)


def _checked_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"temperature bounds must satisfy 0 < low < high; got {bounds}")
    return low, high


def fit_calibration(
    pairs: Iterable[tuple[Any, Any]],
    task: Task,
    metric: str | None = "dice",
    per_image: int = 10_000,
    seed: int = 0,
    bias: bool = True,
) -> Calibration:
    """The :class:`Calibration` of a validation split in one pass: ``pairs`` yields each image's
    probabilities ``(C, H, W)`` (at ``T = 1``, as the Segmenter returns them) and target.

    The temperature (and, with ``bias``, a binary or multi-label task's bias per channel) is
    fitted on a :class:`LogitSample`; for a binary task with a ``metric``, the threshold is then
    tuned on the same pixels' calibrated probabilities, for a multi-label task each label's
    (``None``: keep the task's).
    """
    sample = LogitSample(task, per_image=per_image, seed=seed)
    for probs, target in pairs:
        sample.add(logits_from_probabilities(probs, task), target)
    calibration = fit_logit_map(sample.logits, sample.targets, task, bias, seed)
    if metric is None or not (task.is_binary or task.multilabel):
        return calibration
    calibrated = torch.sigmoid(calibration.apply(sample.logits, channel_axis=-1))
    if task.multilabel:
        choices = tune_label_thresholds(calibrated, sample.targets, metric, task.threshold)
        cuts = tuple(choice.threshold for choice in choices)
        return dataclasses.replace(calibration, label_thresholds=cuts)
    choice = tune_threshold(calibrated[:, 0], sample.targets, metric)
    return dataclasses.replace(calibration, threshold=choice.threshold)


def fit_logit_map(
    logits: Any, targets: Any, task: Task, bias: bool = True, seed: int = 0
) -> Calibration:
    """The temperature, and with ``bias`` a sigmoid task's bias per channel (a multi-class task
    gets ``T`` only), of sampled pixels."""
    if bias and (task.is_binary or task.multilabel):
        return fit_temperature_and_bias(logits, targets, task, seed=seed)
    return Calibration(fit_temperature(logits, targets, task, seed=seed))


class LogitSample:
    """A bounded random sample of valid pixels' logits and targets, gathered image by image, for
    :func:`fit_temperature` and :func:`tune_threshold` without holding a split in memory."""

    def __init__(self, task: Task, per_image: int = 10_000, seed: int = 0) -> None:
        if per_image < 1:
            raise ValueError(f"per_image must be a positive number of pixels; got {per_image}")
        self.task = task
        self.per_image = per_image
        self._generator = torch.Generator().manual_seed(seed)
        self._images: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # with counted pixels
        self._pooled: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def add(self, logits: Any, target: Any) -> None:
        """One image's logits ``(out_channels, H, W)`` (or a batch) and target; to sample a
        Segmenter's output, pass :func:`logits_from_probabilities` of its probabilities. A
        multi-label pixel is kept with all its labels (targets ``(P, L)``, 255: not counted)."""
        pick = _label_rows if self.task.multilabel else _valid_pixels
        values, labels = pick(logits, target, self.task)
        counted = len(labels)
        if counted > self.per_image:
            keep = torch.randperm(counted, generator=self._generator)[: self.per_image]
            values, labels = values[keep], labels[keep]
        self._images.append((values.float(), labels, counted))
        self._pooled = None

    @property
    def logits(self) -> torch.Tensor:
        """The sampled pixels' logits ``(P, out_channels)``, at one rate for every image
        (:func:`at_common_rate`)."""
        if not self._images:
            return torch.zeros((0, self.task.out_channels))
        return torch.cat([values for values, _ in self._at_common_rate()])

    @property
    def targets(self) -> torch.Tensor:
        """The sampled pixels' class ids ``(P,)`` (multi-label: ``(P, L)`` of 0, 1, 255)."""
        if self._images:
            return torch.cat([labels for _, labels in self._at_common_rate()])
        shape = (0, self.task.num_classes) if self.task.multilabel else (0,)
        return torch.zeros(shape, dtype=torch.int64)

    def _at_common_rate(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pooled is None:  # once, so that logits and targets stay row for row
            self._pooled = at_common_rate(self._images, self._generator)
        return self._pooled


def at_common_rate(
    images: Sequence[tuple[torch.Tensor, torch.Tensor, int]], generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each image's sampled ``(values, labels, counted)`` thinned to the lowest share of its
    ``counted`` pixels that any image kept, as ``(values, labels)``.

    A fixed number of pixels per image weighs a small image's pixels more than a large one's,
    while the expected calibration error and the dataset metrics pool pixels: on data of mixed
    sizes (Pet's run from 0.03 to 1.9 megapixels) a fit on such a sample serves images the test
    score hardly counts. At one rate every counted pixel of the split is equally likely to be in
    the sample; where every image counts as many pixels, nothing is dropped.
    """
    rate = min((len(labels) / counted for _, labels, counted in images if counted), default=1.0)
    thinned = []
    for values, labels, counted in images:
        keep = round(rate * counted)
        if keep < len(labels):
            rows = torch.randperm(len(labels), generator=generator)[:keep]
            values, labels = values[rows], labels[rows]
        thinned.append((values, labels))
    return thinned


def logits_from_probabilities(probs: Any, task: Task) -> torch.Tensor:
    """Logits that give back ``probs`` (``(C, H, W)`` or ``(N, C, H, W)``, as the Segmenter returns
    them): log-probabilities for a softmax, ``log p / (1 - p)`` of the foreground for a sigmoid
    (of every label, multi-label).

    Exact up to float32 saturation: a sigmoid probability that rounds to 1 (logit above ~16.6)
    comes back as 16.6, a softmax one that underflows to 0 as log of the smallest float32.
    """
    values = as_tensor(probs).double()
    channels = values.shape[-3] if values.ndim >= 3 else None
    if channels != task.num_classes:
        raise ValueError(
            f"logits_from_probabilities takes probabilities (C, H, W) or (N, C, H, W) with "
            f"C = {task.num_classes}; got shape {tuple(values.shape)}"
        )
    if task.is_binary or task.multilabel:
        foreground = values if task.multilabel else values.narrow(-3, 1, 1)
        return torch.logit(foreground.clamp(_SATURATED, 1.0 - _SATURATED))
    return values.clamp(min=torch.finfo(torch.float32).tiny).log()


def temper_probabilities(probs: Any, temperature: float, task: Task) -> Any:
    """``probs`` as they would be with logits divided by ``temperature`` (same shape and kind,
    NumPy or tensor, float32); for evaluating calibration on probabilities already computed."""
    return Calibration(temperature).apply_to_probabilities(probs, task)


def _mapped_probabilities(probs: Any, task: Task, logit_map: Any) -> Any:
    """``probs`` with ``logit_map`` applied to the logits behind them (same shape and kind)."""
    logits = logit_map(logits_from_probabilities(probs, task))
    batched = logits if logits.ndim == 4 else logits[None]
    tempered = task.probabilities(batched).float().reshape(as_tensor(probs).shape)
    if isinstance(probs, torch.Tensor):
        return tempered.to(probs.device)
    return tempered.cpu().numpy()


@dataclass(frozen=True)
class ThresholdChoice:
    """The best threshold for ``metric`` and the score at every threshold tried."""

    metric: str
    threshold: float
    score: float
    thresholds: np.ndarray
    scores: np.ndarray  # NaN where the metric is undefined

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the choice and its curve (``None`` where undefined)."""
        return {
            "metric": self.metric,
            "threshold": self.threshold,
            "score": self.score,
            "curve": {
                "threshold": self.thresholds.tolist(),
                "score": [None if math.isnan(s) else float(s) for s in self.scores],
            },
        }


def tune_threshold(
    probs_fg: Any,
    targets: Any,
    metric: str = "dice",
    valid: Any = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> ThresholdChoice:
    """The binary threshold that maximises ``metric`` pooled over the given pixels.

    ``probs_fg``: foreground probabilities, any shape; ``targets`` (0, 1, 255 = ignore) and the
    optional boolean ``valid`` of the same shape.
    """
    probs_fg = as_tensor(probs_fg).reshape(-1)
    target = as_tensor(targets).reshape(-1)
    valid = None if valid is None else as_tensor(valid).reshape(-1)[:, None]
    histogram = ScoreHistogram(2, bins=1000)
    histogram.update(torch.stack([1.0 - probs_fg, probs_fg])[:, :, None], target[:, None], valid)
    return threshold_from_histogram(histogram, metric, thresholds)


def tune_label_thresholds(
    probs: Any,
    targets: Any,
    metric: str = "dice",
    default: float = 0.5,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[ThresholdChoice]:
    """:func:`tune_threshold` for each label of a multi-label sample: ``probs`` and ``targets``
    ``(P, L)`` (targets 0, 1, 255 = not counted). A label with no counted foreground pixel has
    nothing to tune on: it keeps ``default``, with a NaN score."""
    probs, targets = as_tensor(probs), as_tensor(targets)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(
            f"tune_label_thresholds takes probabilities and targets (P, L) of one shape; got "
            f"{tuple(probs.shape)} and {tuple(targets.shape)}"
        )
    choices = []
    for label in range(probs.shape[1]):
        if bool((targets[:, label] == 1).any()):
            choice = tune_threshold(probs[:, label], targets[:, label], metric, None, thresholds)
            choices.append(choice)
        else:
            grid, nan = np.array([default]), np.array([math.nan])
            choices.append(ThresholdChoice(_metric_key(metric), default, math.nan, grid, nan))
    return choices


def threshold_from_histogram(
    histogram: ScoreHistogram, metric: str = "dice", thresholds: Sequence[float] = THRESHOLDS
) -> ThresholdChoice:
    """:func:`tune_threshold` from a binary :class:`ScoreHistogram` accumulated over a split.

    A pixel counts as foreground at threshold ``t`` when its probability's bin starts at or above
    ``t``, so each ``t`` must be a bin edge (a multiple of ``1 / bins``).
    """
    if histogram.num_classes != 2:
        raise ValueError(
            f"threshold tuning is for binary tasks; this histogram has {histogram.num_classes} "
            f"classes (a multi-class task takes the most probable class)"
        )
    key = _metric_key(metric)
    grid = np.asarray(thresholds, dtype=np.float64)
    edges = np.round(grid * histogram.bins).astype(np.int64)
    if (
        grid.size == 0
        or np.any(np.abs(edges / histogram.bins - grid) > 1e-9)
        or np.any((edges < 1) | (edges >= histogram.bins))
    ):
        raise ValueError(
            f"thresholds must lie strictly between 0 and 1 on multiples of 1/{histogram.bins} "
            f"(the histogram's bins); got {list(thresholds)[:5]}..."
        )
    negatives, positives = histogram.counts[1].cpu().numpy().astype(np.float64)
    above_pos = np.cumsum(positives[::-1])[::-1]  # pixels in bin >= k, i.e. predicted foreground
    above_neg = np.cumsum(negatives[::-1])[::-1]
    tp, fp = above_pos[edges], above_neg[edges]
    fn, tn = positives.sum() - tp, negatives.sum() - fp
    matrices = np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], -2)
    scores = headline_arrays(matrices, binary=True)[key]
    if np.all(np.isnan(scores)):
        raise ValueError(
            f"{key} is undefined at every threshold (no counted foreground pixel, nor any "
            f"predicted at any threshold); tune on a split with foreground"
        )
    best = np.flatnonzero(scores == np.nanmax(scores))
    pick = best[np.argmin(np.abs(grid[best] - 0.5))]
    return ThresholdChoice(key, float(grid[pick]), float(scores[pick]), grid, scores)


def _metric_key(metric: str) -> str:
    """``metric`` as a headline key of a binary task: ``dice``, ``iou``, ``val_mean_iou``, ..."""
    name = metric.removeprefix("val_")
    key = METRIC_ALIASES.get(name, name)
    known = headline_arrays(np.ones((2, 2)), binary=True)
    if key not in known:
        raise ValueError(
            f"cannot tune a threshold for {metric!r}; accepted: dice, iou or a binary headline "
            f"metric ({', '.join(sorted(known))}), optionally prefixed with 'val_'"
        )
    return key


def _valid_pixels(logits: Any, targets: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """The counted pixels as logits ``(P, out_channels)`` (float32) and class ids ``(P,)``; of a
    multi-label task, the counted (pixel, label) pairs as ``(P, 1)`` and 0/1 ``(P,)``."""
    if task.multilabel:
        rows, labels = _label_rows(logits, targets, task)
        counted = labels != IGNORE_INDEX
        return rows[counted][:, None], labels[counted]
    if isinstance(logits, list | tuple):
        if len(logits) != len(targets):
            raise ValueError(f"got {len(logits)} logit arrays for {len(targets)} targets")
        pairs = [
            _valid_pixels(one, target, task) for one, target in zip(logits, targets, strict=True)
        ]
        if not pairs:
            raise ValueError("no logits given: pass at least one image's logits and target")
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    values, labels = as_tensor(logits).float().cpu(), as_tensor(targets).long().cpu()
    channels = task.out_channels
    if values.ndim == 2:  # pixels (P, C): one image (1, C, P, 1)
        values, labels = values.T[None, :, :, None], labels.reshape(1, -1, 1)
    if values.ndim == 3:
        values, labels = values[None], labels[None]
    if (
        values.ndim != 4
        or values.shape[1] != channels
        or labels.shape
        != (
            values.shape[0],
            *values.shape[2:],
        )
    ):
        raise ValueError(
            f"expected logits (N, {channels}, H, W), ({channels}, H, W) or (P, {channels}) with "
            f"targets of the matching (N, H, W), (H, W) or (P,); got "
            f"{tuple(as_tensor(logits).shape)} and {tuple(as_tensor(targets).shape)}"
        )
    counted = labels != IGNORE_INDEX
    check_class_ids(labels, task.num_classes, "temperature fitting: the target", counted)
    return values.permute(0, 2, 3, 1)[counted], labels[counted]


def _softmax_slope(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative in ``beta`` of the mean NLL of ``softmax(beta * logits)``:
    the mean of ``E_p[z] - z_target`` and of ``Var_p[z]``."""
    probs = torch.softmax(beta * logits, dim=1)
    expected = (probs * logits).sum(dim=1)
    variance = (probs * logits.square()).sum(dim=1) - expected.square()
    chosen = logits.gather(1, labels[:, None])[:, 0]
    return float((expected - chosen).double().mean()), float(variance.double().mean())


def _binary_slope(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """The same for ``sigmoid(beta * logits)``: means of ``(p - y) z`` and ``p (1 - p) z^2``."""
    z = logits[:, 0]
    p = torch.sigmoid(beta * z)
    return float(((p - labels) * z).double().mean()), float(
        (p * (1 - p) * z.square()).double().mean()
    )


def _convex_minimiser(slope: Any, low: float, high: float) -> float:
    """The minimiser on ``[low, high]`` of a convex function given its ``slope`` (first and second
    derivative): Newton steps, a bisection wherever a step would leave the bracket."""
    if slope(low)[0] >= 0:
        return low
    if slope(high)[0] <= 0:
        return high
    point = min(max(1.0, low), high)
    for _ in range(_SEARCH_STEPS):
        first, second = slope(point)
        if first > 0:
            high = point
        else:
            low = point
        step = point - first / second if second > 0 else math.nan
        if abs(step - point) < 1e-7 * point or high - low < 1e-9 * point:
            return step if low <= step <= high else point
        point = step if low < step < high else (low + high) / 2.0
    return point


def _label_rows(logits: Any, targets: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """A multi-label task's pixels with at least one counted label: logits and 0/1/255 targets,
    both ``(P, L)``; from ``(N, L, H, W)``, ``(L, H, W)`` or ``(P, L)`` pairs, or lists of them."""
    if isinstance(logits, list | tuple):
        if len(logits) != len(targets) or not logits:
            raise ValueError(f"got {len(logits)} logit arrays for {len(targets)} targets")
        rows = [_label_rows(one, target, task) for one, target in zip(logits, targets, strict=True)]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    values, labels = as_tensor(logits).float().cpu(), as_tensor(targets).long().cpu()
    count = task.num_classes
    if values.ndim == 3:
        values, labels = values[None], labels[None]
    if values.ndim == 4 and values.shape[1] == count and labels.shape == values.shape:
        values = values.permute(0, 2, 3, 1).reshape(-1, count)
        labels = labels.permute(0, 2, 3, 1).reshape(-1, count)
    if values.ndim != 2 or values.shape[1] != count or labels.shape != values.shape:
        raise ValueError(
            f"a multi-label task takes logits (N, {count}, H, W), ({count}, H, W) or (P, {count}) "
            f"with 0/1 targets of the same shape (255 = not counted); got "
            f"{tuple(as_tensor(logits).shape)} and {tuple(as_tensor(targets).shape)}"
        )
    counted = labels != IGNORE_INDEX
    check_class_ids(labels, 2, "temperature fitting: a multi-label target", counted)
    keep = counted.any(dim=1)
    return values[keep], labels[keep]
