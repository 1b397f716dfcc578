"""The calibration of a flip-averaged prediction, fitted for the way it is applied.

A stored calibration maps the model's logits inside the model (so an export carries it), and
test-time augmentation then averages the calibrated probabilities of the four flipped views
(:mod:`unetkit.inference.tta`). A map fitted on the averaged probability, as if it were one
view's, is not the map that runs: the logit map and the average do not commute, and where the
views disagree (object boundaries, the pixels calibration is about) the mean of calibrated views
is softer than the calibrated mean. So the sample keeps every view's logits at the same pixels,
and the temperature (and bias) maximise the likelihood of the mean of the calibrated views
itself. With one view this is the ordinary fit
(:func:`~unetkit.inference.calibration.fit_logit_map`), which also starts the refinement here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from unetkit.inference.calibration import (
    TEMPERATURE_BOUNDS,
    Calibration,
    at_common_rate,
    fit_logit_map,
    logits_from_probabilities,
)
from unetkit.metrics.confusion import as_tensor
from unetkit.tasks import IGNORE_INDEX, Task

_ITERATIONS = 200  # L-BFGS iterations at most; the likelihood is smooth in (log T, b)


class PickedPixels(NamedTuple):
    """The pixels :meth:`ViewSample.pick` chose of one image: flat positions, their targets, and
    how many pixels of the image counted (the share kept decides the image's weight)."""

    positions: torch.Tensor
    labels: torch.Tensor
    counted: int


class ViewSample:
    """A bounded random sample of counted pixels with the logits of every view at each, so the
    views stay aligned pixel for pixel: logits ``(P, V, out_channels)``, targets as
    :class:`~unetkit.inference.calibration.LogitSample` holds them, and like it at one rate for
    every image (:func:`~unetkit.inference.calibration.at_common_rate`).

    An image is added in two steps, :meth:`pick` (the pixels, from its target) then :meth:`add`
    (each view's values there, :meth:`values_at`), so no more than one view's probability maps
    need be held at a time."""

    def __init__(self, task: Task, per_image: int = 10_000, seed: int = 0) -> None:
        if per_image < 1:
            raise ValueError(f"per_image must be a positive number of pixels; got {per_image}")
        self.task, self.per_image = task, per_image
        self._generator = torch.Generator().manual_seed(seed)
        self._images: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # with counted pixels
        self._pooled: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def pick(self, target: Any) -> PickedPixels:
        """Up to ``per_image`` counted pixels of one image's target ``(H, W)`` of class ids
        (multi-label: ``(L, H, W)`` of 0/1; a pixel counts where any label does). 255 marks
        pixels that do not count."""
        target = as_tensor(target).long().cpu()
        if self.task.multilabel:
            counted = (target != IGNORE_INDEX).any(dim=0).reshape(-1)
            labels = target.reshape(target.shape[0], -1).T
        else:
            counted, labels = target.reshape(-1) != IGNORE_INDEX, target.reshape(-1)
        positions = torch.nonzero(counted)[:, 0]
        total = len(positions)
        if total > self.per_image:
            keep = torch.randperm(total, generator=self._generator)[: self.per_image]
            positions = positions[keep]
        return PickedPixels(positions, labels[positions], total)

    def values_at(self, probs: Any, positions: torch.Tensor) -> torch.Tensor:
        """One view's logits ``(P, out_channels)`` at ``positions``, from its probabilities
        ``(C, H, W)`` as the Segmenter returns them."""
        logits = logits_from_probabilities(probs, self.task).float()
        return logits.reshape(logits.shape[0], -1).T[positions]

    def add(self, views: Sequence[torch.Tensor], picked: PickedPixels) -> None:
        """One image: each view's :meth:`values_at` the pixels :meth:`pick` gave."""
        stacked = torch.stack(list(views), dim=1)
        if stacked.ndim != 3 or stacked.shape[0] != len(picked.labels):
            raise ValueError(
                f"each view needs values (P, {self.task.out_channels}) for the "
                f"{len(picked.labels)} picked pixels; got {tuple(stacked.shape)}"
            )
        self._images.append((stacked, picked.labels, picked.counted))
        self._pooled = None

    @property
    def logits(self) -> torch.Tensor:
        """The sampled pixels' logits, ``(P, V, out_channels)``."""
        return torch.cat([logits for logits, _ in self._at_common_rate()])

    @property
    def targets(self) -> torch.Tensor:
        """The sampled pixels' class ids ``(P,)`` (multi-label: ``(P, L)`` of 0, 1, 255)."""
        return torch.cat([targets for _, targets in self._at_common_rate()])

    def one_view(self, index: int = 0) -> ViewSample:
        """The same pixels with view ``index``'s logits alone (0: the image as it is), so a fit
        of one view and of their mean compare on exactly the same pixels."""
        single = ViewSample(self.task, self.per_image)
        single._images = self._images
        single._pooled = [
            (logits[:, index : index + 1], targets) for logits, targets in self._at_common_rate()
        ]
        return single

    def _at_common_rate(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self._images:
            raise ValueError("no image was added to the view sample")
        if self._pooled is None:  # once, so that logits and targets stay row for row
            self._pooled = at_common_rate(self._images, self._generator)
        return self._pooled


def averaged_logits(logits: torch.Tensor, task: Task, calibration: Calibration) -> torch.Tensor:
    """The logits ``(P, out_channels)`` of the mean of the views' probabilities under
    ``calibration``: what a flip-averaging Segmenter with that calibration in its model gives
    (one view: the calibrated logits themselves, exactly)."""
    mapped = calibration.apply(logits, channel_axis=-1)
    if logits.shape[1] == 1:
        return mapped[:, 0]
    if task.is_binary or task.multilabel:  # log-odds of the mean sigmoid, without saturating
        positive, negative = _log_mean_probabilities(mapped, task)
        return positive - negative
    return _log_mean_probabilities(mapped, task)[0]


def _log_mean_probabilities(mapped: torch.Tensor, task: Task) -> tuple[torch.Tensor, ...]:
    """Logs of the mean over views (dim 1) of the probabilities of logits ``mapped``: of a
    sigmoid task the foreground's and the background's, of a softmax task the classes'."""
    views = math.log(mapped.shape[1])
    if task.is_binary or task.multilabel:
        return tuple(
            torch.logsumexp(torch.nn.functional.logsigmoid(sign * mapped), dim=1) - views
            for sign in (1.0, -1.0)
        )
    return (torch.logsumexp(torch.log_softmax(mapped, dim=-1), dim=1) - views,)


def fit_for_views(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    bias: bool = True,
    max_pixels: int = 250_000,
    seed: int = 0,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> Calibration:
    """The temperature (within ``bounds``) and, with ``bias``, a sigmoid task's bias per channel
    that maximise the likelihood of ``targets`` under the mean of the calibrated views
    (``logits`` ``(P, V, out_channels)`` as :class:`ViewSample` holds them)."""
    start = fit_logit_map(averaged_logits(logits, task, Calibration()), targets, task, bias, seed)
    if logits.shape[1] == 1:
        return start
    rows = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    values, labels = logits[rows[:max_pixels]].double(), targets[rows[:max_pixels]]
    low, high = (math.log(bound) for bound in bounds)
    log_t = torch.tensor(math.log(start.temperature), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(task.out_channels, dtype=torch.float64, requires_grad=True)
    fitted = _fittable_channels(labels, task) if start.bias is not None else None
    start_bias = torch.tensor(start.bias or [0.0] * task.out_channels, dtype=torch.float64)

    def calibration_of() -> tuple[torch.Tensor, torch.Tensor | None]:
        temperature = log_t.clamp(low, high).exp()
        return temperature, None if fitted is None else start_bias + shift * fitted

    optimiser = torch.optim.LBFGS(
        [log_t, shift], max_iter=_ITERATIONS, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = view_nll(values, labels, task, *calibration_of())
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        temperature, biases = calibration_of()
    return Calibration(float(temperature), bias=None if biases is None else tuple(biases.tolist()))


def view_nll(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    temperature: torch.Tensor | float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean negative log-likelihood of ``targets`` under the mean over views of
    ``probabilities(logits / temperature + bias)``; the pixels (or a multi-label task's
    (pixel, label) pairs) marked 255 do not count."""
    mapped = logits / temperature + (0.0 if bias is None else bias)
    if task.is_binary or task.multilabel:
        positive, negative = _log_mean_probabilities(mapped, task)
        truth = targets[:, None] if task.is_binary else targets
        counted = truth != IGNORE_INDEX
        likelihood = torch.where(truth == 1, positive, negative)
        return -likelihood[counted].mean()
    (log_probs,) = _log_mean_probabilities(mapped, task)
    return -log_probs.gather(1, targets[:, None]).mean()


def _fittable_channels(labels: torch.Tensor, task: Task) -> torch.Tensor:
    """1 for each sigmoid channel whose counted pixels hold both kinds (its bias has a finite
    best value), else 0: such a channel keeps the starting fit's bias."""
    truth = labels[:, None] if task.is_binary else labels
    counted = truth != IGNORE_INDEX
    positives = ((truth == 1) & counted).sum(dim=0)
    return ((positives > 0) & (positives < counted.sum(dim=0))).double()
