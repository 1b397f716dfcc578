"""Reading pretrained weights given as a file: the one check that a loaded object is a state dict.

Both the torchvision ResNet-34 encoder and timm encoders accept a bare state dict or a checkpoint
that wraps one under ``state_dict``; anything else is refused with the way to save a good one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def as_state_dict(loaded: object, source: str, how_to_save: str) -> dict[str, torch.Tensor]:
    """``loaded`` as a name -> tensor mapping, or an error naming ``source`` and ``how_to_save``."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise ValueError(
            f"{source} does not hold a state dict (a mapping of names to tensors); save one with "
            f"{how_to_save}"
        )
    return dict(loaded)
