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
* **multi-label** (``"multilabel"``, ``task.type: multilabel``): ``num_classes`` labels that may
  overlap, no background channel; one sigmoid channel per label, each cut at ``task.threshold``
  (or at its own, ``task.label_thresholds``, tuned on validation).
  Its mask is ``(L, H, W)`` of 0/1 per label (``IGNORE_INDEX`` where that label is not counted),
  its prediction the same shape, its probs ``(N, L, H, W)``.
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

TASK_TYPES = ("auto", "binary", "multiclass", "multilabel")
"""Values of ``task.type``: ``auto`` tells binary from multi-class by ``num_classes``."""


@dataclass(frozen=True)
class Task:
    """What the model predicts: how many classes, and whether the head is a binary sigmoid.

    With ``multilabel`` True, ``num_classes`` counts labels (no background) and every label has
    its own sigmoid channel, cut at ``label_thresholds[l]`` where those are set (one per label,
    e.g. tuned on validation), else at ``threshold``.
    """

    num_classes: int
    threshold: float = 0.5
    multilabel: bool = False
    label_thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.multilabel and self.num_classes < 1:
            raise ValueError(f"a multi-label task has at least 1 label; got {self.num_classes}")
        if not self.multilabel and self.num_classes < 2:
            raise ValueError(
                f"num_classes must count the background too, so it is at least 2 "
                f"(2 = binary: background and foreground); got {self.num_classes}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1; got {self.threshold}")
        if self.label_thresholds is not None:
            object.__setattr__(self, "label_thresholds", self._checked_label_thresholds())

    def _checked_label_thresholds(self) -> tuple[float, ...]:
        values = tuple(float(value) for value in self.label_thresholds or ())
        if not self.multilabel:
            raise ValueError(
                f"label_thresholds {list(values)} apply to a multi-label task; a binary task has "
                f"one threshold and a multi-class one takes the most probable class"
            )
        if len(values) != self.num_classes or not all(0.0 < v < 1.0 for v in values):
            raise ValueError(
                f"label_thresholds must give one value strictly between 0 and 1 per label "
                f"({self.num_classes} labels); got {list(values)}"
            )
        return values

    @classmethod
    def from_config(cls, num_classes: int, threshold: float = 0.5, task_type: str = "auto") -> Task:
        """The task of ``task.type`` (see :data:`TASK_TYPES`); ``binary`` and ``multiclass``
        must agree with ``num_classes``."""
        check_task_type(task_type)
        expected = {"binary": num_classes == 2, "multiclass": num_classes > 2}
        if not expected.get(task_type, True):
            raise ValueError(
                f"task.type {task_type!r} does not fit task.num_classes={num_classes} (which "
                f"counts the background: 2 is binary, more is multi-class); set task.type=auto, or "
                f"task.type=multilabel for labels that may overlap"
            )
        return cls(num_classes, threshold, multilabel=task_type == "multilabel")

    @classmethod
    def from_dict(cls, stored: dict) -> Task:
        """The task of a checkpoint's or an export's ``task`` record (:meth:`to_dict`); a key
        it does not know is a TypeError, as for the constructor."""
        unknown = sorted(set(stored) - {"num_classes", "threshold", "type", "label_thresholds"})
        if unknown:
            raise TypeError(f"a task record has no key(s) {unknown}")
        label_thresholds = stored.get("label_thresholds")
        return cls(
            int(stored["num_classes"]),
            float(stored.get("threshold", 0.5)),
            multilabel=stored.get("type") == "multilabel",
            label_thresholds=None if label_thresholds is None else tuple(label_thresholds),
        )

    def to_dict(self) -> dict:
        """The stored record: ``num_classes`` and ``threshold``, plus ``type`` when multi-label
        and ``label_thresholds`` when set (binary and multi-class records stay as they were)."""
        record: dict = {"num_classes": self.num_classes, "threshold": self.threshold}
        if self.multilabel:
            record["type"] = "multilabel"
        if self.label_thresholds is not None:
            record["label_thresholds"] = list(self.label_thresholds)
        return record

    @property
    def cuts(self) -> list[float] | None:
        """Each label's threshold (a multi-label task's), else ``None``."""
        if not self.multilabel:
            return None
        return list(self.label_thresholds or (self.threshold,) * self.num_classes)

    def _label_cuts(self, probs: torch.Tensor) -> torch.Tensor | float:
        """What a multi-label ``(N, L, H, W)`` is compared with: one number, or one per label."""
        if self.label_thresholds is None:
            return self.threshold
        return torch.tensor(self.label_thresholds, device=probs.device).view(1, -1, 1, 1)

    @property
    def kind(self) -> str:
        """``binary``, ``multiclass`` or ``multilabel``: the word metrics.json and answers use."""
        if self.multilabel:
            return "multilabel"
        return "binary" if self.is_binary else "multiclass"

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2 and not self.multilabel

    @property
    def is_multilabel(self) -> bool:
        return self.multilabel

    @property
    def out_channels(self) -> int:
        """Logit channels of the model head: 1 for binary, ``num_classes`` otherwise."""
        return 1 if self.is_binary else self.num_classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, num_classes, H, W)`` from logits ``(N, out_channels, H, W)``.

        For a binary task channel 0 is the background (1 - p) and channel 1 the foreground (p), so
        downstream code handles both tasks alike. A multi-label task gives each label's sigmoid.
        """
        if self.multilabel:
            return torch.sigmoid(logits.float())
        if self.is_binary:
            foreground = torch.sigmoid(logits.float())
            return torch.cat([1.0 - foreground, foreground], dim=1)
        return torch.softmax(logits.float(), dim=1)

    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted class ids ``(N, H, W)`` (int64) from logits ``(N, out_channels, H, W)``;
        multi-label: 0/1 per label, ``(N, L, H, W)``."""
        if self.multilabel:
            probs = torch.sigmoid(logits.float())
            return (probs > self._label_cuts(probs)).long()
        if self.is_binary:
            return (torch.sigmoid(logits.float()[:, 0]) > self.threshold).long()
        return logits.argmax(dim=1)

    def labels_from_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted class ids from :meth:`probabilities` (e.g. after resizing them)."""
        if self.multilabel:
            return (probs > self._label_cuts(probs)).long()
        if self.is_binary:
            return (probs[:, 1] > self.threshold).long()
        return probs.argmax(dim=1)


def check_task_type(value: str) -> str:
    """``value`` when it is one of :data:`TASK_TYPES`, else a ValueError listing them."""
    if value not in TASK_TYPES:
        raise ValueError(f"task.type {value!r} is unknown; accepted: {', '.join(TASK_TYPES)}")
    return value


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
