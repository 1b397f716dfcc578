"""Predict masks for files on disk: a file, a folder (recursively) or a glob pattern."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from unetkit.data.folder import IMAGE_EXTENSIONS, read_image
from unetkit.inference.palette import overlay
from unetkit.inference.segmenter import Segmenter


@dataclass
class PredictionReport:
    """What was written, and which inputs were skipped and why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_inputs(spec: str) -> list[Path]:
    """Image files named by ``spec``: one file, every image below a folder, or a glob."""
    path = Path(spec)
    if path.is_file():
        return [path]
    found = path.rglob("*") if path.is_dir() else glob.glob(spec, recursive=True)
    files = (Path(p) for p in found)
    images = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(
            f"no images found at {spec!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return images


def predict_files(
    segmenter: Segmenter,
    inputs: Iterable[Path],
    out_dir: Path,
    save_overlay: bool = False,
    progress: bool = True,
) -> PredictionReport:
    """Write ``<stem>.png`` (class ids, the input's size) and optionally ``<stem>_overlay.png``.

    An unreadable file is reported and skipped; the others are still written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictionReport()
    channels = segmenter.preprocessing.in_channels
    for path in tqdm(list(inputs), desc="predict", unit="img", disable=not progress):
        try:
            image = read_image(path, channels)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            report.skipped.append((path, str(error)))
            continue
        mask = segmenter.predict(image)
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(mask).save(target)
        report.written.append(target)
        if save_overlay:
            picture = overlay(image, mask, segmenter.task.num_classes)
            Image.fromarray(picture).save(out_dir / f"{path.stem}_overlay.png")
    return report
