"""Segmentation architectures, built by name: ``build_model("unet", in_channels, out_channels)``.

Every model maps images ``(N, in_channels, H, W)`` of any size to logits
``(N, out_channels, H, W)``, where ``out_channels`` counts logit channels (1 for a binary task,
see ``Task.out_channels``); ``num_classes`` always means the class count, background included.
Importing the architecture modules below registers them.
"""

from __future__ import annotations

from unetkit.models import (  # noqa: F401  (registers the models)
    attention_unet,
    resenc_unet,
    resnet_unet,
    timm_unet,
    unet,
    unet_plus_plus,
)
from unetkit.models.deep_supervision import DeepSupervisionOutput
from unetkit.models.registry import (
    build_model,
    list_models,
    model_description,
    model_options,
    register_model,
)

__all__ = [
    "DeepSupervisionOutput",
    "build_model",
    "list_models",
    "model_description",
    "model_options",
    "register_model",
]
