"""The built-in demo dataset: shapes on textured backgrounds, drawn from ``(seed, index)``.

It needs no download, works at any image size and channel count, and is hard enough to be worth
learning: every class has its own shape kind (ellipse, box, triangle, ring, star, cross, hexagon),
colour and stripe texture, but colours are jittered per object so class colour distributions overlap
and the background is smooth coloured noise that sometimes matches an object. Later objects occlude
earlier ones, and Gaussian noise is added last. With ``num_classes == 2`` every shape is foreground.
Classes beyond the seven shape kinds reuse a kind with a different colour and texture.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from unetkit.config import Config
from unetkit.data.contents import DatasetContents, resolve_class_names
from unetkit.data.preprocess import size_hw
from unetkit.data.sources import DataError, SampleSource

SHAPE_KINDS = ("ellipse", "box", "triangle", "ring", "star", "cross", "hexagon")
DEFAULT_NUM_CLASSES = 4
MAX_NUM_CLASSES = 64
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def synthetic_class_names(num_classes: int) -> list[str]:
    """``background`` then the shape kind of each class (``ellipse``, ..., ``ellipse_2`` ...)."""
    if num_classes == 2:
        return ["background", "foreground"]
    names = ["background"]
    for style in range(num_classes - 1):
        kind = SHAPE_KINDS[style % len(SHAPE_KINDS)]
        variant = style // len(SHAPE_KINDS)
        names.append(kind if variant == 0 else f"{kind}_{variant + 1}")
    return names


def build_synthetic(cfg: Config) -> DatasetContents:
    """The procedural demo dataset at the model's input size (default 4 classes); for a
    multi-label task, overlapping cells, nuclei and marks (:mod:`.synthetic_labels`)."""
    if cfg.task.type == "multilabel":
        from unetkit.data.datasets.synthetic_labels import build_synthetic_labels

        return build_synthetic_labels(cfg)
    task = cfg.task
    num_classes = task.num_classes or (len(task.class_names) if task.class_names else None)
    source = SyntheticSource(
        count=cfg.data.synthetic_count,
        size=size_hw(cfg.data.img_size),
        num_classes=num_classes or DEFAULT_NUM_CLASSES,
        seed=cfg.data.synthetic_seed,
        in_channels=cfg.data.in_channels,
    )
    class_names = resolve_class_names(
        task, detected_num_classes=source.num_classes, default_names=synthetic_class_names
    )
    return DatasetContents(source, class_names)


class SyntheticSource(SampleSource):
    """``count`` procedurally drawn samples of ``size = (H, W)``, identical for the same seed."""

    def __init__(
        self,
        count: int,
        size: tuple[int, int] = (96, 96),
        num_classes: int = DEFAULT_NUM_CLASSES,
        seed: int = 0,
        in_channels: int = 3,
        indices: list[int] | None = None,
    ) -> None:
        _validate(count, size, num_classes, in_channels)
        self.count = count
        self.size = (int(size[0]), int(size[1]))
        self.num_classes = num_classes
        self.seed = seed
        self.in_channels = in_channels
        self.indices = list(range(count)) if indices is None else list(indices)
        self._styles = _StylePalette(_num_styles(num_classes))

    @property
    def names(self) -> list[str]:
        return [f"synthetic_{i:05d}" for i in self.indices]

    @property
    def class_names(self) -> list[str]:
        return synthetic_class_names(self.num_classes)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.indices[index]
        rng = np.random.default_rng([self.seed, sample])
        return _draw_sample(rng, self.size, self.num_classes, self.in_channels, self._styles)

    def describe(self, index: int) -> str:
        height, width = self.size
        return f"synthetic sample {self.indices[index]} (seed {self.seed}, {height}x{width})"

    def _select(self, positions: list[int]) -> SyntheticSource:
        return SyntheticSource(
            self.count,
            self.size,
            self.num_classes,
            self.seed,
            self.in_channels,
            indices=[self.indices[p] for p in positions],
        )


def _validate(count: int, size: tuple[int, int], num_classes: int, in_channels: int) -> None:
    if count < 1:
        raise DataError(f"synthetic dataset needs at least 1 sample; got count={count}")
    if len(size) != 2 or min(size) < 4:
        raise DataError(f"synthetic image size must be (H, W) with both >= 4; got {size}")
    if not 2 <= num_classes <= MAX_NUM_CLASSES:
        raise DataError(
            f"synthetic num_classes must be 2..{MAX_NUM_CLASSES} (background included); "
            f"got {num_classes}"
        )
    if in_channels not in (1, 3):
        raise DataError(f"synthetic in_channels must be 1 or 3; got {in_channels}")


def _num_styles(num_classes: int) -> int:
    """Object styles: one per foreground class, or all shape kinds for the binary task."""
    return len(SHAPE_KINDS) if num_classes == 2 else num_classes - 1


class _StylePalette:
    """Per-style colour (RGB, 0..255), shape kind and stripe texture, fixed for a class count."""

    def __init__(self, num_styles: int) -> None:
        self.kinds = [SHAPE_KINDS[s % len(SHAPE_KINDS)] for s in range(num_styles)]
        self.colours = _style_colours(num_styles)
        self.stripe_angles = np.array([np.pi * s / num_styles for s in range(num_styles)])
        self.stripe_periods = np.array([3.0 + 2.0 * (s % 3) for s in range(num_styles)])


def _style_colours(num_styles: int) -> np.ndarray:
    """Evenly spaced hues whose grey levels are also spread out, so greyscale stays learnable.

    Grey targets run from dark to bright; hues that can be brightest get the brightest targets.
    """
    full = np.array([colorsys.hsv_to_rgb(s / num_styles, 0.6, 1.0) for s in range(num_styles)])
    brightest = full @ _LUMA
    targets = np.empty(num_styles)
    targets[np.argsort(brightest, kind="stable")] = np.linspace(70.0, 200.0, num_styles)
    value = np.minimum(1.0, targets / (255.0 * brightest))
    return 255.0 * full * value[:, None]


def _draw_sample(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_classes: int,
    in_channels: int,
    styles: _StylePalette,
) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    object_styles = _pick_object_styles(rng, height * width, len(styles.kinds))
    object_map = _draw_object_map(rng, size, [styles.kinds[s] for s in object_styles])
    object_classes = np.ones_like(object_styles) if num_classes == 2 else object_styles + 1
    mask = np.concatenate([[0], object_classes]).astype(np.uint8)[object_map]

    image = _background(rng, size)
    _paint_objects(rng, image, object_map, object_styles, styles)
    image += rng.normal(0.0, rng.uniform(4.0, 12.0), size=image.shape).astype(np.float32)
    if in_channels == 1:
        image = (image @ _LUMA)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _pick_object_styles(rng: np.random.Generator, area: int, num_styles: int) -> np.ndarray:
    """More objects on larger images; every style equally likely."""
    count = int(rng.integers(3, 8)) + area // 20000
    return rng.integers(0, num_styles, size=count)


def _draw_object_map(
    rng: np.random.Generator, size: tuple[int, int], kinds: list[str]
) -> np.ndarray:
    """``H x W`` map of object numbers (1-based, 0 = background); later objects occlude."""
    height, width = size
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    short_side = min(height, width)
    for number, kind in enumerate(kinds, start=1):
        radius = max(2.0, rng.uniform(0.07, 0.2) * short_side)
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        angle = rng.uniform(0, 2 * np.pi)
        aspect = rng.uniform(0.55, 1.0)
        if kind == "ring":
            _draw_ring(draw, centre, radius, aspect, number)
        else:
            points = _polygon(kind, radius, aspect, rng)
            points = _place(points, centre, angle)
            draw.polygon([tuple(p) for p in points], fill=number)
    return np.asarray(canvas, dtype=np.int64)


def _draw_ring(
    draw: ImageDraw.ImageDraw,
    centre: tuple[float, float],
    radius: float,
    aspect: float,
    number: int,
) -> None:
    x, y = centre
    half_height = radius * aspect
    box = (x - radius, y - half_height, x + radius, y + half_height)
    draw.ellipse(box, outline=number, width=max(1, round(0.4 * half_height)))


def _polygon(kind: str, radius: float, aspect: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N x 2) of a shape of ``kind`` centred on the origin, before rotation."""
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        return np.stack([radius * np.cos(t), radius * aspect * np.sin(t)], axis=1)
    if kind == "box":
        return np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * radius
    if kind == "triangle":
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, size=3)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        reach = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        return np.stack([reach * np.cos(t), reach * np.sin(t)], axis=1)
    if kind == "cross":
        arm = 0.33
        outline = [(arm, arm), (1, arm), (1, -arm), (arm, -arm), (arm, -1), (-arm, -1)]
        outline += [(-arm, -arm), (-1, -arm), (-1, arm), (-arm, arm), (-arm, 1), (arm, 1)]
        return np.array(outline) * radius
    if kind == "hexagon":
        t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(SHAPE_KINDS)}")


