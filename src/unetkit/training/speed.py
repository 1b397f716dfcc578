"""Speed settings of the training model: memory format, ``torch.compile``, cuDNN autotuning.

The memory format is the one :mod:`unetkit.precision` chose (measured, or as asked) and
``cfg.channels_last`` holds it by the time the model is prepared. ``torch.compile`` is opt-in
(minutes of compilation, measured under 6% faster on a 2-core CPU). cuDNN benchmark is on for
CUDA runs that are not ``train.deterministic`` (it picks the fastest convolution algorithm per
input shape; the shapes of a training run are fixed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from unetkit.config import TrainConfig


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The memory format model and batches use."""
    return torch.channels_last if cfg.channels_last is True else torch.contiguous_format


def prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Callable:
    """Set the memory format and cuDNN mode; return what the steps call (compiled or not).

    The returned callable shares ``model``'s parameters; checkpoints keep saving ``model`` itself
    so their keys never carry torch.compile's ``_orig_mod.`` prefix.
    """
    model.to(memory_format=memory_format(cfg))
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True
    if cfg.compile:
        return torch.compile(model)
    return model
