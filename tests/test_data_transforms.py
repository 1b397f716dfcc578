"""Joint augmentation, the shared normalisation, and the torch dataset."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unetkit.config import Config
from unetkit.data.dataset import SegmentationDataset, build_datasets
from unetkit.data.datasets.synthetic import SyntheticSource
from unetkit.data.preprocess import (
    default_mean_std,
    resize_image,
    resolve_mean_std,
    to_tensor,
)
from unetkit.data.registry import build_splits
from unetkit.data.sources import DataError
from unetkit.data.transforms import AUGMENT_LEVELS, build_eval_transform, build_train_transform


def _seeded(transform, seed: int):
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform


def _asymmetric_pair(height: int = 70, width: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A mask with an off-centre box and disc, and an image bright exactly where the mask is 1."""
    mask = np.zeros((height, width), np.uint8)
    mask[5:30, 8:40] = 1
    ys, xs = np.ogrid[:height, :width]
    mask[(ys - 50) ** 2 + (xs - 70) ** 2 < 12**2] = 1
    image = np.where(mask[..., None] == 1, 210, 40).astype(np.uint8).repeat(3, axis=2)
    return image, mask


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_transforms_keep_image_and_mask_aligned(level):
    image, mask = _asymmetric_pair()
    transform = build_train_transform((48, 64), level)
    for seed in range(12):
        out = _seeded(transform, seed)(image=image, mask=mask)
        aug_image, aug_mask = out["image"], out["mask"]
        assert aug_image.shape == (48, 64, 3) and aug_mask.shape == (48, 64)
        valid = aug_mask != 255
        grey = aug_image[..., 0].astype(float)
        midpoint = (grey[aug_mask == 1].mean() + grey[aug_mask == 0].mean()) / 2
        agreement = ((grey > midpoint) == (aug_mask == 1))[valid].mean()
        assert agreement > 0.93, (level, seed, agreement)


def test_strong_transform_keeps_mask_values_and_fills_borders_with_ignore():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (40, 52), dtype=np.uint8)
    transform = build_train_transform((32, 32), "strong")
    ignored_fractions = []
    for seed in range(20):
        out = _seeded(transform, seed)(image=image, mask=mask)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 255}
        ignored_fractions.append((out["mask"] == 255).mean())
    assert max(ignored_fractions) > 0.02  # rotated or shifted borders are ignore, not background
    assert min(ignored_fractions) == 0.0  # ... and only where the image was moved
    plain = build_train_transform((32, 32), "none")(image=image, mask=mask)["mask"]
    assert 255 not in plain


def test_flip_moves_mask_with_image():
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :10] = 1
    image = np.where(mask[..., None] == 1, 220, 30).astype(np.uint8).repeat(3, axis=2)
    transform = build_train_transform((32, 32), "light")
    flipped = 0
    for seed in range(10):
        out = _seeded(transform, seed)(image=image, mask=mask)
        if out["mask"][16, 28] == 1 and out["mask"][16, 3] != 1:
            flipped += 1
            assert out["image"][16, 28, 0] > 120 and out["image"][16, 3, 0] < 120
    assert flipped > 0


def test_eval_transform_resizes_mask_with_nearest_and_image_smoothly():
    image = np.zeros((40, 40, 1), np.uint8)
    image[:, 20:] = 200
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 3
    out = build_eval_transform((96, 96))(image=image, mask=mask)
    assert set(np.unique(out["mask"]).tolist()) == {0, 3}
    assert out["image"].shape == (96, 96, 1)
    assert len(np.unique(out["image"])) > 2  # bilinear: intermediate values at the edge


def test_unknown_level_lists_levels_and_no_warnings_are_emitted():
    with pytest.raises(DataError, match="none, light, strong"):
        build_train_transform(64, "extreme")
    image, mask = _asymmetric_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for level in AUGMENT_LEVELS:
            for channels in (1, 3):
                transform = build_train_transform((32, 40), level, in_channels=channels)
                for seed in range(3):
                    _seeded(transform, seed)(image=image[..., :channels], mask=mask)


# --- normalisation -----------------------------------------------------------------------------


def test_to_tensor_normalises_per_channel():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    tensor = to_tensor(image, mean=[0.5, 0.0, 0.5], std=[0.5, 1.0, 0.25])
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[0], torch.ones(2, 3))
    assert torch.allclose(tensor[1], torch.zeros(2, 3))
    assert torch.allclose(tensor[2], torch.full((2, 3), -2.0))
    assert to_tensor(np.full((4, 5), 51, np.uint8), [0.2], [1.0]).abs().max() < 1e-6


def test_to_tensor_rejects_mismatched_statistics_and_dtype():
    with pytest.raises(DataError, match="1 channel"):
        to_tensor(np.zeros((4, 4, 1), np.uint8), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with pytest.raises(DataError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), np.uint16), [0.5] * 3, [0.5] * 3)


def test_mean_std_defaults_for_grey_and_rgb():
    assert default_mean_std(3)[0] == [0.485, 0.456, 0.406]
    cfg = Config()
    assert resolve_mean_std(cfg.data.mean, cfg.data.std, 1) == default_mean_std(1)
    with pytest.raises(DataError, match="1 channel"):
        resolve_mean_std([0.1, 0.2, 0.3], [1, 1, 1], 1)


def test_resize_image_keeps_channel_axis():
    image = np.random.default_rng(0).integers(0, 255, (30, 20, 1), dtype=np.uint8)
    assert resize_image(image, (15, 10)).shape == (15, 10, 1)
    assert resize_image(image[..., 0], 64).shape == (64, 64)


# --- dataset -------------------------------------------------------------------------------------


def test_dataset_returns_normalised_tensors_reproducibly():
    source = SyntheticSource(4, (40, 40), num_classes=3, seed=0)
    dataset = SegmentationDataset(source, build_train_transform(32, "strong"), [0.5] * 3, [0.5] * 3)
    torch.manual_seed(0)
    image, mask = dataset[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert image.min() >= -1.0 and image.max() <= 1.0
    torch.manual_seed(0)
    again = dataset[1]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1])
    draws = [dataset[1][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_build_datasets_batches_for_grey_input():
    cfg = Config()
    cfg.data.synthetic_count = 10
    cfg.data.in_channels = 1
    cfg.data.img_size = [40, 24]
    cfg.data.augment = "strong"
    datasets = build_datasets(build_splits(cfg), cfg)
    images, masks = next(iter(DataLoader(datasets["train"], batch_size=3)))
    assert images.shape == (3, 1, 40, 24) and masks.shape == (3, 40, 24)
    assert len(datasets["test"]) == 2 and datasets["val"].transform is not None
