"""Static int8 export: calibration from the training split, the guard on the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.inference import quantize
from unetkit.inference.quantize import (
    GuardReport,
    calibration_data,
    guard,
    headline_metric,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--img-size", "32", "--epochs", "4", "--batch-size", "4", "--no-progress",
         "--precision", "fp32", "--no-channels-last", "data.synthetic_count=40",
         "task.num_classes=2", "optim.lr=0.01", "model.options.base_width=8",
         "model.options.depth=2", "eval.report=false"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny binary U-Net trained for a few seconds on synthetic shapes: decisive enough that
    int8 keeps its masks, as a real model's are."""
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(run), *TRAIN]) == 0
    return run / "checkpoints" / "best.pt"


class Negated(torch.nn.Module):
    """A model whose every binary decision is the opposite of ``model``'s."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -self.inner(images)


def report(agreement: float, fp32: float | None, int8: float | None) -> GuardReport:
    drop = None if fp32 is None or int8 is None else 100 * (fp32 - int8)
    return GuardReport(10, agreement, "foreground_iou", fp32, int8, drop, 0.99, 0.5)


def test_the_guard_needs_both_numbers_within_their_limits():
    assert report(0.995, 0.80, 0.796).passed  # 99.5% agreement, a drop of 0.4 points
    assert not report(0.989, 0.80, 0.80).passed  # agreement below 99%
    assert not report(0.999, 0.80, 0.794).passed  # a drop of 0.6 points
    assert report(0.99, 0.80, 0.81).passed  # int8 may score higher
    assert report(1.0, None, None).passed  # undefined metric: agreement alone decides
    text = report(0.98765, 0.8, 0.79).summary()
    assert text == (
        "int8 guard on 10 held-out images: mask agreement with fp32 98.77% (at least 99%), "
        "foreground_iou 80.00 -> 79.00, a drop of 1.00 points (at most 0.5)"
    )
    assert report(0.995, 0.8, 0.796).to_dict()["passed"] is True


def test_the_headline_metric_is_the_monitored_one(trained):
    loaded = model_from_checkpoint(trained)
    assert loaded.checkpoint["config"]["train"]["monitor"] == "val_mean_iou"
    assert headline_metric(loaded) == "mean_iou"
    for monitor, expected in [
        ("val_foreground_iou", "foreground_iou"),
        ("val_ema_mean_dice", "mean_dice"),
        ("val_loss", "foreground_iou"),  # not a metric: the binary headline
    ]:
        loaded.checkpoint["config"]["train"]["monitor"] = monitor
        assert headline_metric(loaded) == expected


def test_calibration_comes_from_training_images_and_the_guard_from_validation(trained):
    loaded = model_from_checkpoint(trained)
    data = calibration_data(loaded, calibration_images=5, guard_images=3)
    assert len(data.inputs) == 5
    assert all(a.shape == (1, 3, 32, 32) and a.dtype == np.float32 for a in data.inputs)
    assert abs(float(np.mean(data.inputs))) < 3  # normalised, not 0..255
    splits = json.loads((trained.parent.parent / "splits.json").read_text())
    assert set(data.held_out.names) <= set(splits["val"]) and len(data.held_out) <= 3
    assert not set(data.held_out.names) & set(splits["train"])
    assert data.description.startswith("5 training images and ")
    assert quantize._spread(10, 4) == [0, 3, 6, 9] and quantize._spread(3, 8) == [0, 1, 2]


def test_calibration_needs_the_recorded_training_data(trained, tmp_path):
    payload = load_checkpoint(trained)
    del payload["config"]
    save_checkpoint(payload, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="records no training config"):
        calibration_data(model_from_checkpoint(tmp_path / "bare.pt"))
    loaded = model_from_checkpoint(trained)
    loaded.checkpoint["config"]["data"]["dataset"] = "folder"
    with pytest.raises(Exception, match=str(tmp_path / "moved")):
        calibration_data(loaded, root=str(tmp_path / "moved"))


def test_the_guard_compares_masks_and_the_metric_with_the_fp32_model(trained):
    loaded = model_from_checkpoint(trained)
    data = calibration_data(loaded, calibration_images=2)
    metadata = {"inference": None}
    same = guard(loaded, loaded.model, metadata, data.held_out)
    assert (same.agreement, same.drop_points, same.passed) == (1.0, 0.0, True)
    assert same.images == len(data.held_out) and same.fp32 == same.int8 > 0.5

    flipped = guard(loaded, Negated(loaded.model), metadata, data.held_out)
    assert flipped.agreement < 0.5 and flipped.drop_points > 10 and not flipped.passed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int4"}, "quantize must be one of int8; got 'int4'"),
        ({"quantize": "int8", "format": "torchscript"}, "applies to the onnx and openvino"),
        ({"calibration": "data/"}, "--calibration applies with --quantize int8"),
    ],
)
def test_impossible_quantisations_are_refused_first(options, message):
    arguments = {"quantize": None, "format": "onnx", "calibration": None, **options}
    with pytest.raises(ValueError, match=message):
        quantize.check_quantization(**arguments)
