"""Which pixels count, and the weighted mean over them, shared by the per-pixel losses.

Pixels whose target is :data:`~unetkit.tasks.IGNORE_INDEX` are left out of every numerator and
denominator. A batch with no valid pixel gives a loss of exactly 0 whose gradient is 0, never NaN,
so a fully void crop cannot poison training.
"""

from __future__ import annotations

import torch

from unetkit.tasks import IGNORE_INDEX, Task, check_class_ids


def split_ignored(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, safe_target)``: a bool mask of counted pixels, and the target with ignored pixels
    set to class 0 so it can index and one-hot safely (their contribution is masked out later)."""
    target = target.long()
    valid = target != IGNORE_INDEX
    return valid, torch.where(valid, target, torch.zeros_like(target))


def weighted_pixel_mean(
    per_pixel: torch.Tensor,
    safe_target: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Mean of ``per_pixel`` over valid pixels, each weighted by the weight of its true class.

    This is the normalisation of ``torch.nn.functional.cross_entropy(weight=...)``:
    ``sum(w[y] * loss) / sum(w[y])``; without weights it is the plain mean over valid pixels.
    """
    if class_weights is None:
        weights = valid.to(per_pixel.dtype)
    else:
        weights = class_weights.to(per_pixel.device, per_pixel.dtype)[safe_target] * valid
    kept = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    tiny = torch.finfo(per_pixel.dtype).tiny
    return (kept * weights).sum() / weights.sum().clamp_min(tiny)


def label_pixel_mean(
    per_pixel: torch.Tensor, valid: torch.Tensor, label_weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean of a multi-label ``per_pixel`` loss ``(N, L, H, W)`` over the valid label pixels,
    label ``l`` weighing ``label_weights[l]`` (the multi-label form of
    :func:`weighted_pixel_mean`: a pixel has one weight per label instead of one per class)."""
    weights = valid.to(per_pixel.dtype)
    if label_weights is not None:
        weights = weights * label_weights.to(per_pixel.device, per_pixel.dtype).view(1, -1, 1, 1)
    kept = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    tiny = torch.finfo(per_pixel.dtype).tiny
    return (kept * weights).sum() / weights.sum().clamp_min(tiny)


def check_logits_and_target(logits: torch.Tensor, target: torch.Tensor, task: Task) -> None:
    """Raise ValueError, naming what was seen, when shapes or mask values do not fit ``task``."""
    what = f"{task.num_classes} labels" if task.multilabel else f"{task.num_classes} classes"
    if logits.ndim != 4 or logits.shape[1] != task.out_channels:
        raise ValueError(
            f"loss: logits must be (N, {task.out_channels}, H, W) for a task with "
            f"{what}; got shape {tuple(logits.shape)}"
        )
    if task.multilabel:
        expected, layout = tuple(logits.shape), "(N, L, H, W)"
    else:
        expected, layout = (logits.shape[0], *logits.shape[2:]), "(N, H, W)"
    if tuple(target.shape) != expected:
        raise ValueError(
            f"loss: target must be {layout} = {expected} to match the logits; "
            f"got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"loss: target must hold integer class ids; got dtype {target.dtype}")
    target = target.long()
    ids = 2 if task.multilabel else task.num_classes  # a label pixel is 0 or 1
    check_class_ids(target, ids, "loss: the target", target != IGNORE_INDEX)
