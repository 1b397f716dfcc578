"""Sliding-window inference: the window grid, Gaussian blending, bounded memory, and the Segmenter's
choice between resizing an image whole and sliding over it (unetkit.inference.modes)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import checkpoint_payload, preprocessing, rgb, tiny_model
from scipy.signal import windows

from unetkit.checkpoint import Preprocessing, model_from_checkpoint, save_checkpoint
from unetkit.config import Config
from unetkit.data.preprocess import default_mean_std, resize_image, to_tensor
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.sliding_window import (
    axis_starts,
    gaussian_importance,
    sliding_window_probabilities,
    window_origins,
)
from unetkit.tasks import Task
from unetkit.training.distributed import Processes
from unetkit.training.reproducibility import capture_rng_state
from unetkit.training.saving import _model_payload
from unetkit.training.state import TrainingState

pytestmark = pytest.mark.usefixtures("one_thread")


# --- models as functions of a window batch ------------------------------------------------------

MIXING = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-1.2, 0.8, 0.4]])


def pixelwise(tiles: torch.Tensor) -> torch.Tensor:
    """Probabilities that depend on each pixel alone: a softmax of a fixed channel mixing."""
    logits = torch.einsum("kc,nchw->nkhw", MIXING[:, : tiles.shape[1]], tiles)
    return torch.softmax(logits * 2.0, dim=1)


def edge_biased(tiles: torch.Tensor) -> torch.Tensor:
    """A binary model that drifts towards foreground near its window's border, smoothly."""
    height, width = tiles.shape[-2:]
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    foreground = torch.sigmoid(tiles[:, 0] + 2.0 * (x**2 + y**2))[:, None]
    return torch.cat([1 - foreground, foreground], dim=1)


def context_model(tiles: torch.Tensor) -> torch.Tensor:
    """Non-local and position-dependent: a zero-padded 3x3 mean plus a ramp across the window."""
    kernel = torch.full((3, 1, 3, 3), 1 / 9.0)
    smoothed = F.conv2d(tiles, kernel, padding=1, groups=3)
    ramp = torch.linspace(-1, 1, tiles.shape[-1])
    logits = torch.stack([smoothed[:, 0] + ramp, smoothed[:, 1], -smoothed[:, 2]], dim=1)
    return torch.softmax(logits, dim=1)


# --- the grid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (10, 4, 0.25, [0, 3, 6]),  # steps of at most 3, two of them
        (11, 4, 0.25, [0, 2, 5, 7]),  # 7 / 3 -> three steps of 7/3 rounded
        (8, 4, 0.0, [0, 4]),
        (9, 4, 0.0, [0, 2, 5]),  # 5 / 4 -> two steps of 2.5, rounded half to even
        (10, 4, 0.5, [0, 2, 4, 6]),
        (4, 4, 0.5, [0]),
        (3, 4, 0.5, [0]),  # shorter than a window: one (padded) window
    ],
)
def test_axis_starts_hand_computed(length, tile, overlap, expected):
    assert axis_starts(length, tile, overlap) == expected


def test_windows_cover_every_pixel_with_even_steps_on_random_sizes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tile = int(rng.integers(1, 40))
        length = int(rng.integers(tile, 300))
        overlap = float(rng.choice([0.0, 0.1, 0.25, 0.5, 0.9]))
        origins = axis_starts(length, tile, overlap)
        steps = np.diff(origins)
        assert origins[0] == 0 and origins[-1] == length - tile
        covered = np.zeros(length, int)
        for start in origins:
            covered[start : start + tile] += 1
        assert covered.min() >= 1
        allowed = max(1, math.floor(tile * (1 - overlap)))
        if len(origins) > 1:
            assert steps.min() >= 1 and steps.max() - steps.min() <= 1
            assert steps.max() <= allowed
        if len(origins) > 2:  # no more windows than needed: one step fewer would be too long
            assert (length - tile) / (len(origins) - 2) > allowed