def _place(points: np.ndarray, centre: tuple[float, float], angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return points @ rotation.T + np.asarray(centre)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth random grey-level noise with a slight tint plus a linear gradient, float RGB."""
    height, width = size
    grid = rng.uniform(50, 200, size=(4, 4, 1)) + rng.uniform(-25, 25, size=(4, 4, 3))
    coarse = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), mode="RGB")
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]
    slope_y, slope_x = rng.uniform(-40, 40, size=2)
    return smooth + slope_y * ys + slope_x * xs


def _paint_objects(
    rng: np.random.Generator,
    image: np.ndarray,
    object_map: np.ndarray,
    object_styles: np.ndarray,
    styles: _StylePalette,
) -> None:
    """Fill each object with its jittered style colour plus its style's stripes, in place."""
    count = len(object_styles)
    colours = styles.colours[object_styles] + rng.normal(0, 18, size=(count, 3))
    colours += rng.normal(0, 15, size=(count, 1))  # brightness shift per object
    amplitudes = rng.uniform(8, 30, size=count)
    phases = rng.uniform(0, 2 * np.pi, size=count)
    inside = object_map > 0
    numbers = object_map[inside] - 1
    ys, xs = np.nonzero(inside)
    style = object_styles[numbers]
    angle = styles.stripe_angles[style]
    along = xs * np.cos(angle) + ys * np.sin(angle)
    stripes = np.cos(2 * np.pi * along / styles.stripe_periods[style] + phases[numbers])
    image[inside] = colours[numbers] + (amplitudes[numbers] * stripes)[:, None]


DATASETS = {"synthetic": build_synthetic}
