"""Predict masks for files on disk: a file, a folder (recursively) or a glob pattern.

What is written per image, next to each other: ``<name>.png`` (class ids, the input's size),
``<name>_colour.png`` (the mask in the class palette, unless ``save_colour`` is off),
``<name>_overlay.png`` (with ``save_overlay``) and ``<name>_probs.npz`` (with ``save_probs``: key
``probs``, float16 ``(C, H, W)`` class probabilities, and key ``class_names``).

With ``save_uncertainty``: ``<name>_entropy.png`` (the normalised predictive entropy, bright =
unsure, :func:`~unetkit.metrics.uncertainty.uncertainty_image`) and ``<name>_entropy.npy``
(float16 ``(H, W)`` in [0, 1]); for a PyTorch ensemble also ``<name>_mutual_information.png`` and
``.npy`` (where the members disagree), each member run through the ensemble's own path. A
multi-label task's maps are the mean over its labels of each label's binary entropy. An exported
ensemble is one graph: entropy only.

``summary.csv`` in the output folder has one row per input, in input order: ``input`` (the path as
given), ``status`` (``written`` or ``skipped``), ``mask`` (relative to the output folder),
``height``, ``width``, one ``pixels/<class name>`` column per class (pixels of the written mask
with that class id), with ``save_uncertainty`` ``uncertainty`` (the image's mean entropy) and for
an ensemble ``mutual_information`` (its mean), and ``error`` (why a file was skipped). An empty
cell is an undefined value: a skipped file has no mask, size or areas, a written one no error.

A multi-label task writes one mask per label instead of the class-id mask:
``<out>/<label>/<name>.png`` (0 = absent, 255 = present); ``<name>_colour.png`` and the overlay
show every label present at a pixel by the blend of their colours; ``mask`` in ``summary.csv`` is
the path below each label's folder and ``pixels/<label>`` the pixels where the label is present.

Where the masks go. One input file gives ``<out>/<stem>.png``. Several inputs (a folder or a glob)
keep their layout below the deepest folder that holds them all, so ``in/a/x.png`` and
``in/b/x.jpg`` become ``<out>/a/x.png`` and ``<out>/b/x.png`` rather than overwriting each other.
Inputs that would still share an output file keep their extension in its name: ``x.png`` and
``x.jpg`` in one folder give ``x.png.png`` and ``x.jpg.png``. Names are compared ignoring case (as
macOS and Windows do) and include every file written per image, so an input ``x_overlay.png`` or
``x_colour.png`` cannot overwrite a file of ``x.png`` either. Should names clash even with their
extension (an input literally named ``x.png_colour.png`` beside ``x.png`` and ``x.jpg``), the
input's position in the list is added too: ``x.png~0.png``. Hidden files and folders (``.name``)
are not searched.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from unetkit.data.image_files import IMAGE_EXTENSIONS, read_image
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.uncertainty import (
    image_uncertainty,
    mutual_information,
    predictive_entropy,
    uncertainty_image,
)
from unetkit.palette import blend_labels, colourise, label_overlay, overlay

OVERLAY_SUFFIX = "_overlay"
COLOUR_SUFFIX = "_colour"
PROBS_SUFFIX = "_probs"
ENTROPY_SUFFIX = "_entropy"
INFORMATION_SUFFIX = "_mutual_information"
SUMMARY_FILE = "summary.csv"
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass
class PredictionReport:
    """What was written (mask paths), which inputs were skipped and why, and the summary file."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    summary: Path | None = None


@dataclass(frozen=True)
class _Outputs:
    """Which files are written per image besides the mask."""

    overlay: bool = False
    colour: bool = False
    probs: bool = False
    uncertainty: bool = False

    def endings(self) -> list[str]:
        """How the name of each file written per image ends, after the image's stem."""
        suffixes = (ENTROPY_SUFFIX, INFORMATION_SUFFIX)
        maps = [f"{suffix}{kind}" for suffix in suffixes for kind in (".png", ".npy")]
        chosen = [
            (True, ".png"),
            (self.overlay, f"{OVERLAY_SUFFIX}.png"),
            (self.colour, f"{COLOUR_SUFFIX}.png"),
            (self.probs, f"{PROBS_SUFFIX}.npz"),
            *((self.uncertainty, ending) for ending in maps),
        ]
        return [ending for wanted, ending in chosen if wanted]


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


def output_paths(
    inputs: Sequence[Path],
    with_overlays: bool = False,
    with_colours: bool = False,
    with_probs: bool = False,
    with_uncertainty: bool = False,
) -> list[Path]:
    """The mask file of each input, relative to the output folder (see the module docstring).

    The flags name the other files written per image, so that none of them can collide either.
    """
    endings = _Outputs(with_overlays, with_colours, with_probs, with_uncertainty).endings()
    candidates = [
        [stem, stem.with_name(source.name), stem.with_name(f"{source.name}~{index}")]
        for index, (source, stem) in enumerate(zip(inputs, _relative_stems(inputs), strict=True))
    ]
    levels = [0] * len(inputs)
    while True:
        stems = [options[level] for options, level in zip(candidates, levels, strict=True)]
        clashing = _clashing(stems, endings)
        # Stems ending in "~<index>" never clash with each other, so the loop ends.
        upgradable = [i for i in clashing if levels[i] < 2]
        if not upgradable:
            return [stem.with_name(f"{stem.name}.png") for stem in stems]
        for i in upgradable:
            levels[i] += 1


