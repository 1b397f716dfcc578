"""Tiny models, their checkpoints and random images, shared by the inference and export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unetkit.checkpoint import Preprocessing, model_metadata
from unetkit.data.preprocess import default_mean_std
from unetkit.models import build_model
from unetkit.tasks import Task

MODEL_OPTIONS = {"base_width": 4, "depth": 2}


def tiny_model(
    task: Task,
    in_channels: int = 3,
    seed: int = 0,
    name: str = "unet",
    options: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A random tiny model whose head is scaled up so it predicts a mix of classes."""
    options = MODEL_OPTIONS if options is None else options
    torch.manual_seed(seed)
    model = build_model(name, in_channels, task.out_channels, **options)
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    return model


def preprocessing(
    in_channels: int = 3, img_size: tuple[int, int] = (16, 20), tile_size: int | None = None
) -> Preprocessing:
    """The default normalisation for ``in_channels`` at ``img_size``."""
    mean, std = default_mean_std(in_channels)
    return Preprocessing(img_size, tuple(mean), tuple(std), in_channels, tile_size)


def checkpoint_payload(
    model: torch.nn.Module,
    task: Task,
    class_names: list[str],
    prep: Preprocessing,
    name: str = "unet",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What training saves for ``model`` (metadata, weights, an epoch), for ``save_checkpoint``."""
    options = MODEL_OPTIONS if options is None else options
    metadata = model_metadata(name, options, task, class_names, prep)
    return {**metadata, "model": model.state_dict(), "epoch": 1}


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_rgb(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(height, width, seed)).save(path)
    return path
