"""Test-time augmentation: the mean prediction over the four flips of each input.

The model sees the input as it is, flipped left-right, flipped upside-down and both; each
prediction is flipped back and the four are averaged. Probabilities are averaged, not logits, so
the result is the mean of four probability distributions per pixel (a distribution itself), and
one confident view cannot outvote three unsure ones by its logit's magnitude alone. For a model
whose output flips with its input, TTA changes nothing; otherwise it removes the part of the
prediction that depends on orientation. It costs four forward passes, so it is off by default.
"""

from __future__ import annotations

import torch
from torch import nn

from unetkit.inference.sliding_window import ProbabilityFn

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
"""Dimensions flipped by each view: none, width (left-right), height (up-down), both."""


def flip_averaged(predict: ProbabilityFn) -> ProbabilityFn:
    """``predict`` made to return the mean probabilities over the :data:`FLIPS` of its input.

    The flips run one after the other, so memory stays that of one call to ``predict``.
    """

    def averaged(images: torch.Tensor) -> torch.Tensor:
        total = predict(images).float()
        for dims in FLIPS[1:]:
            total = total + predict(images.flip(dims)).float().flip(dims)
        return total / len(FLIPS)

    return averaged


class FlippedModel(nn.Module):
    """``model`` seen through one flip: the input flipped along ``dims``, its logits flipped
    back, which is one of the views :func:`flip_averaged` averages (fitting a calibration for
    the average needs each view on its own: :mod:`unetkit.inference.view_calibration`)."""

    def __init__(self, model: nn.Module, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.dims = dims

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return self.model(images)
        return self.model(images.flip(self.dims)).flip(self.dims)