def test_window_origins_are_row_by_row():
    assert window_origins(5, 7, (4, 4), 0.5) == [(0, 0), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]


# --- the weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [(16, 24), (7, 5), (32, 32)])
def test_gaussian_importance_matches_scipy_windows(tile):
    axes = [np.maximum(windows.gaussian(side, std=side / 8.0), 1e-3) for side in tile]
    expected = np.outer(*axes)
    np.testing.assert_allclose(gaussian_importance(tile).numpy(), expected, rtol=1e-5)


def test_gaussian_importance_hand_values():
    small = gaussian_importance((8, 8))  # sigma 1, centre 3.5
    assert small[3, 0].item() == pytest.approx(math.exp(-0.125) * math.exp(-6.125), rel=1e-5)
    large = gaussian_importance((32, 32))  # border at 3.875 sigma: exp(-7.5) < 1e-3, floored
    assert large[0, 0].item() == pytest.approx(1e-6, rel=1e-5)
    assert large.min().item() > 0.0


# --- blending ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "batch_size"),
    [
        ((40, 56), 16, 0.25, 4),
        ((37, 61), (16, 12), 0.5, 3),  # sizes not multiples of the window or step
        ((33, 17), 16, 0.0, 1),
        ((20, 20), 20, 0.25, 8),  # exactly one window
        ((9, 50), 16, 0.25, 2),  # shorter than a window in one direction
        ((1, 1), 8, 0.25, 2),  # smaller than a window in both
    ],
)
def test_pixelwise_model_gives_the_whole_image_result(size, tile, overlap, batch_size):
    image = torch.randn(3, *size, generator=torch.Generator().manual_seed(1))
    blended = sliding_window_probabilities(image, pixelwise, tile, overlap, batch_size)
    assert blended.shape == (3, *size)
    np.testing.assert_allclose(blended.numpy(), pixelwise(image[None])[0].numpy(), atol=1e-6)


def pad_end(image: np.ndarray, amount: int, axis: int) -> np.ndarray:
    """Reflection after the end of ``axis`` where it is longer than ``amount``, else the edge."""
    if amount <= 0:
        return image
    pad = [(0, 0)] * image.ndim
    pad[axis] = (0, amount)
    return np.pad(image, pad, mode="reflect" if amount < image.shape[axis] else "edge")


def brute_force_blend(image: np.ndarray, model, tile: tuple[int, int], overlap: float):
    """The weighted mean over windows, written out with numpy padding and scipy's Gaussian."""
    height, width = image.shape[1:]
    padded = pad_end(pad_end(image, tile[0] - height, axis=1), tile[1] - width, axis=2)
    weights = np.outer(*[np.maximum(windows.gaussian(s, std=s / 8.0), 1e-3) for s in tile])
    total = np.zeros((3, *padded.shape[1:]))
    weight_sum = np.zeros(padded.shape[1:])
    for y in axis_starts(padded.shape[1], tile[0], overlap):
        for x in axis_starts(padded.shape[2], tile[1], overlap):
            window = padded[:, y : y + tile[0], x : x + tile[1]]
            probs = model(torch.from_numpy(window[None].copy())).numpy()[0]
            total[:, y : y + tile[0], x : x + tile[1]] += probs * weights
            weight_sum[y : y + tile[0], x : x + tile[1]] += weights
    return (total / weight_sum)[:, :height, :width]


