"""Sliding-window inference: probabilities of an image of any size from overlapping windows.

A model trained on fixed-size tiles (``data.tile_size`` crops, each resized to its input size)
sees the same field of view at inference when a large image is cut into windows of its input
size. The windows lie on a regular grid: along each side the first window starts at 0, the last
ends flush with the border, and the steps between them differ by at most a pixel and are at most
``(1 - overlap) * window``, so neighbours overlap by at least ``overlap`` of a window. A side
shorter than its window is padded at its end (reflected where it is long enough, otherwise its
edge pixels repeated) and the result cropped back.

Overlapping windows are blended with a Gaussian importance map (sigma = 1/8 of the window side, as
nnU-Net and MONAI do): a window's centre, where the model sees the most context, counts most, and
its border least, so no seams show where windows meet. Each axis of the map (about 1 at the
centre) is floored at :data:`WEIGHT_FLOOR`, so every pixel of every window keeps a positive weight.
Each output pixel is the weighted mean of the probabilities of the windows covering it, so the
result is still a probability distribution per pixel.

Memory is bounded whatever the image size: the windows are predicted ``batch_size`` at a time and
their weighted probabilities summed into one ``(K, H, W)`` buffer and one ``(H, W)`` weight sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import torch
import torch.nn.functional as F

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of normalised images ``(N, C, h, w)`` to probabilities ``(N, K, h, w)``."""

SIGMA_FRACTION = 1.0 / 8.0
WEIGHT_FLOOR = 1e-3

WindowSize = tuple[int, int]  # (height, width) of one window, in pixels
WindowOrigin = tuple[int, int]  # (y, x) of a window's top-left corner
DEFAULT_OVERLAP = 0.25  # share of a window its neighbour covers again
DEFAULT_BATCH_SIZE = 8  # model inputs per forward pass: whole images, or windows when sliding


def axis_starts(length: int, side: int, overlap: float) -> list[int]:
    """Start offsets of ``side``-long windows covering ``0 .. length``, evenly spaced.

    The last window ends at ``length``; a length no longer than ``side`` gets one window at 0.
    """
    if length <= side:
        return [0]
    largest_step = max(1, math.floor(side * (1.0 - overlap)))
    steps = math.ceil((length - side) / largest_step)
    return [round(i * (length - side) / steps) for i in range(steps + 1)]


def gaussian_importance(
    window_size: WindowSize, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The ``(h, w)`` blending weights of one window: largest at the centre, least at the border.

    The map is separable (one Gaussian per axis), each axis floored at :data:`WEIGHT_FLOOR`, so
    where windows share their rows their weights compare by columns alone, and vice versa.
    """
    rows, columns = (_gaussian_1d(side, device).clamp_min_(WEIGHT_FLOOR) for side in window_size)
    return rows[:, None] * columns[None, :]


def window_origins(
    height: int, width: int, window_size: WindowSize, overlap: float
) -> list[WindowOrigin]:
    """``(y, x)`` top-left corners of the windows covering a ``height x width`` image, by rows."""
    rows = axis_starts(height, window_size[0], overlap)
    columns = axis_starts(width, window_size[1], overlap)
    return [(y, x) for y in rows for x in columns]


def sliding_window_probabilities(
    image: torch.Tensor,
    predict: ProbabilityFn,
    window_size: int | Sequence[int],
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Probabilities ``(K, H, W)`` of a normalised image ``(C, H, W)``, blended from its windows.

    ``predict`` runs on at most ``batch_size`` windows of ``window_size`` (h, w) at a time.
    """
    window = checked_window_size(window_size)
    _check_options(image, overlap, batch_size)
    height, width = image.shape[-2:]
    padded = _pad_to(image, max(height, window[0]), max(width, window[1]))
    origins = window_origins(padded.shape[-2], padded.shape[-1], window, overlap)
    blend = _Blend(padded.shape[-2:], window, image.device)
    for start in range(0, len(origins), batch_size):
        batch = origins[start : start + batch_size]
        crops = torch.stack([padded[:, y : y + window[0], x : x + window[1]] for y, x in batch])
        blend.add(predict(crops), batch)
    return blend.result()[:, :height, :width]


class _Blend:
    """Running Gaussian-weighted sums of window probabilities over one image."""

    def __init__(self, size: torch.Size, window: WindowSize, device: torch.device) -> None:
        self.window = window
        self.weights = gaussian_importance(window, device)
        self.weight_sum = torch.zeros(size, device=device)
        self.total: torch.Tensor | None = None  # (K, H, W) once K is known

    def add(self, probs: torch.Tensor, origins: list[WindowOrigin]) -> None:
        expected = (len(origins), *self.window)
        if probs.ndim != 4 or (probs.shape[0], *probs.shape[-2:]) != expected:
            raise ValueError(
                f"the window predictor must return (N, K, h, w) = ({expected[0]}, K, "
                f"{expected[1]}, {expected[2]}) for {len(origins)} windows; "
                f"got {tuple(probs.shape)}"
            )
        if self.total is None:
            self.total = self.weight_sum.new_zeros((probs.shape[1], *self.weight_sum.shape))
        height, width = self.window
        for (y, x), window_probs in zip(origins, probs.float(), strict=True):
            self.total[:, y : y + height, x : x + width] += window_probs * self.weights
            self.weight_sum[y : y + height, x : x + width] += self.weights

    def result(self) -> torch.Tensor:
        assert self.total is not None, "no window was added"
        return self.total / self.weight_sum


def _gaussian_1d(side: int, device: torch.device | str) -> torch.Tensor:
    centre = (side - 1) / 2.0
    sigma = side * SIGMA_FRACTION
    positions = torch.arange(side, dtype=torch.float32, device=device)
    return torch.exp(-0.5 * ((positions - centre) / sigma) ** 2)


def _pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image`` padded at the bottom and right to ``height x width``, one axis at a time."""
    image = _pad_end(image, height - image.shape[-2], axis=-2)
    return _pad_end(image, width - image.shape[-1], axis=-1)


def _pad_end(image: torch.Tensor, amount: int, axis: int) -> torch.Tensor:
    """``amount`` pixels reflected after the end of ``axis``, or its edge repeated if too short."""
    if amount == 0:
        return image
    mode = "reflect" if amount < image.shape[axis] else "replicate"
    padding = (0, amount, 0, 0) if axis == -1 else (0, 0, 0, amount)
    return F.pad(image[None], padding, mode=mode)[0]


def checked_window_size(window_size: int | Sequence[int]) -> WindowSize:
    """``(h, w)`` from one side or two, or an error that shows the value given."""
    sides = (window_size, window_size) if isinstance(window_size, Integral) else tuple(window_size)
    if len(sides) != 2 or not all(_is_count(side) for side in sides):
        raise ValueError(
            f"window_size must be a positive number of pixels or (height, width); "
            f"got {window_size!r}"
        )
    return int(sides[0]), int(sides[1])


def check_overlap(overlap: float) -> float:
    """``overlap`` if it is a fraction in [0, 1), else an error that shows it."""
    if isinstance(overlap, bool) or not isinstance(overlap, Real) or not 0.0 <= overlap < 1.0:
        raise ValueError(
            f"overlap is a fraction of the window in [0, 1), e.g. 0.25; got {overlap!r}"
        )
    return float(overlap)


def _check_options(image: torch.Tensor, overlap: float, batch_size: int) -> None:
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"expected one image (C, H, W); got shape {tuple(image.shape)}")
    check_overlap(overlap)
    if not _is_count(batch_size):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


def _is_count(value: object) -> bool:
    """A positive integer (bools excluded)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1
