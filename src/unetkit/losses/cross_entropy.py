"""Cross-entropy: softmax cross-entropy for multi-class tasks, binary cross-entropy for binary ones.

Class weights act per pixel: a pixel of true class ``y`` counts ``w[y]`` times, and the sum is
divided by the total weight of the valid pixels (torch's weighted-mean convention). For binary
cross-entropy this per-pixel weighting was chosen over ``pos_weight`` so that ``ce`` behaves the
same on binary and multi-class tasks, and BCE on logit ``z`` equals two-class CE on ``[0, z]``.

A multi-label task gets BCE on every label channel, averaged over the label pixels that count
(a pixel ignored for one label still counts for the others); class weights weigh labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.losses.pixels import label_pixel_mean, split_ignored, weighted_pixel_mean
from unetkit.tasks import Task


class CrossEntropyLoss(nn.Module):
    """Softmax CE over ``num_classes`` channels, or sigmoid BCE on the single binary channel."""

    def __init__(self, task: Task, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, safe_target = split_ignored(target)
        logits = logits.float()
        if self.task.multilabel:
            per_pixel = F.binary_cross_entropy_with_logits(
                logits, safe_target.float(), reduction="none"
            )
            return label_pixel_mean(per_pixel, valid, self.class_weights)
        if self.task.is_binary:
            per_pixel = F.binary_cross_entropy_with_logits(
                logits[:, 0], safe_target.float(), reduction="none"
            )
        else:
            per_pixel = F.cross_entropy(logits, safe_target, reduction="none")
        return weighted_pixel_mean(per_pixel, safe_target, valid, self.class_weights)


class BinaryCrossEntropyLoss(CrossEntropyLoss):
    """``bce``: the binary case of :class:`CrossEntropyLoss`, refused on multi-class tasks."""

    def __init__(self, task: Task, class_weights: torch.Tensor | None = None) -> None:
        if not (task.is_binary or task.multilabel):
            raise ValueError(
                f"loss 'bce' needs a binary task (num_classes=2, one sigmoid channel); this task "
                f"has {task.num_classes} classes: use 'ce' (softmax cross-entropy) instead"
            )
        super().__init__(task, class_weights)