@pytest.mark.parametrize(("size", "overlap"), [((45, 70), 0.25), ((30, 9), 0.5), ((12, 12), 0.4)])
def test_context_model_matches_a_brute_force_blend(size, overlap):
    image = torch.randn(3, *size, generator=torch.Generator().manual_seed(2))
    blended = sliding_window_probabilities(image, context_model, (16, 20), overlap, 5)
    expected = brute_force_blend(image.numpy(), context_model, (16, 20), overlap)
    np.testing.assert_allclose(blended.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(blended.sum(dim=0).numpy(), 1.0, atol=1e-5)


def test_blend_is_a_weighted_mean_of_the_windows():
    calls = iter(range(100))

    def constant_per_call(tiles: torch.Tensor) -> torch.Tensor:
        value = 0.1 + 0.2 * next(calls)  # each batch of one window says something else
        foreground = torch.full((tiles.shape[0], 1, *tiles.shape[-2:]), value)
        return torch.cat([1 - foreground, foreground], dim=1)

    blended = sliding_window_probabilities(torch.zeros(1, 10, 10), constant_per_call, 4, 0.5, 1)
    values = [0.1 + 0.2 * i for i in range(16)]  # 4 x 4 windows
    assert blended[1].min() >= min(values) - 1e-6 and blended[1].max() <= max(values) + 1e-6
    np.testing.assert_allclose(blended[1, 0, 0].item(), values[0], atol=1e-6)
    np.testing.assert_allclose(blended[1, -1, -1].item(), values[-1], atol=1e-6)
    np.testing.assert_allclose(blended.sum(dim=0).numpy(), 1.0, atol=1e-6)


def largest_step(probs: torch.Tensor) -> float:
    return max(probs.diff(dim=0).abs().max().item(), probs.diff(dim=1).abs().max().item())


def uniform_blend(image: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """Plain averaging of overlapping windows: what the Gaussian map is there to beat."""
    height, width = image.shape[-2:]
    total, count = torch.zeros(2, height, width), torch.zeros(height, width)
    for y, x in window_origins(height, width, (tile, tile), overlap):
        total[:, y : y + tile, x : x + tile] += edge_biased(
            image[None, :, y : y + tile, x : x + tile]
        )[0]
        count[y : y + tile, x : x + tile] += 1
    return total / count


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_window_dependent_bias_leaves_no_seams(overlap):
    image = torch.full((1, 50, 150), -1.0)  # uniform: every change in the output is the model's
    within_tile = largest_step(edge_biased(image[None, :, :32, :32])[0, 1])
    blended = sliding_window_probabilities(image, edge_biased, 32, overlap, 4)[1]
    plain = uniform_blend(image, 32, overlap)[1]

    assert largest_step(blended) <= within_tile + 1e-6
    assert largest_step(plain) > 3 * within_tile  # the seams the Gaussian blend removes


def test_small_sides_are_padded_by_reflection_or_repetition():
    seen: list[torch.Tensor] = []

    def recording(tiles: torch.Tensor) -> torch.Tensor:
        seen.append(tiles.clone())
        return pixelwise(tiles)

    image = torch.arange(15.0).reshape(1, 3, 5)
    sliding_window_probabilities(image.expand(3, 3, 5), recording, (6, 7), 0.25, 4)
    rows = [[0, 1, 2, 3, 4, 3, 2], [5, 6, 7, 8, 9, 8, 7], [10, 11, 12, 13, 14, 13, 12]]
    rows += [rows[-1]] * 3  # 3 rows cannot reflect 3 more: the last one repeats
    np.testing.assert_array_equal(seen[0][0, 0].numpy(), rows)

    for size in ((5, 6), (2, 9), (1, 1)):
        image = torch.randn(3, *size, generator=torch.Generator().manual_seed(3))
        seen.clear()
        blended = sliding_window_probabilities(image, recording, 8, 0.25, 4)
        padded = pad_end(pad_end(image.numpy(), 8 - size[0], axis=1), 8 - size[1], axis=2)
        np.testing.assert_array_equal(seen[0][0].numpy(), padded[:, :, :8])
        assert blended.shape == (3, *size)


def test_memory_is_one_batch_of_windows_at_a_time():
    batches: list[tuple[int, ...]] = []

    def counting(tiles: torch.Tensor) -> torch.Tensor:
        batches.append(tuple(tiles.shape))
        return pixelwise(tiles)

    image = torch.randn(3, 100, 130)
    sliding_window_probabilities(image, counting, 24, 0.25, 5)
    tiles = len(window_origins(100, 130, (24, 24), 0.25))
    assert tiles == len(axis_starts(100, 24, 0.25)) * len(axis_starts(130, 24, 0.25)) == 42
    assert [b[0] for b in batches] == [5] * 8 + [2]
    assert {b[1:] for b in batches} == {(3, 24, 24)}


def test_bad_arguments_are_clear_errors():
    image = torch.zeros(3, 10, 10)
    with pytest.raises(ValueError, match=r"overlap .*\[0, 1\).*got 1.0"):
        sliding_window_probabilities(image, pixelwise, 4, overlap=1.0)
    with pytest.raises(ValueError, match="overlap .*got -0.1"):
        sliding_window_probabilities(image, pixelwise, 4, overlap=-0.1)
    with pytest.raises(ValueError, match="window_size must be a positive .*got 0"):
        sliding_window_probabilities(image, pixelwise, 0)
    with pytest.raises(ValueError, match=r"window_size .*got \(8,\)"):
        sliding_window_probabilities(image, pixelwise, (8,))
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        sliding_window_probabilities(image, pixelwise, 4, batch_size=0)
    with pytest.raises(ValueError, match=r"one image \(C, H, W\); got shape \(10, 10\)"):
        sliding_window_probabilities(image[0], pixelwise, 4)
    with pytest.raises(ValueError, match=r"must return \(N, K, h, w\) = \(2, K, 4, 4\)"):
        sliding_window_probabilities(image, lambda t: pixelwise(t)[:, :, :2], 4, batch_size=2)


# --- the Segmenter: resize or slide --------------------------------------------------------------


class PixelwiseModel:
    """Not a torch module: anything with ``to``, ``eval`` and ``__call__`` can be served."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def to(self, device: torch.device) -> PixelwiseModel:
        self.calls.append(f"to {device}")
        return self

    def eval(self) -> PixelwiseModel:
        self.calls.append("eval")
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kc,nchw->nkhw", MIXING, images) * 2.0  # logits of ``pixelwise``


def prep(tile_size: int | None = None) -> Preprocessing:
    return preprocessing(img_size=(16, 16), tile_size=tile_size)


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    return tiny_model(Task(3), seed=seed)


def unet_segmenter(trained_tile: int | None = None, **options) -> Segmenter:
    names = ["background", "a", "b"]
    return Segmenter(tiny_unet(), Task(3), names, prep(trained_tile), device="cpu", **options)


def test_default_path_is_the_whole_image_resized():
    seg = unet_segmenter(batch_size=2)
    images = [rgb(23, 37), rgb(70, 90, seed=1), rgb(16, 16, seed=2)]
    default = seg.predict_proba(images)
    seg.mode = "resize"
    assert all(
        np.array_equal(a, b) for a, b in zip(default, seg.predict_proba(images), strict=True)
    )
    for image, probs in zip(images, default, strict=True):
        inputs = to_tensor(resize_image(image, (16, 16)), *default_mean_std(3))[None]
        expected = torch.softmax(seg.model(inputs), dim=1)
        expected = F.interpolate(expected, size=image.shape[:2], mode="bilinear")[0]
        np.testing.assert_allclose(probs, expected.detach().numpy(), atol=1e-5)
    assert not seg.slides_over(5000, 5000), "a model trained on whole images is never tiled"


def test_sliding_scales_by_the_training_factor_then_tiles():
    model = PixelwiseModel()
    seg = Segmenter(model, Task(3), ["a", "b", "c"], prep(tile_size=32), device="cpu")
    image = rgb(70, 90)
    assert seg.slides_over(70, 90) and model.calls == ["to cpu", "eval"]

    scaled = to_tensor(resize_image(image, (35, 45)), *default_mean_std(3))  # 16 / 32 of 70 x 90
    expected = F.interpolate(pixelwise(scaled[None]), size=(70, 90), mode="bilinear")[0]
    np.testing.assert_allclose(seg.predict_proba(image), expected.numpy(), atol=1e-6)


def test_sliding_with_a_unet_is_independent_of_the_window_batch():
    images = [rgb(70, 90), rgb(10, 12, seed=1), rgb(50, 33, seed=2)]
    one = unet_segmenter(trained_tile=32, mode="sliding", batch_size=1).predict_proba(images)
    many = unet_segmenter(trained_tile=32, mode="sliding", batch_size=3).predict_proba(images)
    for a, b, image in zip(one, many, images, strict=True):
        assert a.shape == (3, *image.shape[:2])
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)


def write_checkpoint(path, preprocessing: Preprocessing, drop_tile_size: bool = False) -> None:
    payload = checkpoint_payload(tiny_unet(seed=4), Task(3), ["bg", "a", "b"], preprocessing)
    if drop_tile_size:  # as written before the field existed
        del payload["preprocessing"]["tile_size"]
    save_checkpoint(payload, path)


def test_a_tile_trained_checkpoint_slides_over_large_images(tmp_path):
    write_checkpoint(tmp_path / "best.pt", prep(tile_size=32))
    seg = Segmenter.from_checkpoint(tmp_path / "best.pt", device="cpu", batch_size=2)
    assert seg.preprocessing.tile_size == 32 and seg.window_size == (16, 16)
    assert seg.slides_over(70, 90) and seg.slides_over(34, 10)  # 17 x 5 after scaling: 17 > 16
    assert not seg.slides_over(32, 32) and not seg.slides_over(20, 30)  # fits in one window

    large = rgb(70, 90)
    sliding = Segmenter.from_checkpoint(tmp_path / "best.pt", "cpu", 2, mode="sliding")
    resizing = Segmenter.from_checkpoint(tmp_path / "best.pt", "cpu", 2, mode="resize")
    np.testing.assert_array_equal(seg.predict_proba(large), sliding.predict_proba(large))
    assert np.abs(seg.predict_proba(large) - resizing.predict_proba(large)).max() > 0.05
    small = rgb(20, 30, seed=1)
    np.testing.assert_array_equal(seg.predict_proba(small), resizing.predict_proba(small))


def test_a_checkpoint_without_tile_size_still_loads(tmp_path):
    write_checkpoint(tmp_path / "old.pt", prep(), drop_tile_size=True)
    loaded = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded.preprocessing == prep() and loaded.preprocessing.tile_size is None
    assert not Segmenter.from_checkpoint(tmp_path / "old.pt", device="cpu").slides_over(999, 999)


def test_training_records_the_tile_size_in_the_checkpoint():
    cfg = Config()
    cfg.data.img_size, cfg.data.tile_size = [48, 48], 96
    cfg.task.class_names = ["background", "cell"]
    model = torch.nn.Conv2d(3, 1, 1)
    parts = SimpleNamespace(
        cfg=cfg,
        task=Task(2),
        model=model,
        processes=Processes(),
    )
    state = TrainingState(epoch=1, optimizer_steps_by_rank=[3], rng_by_rank=[capture_rng_state()])
    payload = _model_payload(parts, state.to_checkpoint())
    assert payload["preprocessing"]["tile_size"] == 96
    assert payload["preprocessing"]["img_size"] == [48, 48]


def test_bad_segmenter_options_are_clear_errors():
    with pytest.raises(ValueError, match="mode must be one of auto, resize, sliding; got 'tiles'"):
        unet_segmenter(mode="tiles")
    with pytest.raises(ValueError, match="overlap .*got 1"):
        unet_segmenter(overlap=1)
    with pytest.raises(ValueError, match="window_size must be a positive .*got 0"):
        unet_segmenter(window_size=0)
