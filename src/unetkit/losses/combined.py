"""The weighted sum of loss terms that a run trains on, remembering each term for logging."""

from __future__ import annotations

import torch
from torch import nn

from unetkit.losses.pixels import check_logits_and_target
from unetkit.tasks import Task


class WeightedSumLoss(nn.Module):
    """``sum(weight * term(logits, target))`` over named terms.

    After each call, :attr:`last_components` maps each term's name to its unweighted value, so
    the trainer can log ``ce`` and ``dice`` separately. Values are kept as detached tensors and
    turned into floats only when read, so training does not wait on the device every step.
    """

    def __init__(self, task: Task, terms: list[tuple[str, float, nn.Module]], spec: str) -> None:
        super().__init__()
        self.task = task
        self.spec = spec
        self.terms = nn.ModuleDict({name: module for name, _, module in terms})
        self.weights = {name: weight for name, weight, _ in terms}
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_and_target(logits, target, self.task)
        values = {name: term(logits, target) for name, term in self.terms.items()}
        self._last = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())

    @property
    def last_components(self) -> dict[str, float]:
        """Unweighted value of each term in the last forward call (empty before the first)."""
        return {name: float(value) for name, value in self._last.items()}

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"
