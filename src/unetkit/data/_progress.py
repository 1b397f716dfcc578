"""When to draw a progress bar for a pass over many files."""

from __future__ import annotations

PROGRESS_MIN_ITEMS = 200


def tqdm_disable(count: int, progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``count`` items: ``None`` shows the bar only on a terminal.

    ``progress=None`` means "automatic": a bar for long passes, shown only on a TTY.
    """
    if progress is None:
        return None if count >= PROGRESS_MIN_ITEMS else True
    return not progress
