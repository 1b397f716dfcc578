"""Colour-coded masks: a file that says which RGB colour stands for which class.

Some datasets store masks as RGB pictures (CamVid's original 32-class release, many annotation
tools' exports). ``data.colour_map`` names a file that turns such colours into class ids. Two
formats are read:

* text, one class per line, in class-id order (the first line is class 0)::

      # R G B name          (or R,G,B name; blank lines and lines starting with # are skipped)
      0 0 0 background
      128,0,0 building
      255 255 255 ignore

* JSON, an object whose keys are the names in class-id order: ``{"background": [0, 0, 0],
  "building": [128, 0, 0]}``. A file whose text starts with ``{`` is read as JSON.

The name ``ignore`` (any case) is reserved: its colour becomes 255 (ignore) and it is not a class,
so it takes no class id; it may appear on several lines. A mask pixel whose colour is not in the
map is an error that names the mask file and the colour.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.data.sources import DataError
from unetkit.data.text_files import read_text
from unetkit.tasks import IGNORE_INDEX

IGNORE_NAME = "ignore"
FORMAT_HELP = (
    "write one line per class in class-id order, 'R G B name' or 'R,G,B name' (0..255 each), "
    'or a JSON object {"name": [R, G, B], ...}; the name "ignore" marks colours to ignore'
)
_LINE = re.compile(r"^(\d{1,3})\s*[,\s]\s*(\d{1,3})\s*[,\s]\s*(\d{1,3})(?:\s*,\s*|\s+)(\S.*?)\s*$")

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ColourMap:
    """RGB colours and the class id each stands for (255 = ignore), read from ``source``."""

    colours: tuple[Colour, ...]
    ids: tuple[int, ...]
    class_names: tuple[str, ...]
    source: str

    def decode(self, rgb: np.ndarray, where: str | Path) -> np.ndarray:
        """The ``H x W`` uint8 class-id mask of an ``H x W x 3`` colour mask read from ``where``.

        A colour missing from the map raises :class:`DataError` naming ``where`` and the colour.
        """
        keys = _colour_keys(rgb)
        seen, inverse = np.unique(keys, return_inverse=True)
        id_of = dict(zip((_key(c) for c in self.colours), self.ids, strict=True))
        unknown = [int(k) for k in seen if int(k) not in id_of]
        if unknown:
            shown = ", ".join(str(_colour(k)) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise DataError(
                f"{where}: mask colour(s) {shown}{more} (R, G, B) are not in the colour map "
                f"{self.source}",
                fix="add a line for each colour to the colour map (name it 'ignore' to exclude "
                "it), or fix the mask",
            )
        lookup = np.array([id_of[int(k)] for k in seen], dtype=np.uint8)
        return lookup[inverse.reshape(keys.shape)]


def read_colour_map(path: str | Path) -> ColourMap:
    """The :class:`ColourMap` in the file at ``path`` (text or JSON; see the module docstring)."""
    map_path = Path(path)
    if not map_path.is_file():
        raise DataError(f"colour map {map_path} does not exist", fix=FORMAT_HELP)
    text = read_text(map_path, "colour map")
    entries = (
        _parse_json(text, map_path)
        if text.lstrip().startswith("{")
        else _parse_text(text, map_path)
    )
    return _build(entries, map_path)


def _parse_text(text: str, path: Path) -> list[tuple[str, Colour]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            raise DataError(f"{path} line {number}: cannot read {stripped!r}", fix=FORMAT_HELP)
        red, green, blue, name = match.groups()
        entries.append((name, _checked_colour([red, green, blue], f"{path} line {number}")))
    return entries


def _parse_json(text: str, path: Path) -> list[tuple[str, Colour]]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error})", fix=FORMAT_HELP) from error
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: expected a JSON object of name: [R, G, B]", fix=FORMAT_HELP)
    return [
        (name, _checked_colour(value, f"{path} entry {name!r}")) for name, value in loaded.items()
    ]


def _checked_colour(values: object, where: str) -> Colour:
    numbers = list(values) if isinstance(values, list | tuple) else []
    try:
        colour = tuple(int(v) for v in numbers if not isinstance(v, bool))
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or len(numbers) != 3 or not all(0 <= c <= 255 for c in colour):
        raise DataError(f"{where}: {values!r} is not an R, G, B colour of 0..255", fix=FORMAT_HELP)
    return colour  # type: ignore[return-value]


def _build(entries: list[tuple[str, Colour]], path: Path) -> ColourMap:
    names: list[str] = []
    ids: list[int] = []
    first_of: dict[Colour, str] = {}
    for name, colour in entries:
        if colour in first_of:
            raise DataError(
                f"{path}: colour {colour} is given to both {first_of[colour]!r} and {name!r}",
                fix="give every colour one line",
            )
        first_of[colour] = name
        if name.lower() == IGNORE_NAME:
            ids.append(IGNORE_INDEX)
            continue
        if name in names:
            raise DataError(
                f"{path}: class name {name!r} appears twice", fix="name every class once"
            )
        ids.append(len(names))
        names.append(name)
    if len(names) < 2:
        raise DataError(
            f"{path}: names {len(names)} class(es); a colour map needs at least two "
            f"(background and one class)",
            fix=FORMAT_HELP,
        )
    colours = tuple(colour for _, colour in entries)
    return ColourMap(colours, tuple(ids), tuple(names), str(path))


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    channels = rgb.astype(np.int32)
    return (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]


def _key(colour: Colour) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


def _colour(key: int) -> Colour:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255
