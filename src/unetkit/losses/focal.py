"""Focal loss: cross-entropy scaled by ``(1 - p_true) ** gamma`` to focus on hard pixels.

Binary tasks use the sigmoid form (torchvision's ``sigmoid_focal_loss``), multi-class tasks the
softmax form, multi-label tasks the sigmoid form on every label channel. With ``gamma = 0`` it
equals :mod:`~unetkit.losses.cross_entropy`. Class weights play the role of the focal ``alpha``
and are applied per pixel exactly as in cross-entropy, including the weighted-mean normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from unetkit.losses.pixels import label_pixel_mean, split_ignored, weighted_pixel_mean
from unetkit.tasks import Task


class FocalLoss(nn.Module):
    """Mean focal loss over valid pixels, sigmoid (binary) or softmax (multi-class)."""

    def __init__(
        self, task: Task, gamma: float = 2.0, class_weights: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"focal_gamma must be a finite number >= 0; got {gamma}")
        self.task = task
        self.gamma = float(gamma)
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, safe_target = split_ignored(target)
        logits = logits.float()
        if self.task.multilabel:
            per_pixel = sigmoid_focal_loss(
                logits, safe_target.float(), alpha=-1, gamma=self.gamma, reduction="none"
            )
            return label_pixel_mean(per_pixel, valid, self.class_weights)
        if self.task.is_binary:
            per_pixel = sigmoid_focal_loss(
                logits[:, 0], safe_target.float(), alpha=-1, gamma=self.gamma, reduction="none"
            )
        else:
            log_p = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            per_pixel = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        return weighted_pixel_mean(per_pixel, safe_target, valid, self.class_weights)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
