"""Early stopping: end training once the monitored value has not improved for ``patience``
epochs in a row. ``patience`` None switches it off; an epoch whose monitored value is undefined
(None) counts as not improving."""

from __future__ import annotations


def stale_epochs(improved: bool, previous: int) -> int:
    """Epochs in a row without improvement, after an epoch that ``improved`` or not."""
    return 0 if improved else previous + 1


def patience_exhausted(stale: int, patience: int | None) -> bool:
    """Whether ``stale`` epochs without improvement use up ``patience``."""
    if patience is None:
        return False
    if patience < 1:
        raise ValueError(f"train.patience must be >= 1 epoch (or null for off); got {patience}")
    return stale >= patience
