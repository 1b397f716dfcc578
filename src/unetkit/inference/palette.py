"""Class colours and overlays; they live in :mod:`unetkit.palette`, re-exported here."""

from __future__ import annotations

from unetkit.palette import class_palette, colourise, overlay

__all__ = ["class_palette", "colourise", "overlay"]
