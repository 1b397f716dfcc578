"""Build the loss a run trains on from its spec string, task and class weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from unetkit.losses.combined import WeightedSumLoss
from unetkit.losses.cross_entropy import BinaryCrossEntropyLoss, CrossEntropyLoss
from unetkit.losses.dice import SoftDiceLoss
from unetkit.losses.focal import FocalLoss
from unetkit.losses.spec import parse_loss_spec
from unetkit.tasks import Task


def build_loss(
    spec: str,
    task: Task,
    class_weights: Sequence[float] | None = None,
    focal_gamma: float = 2.0,
) -> WeightedSumLoss:
    """A :class:`WeightedSumLoss` for ``spec`` (e.g. ``"ce:0.7,dice:0.3"``) on ``task``.

    Its forward takes logits ``(N, task.out_channels, H, W)`` and an int64 target ``(N, H, W)``
    (255 = ignore) and returns a scalar. ``class_weights`` (one per class, background included)
    weight ``ce``/``bce``/``focal`` per pixel and the class average of ``dice``.
    """
    terms = parse_loss_spec(spec)
    weights = _class_weight_tensor(class_weights, task)
    modules = [(name, weight, _term(name, task, weights, focal_gamma)) for name, weight in terms]
    return WeightedSumLoss(task, modules, spec)


def _term(name: str, task: Task, weights: torch.Tensor | None, focal_gamma: float) -> nn.Module:
    if name == "ce":
        return CrossEntropyLoss(task, weights)
    if name == "bce":
        return BinaryCrossEntropyLoss(task, weights)
    if name == "dice":
        return SoftDiceLoss(task, weights)
    if name == "focal":
        return FocalLoss(task, focal_gamma, weights)
    raise AssertionError(f"parse_loss_spec let through unknown loss {name!r}")


def _class_weight_tensor(weights: Sequence[float] | None, task: Task) -> torch.Tensor | None:
    if weights is None:
        return None
    values = list(weights)
    problem = None
    if len(values) != task.num_classes:
        problem = f"has {len(values)} values but the task has {task.num_classes} classes"
    elif not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
        problem = "must hold finite numbers >= 0"
    elif not any(v > 0 for v in values):
        problem = "must hold at least one positive value"
    if problem:
        raise ValueError(
            f"loss.class_weights {values} {problem}; give one weight per class, background "
            f"first, e.g. [1.0, 3.0] for a binary task"
        )
    return torch.tensor(values, dtype=torch.float32)