def overlay_path(mask_path: Path) -> Path:
    """Where the overlay that goes with ``mask_path`` is written."""
    return mask_path.with_name(f"{mask_path.stem}{OVERLAY_SUFFIX}.png")


def colour_path(mask_path: Path) -> Path:
    """Where the palette picture of ``mask_path`` is written."""
    return mask_path.with_name(f"{mask_path.stem}{COLOUR_SUFFIX}.png")


def probs_path(mask_path: Path) -> Path:
    """Where the probabilities behind ``mask_path`` are written."""
    return mask_path.with_name(f"{mask_path.stem}{PROBS_SUFFIX}.npz")


def uncertainty_path(mask_path: Path, suffix: str = ENTROPY_SUFFIX, kind: str = ".npy") -> Path:
    """Where an uncertainty map of ``mask_path`` is written (``suffix``: entropy or mutual
    information; ``kind``: ``.npy`` or ``.png``)."""
    return mask_path.with_name(f"{mask_path.stem}{suffix}{kind}")


def predict_files(
    segmenter: Segmenter,
    inputs: Iterable[Path],
    out_dir: Path,
    save_overlay: bool = False,
    progress: bool = True,
    *,
    save_colour: bool = True,
    save_probs: bool = False,
    summary: bool = True,
    save_uncertainty: bool = False,
) -> PredictionReport:
    """Write a mask (class ids, the input's size) per input, the files asked for, and a summary.

    Images are read and predicted ``segmenter.batch_size`` at a time; with ``save_probs`` or
    ``save_uncertainty`` one pass gives both probabilities and masks. An unreadable file is
    reported and skipped (and listed in ``summary.csv``); the others are still written.
    """
    sources = list(inputs)
    wanted = _Outputs(save_overlay, save_colour, save_probs, save_uncertainty)
    names = output_paths(sources, save_overlay, save_colour, save_probs, save_uncertainty)
    targets = [out_dir / p for p in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictionReport(summary=out_dir / SUMMARY_FILE if summary else None)
    bar = tqdm(total=len(sources), desc="predict", unit="img", disable=not progress)
    scores = _uncertainty_columns(segmenter) if save_uncertainty else []
    with _summary_writer(report.summary, segmenter.class_names, scores) as write_row:
        for start in range(0, len(sources), segmenter.batch_size):
            chunk = slice(start, start + segmenter.batch_size)
            items = _predict_chunk(segmenter, sources[chunk], targets[chunk], wanted)
            for item in items:
                if item.image is None:
                    report.skipped.append((item.source, item.error))
                else:
                    report.written.extend(_write(item, segmenter, wanted, out_dir))
                write_row(_summary_row(item, out_dir, segmenter.class_names))
            bar.update(len(items))
    bar.close()
    return report


@dataclass
class _Item:
    """One input on its way through: read, predicted, written (or skipped with an error)."""

    source: Path
    target: Path
    image: np.ndarray | None = None
    error: str | None = None
    mask: np.ndarray | None = None
    probs: np.ndarray | None = None
    members: np.ndarray | None = None  # an ensemble's member probabilities (M, C, H, W)
    scores: dict[str, float | None] = field(default_factory=dict)  # image uncertainty scores


def _read(source: Path, target: Path, in_channels: int) -> _Item:
    try:
        return _Item(source, target, image=read_image(source, in_channels))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        return _Item(source, target, error=str(error))


def _predict_chunk(
    segmenter: Segmenter, sources: list[Path], targets: list[Path], wanted: _Outputs
) -> list[_Item]:
    """Read the images and predict the readable ones (probabilities too when asked, same pass;
    an ensemble's members one by one when their disagreement is asked)."""
    in_channels = segmenter.preprocessing.in_channels
    items = [_read(s, t, in_channels) for s, t in zip(sources, targets, strict=True)]
    readable = [item for item in items if item.image is not None]
    images = [item.image for item in readable]
    if wanted.uncertainty and _runs_members(segmenter):
        for item, (members, probs, mask) in zip(
            readable, segmenter.predict_members(images), strict=True
        ):
            item.members, item.probs, item.mask = members, probs, mask
    elif wanted.probs or wanted.uncertainty:
        for item, (probs, mask) in zip(readable, segmenter.predict_with_proba(images), strict=True):
            item.probs, item.mask = probs, mask
    else:
        for item, mask in zip(readable, segmenter.predict(images), strict=True):
            item.mask = mask
    return items


def label_mask_paths(target: Path, out_dir: Path, label_names: Sequence[str]) -> list[Path]:
    """Where a multi-label task writes the masks of the image whose mask would be ``target``:
    ``<out>/<label>/<target relative to out>``."""
    relative = target.relative_to(out_dir)
    return [out_dir / name / relative for name in label_names]


def _write(item: _Item, segmenter: Segmenter, wanted: _Outputs, out_dir: Path) -> list[Path]:
    """Write the files of one image; returns its mask files."""
    num_classes = segmenter.task.num_classes
    multilabel = segmenter.task.multilabel
    item.target.parent.mkdir(parents=True, exist_ok=True)
    masks = [item.target]
    if multilabel:
        masks = label_mask_paths(item.target, out_dir, segmenter.class_names)
        for path, label in zip(masks, item.mask, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((label == 1).astype(np.uint8) * 255).save(path)
    else:
        Image.fromarray(item.mask).save(item.target)
    if wanted.colour:
        colours = blend_labels(item.mask) if multilabel else colourise(item.mask, num_classes)
        Image.fromarray(colours).save(colour_path(item.target))
    if wanted.overlay:
        picture = (
            label_overlay(item.image, item.mask)
            if multilabel
            else overlay(item.image, item.mask, num_classes)
        )
        Image.fromarray(picture).save(overlay_path(item.target))
    if wanted.probs:
        np.savez_compressed(
            probs_path(item.target),
            probs=item.probs.astype(np.float16),
            class_names=np.asarray(segmenter.class_names, dtype=str),
        )
    if wanted.uncertainty:
        _write_uncertainty(item, multilabel)
    return masks


def _runs_members(segmenter: Segmenter) -> bool:
    """Whether ``segmenter`` is a PyTorch ensemble whose members can run one by one."""
    return getattr(segmenter.model, "members", None) is not None


def _uncertainty_columns(segmenter: Segmenter) -> list[str]:
    """The per-image uncertainty columns of ``summary.csv``."""
    return ["uncertainty", "mutual_information"] if _runs_members(segmenter) else ["uncertainty"]


def _write_uncertainty(item: _Item, multilabel: bool) -> None:
    """The entropy map (and an ensemble's mutual information) of one image, as a picture and as
    float16, and their image means into ``item.scores``."""
    entropy = predictive_entropy(_with_class_axis(item.probs, multilabel))
    maps = {ENTROPY_SUFFIX: ("uncertainty", entropy)}
    if item.members is not None:
        members = _with_class_axis(item.members, multilabel)
        maps[INFORMATION_SUFFIX] = ("mutual_information", mutual_information(members))
    for suffix, (column, values) in maps.items():
        values = values.mean(axis=0) if multilabel else values  # the mean over labels
        np.save(uncertainty_path(item.target, suffix, ".npy"), values.astype(np.float16))
        picture = uncertainty_image(values)
        Image.fromarray(picture).save(uncertainty_path(item.target, suffix, ".png"))
        item.scores[column] = image_uncertainty(values)


def _with_class_axis(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    """Probabilities with the class axis third from last, as the uncertainty maps take them:
    a multi-label task's labels ``(..., L, H, W)`` become binary pairs ``(..., L, 2, H, W)``."""
    return np.stack([1.0 - probs, probs], axis=-3) if multilabel else probs


def _summary_row(item: _Item, out_dir: Path, class_names: Sequence[str]) -> dict[str, Any]:
    """The ``summary.csv`` row of one input; None where a value is undefined."""
    row: dict[str, Any] = {"input": str(item.source), "error": item.error}
    if item.mask is None:
        return {**row, "status": "skipped"}
    if item.mask.ndim == 3:  # multi-label: the pixels where each label is present
        areas = (item.mask == 1).sum(axis=(1, 2))
    else:
        areas = np.bincount(item.mask.ravel(), minlength=len(class_names))[: len(class_names)]
    return {
        **row,
        "status": "written",
        "mask": item.target.relative_to(out_dir).as_posix(),
        "height": item.mask.shape[-2],
        "width": item.mask.shape[-1],
        **{f"pixels/{name}": int(area) for name, area in zip(class_names, areas, strict=True)},
        **item.scores,
    }


@contextmanager
def _summary_writer(
    path: Path | None, class_names: Sequence[str], scores: Sequence[str] = ()
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function that appends a row to ``path`` (or does nothing when ``path`` is None)."""
    if path is None:
        yield lambda row: None
        return
    columns = ["input", "status", "mask", "height", "width"]
    columns += [f"pixels/{name}" for name in class_names] + list(scores) + ["error"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        yield lambda row: writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _clashing(stems: list[Path], endings: list[str]) -> set[int]:
    """Indices of the stems whose files (stem + each ending) share a name with another's."""
    names = [[_key(stem.with_name(stem.name + ending)) for ending in endings] for stem in stems]
    counts = Counter(name for group in names for name in group)
    return {i for i, group in enumerate(names) if any(counts[name] > 1 for name in group)}


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


def _key(name: Path) -> str:
    return name.as_posix().casefold()


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
