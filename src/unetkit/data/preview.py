"""A picture of a dataset for a person: a grid of samples with their masks overlaid.

Looking at a few samples catches what no check can: masks shifted against their images, classes
swapped, an augmentation that destroys thin structures. Samples are spread evenly over the split,
each titled with its name and size, and a legend names the class colours (the palette shared
with prediction overlays). Drawing uses matplotlib's Agg canvas, so no display is needed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from unetkit.data.sources import DataError, SampleSource
from unetkit.palette import class_palette, label_overlay, overlay
from unetkit.tasks import IGNORE_INDEX

Transform = Callable[..., dict[str, Any]]

_CELL_INCHES = 2.6
_LEGEND_INCHES = 0.9
_TITLE_CHARS = 30
_MAX_LEGEND_CLASSES = 24


def preview_indices(length: int, count: int) -> list[int]:
    """Up to ``count`` sample positions spread evenly over ``0 .. length - 1``, first and last
    included."""
    if length <= 0 or count <= 0:
        return []
    if count >= length:
        return list(range(length))
    return sorted({round(i) for i in np.linspace(0, length - 1, count)})


def sample_grid(
    source: SampleSource,
    class_names: list[str],
    count: int = 16,
    transform: Transform | None = None,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """A figure of up to ``count`` samples of ``source``, masks overlaid, with a class legend.

    ``transform`` (an Albumentations pipeline called as ``transform(image=, mask=)``) is applied
    first, seeded with ``seed`` so the same call draws the same augmentations.
    """
    indices = preview_indices(len(source), count)
    if not indices:
        raise DataError("there are no samples to show; the split is empty")
    _seed(transform, seed)
    samples = [_sample(source, index, transform) for index in indices]
    columns = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / columns)
    figure = Figure(
        figsize=(columns * _CELL_INCHES, rows * _CELL_INCHES + _LEGEND_INCHES), layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    num_classes = len(class_names)
    for ax, (name, image, mask) in zip(axes, samples, strict=False):
        picture = (
            label_overlay(image, mask) if mask.ndim == 3 else overlay(image, mask, num_classes)
        )
        ax.imshow(picture)
        ax.set_title(f"{_shorten(name)}\n{mask.shape[-2]}x{mask.shape[-1]}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    masks = [mask for _, _, mask in samples]
    figure.legend(
        handles=_legend_handles(class_names, masks),
        loc="outside lower center",
        ncol=min(6, num_classes + 1),
        fontsize=8,
        frameon=False,
    )
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_sample_grid(figure: Figure, out: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``out`` (folders created) and return the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _seed(transform: Transform | None, seed: int) -> None:
    set_state = getattr(transform, "set_random_state", None)
    if set_state is not None:
        set_state(np.random.default_rng(seed), random.Random(seed))


def _sample(
    source: SampleSource, index: int, transform: Transform | None
) -> tuple[str, np.ndarray, np.ndarray]:
    image, mask = source.load(index)
    if image.shape[:2] != mask.shape[-2:]:  # class ids (H, W) or label maps (L, H, W)
        raise DataError(
            f"{source.describe(index)}: image is {image.shape[0]}x{image.shape[1]} but its mask "
            f"is {'x'.join(map(str, mask.shape))}, so the mask cannot be overlaid",
            fix="run `unetkit data check` with the same flags to list every such sample",
        )
    if transform is not None:
        from unetkit.data.transforms import augment

        image, mask = augment(transform, image, mask)
    return source.names[index], image, mask


def _legend_handles(class_names: list[str], masks: list[np.ndarray]) -> list[Patch]:
    """One patch per class (only the classes shown, when there are many), and ignore if shown;
    of multi-label masks, one per label (label ``l`` has class colour ``l + 1``)."""
    if masks and masks[0].ndim == 3:
        colours = class_palette(len(class_names) + 1)[1:] / 255.0
        return [
            Patch(facecolor=colour, edgecolor="grey", label=name)
            for colour, name in zip(colours, class_names, strict=True)
        ]
    present = set(np.unique(np.concatenate([m.reshape(-1) for m in masks])).tolist())
    colours = class_palette(len(class_names)) / 255.0
    handles = []
    for class_id, name in enumerate(class_names):
        if len(class_names) > _MAX_LEGEND_CLASSES and class_id not in present:
            continue
        label = f"{class_id} {name}" + (" (not tinted)" if class_id == 0 else "")
        handles.append(Patch(facecolor=colours[class_id], edgecolor="grey", label=label))
    if IGNORE_INDEX in present:
        handles.append(Patch(facecolor="white", edgecolor="grey", label=f"{IGNORE_INDEX} ignore"))
    return handles


def _shorten(name: str) -> str:
    return name if len(name) <= _TITLE_CHARS else name[: _TITLE_CHARS - 1] + "…"
