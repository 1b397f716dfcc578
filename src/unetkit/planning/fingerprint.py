"""What the training split looks like, measured once: sizes, class shares and structure sizes.

A planner chooses the input size, resize-or-native-resolution tiles, the model and the loss from
this :class:`DatasetFingerprint`, so it must describe any data in the same terms: pets filling
half the picture, vessels or membranes a few pixels wide, tiny nuclei in pictures of mixed size.
Nothing here is tuned to one dataset; every number is a plain statistic of the masks.

Structure width is read off the Euclidean distance transform (EDT) of each class's pixels
(distance from a pixel centre to the nearest pixel centre outside the class), sampled on its
*ridge*: the pixels where the EDT is a 3 x 3 local maximum (the centre line of a strip, the centre
of a disc) and within 1.5 px of the largest EDT in their 15 x 15 neighbourhood (which drops the
tie points a pixel grid leaves at the tips of corners). ``2 x EDT`` there is the diameter of the
largest disc that fits at that point of the centre line. On a pixel grid this gives, for a
straight line ``w`` px wide, exactly ``w`` for even ``w`` and ``w + 1`` for odd ``w`` (slanted
lines fall within a pixel of that), and for a disc ``d`` px across about ``d - 1``; a blob gives
the widths of its widest parts. Sampling only the ridge keeps the estimate independent of shape:
the mean EDT over all of a structure's pixels would give ``w / 2`` for a strip but ``d / 3`` for
a disc. The image border counts as the edge of a structure, and ignore pixels as outside it.

Work per image is a few passes over each present class's bounding box (exact EDT, two
dilations, 8-connected labelling, all in OpenCV): a few ms for a 500 x 375 mask.

Fingerprints are cached as JSON next to the sample cache, keyed by the profiled samples'
:meth:`~unetkit.data.sources.SampleSource.fingerprint` strings, so an edited file re-profiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from unetkit.data.cache import default_cache_dir
from unetkit.data.sources import SampleSource
from unetkit.tasks import IGNORE_INDEX

FINGERPRINT_VERSION = "2"
THIN_PERCENTILE = 10.0
_NEIGHBOURHOOD = np.ones((3, 3), dtype=np.uint8)
_RIDGE_WINDOW = 15
_RIDGE_TOLERANCE = 1.5


@dataclass(frozen=True)
class SizeStats:
    """Minimum, median and maximum of one per-image quantity (a size in px, or a share)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> SizeStats:
        """The spread of ``values``; all zeros when there are none."""
        if len(values) == 0:
            return cls(0.0, 0.0, 0.0)
        array = np.asarray(values, dtype=np.float64)
        return cls(float(array.min()), float(np.median(array)), float(array.max()))

    def format(self, scale: float = 1.0, spec: str = "g", unit: str = "") -> str:
        """``min / median / max`` with each value times ``scale``, for summaries."""
        values = (self.min, self.median, self.max)
        return " / ".join(f"{scale * value:{spec}}{unit}" for value in values)


@dataclass(frozen=True)
class ClassProfile:
    """One class over the profiled images; shape fields are ``None`` for background or absence.

    ``pixel_share``: the class's share of counted (not ignore) pixels over the split.
    ``image_share``: the share of images in which the class has at least one pixel.
    ``thickness_px``: typical width at native resolution, the median over images of the median
    ridge width (``2 x EDT`` on the centre line, see the module docstring) in that image; a long
    structure weighs by its length.
    ``thin_px``: the thin end, the 10th percentile of the ridge widths pooled over all images:
    a tenth of the class's centre line is narrower. Pooled ridge pixels, not per-object numbers,
    because a vessel tree is a single object whose thin branches a per-object figure would hide.
    ``object_area_px``: median area of the 8-connected components, pooled over images.
    ``objects_per_image``: median component count over the images where the class appears.
    """

    name: str
    pixel_share: float
    image_share: float
    thickness_px: float | None = None
    thin_px: float | None = None
    object_area_px: float | None = None
    objects_per_image: float | None = None


