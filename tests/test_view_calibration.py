"""A calibration fitted for the mean of flipped views (unetkit.inference.view_calibration) and
used by the end-of-training fit (unetkit.training.calibrate.fit_checkpoint) under TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetkit.checkpoint import Preprocessing
from unetkit.data.sources import SampleSource
from unetkit.inference.calibrated import Tempered
from unetkit.inference.calibration import Calibration, fit_calibration, fit_logit_map
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.view_calibration import (
    ViewSample,
    averaged_logits,
    fit_for_views,
    view_nll,
)
from unetkit.tasks import IGNORE_INDEX, Task
from unetkit.training.calibrate import fit_checkpoint, flip_views

pytestmark = pytest.mark.usefixtures("one_thread")

BINARY, CLASSES = Task(2), Task(3)


def test_averaged_logits_are_those_of_the_mean_probability():
    logits = torch.tensor([[[0.0], [2.0], [-1.0], [4.0]]])  # one pixel, four views, binary
    calibration = Calibration(2.0, bias=(0.5,))
    expected = torch.logit(torch.sigmoid(logits / 2.0 + 0.5).mean(dim=1))  # 0.9063 -> 2.267
    torch.testing.assert_close(averaged_logits(logits, BINARY, calibration), expected)
    # one view: the calibrated logits themselves, bit for bit
    single = torch.randn(5, 1, 3) * 20
    assert torch.equal(averaged_logits(single, CLASSES, Calibration(1.7)), single[:, 0] / 1.7)
    many = torch.randn(6, 4, 3)
    expected = torch.softmax(many / 1.3, dim=-1).mean(dim=1).log()
    torch.testing.assert_close(averaged_logits(many, CLASSES, Calibration(1.3)), expected)
    # saturated views do not overflow: the mean of sigmoid(40) and sigmoid(-40) is one half
    saturated = torch.tensor([[[40.0], [-40.0]]])
    assert averaged_logits(saturated, BINARY, Calibration())[0, 0] == pytest.approx(0.0, abs=1e-6)


def _views_with_known_calibration(task: Task, temperature: float, bias: float | None):
    """Pixels whose targets are drawn from the mean over four disagreeing views of
    ``probabilities(z_v / temperature + bias)``: the fit for views must find those values."""
    generator = torch.Generator().manual_seed(0)
    pixels, channels = 200_000, task.out_channels
    centre = torch.randn(pixels, 1, channels, generator=generator) * 4
    views = centre + torch.randn(pixels, 4, channels, generator=generator) * 3
    mapped = views / temperature + (0.0 if bias is None else bias)
    if task.is_binary:
        truth = torch.sigmoid(mapped).mean(dim=1)[:, 0]
        targets = (torch.rand(pixels, generator=generator) < truth).long()
    else:
        truth = torch.softmax(mapped, dim=-1).mean(dim=1)
        targets = torch.multinomial(truth, 1, generator=generator)[:, 0]
    return views, targets


def test_the_fit_for_views_recovers_the_temperature_and_bias_that_made_the_targets():
    views, targets = _views_with_known_calibration(BINARY, 2.0, -0.4)
    fitted = fit_for_views(views, targets, BINARY)
    assert fitted.temperature == pytest.approx(2.0, rel=0.03)
    assert fitted.bias[0] == pytest.approx(-0.4, abs=0.03)
    # the fit on the averaged probabilities, as if they were one view's, is another map ...
    naive = fit_logit_map(averaged_logits(views, BINARY, Calibration()), targets, BINARY)
    assert abs(naive.temperature - 2.0) > 0.3

    # ... and a worse one for the prediction the Segmenter returns: the mean of mapped views
    def loss(calibration: Calibration) -> float:
        bias = torch.tensor(calibration.bias, dtype=torch.float64)
        return float(view_nll(views.double(), targets, BINARY, calibration.temperature, bias))

    assert loss(fitted) < loss(naive) - 1e-3


def test_the_fit_for_views_of_a_softmax_task_is_a_temperature_only():
    views, targets = _views_with_known_calibration(CLASSES, 0.6, None)
    fitted = fit_for_views(views, targets, CLASSES)
    assert fitted.bias is None
    assert fitted.temperature == pytest.approx(0.6, rel=0.03)


def test_the_fit_for_views_of_a_multilabel_task_shares_t_and_biases_each_label():
    labels = Task(2, multilabel=True)
    generator = torch.Generator().manual_seed(1)
    centre = torch.randn(150_000, 1, 2, generator=generator) * 3
    views = centre + torch.randn(150_000, 4, 2, generator=generator) * 2
    truth = torch.sigmoid(views / 1.5 + torch.tensor([0.5, -0.5])).mean(dim=1)
    targets = (torch.rand(150_000, 2, generator=generator) < truth).long()
    targets[:50_000, 1] = IGNORE_INDEX  # a third of the second label is not counted
    fitted = fit_for_views(views, targets, labels)
    assert fitted.temperature == pytest.approx(1.5, rel=0.03)
    assert fitted.bias == pytest.approx((0.5, -0.5), abs=0.04)


def test_a_view_sample_keeps_every_view_at_the_same_pixels_and_skips_ignored_ones():
    sample = ViewSample(BINARY, per_image=5, seed=0)
    target = np.array([[0, 1, IGNORE_INDEX], [1, 0, 1], [0, 0, 1]], np.uint8)
    picked = sample.pick(target)
    positions = picked.positions
    assert len(positions) == 5 and 2 not in positions.tolist() and picked.counted == 8
    assert picked.labels.tolist() == target.reshape(-1)[positions.numpy()].tolist()
    fg = np.arange(9, dtype=np.float32).reshape(3, 3) / 10 + 0.05
    probs = [np.stack([1 - fg, fg]), np.stack([fg, 1 - fg])]  # two views, mirror images
    sample.add([sample.values_at(p, positions) for p in probs], picked)
    logits = sample.logits
    assert logits.shape == (5, 2, 1)
    expected = np.log(fg / (1 - fg)).reshape(-1)[positions.numpy()]
    np.testing.assert_allclose(logits[:, 0, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(logits[:, 1, 0].numpy(), -expected, atol=1e-5)


def test_a_view_sample_keeps_one_share_of_every_image_with_views_and_targets_aligned():
    sample = ViewSample(BINARY, per_image=50, seed=0)
    shapes = [(20, 20), (5, 8)]  # 400 counted pixels keep 50, then 40 keep all 40
    for index, shape in enumerate(shapes):
        target = np.full(shape, index, np.uint8)  # the image's targets name it: 0 large, 1 small
        picked = sample.pick(target)
        views = [torch.full((len(picked.labels), 1), 10.0 * index + view) for view in range(3)]
        sample.add(views, picked)
    targets, logits = sample.targets, sample.logits
    assert int((targets == 0).sum()) == 50 and int((targets == 1).sum()) == 5  # 40 x 50/400
    assert logits.shape == (55, 3, 1)
    # every row holds its own image's three views: 10 x image id + view
    expected = 10.0 * targets[:, None].float() + torch.arange(3.0)
    assert torch.equal(logits[:, :, 0], expected)
    assert torch.equal(sample.targets, targets)  # thinned once: the properties agree


class _Images(SampleSource):
    """Random images whose masks follow their red channel with label noise: the foreground's
    odds rise with red but no model is sure, so the over-confident one below needs T > 1."""

    def __init__(self, count: int, size: int = 24) -> None:
        generator = np.random.default_rng(0)
        self.images = [generator.integers(0, 256, (size, size, 3), np.uint8) for _ in range(count)]
        noise = [generator.uniform(-80, 80, (size, size)) for _ in range(count)]
        pairs = zip(self.images, noise, strict=True)
        self.masks = [(image[..., 0] + jitter > 128).astype(np.uint8) for image, jitter in pairs]

    @property
    def names(self) -> list[str]:
        return [f"i{index}" for index in range(len(self.images))]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.masks[index]

    def describe(self, index: int) -> str:
        return f"random image {index}"

    def _select(self, positions: list[int]) -> _Images:
        raise NotImplementedError


class _Lopsided(nn.Module):
    """An over-confident binary model whose output depends on position, so flips disagree."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.5, 1.5, images.shape[-1])
        return 8.0 * (images[:, :1] + 0.2 * self.conv(images)) + ramp


