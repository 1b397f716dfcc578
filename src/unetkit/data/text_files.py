"""Text files a dataset comes with (class names, split lists, colour maps), read as UTF-8.

A file saved in another encoding (Latin-1 from an old tool, UTF-16 from Windows Notepad) would
otherwise stop the run with Python's bare ``UnicodeDecodeError``, which names no file.
"""

from __future__ import annotations

from pathlib import Path

from unetkit.data.sources import DataError


def read_text(path: str | Path, what: str) -> str:
    """The text of ``path`` (``what`` it is, e.g. "split list"), or a ``DataError`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{what} {path} is not UTF-8 text ({error})",
            fix="save it as UTF-8 (plain text), e.g. with any editor's 'Save as... UTF-8'",
        ) from error