@dataclass(frozen=True)
class DatasetFingerprint:
    """What the training split holds, for a planner and for ``unetkit plan`` to show.

    ``classes[i]`` describes class id ``i`` (background included). ``foreground_share`` spreads
    each image's share of counted pixels that are not background. ``long_side_p90`` is the
    90th percentile of the images' longer sides: how far most images shrink when resized
    (one outlier, a 1600 px photo among 500 px ones, should not decide for all).
    """

    images: int
    total_images: int
    channels: int
    height: SizeStats
    width: SizeStats
    classes: list[ClassProfile]
    foreground_share: SizeStats
    version: str = field(default=FINGERPRINT_VERSION)
    long_side_p90: float = 0.0  # 0: unknown (then the largest image counts)

    @property
    def smallest_structure_px(self) -> float | None:
        """The thinnest foreground structure (``thin_px``, else ``thickness_px``): what a resize
        must not erase; ``None`` when no foreground class was seen."""
        widths = [_thin_end(profile) for profile in self.classes[1:]]
        known = [width for width in widths if width is not None]
        return min(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetFingerprint:
        """The inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a bad dict."""
        return cls(
            images=int(data["images"]),
            total_images=int(data["total_images"]),
            channels=int(data["channels"]),
            height=SizeStats(**data["height"]),
            width=SizeStats(**data["width"]),
            classes=[ClassProfile(**profile) for profile in data["classes"]],
            foreground_share=SizeStats(**data["foreground_share"]),
            version=str(data.get("version", FINGERPRINT_VERSION)),
            long_side_p90=float(data.get("long_side_p90", 0.0)),
        )

    def summary_lines(self) -> list[str]:
        """Human-readable lines: sizes, foreground share, a class table, the thinnest class."""
        sampled = "" if self.images == self.total_images else " (evenly spaced)"
        lines = [
            f"profiled {self.images} of {self.total_images} training images{sampled}, "
            f"{self.channels} channel(s)",
            f"image height {self.height.format()} px, width {self.width.format()} px "
            "(min / median / max)",
            f"foreground per image {self.foreground_share.format(100, '.1f', '%')} "
            "of labelled pixels (min / median / max)",
            *_class_table(self.classes),
        ]
        return [*lines, _thinnest_line(self.classes)]


def _thin_end(profile: ClassProfile) -> float | None:
    return profile.thin_px if profile.thin_px is not None else profile.thickness_px


def _class_table(classes: list[ClassProfile]) -> list[str]:
    width = max([len("class"), *(len(profile.name) for profile in classes)])
    header = (
        f"  {'id':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>7}  {'width':>8}  "
        f"{'thin':>8}  {'object':>10}  {'objects':>7}"
    )
    lines = [header]
    for class_id, p in enumerate(classes):
        lines.append(
            f"  {class_id:>3}  {p.name:<{width}}  {100 * p.pixel_share:>6.2f}%  "
            f"{100 * p.image_share:>6.1f}%  {_px(p.thickness_px):>8}  {_px(p.thin_px):>8}  "
            f"{_px(p.object_area_px, 'px2'):>10}  {_number(p.objects_per_image):>7}"
        )
    lines.append("  (width, thin: structure width and its 10th percentile; object: median area;")
    lines.append("   objects: median count per image where the class appears)")
    return lines


def _px(value: float | None, unit: str = "px") -> str:
    return "-" if value is None else f"{value:.4g} {unit}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _thinnest_line(classes: list[ClassProfile]) -> str:
    candidates = [(w, p) for p in classes[1:] if (w := _thin_end(p)) is not None]
    if not candidates:
        return "thinnest structure: none (no foreground pixels in the profiled images)"
    width, profile = min(candidates, key=lambda item: item[0])
    typical = _px(profile.thickness_px)
    return (
        f"thinnest structure: {profile.name}, a tenth of its centre line is under "
        f"{width:.3g} px wide (typical {typical}); a resize must keep it visible"
    )


@dataclass
class _ClassTally:
    """What one class has gathered so far over the images profiled."""

    pixels: int = 0
    images: int = 0
    image_thickness: list[float] = field(default_factory=list)
    ridge_widths: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def profile(self, name: str, total_pixels: int, total_images: int) -> ClassProfile:
        pixel_share = self.pixels / total_pixels if total_pixels else 0.0
        image_share = self.images / total_images if total_images else 0.0
        if not self.counts:
            return ClassProfile(name, pixel_share, image_share)
        widths = np.concatenate(self.ridge_widths)
        return ClassProfile(
            name=name,
            pixel_share=pixel_share,
            image_share=image_share,
            thickness_px=float(np.median(self.image_thickness)),
            thin_px=float(np.percentile(widths, THIN_PERCENTILE)),
            object_area_px=float(np.median(np.concatenate(self.areas))),
            objects_per_image=float(np.median(self.counts)),
        )


class _Profiler:
    """Accumulates a :class:`DatasetFingerprint` one ``(image, mask)`` at a time."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.tallies = [_ClassTally() for _ in range(num_classes)]
        self.sizes: list[tuple[int, int]] = []
        self.foreground: list[float] = []
        self.channels = 0

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Count ``mask``'s classes (255 = ignore is never counted) and measure their shapes."""
        self.sizes.append((int(mask.shape[0]), int(mask.shape[1])))
        self.channels = self.channels or (int(image.shape[2]) if image.ndim == 3 else 1)
        counts = np.bincount(mask.reshape(-1), minlength=IGNORE_INDEX + 1)[: self.num_classes]
        if counts.sum():
            self.foreground.append(float(counts[1:].sum() / counts.sum()))
        boxes = ndimage.find_objects(mask, max_label=self.num_classes - 1)
        for class_id in range(self.num_classes):
            self.tallies[class_id].pixels += int(counts[class_id])
            if counts[class_id]:
                self.tallies[class_id].images += 1
                if class_id > 0:
                    self._measure(self.tallies[class_id], mask[boxes[class_id - 1]] == class_id)

    @staticmethod
    def _measure(tally: _ClassTally, region: np.ndarray) -> None:
        widths, areas = structure_shape(region)
        tally.image_thickness.append(float(np.median(widths)))
        tally.ridge_widths.append(widths)
        tally.areas.append(areas)
        tally.counts.append(len(areas))

    def result(self, class_names: Sequence[str], total_images: int) -> DatasetFingerprint:
        total_pixels = sum(tally.pixels for tally in self.tallies)
        sizes = np.asarray(self.sizes, dtype=np.float64).reshape(-1, 2)
        classes = [
            tally.profile(name, total_pixels, len(self.sizes))
            for name, tally in zip(class_names, self.tallies, strict=True)
        ]
        return DatasetFingerprint(
            images=len(self.sizes),
            total_images=total_images,
            channels=self.channels,
            height=SizeStats.of(sizes[:, 0]),
            width=SizeStats.of(sizes[:, 1]),
            classes=classes,
            foreground_share=SizeStats.of(self.foreground),
            long_side_p90=float(np.percentile(sizes.max(axis=1), 90)) if len(sizes) else 0.0,
        )


def structure_shape(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge widths (``2 x EDT`` on the centre line) and 8-connected component areas.

    ``region`` is a boolean mask of one class, best cropped to its bounding box: the work is a
    few passes over its pixels. It is padded by one pixel so the image border is an edge. OpenCV
    computes the exact EDT (``DIST_MASK_PRECISE``) about ten times faster than SciPy.
    """
    padded = np.pad(region, 1).view(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    widths = 2.0 * distance[_ridge(padded > 0, distance)]
    _, _, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=8)
    return widths, stats[1:, cv2.CC_STAT_AREA].astype(np.int64)


def _ridge(inside: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Centre-line pixels: 3 x 3 maxima of the EDT that keep their width for a while.

    A pixel grid leaves ties of EDT 1 at the tips of corners, which pass the 3 x 3 test but are
    not thin structures; requiring the EDT to be within ``_RIDGE_TOLERANCE`` of the maximum over
    a ``_RIDGE_WINDOW`` square drops them at corners wider than about 25 degrees, where the EDT
    rises faster than 1.5 px over 7 px. A line keeps its whole centre line; only ridge pixels
    within a few px of a much wider part (a junction, a wider neighbour) are left out.
    """
    local = distance >= cv2.dilate(distance, _NEIGHBOURHOOD)
    wide = cv2.dilate(distance, np.ones((_RIDGE_WINDOW, _RIDGE_WINDOW), np.uint8))
    return inside & local & (distance + _RIDGE_TOLERANCE >= wide)


def profiled_indices(total: int, max_images: int) -> list[int]:
    """All of ``range(total)``, or ``max_images`` evenly spaced indices starting at 0."""
    if total <= max_images:
        return list(range(total))
    return [(i * total) // max_images for i in range(max_images)]


def fingerprint_source(
    source: SampleSource,
    class_names: Sequence[str],
    *,
    max_images: int = 256,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> DatasetFingerprint:
    """Profile the training split ``source`` in one pass, or read the cached profile.

    A split of more than ``max_images`` samples is profiled on ``max_images`` evenly spaced ones
    (``images`` says how many, ``total_images`` how many the split holds). The result is cached
    under ``<cache_dir or default cache>/fingerprints/<key>.json``; the key hashes the profiled
    samples' fingerprints, the class names and :data:`FINGERPRINT_VERSION`, so any edited file
    or renamed class re-profiles. An unreadable cache file is ignored and rewritten.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1; got {max_images}")
    indices = profiled_indices(len(source), max_images)
    path = _cache_path(source, indices, class_names, cache_dir)
    cached = _read_cached(path)
    if cached is not None:
        return cached
    profiler = _Profiler(len(class_names))
    bar = tqdm(indices, desc="fingerprint", unit="image", disable=not progress)
    for index in bar:
        profiler.add(*source.load(index))
    result = profiler.result(class_names, len(source))
    _write_cached(path, result)
    return result


def _cache_path(
    source: SampleSource,
    indices: list[int],
    class_names: Sequence[str],
    cache_dir: Path | None,
) -> Path:
    """``<root>/fingerprints/<sha256>.json`` for exactly these samples and class names."""
    digest = hashlib.sha256()
    digest.update(f"{FINGERPRINT_VERSION}\n{len(source)}\n".encode())
    digest.update("\x1f".join(class_names).encode() + b"\n")
    digest.update("\n".join(source.fingerprint(i) for i in indices).encode())
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "fingerprints" / f"{digest.hexdigest()}.json"


def _read_cached(path: Path) -> DatasetFingerprint | None:
    """The fingerprint stored at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        result = DatasetFingerprint.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return result if result.version == FINGERPRINT_VERSION else None


def _write_cached(path: Path, fingerprint: DatasetFingerprint) -> None:
    """Write via a temporary file and a rename; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(fingerprint.to_dict(), handle, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        Path(tmp).unlink(missing_ok=True)
