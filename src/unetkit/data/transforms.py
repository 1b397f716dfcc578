"""Augmentation pipelines applied jointly to an image and its mask (Albumentations 2.x).

Every geometric step moves the mask with the image, resizes it with nearest-neighbour so class ids
stay class ids, and fills pixels that appear at the border with 255 (ignore) in the mask, so
padding is never learned as background. Photometric steps touch the image only.

Levels: ``none`` (resize only), ``light`` (horizontal flip, small affine, brightness/contrast) and
``strong`` (adds vertical flip, larger rotation, random resized crop, colour jitter, a smooth
elastic deformation in the spirit of the U-Net paper, and Gaussian noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from unetkit.data.preprocess import size_hw
from unetkit.data.sources import DataError
from unetkit.tasks import IGNORE_INDEX

AUGMENT_LEVELS = ("none", "light", "strong")

_PAD = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": IGNORE_INDEX}


def build_train_transform(
    img_size: int | Sequence[int], level: str = "light", in_channels: int = 3
) -> A.Compose:
    """Training pipeline ending at ``img_size = (H, W)``; ``level`` is one of AUGMENT_LEVELS."""
    height, width = size_hw(img_size)
    if level == "none":
        return build_eval_transform((height, width))
    if level == "light":
        return A.Compose([_resize(height, width), *_light_steps()])
    if level == "strong":
        return A.Compose(_strong_steps(height, width, in_channels))
    raise DataError(f"unknown augmentation level {level!r}; levels: {', '.join(AUGMENT_LEVELS)}")


def trained_flips(level: str) -> tuple[tuple[int, ...], ...]:
    """The flips (tensor dimensions, as :data:`unetkit.inference.tta.FLIPS` names them) that
    augmentation ``level`` shows the model in training, the image as it is first: the views
    test-time augmentation may average without asking the model about orientations it never
    learned. ``light`` flips left-right only, because upright photographs stay upright."""
    flips = {"none": ((),), "light": ((), (-1,)), "strong": ((), (-1,), (-2,), (-2, -1))}
    if level not in flips:
        levels = ", ".join(AUGMENT_LEVELS)
        raise DataError(f"unknown augmentation level {level!r}; levels: {levels}")
    return flips[level]


def build_eval_transform(img_size: int | Sequence[int]) -> A.Compose:
    """Resize only: what validation, testing and inference see."""
    height, width = size_hw(img_size)
    return A.Compose([_resize(height, width)])


def augment(
    transform: Callable[..., dict[str, Any]], image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, ...]:
    """``transform`` applied to the image and its mask jointly: an ``(L, H, W)`` multi-label mask
    goes in as ``masks`` (one label map each), so every geometric step moves all labels alike."""
    if mask.ndim == 3:
        out = transform(image=image, masks=list(mask))
        return out["image"], np.stack(out["masks"])
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]


def _resize(height: int, width: int) -> A.Resize:
    """Bilinear to enlarge, area averaging to shrink the image; nearest for the mask."""
    return A.Resize(
        height,
        width,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )


def _light_steps() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5, **_PAD
        ),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


def _strong_steps(height: int, width: int, in_channels: int) -> list[A.BasicTransform]:
    short_side = min(height, width)
    crop_or_resize = A.OneOf(
        [
            A.RandomResizedCrop(
                size=(height, width),
                scale=(0.5, 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                area_for_downscale="image",
            ),
            _resize(height, width),
        ],
        p=1.0,
    )
    colour = (
        A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04, p=0.5)
        if in_channels == 3
        else A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5)
    )
    return [
        crop_or_resize,
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(
            scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-30, 30), p=0.7, **_PAD
        ),
        # Smooth random displacement of about 2% of the image side, like the U-Net paper's.
        A.ElasticTransform(alpha=3.0 * short_side, sigma=0.08 * short_side, p=0.3, **_PAD),
        colour,
        A.GaussNoise(std_range=(0.02, 0.06), p=0.3),
    ]
