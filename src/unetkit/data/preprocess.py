"""The one image normalisation, shared by training and inference so they can never drift apart."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from unetkit.data.sources import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.449,)  # the ImageNet statistics averaged over channels
GREY_STD = (0.226,)


def default_mean_std(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet mean/std (in [0, 1] units) for RGB, their channel average for greyscale."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if in_channels == 1:
        return list(GREY_MEAN), list(GREY_STD)
    raise DataError(f"in_channels must be 1 or 3; got {in_channels}")


def resolve_mean_std(
    mean: Sequence[float], std: Sequence[float], in_channels: int
) -> tuple[list[float], list[float]]:
    """``mean``/``std`` checked against ``in_channels``.

    The config default is the three ImageNet values; for a greyscale run they are replaced by
    :func:`default_mean_std` (1). Any other length mismatch is an error.
    """
    if in_channels == 1 and tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return default_mean_std(1)
    _check_mean_std(mean, std, in_channels)
    return [float(m) for m in mean], [float(s) for s in std]


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(image / 255 - mean) / std``: float32 ``C x H x W`` from uint8 ``H x W x C`` or ``H x W``.

    ``mean`` and ``std`` are in [0, 1] units, one value per channel.
    """
    if image.dtype != np.uint8:
        raise DataError(f"to_tensor expects a uint8 image; got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise DataError(f"to_tensor expects an H x W x C image; got shape {image.shape}")
    channels = image.shape[2]
    _check_mean_std(mean, std, channels)
    pixels = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    tensor = torch.from_numpy(pixels)
    tensor = tensor.permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def _check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        grey_hint = (
            " (for greyscale e.g. data.mean=[0.449] data.std=[0.226])" if channels == 1 else ""
        )
        raise DataError(
            f"data.mean has {len(mean)} and data.std {len(std)} values but the images have "
            f"{channels} channel(s); give one value per channel{grey_hint}"
        )
    if min(std) <= 0:
        raise DataError(f"data.std values must be positive; got {list(std)}")


def size_hw(value: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from a size setting such as ``data.img_size``: one number means a square."""
    sizes = [value] if isinstance(value, int) else list(value)
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise DataError(f"img_size must be [H, W] (or one number); got {value}")
    return int(sizes[0]), int(sizes[1])


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """``image`` resized to ``size = (H, W)``: area averaging to shrink, bilinear to enlarge."""
    height, width = size_hw(size)
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized
