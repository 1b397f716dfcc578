"""Binary versus multi-class: the one place that decides how logits become probabilities and labels.

Everywhere in unetkit a *mask* is an integer array of class ids ``0 .. num_classes - 1``, with
:data:`IGNORE_INDEX` marking pixels that must not count (void labels, padding added by augmentation,
outside a region of interest). ``num_classes`` always counts the background, so a binary task has
``num_classes == 2``. A binary task uses one output channel with a sigmoid; a multi-class task uses
``num_classes`` channels with a softmax. Nothing else in the package makes that choice. A model's
output channels are :attr:`Task.out_channels` (``build_model``'s ``out_channels``), never
``num_classes``.

Glossary (one word per idea, the same in code, config, CLI and docs):

* ``num_classes``: the classes of the task, background included (2 = binary);
  ``out_channels``: the logit channels of a model head (1 for binary, else ``num_classes``).
* **binary** vs **multi-class** (``"multiclass"`` in JSON): ``num_classes == 2`` (one sigmoid
  channel, cut at ``task.threshold``) vs more (a softmax over ``num_classes`` channels).
  **foreground**: every class id ``>= 1``; class 0 is the background.
* **target**: the ground-truth mask of class ids (``IGNORE_INDEX`` where unlabelled).
  **prediction**: predicted class ids, the same shape. **logits**: the raw head outputs
  ``(N, out_channels, H, W)``; **probs**: :meth:`Task.probabilities`, ``(N, num_classes, H, W)``.
* **valid**: a boolean mask of the pixels that count (for a loss or a metric); a pixel counts
  when ``valid`` is True there and its target is not ``IGNORE_INDEX``.
* **tile**: a training crop cut at native resolution from a large image (``data.tile_size``);
  **window**: the patch the Segmenter slides over an image at inference (``--window-size``).
* ``img_size``: the network's input ``[H, W]`` (``data.img_size``); ``image_size``: an image's
  own ``(height, width)``.
* **mode**: the dataset variant (``data.mode``, ``--mode`` of train and evaluate, e.g. ``trimap``);
  **inference mode**: how a model meets an image (``--inference-mode auto | resize | sliding``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = 255
"""Mask value of pixels excluded from losses and metrics. Loaders map dataset void labels to it."""


@dataclass(frozen=True)
class Task:
    """What the model predicts: how many classes, and whether the head is a binary sigmoid."""

    num_classes: int
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(
                f"num_classes must count the background too, so it is at least 2 "
                f"(2 = binary: background and foreground); got {self.num_classes}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1; got {self.threshold}")

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    @property
    def out_channels(self) -> int:
        """Logit channels of the model head: 1 for binary, ``num_classes`` otherwise."""
        return 1 if self.is_binary else self.num_classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, num_classes, H, W)`` from logits ``(N, out_channels, H, W)``.

        For a binary task channel 0 is the background (1 - p) and channel 1 the foreground (p), so
        downstream code handles both tasks alike.
        """
        if self.is_binary:
            foreground = torch.sigmoid(logits.float())
            return torch.cat([1.0 - foreground, foreground], dim=1)
        return torch.softmax(logits.float(), dim=1)

    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted class ids ``(N, H, W)`` (int64) from logits ``(N, out_channels, H, W)``."""
        if self.is_binary:
            return (torch.sigmoid(logits.float()[:, 0]) > self.threshold).long()
        return logits.argmax(dim=1)

    def labels_from_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted class ids from :meth:`probabilities` (e.g. after resizing them)."""
        if self.is_binary:
            return (probs[:, 1] > self.threshold).long()
        return probs.argmax(dim=1)


def check_class_ids(
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    where: str,
    valid: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Raise a ValueError naming the values when ``labels`` (NumPy or torch) hold ids outside
    ``0 .. num_classes - 1`` at the ``valid`` pixels (default: every pixel).

    The one check of class ids that losses and every metric share; ``where`` says who checks
    what, e.g. ``"loss: the target"``.
    """
    outside = (labels < 0) | (labels >= num_classes)
    if valid is not None:
        outside &= valid
    if bool(outside.any()):
        found = labels[outside]
        found = found.cpu().numpy() if isinstance(found, torch.Tensor) else np.asarray(found)
        values = np.unique(found)[:10].tolist()
        raise ValueError(
            f"{where} holds class ids {values} outside 0..{num_classes - 1} (the ignore value "
            f"{IGNORE_INDEX} excepted in targets); check task.num_classes, or map such pixels "
            f"to {IGNORE_INDEX} to leave them out"
        )
