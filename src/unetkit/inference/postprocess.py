"""Optional clean-up of predicted masks, class by class: small specks, extra components, holes.

Rules, applied to each selected class in turn (``classes``, default every foreground class present
in the mask, in increasing order), and within a class in this order:

1. ``min_size``: connected components with fewer than ``min_size`` pixels become background (0).
   Background is the conventional choice: a speck is more likely a false detection than a piece
   of a neighbouring object, and it needs no arbitration between several neighbours.
2. ``keep_largest``: every component but the largest becomes background; a tie goes to the
   component met first in row-major order.
3. ``fill_holes``: background pixels enclosed by the class (not connected to the image border
   through non-class pixels) become the class. Pixels of *other* classes inside it are kept: a
   nucleus inside a cell is a prediction, not a hole.

Components are 8-connected (diagonal neighbours touch) and holes 4-connected, the pairing under
which an object's outline encloses exactly the holes one sees. Background (0) cannot be selected
(removed pixels already become background), and the ignore value 255 is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unetkit.tasks import IGNORE_INDEX

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostProcessing:
    """Which clean-ups to apply to which classes; the defaults change nothing."""

    min_size: int = 0
    keep_largest: bool = False
    fill_holes: bool = False
    classes: tuple[int, ...] | None = None  # None: every foreground class in the mask

    def __post_init__(self) -> None:
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int):
            raise ValueError(f"min_size must be a whole number of pixels; got {self.min_size!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be 0 (keep all) or more pixels; got {self.min_size}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            outside = [c for c in self.classes if not 0 < c < IGNORE_INDEX]
            if outside:
                raise ValueError(
                    f"post-processing classes must be foreground class ids 1..254; got {outside} "
                    f"(background 0 is what removed pixels become)"
                )

    @property
    def changes_anything(self) -> bool:
        """Whether :meth:`apply` can change a mask at all."""
        return self.min_size > 1 or self.keep_largest or self.fill_holes

    def check_classes(self, num_classes: int) -> None:
        """Fail early, with the fix, when ``classes`` names ids the model cannot predict."""
        unknown = [c for c in self.classes or () if c >= num_classes]
        if unknown:
            raise ValueError(
                f"post-processing classes {unknown} do not exist: the model predicts class ids "
                f"0..{num_classes - 1}"
            )

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """A cleaned copy of the class-id mask ``mask`` (H, W), of the same dtype."""
        if mask.ndim != 2:
            raise ValueError(f"expected one class-id mask (H, W); got shape {mask.shape}")
        cleaned = mask.copy()
        if not self.changes_anything:
            return cleaned
        for label in self._selected(mask):
            self._clean_class(cleaned, label)
        return cleaned

    def _selected(self, mask: np.ndarray) -> tuple[int, ...]:
        if self.classes is not None:
            return self.classes
        present = np.unique(mask)
        return tuple(int(c) for c in present if 0 < c < IGNORE_INDEX)

    def _clean_class(self, mask: np.ndarray, label: int) -> None:
        """Apply the clean-ups to class ``label`` of ``mask`` in place."""
        if self.min_size > 1 or self.keep_largest:
            components, count = ndimage.label(mask == label, structure=EIGHT_CONNECTED)
            sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
            mask[~np.isin(components, _kept_components(sizes, self)) & (components > 0)] = 0
        if self.fill_holes:
            enclosed = ndimage.binary_fill_holes(mask == label)
            mask[enclosed & (mask == 0)] = label


def _kept_components(sizes: np.ndarray, options: PostProcessing) -> np.ndarray:
    """Labels (1-based) of the components that survive ``min_size`` and ``keep_largest``."""
    labels = np.flatnonzero(sizes >= options.min_size) + 1
    if options.keep_largest and labels.size:
        labels = labels[[np.argmax(sizes[labels - 1])]]
    return labels
