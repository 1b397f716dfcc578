"""The loss of a deeply supervised model: a weighted sum of one loss per head.

A model asked for its auxiliary heads answers ``(heads, weights)`` (a
:class:`unetkit.models.DeepSupervisionOutput`): the main logits first, then heads at the same or
lower resolutions, and one weight per head (nnU-Net's halving weights, normalised to sum 1, for
heads at halving resolutions). Each head is judged by the run's own loss against the target
resized to the head's size by nearest-neighbour sampling, which keeps every label value (255,
ignore, included). The target is downsampled rather than the heads upsampled, as nnU-Net does:
a coarse head is then asked for the map it can represent at its resolution, not for boundaries
finer than its pixels, and the loss costs no full-resolution copy of every head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deep_supervision_loss(
    criterion: Loss,
    logits: torch.Tensor | tuple[Sequence[torch.Tensor], Sequence[float]],
    masks: torch.Tensor,
) -> torch.Tensor:
    """``criterion`` in fp32 on plain logits, or the weighted sum over a model's heads."""
    if isinstance(logits, torch.Tensor):
        return criterion(logits.float(), masks)
    heads, weights = logits
    losses = [
        weight * criterion(head.float(), resize_masks(masks, head.shape[-2:]))
        for head, weight in zip(heads, weights, strict=True)
        if weight > 0
    ]
    return torch.stack(losses).sum()


def resize_masks(masks: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Label maps ``(N, H, W)`` (or multi-label ``(N, L, H, W)``) resized to ``size`` by
    nearest-neighbour sampling."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    stacked = masks if masks.ndim == 4 else masks[:, None]
    resized = F.interpolate(stacked.float(), size=tuple(size), mode="nearest")
    return (resized if masks.ndim == 4 else resized[:, 0]).to(masks.dtype)
