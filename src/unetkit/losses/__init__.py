"""Segmentation losses that ignore void pixels, combined as a weighted sum named by a spec string.

``build_loss("ce:0.7,dice:0.3", task)`` is the entry point; see :mod:`unetkit.losses.spec` for the
spec syntax and each module for the exact definition of its loss.
"""

from unetkit.losses.build import build_loss
from unetkit.losses.combined import WeightedSumLoss
from unetkit.losses.cross_entropy import BinaryCrossEntropyLoss, CrossEntropyLoss
from unetkit.losses.dice import SoftDiceLoss
from unetkit.losses.focal import FocalLoss
from unetkit.losses.spec import LOSS_NAMES, parse_loss_spec

__all__ = [
    "LOSS_NAMES",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "SoftDiceLoss",
    "WeightedSumLoss",
    "build_loss",
    "parse_loss_spec",
]
