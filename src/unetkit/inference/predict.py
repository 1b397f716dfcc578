"""Predict masks for files on disk: a file, a folder (recursively) or a glob pattern.

Where the masks go. One input file gives ``<out>/<stem>.png``. Several inputs (a folder or a glob)
keep their layout below the deepest folder that holds them all, so ``in/a/x.png`` and
``in/b/x.jpg`` become ``<out>/a/x.png`` and ``<out>/b/x.png`` rather than overwriting each other.
Inputs that would still share an output file keep their extension in its name: ``x.png`` and
``x.jpg`` in one folder give ``x.png.png`` and ``x.jpg.png``. Names are compared ignoring case (as
macOS and Windows do) and include the overlays, so an input ``x_overlay.png`` cannot overwrite the
overlay of ``x.png`` either. Hidden files and folders (``.name``) are not searched.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from unetkit.data.folder import IMAGE_EXTENSIONS, read_image
from unetkit.inference.palette import overlay
from unetkit.inference.segmenter import Segmenter

OVERLAY_SUFFIX = "_overlay"
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass
class PredictionReport:
    """What was written, and which inputs were skipped and why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_inputs(spec: str | Path) -> list[Path]:
    """Image files named by ``spec``: one file, every image below a folder, or a glob."""
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if not _is_hidden(p.relative_to(path))]
    elif _GLOB_CHARACTERS & set(spec):
        found = [Path(p) for p in glob.glob(spec, recursive=True)]
    else:
        raise FileNotFoundError(
            f"{spec!r} does not exist; give an image file, a folder or a glob such as "
            f"'photos/**/*.jpg'"
        )
    images = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(
            f"no images found at {spec!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return images


def output_paths(inputs: Sequence[Path], with_overlays: bool = False) -> list[Path]:
    """The mask file of each input, relative to the output folder (see the module docstring)."""
    stems = _relative_stems(inputs)
    counts = Counter(_key(name) for stem in stems for name in _names(stem, with_overlays))
    paths = []
    for source, stem in zip(inputs, stems, strict=True):
        if any(counts[_key(name)] > 1 for name in _names(stem, with_overlays)):
            stem = stem.with_name(source.name)
        paths.append(stem.with_name(f"{stem.name}.png"))
    return paths


def overlay_path(mask_path: Path) -> Path:
    """Where the overlay that goes with ``mask_path`` is written."""
    return mask_path.with_name(f"{mask_path.stem}{OVERLAY_SUFFIX}.png")


def predict_files(
    segmenter: Segmenter,
    inputs: Iterable[Path],
    out_dir: Path,
    save_overlay: bool = False,
    progress: bool = True,
) -> PredictionReport:
    """Write a mask (class ids, the input's size) per input and optionally its overlay.

    Images are read and predicted ``segmenter.batch_size`` at a time. An unreadable file is
    reported and skipped; the others are still written.
    """
    sources = list(inputs)
    targets = [out_dir / p for p in output_paths(sources, save_overlay)]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictionReport()
    bar = tqdm(total=len(sources), desc="predict", unit="img", disable=not progress)
    step = segmenter.batch_size
    for start in range(0, len(sources), step):
        chunk = slice(start, start + step)
        batch = _read_batch(sources[chunk], targets[chunk], segmenter.preprocessing.in_channels)
        report.skipped.extend(batch.skipped)
        masks = segmenter.predict(batch.images)
        for image, mask, target in zip(batch.images, masks, batch.targets, strict=True):
            _write(image, mask, target, segmenter.task.num_classes, save_overlay)
            report.written.append(target)
        bar.update(len(sources[chunk]))
    bar.close()
    return report


@dataclass
class _Batch:
    images: list[np.ndarray] = field(default_factory=list)
    targets: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _read_batch(sources: list[Path], targets: list[Path], in_channels: int) -> _Batch:
    batch = _Batch()
    for source, target in zip(sources, targets, strict=True):
        try:
            batch.images.append(read_image(source, in_channels))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            batch.skipped.append((source, str(error)))
            continue
        batch.targets.append(target)
    return batch


def _write(
    image: np.ndarray, mask: np.ndarray, target: Path, num_classes: int, save_overlay: bool
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(target)
    if save_overlay:
        Image.fromarray(overlay(image, mask, num_classes)).save(overlay_path(target))


def _relative_stems(inputs: Sequence[Path]) -> list[Path]:
    """Each input's stem below the deepest folder common to all inputs (flat for one input)."""
    folders = [os.path.abspath(p.parent) for p in inputs]
    try:
        root = os.path.commonpath(folders) if folders else ""
    except ValueError:  # no common folder at all (paths on different drives)
        return [Path(p.stem) for p in inputs]
    return [
        Path(os.path.relpath(folder, root)) / p.stem
        for folder, p in zip(folders, inputs, strict=True)
    ]


def _names(stem: Path, with_overlays: bool) -> list[Path]:
    return [stem, stem.with_name(stem.name + OVERLAY_SUFFIX)] if with_overlays else [stem]


def _key(name: Path) -> str:
    return name.as_posix().casefold()


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
