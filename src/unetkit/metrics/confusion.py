"""A confusion matrix accumulated over many predictions: the raw count every metric comes from.

Rows are target (ground-truth) classes, columns predicted classes, entries pixel counts (int64).
Counting is one ``bincount`` on the tensors' own device, so evaluation on a GPU does not copy
masks back. The matrix is a plain tensor (:attr:`ConfusionMatrix.state`) so distributed runs can
all-reduce it and rebuild with :meth:`ConfusionMatrix.from_matrix`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unetkit.tasks import IGNORE_INDEX, check_class_ids


def as_tensor(values: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """``values`` as a tensor, sharing memory where it can; read-only NumPy arrays (such as
    ``np.asarray`` of a PIL image) are copied rather than shared, which torch would warn about."""
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = values.copy()
    return torch.as_tensor(values, device=device)


class ConfusionMatrix:
    """Pixel counts ``matrix[target, prediction]`` over every :meth:`update` since a reset."""

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it is >= 2; got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor | np.ndarray) -> ConfusionMatrix:
        """Rebuild from a square count matrix, e.g. one all-reduced across processes."""
        counts = torch.as_tensor(matrix)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(
                f"a confusion matrix is square (C, C); got shape {tuple(counts.shape)}"
            )
        if counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise ValueError(f"a confusion matrix holds integer counts; got dtype {counts.dtype}")
        confusion = cls(counts.shape[0], device=counts.device)
        confusion.matrix = counts.to(torch.int64).clone()
        return confusion

    @property
    def state(self) -> torch.Tensor:
        """The count tensor itself (not a copy), for in-place all-reduce."""
        return self.matrix

    def update(self, prediction: Any, target: Any, valid: Any = None) -> None:
        """Count ``prediction`` (class ids) against ``target`` (class ids, 255 = ignore).

        Any shape, as long as ``prediction``, ``target`` and the optional boolean ``valid`` agree;
        pixels whose target is 255 or whose ``valid`` is False are not counted.
        """
        prediction, target = as_tensor(prediction), as_tensor(target)
        if prediction.shape != target.shape:
            raise ValueError(
                f"confusion update: prediction shape {tuple(prediction.shape)} differs from target "
                f"shape {tuple(target.shape)}; resize the prediction to the mask first"
            )
        for name, labels in (("prediction", prediction), ("target", target)):
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"confusion update: the {name} must hold integer class ids; got dtype "
                    f"{labels.dtype} (turn logits into ids with Task.labels)"
                )
        valid = self._valid_mask(valid, target) & (target != IGNORE_INDEX)
        target_ids = target[valid].long().to(self.matrix.device)
        prediction_ids = prediction.to(target.device)[valid].long().to(self.matrix.device)
        check_class_ids(target_ids, self.num_classes, "confusion update: the target")
        check_class_ids(prediction_ids, self.num_classes, "confusion update: the prediction")
        index = target_ids * self.num_classes + prediction_ids
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)

    def reset(self) -> None:
        self.matrix.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place) and return self."""
        self._check_compatible(other)
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self._check_compatible(other)
        return ConfusionMatrix.from_matrix(self.matrix + other.matrix.to(self.matrix.device))

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())})"

    def _valid_mask(self, valid: Any, target: torch.Tensor) -> torch.Tensor:
        """``valid`` as a boolean tensor beside ``target`` (every pixel when ``None``)."""
        if valid is None:
            return torch.ones_like(target, dtype=torch.bool)
        valid = as_tensor(valid, device=target.device)
        if valid.shape != target.shape:
            raise ValueError(
                f"confusion update: valid shape {tuple(valid.shape)} differs from target shape "
                f"{tuple(target.shape)}"
            )
        return valid.bool()

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise ValueError(
                f"can only merge confusion matrices of {self.num_classes} classes; got {other!r}"
            )
