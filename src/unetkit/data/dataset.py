"""The torch ``Dataset`` over a sample source: load, augment jointly, normalise, to tensors."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unetkit.config import Config
from unetkit.data.cache import CachedSource, default_cache_dir
from unetkit.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, resolve_mean_std, to_tensor
from unetkit.data.registry import DatasetSplits
from unetkit.data.sources import SampleSource
from unetkit.data.transforms import augment, build_eval_transform, build_train_transform

Transform = Callable[..., dict[str, Any]]


class SegmentationDataset(Dataset):
    """``(image float32 C x H x W normalised, mask int64 H x W)`` pairs from a source; a
    multi-label source's masks are ``L x H x W``.

    ``transform`` is called as ``transform(image=..., mask=...)`` (an Albumentations pipeline),
    or with ``masks=[...]`` (one per label) for multi-label masks, so every label moves with the
    image.
    Its random state is reseeded per sample from torch's generator, so ``torch.manual_seed``
    makes augmentation reproducible and each DataLoader worker draws different augmentations.
    """

    def __init__(
        self,
        source: SampleSource,
        transform: Transform | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.source = source
        self.transform = transform
        self.mean = list(mean)
        self.std = list(std)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(index)
        if self.transform is not None:
            _reseed(self.transform)
            image, mask = augment(self.transform, image, mask)
        return to_tensor(image, self.mean, self.std), torch.from_numpy(mask.astype(np.int64))


def _reseed(transform: Transform) -> None:
    """Give an Albumentations pipeline one fresh generator drawn from torch's RNG."""
    set_state = getattr(transform, "set_random_state", None)
    if set_state is None:
        return
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    set_state(np.random.default_rng(seed), random.Random(seed))


def build_datasets(splits: DatasetSplits, cfg: Config) -> dict[str, SegmentationDataset]:
    """Train (augmented per ``data.augment``), val and test (resized only) datasets."""
    mean, std = resolve_mean_std(cfg.data.mean, cfg.data.std, cfg.data.in_channels)
    train_transform = build_train_transform(
        cfg.data.img_size, cfg.data.augment, cfg.data.in_channels
    )
    eval_transform = build_eval_transform(cfg.data.img_size)
    sources = {name: _maybe_cached(source, cfg) for name, source in splits.named().items()}
    return {
        "train": SegmentationDataset(sources["train"], train_transform, mean, std),
        "val": SegmentationDataset(sources["val"], eval_transform, mean, std),
        "test": SegmentationDataset(sources["test"], eval_transform, mean, std),
    }


def _maybe_cached(source: SampleSource, cfg: Config) -> SampleSource:
    """``source`` behind the disk cache when ``data.cache`` is on and it reads files."""
    if not cfg.data.cache or len(source) == 0 or not source.files(0):
        return source
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    return CachedSource(source, cfg.data.img_size, cache_dir)
