"""Small builders shared by the dataset-layout tests (plain functions, imported by them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.config import Config


def data_config(dataset: str, root: Path, **data) -> Config:
    """The default config pointed at ``root`` with ``dataset`` and any ``data.*`` fields."""
    cfg = Config()
    cfg.data.dataset = dataset
    cfg.data.root = str(root)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def random_rgb(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)


def save_image(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    """Save ``image`` (array or PIL) at ``path``, creating folders; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **options)
    return path
