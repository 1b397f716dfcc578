"""An exponential moving average of a model's weights (``--ema DECAY``).

After each optimiser step every floating-point parameter and buffer ``e`` becomes
``decay * e + (1 - decay) * w`` for the model's current value ``w``; integer buffers (e.g.
BatchNorm's batch counter) are copied. The average lives in its own copy of the model, so it can
be validated and saved as an ordinary checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """The averaged copy of ``model``, starting from its current weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema is a decay in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name]
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1.0 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
