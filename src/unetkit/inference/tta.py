"""Test-time augmentation: the mean prediction over flips of each input.

The model sees the input as it is and flipped (left-right, upside-down, both: the views of
:data:`FLIPS`, or the subset a checkpoint records); each prediction is flipped back and the
views are averaged. Probabilities are averaged, not logits, so the result is the mean of the
views' probability distributions per pixel (a distribution itself), and one confident view
cannot outvote unsure ones by its logit's magnitude alone. For a model whose output flips with
its input, TTA changes nothing; otherwise it removes the part of the prediction that depends on
orientation. It costs one forward pass per view, so it is off by default.

Training records the flips its augmentation taught the model
(:func:`unetkit.data.transforms.trained_flips`) and TTA uses only those: a view the model never
saw in training is not a second opinion but a worse one. An ISBI membrane model trained with
left-right flips only scored 0.645-0.647 foreground IoU on the two upside-down views against
0.688 on the images as they are, and the mean of all four views scored below the image alone;
Pet models lost 0.03-0.07 upside-down (benchmarks/README, "TTA views").
"""

from __future__ import annotations

import torch
from torch import nn

from unetkit.inference.sliding_window import ProbabilityFn

Flips = tuple[tuple[int, ...], ...]

FLIPS: Flips = ((), (-1,), (-2,), (-2, -1))
"""Dimensions flipped by each view: none, width (left-right), height (up-down), both."""


def checked_flips(flips: object) -> Flips:
    """``flips`` as a tuple of :data:`FLIPS` entries (lists read from JSON become tuples), in
    :data:`FLIPS` order, the unflipped view first; a clear error for anything else."""
    try:
        views = {tuple(int(dim) for dim in view) for view in flips}  # type: ignore[union-attr]
    except (TypeError, ValueError):
        views = None
    if views is None or () not in views or not views <= set(FLIPS):
        raise ValueError(
            f"tta_flips is a list of flips from {[list(view) for view in FLIPS]} that includes "
            f"[] (the image as it is); got {flips!r}"
        )
    return tuple(view for view in FLIPS if view in views)


def flip_averaged(predict: ProbabilityFn, flips: Flips = FLIPS) -> ProbabilityFn:
    """``predict`` made to return the mean probabilities over the ``flips`` of its input.

    The flips run one after the other, so memory stays that of one call to ``predict``.
    """

    def averaged(images: torch.Tensor) -> torch.Tensor:
        total = predict(images).float() if () in flips else 0.0
        for dims in (view for view in flips if view):
            total = total + predict(images.flip(dims)).float().flip(dims)
        return total / len(flips)

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