def _segmenter(model: nn.Module, tta: bool) -> Segmenter:
    prep = Preprocessing((24, 24), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
    return Segmenter(model, BINARY, ["background", "thing"], prep, "cpu", 4, tta=tta)


def _applied_nll(model: nn.Module, calibration: Calibration, source: _Images) -> float:
    """The NLL of every pixel under what a TTA Segmenter with ``calibration`` returns."""
    segmenter = _segmenter(Tempered(model, calibration.temperature, calibration.bias), True)
    total, count = 0.0, 0
    for index in range(len(source)):
        image, mask = source.load(index)
        fg = torch.from_numpy(segmenter.predict_proba(image)[1]).double().clamp(1e-12, 1 - 1e-12)
        truth = torch.from_numpy(mask).bool()
        total -= float(torch.where(truth, fg.log(), (1 - fg).log()).sum())
        count += mask.size
    return total / count


def test_under_tta_the_stored_calibration_is_the_best_for_the_prediction_that_runs():
    model, source = _Lopsided().eval(), _Images(6)
    views = flip_views(_segmenter(model, tta=True))
    assert len(views) == 4
    left_right = _segmenter(model, tta=True)
    left_right.tta_flips = ((), (-1,))
    assert [view.model.dims for view in flip_views(left_right)] == [(), (-1,)]  # the views TTA runs
    image = source.load(0)[0]
    mean = np.mean([view.predict_proba(image) for view in views], axis=0)
    np.testing.assert_allclose(mean, _segmenter(model, True).predict_proba(image), atol=1e-6)

    record = fit_checkpoint(_segmenter(model, tta=True), source, "val_foreground_dice")
    fitted = Calibration.from_dict(record["calibration"]).logit_map()
    assert record["views"] == 4 and fitted.temperature > 1.5  # the model is over-confident
    best = _applied_nll(model, fitted, source)
    for factor in (0.9, 1.1):  # a nearby temperature does worse on what the Segmenter returns
        nearby = Calibration(fitted.temperature * factor, bias=fitted.bias)
        assert _applied_nll(model, nearby, source) > best
    assert record["ece"]["after"] < record["ece"]["before"]
    # without TTA the fit is the one-view fit on the Segmenter's probabilities, as before
    plain_segmenter = _segmenter(model, tta=False)
    plain = fit_checkpoint(plain_segmenter, source, "val_foreground_dice")
    pairs = [
        (plain_segmenter.predict_proba(image), mask) for image, mask in map(source.load, range(6))
    ]
    one_view = fit_calibration(pairs, BINARY, metric=None)
    assert plain["views"] == 1
    assert plain["calibration"]["temperature"] == pytest.approx(one_view.temperature, rel=1e-6)
    assert plain["calibration"]["bias"] == pytest.approx(list(one_view.bias), abs=1e-6)
