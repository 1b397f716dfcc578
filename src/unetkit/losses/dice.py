"""Soft Dice loss, pooled over the whole batch.

For each class ``c`` considered, ``dice_c = 2 * sum(p_c * t_c) / (sum(p_c) + sum(t_c))`` with sums
over every valid pixel of the batch (``p`` = probabilities, ``t`` = one-hot target; no smoothing
term). The loss is the class-weighted mean of ``1 - dice_c``.

* Binary task: only the foreground (sigmoid probability) is considered.
* Multi-class task: the softmax classes are considered.
* Multi-label task: every label is considered, its sigmoid probability against its own 0/1 map
  (a pixel ignored for one label still counts for the others).

A class takes part only when it is present in the valid pixels of the batch, in the target or in
the hard prediction (:meth:`Task.labels`). A class that is neither seen nor predicted has no
meaningful Dice, so it is left out rather than counted as 0 or 1; when no class takes part (e.g.
an all-background binary batch predicted as background, or an all-ignore batch) the loss is 0.
``class_weights`` weight the class average; a binary task has a single term, so they do not
change its Dice loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.losses.pixels import split_ignored
from unetkit.tasks import Task


class SoftDiceLoss(nn.Module):
    """``1 - soft Dice``, averaged over the classes present in the batch (see module docstring)."""

    def __init__(self, task: Task, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot, predicted = self._channels(logits, target)
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)
        denominator = probs.sum(dims) + one_hot.sum(dims)
        dice = 2.0 * intersection / denominator.clamp_min(torch.finfo(probs.dtype).tiny)
        present = (one_hot.sum(dims) > 0) | (predicted.sum(dims) > 0)
        weights = present.to(probs.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(probs.device, probs.dtype)
        if self.task.is_binary:
            dice, weights = dice[1:], weights[1:]
        total = weights.sum().clamp_min(torch.finfo(probs.dtype).tiny)
        return (weights * (1.0 - dice)).sum() / total

    def _channels(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per channel, ``(N, K, H, W)``: probabilities, truth and hard prediction, each zero at
        the pixels that do not count (one-hot classes, or a multi-label task's own label maps)."""
        valid, safe_target = split_ignored(target)
        if self.task.multilabel:
            weight = valid.float()  # per label: a pixel may count for one label only
            truth, predicted = safe_target.float(), self.task.labels(logits).float()
        else:
            weight = valid.unsqueeze(1).float()  # 1 where a pixel counts, 0 where it is ignored
            truth = _one_hot(safe_target, self.task.num_classes)
            predicted = _one_hot(self.task.labels(logits), self.task.num_classes)
        probs = self.task.probabilities(logits)
        return probs * weight, truth * weight, predicted * weight


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
