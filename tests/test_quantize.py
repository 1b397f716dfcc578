"""Static int8 export: calibration from the training split, the guard on the validation split."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.inference import quantize
from unetkit.inference.export import export_model
from unetkit.inference.onnx_backend import load_onnx_segmenter, read_metadata
from unetkit.inference.quantize import (
    GuardReport,
    QuantizationGuardError,
    calibration_data,
    guard,
    headline_metric,
)
from unetkit.inference.segmenter import Segmenter

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


def agreement(trained: Path, int8: Segmenter) -> float:
    """Share of validation pixels where ``int8`` and the fp32 PyTorch model agree."""
    loaded = model_from_checkpoint(trained)
    images = [image for image, _ in map(calibration_data(loaded).held_out.load, range(4))]
    fp32 = Segmenter.from_checkpoint(trained, "cpu", precision="fp32", channels_last=False)
    pairs = zip(fp32.predict(images), int8.predict(images), strict=True)
    return float(np.mean([np.mean(a == b) for a, b in pairs]))


def test_an_int8_onnx_export_passes_the_guard_and_keeps_the_masks(trained, tmp_path):
    report = export_model(trained, tmp_path / "m.onnx", quantize="int8", calibration_images=16)
    record = report.quantization
    assert record["precision"] == "int8" and record["method"].startswith("static QDQ")
    assert record["calibration"].startswith("16 training images and ")
    checked = record["guard"]
    assert checked["passed"] and checked["agreement"] >= 0.99 and checked["drop_points"] <= 0.5
    assert checked["metric"] == "mean_iou" and checked["fp32"] > 0.5
    assert all(d < 1e-4 for d in report.max_abs_diff.values())  # the fp32 graph's parity
    assert read_metadata(report.path)["quantization"] == record
    assert {"QuantizeLinear", "DequantizeLinear"} <= {
        node.op_type for node in onnx.load(str(report.path)).graph.node
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert agreement(trained, load_onnx_segmenter(report.path, device="cpu")) >= 0.99


def test_an_int8_openvino_export_passes_the_guard(trained, tmp_path):
    pytest.importorskip("nncf")
    from unetkit.inference import openvino_backend as ovb

    out = tmp_path / "m.xml"
    report = export_model(trained, out, "openvino", quantize="int8", calibration_images=16)
    assert report.quantization["method"].startswith("static (NNCF")
    assert report.quantization["guard"]["passed"]
    assert ovb.read_openvino_metadata(out)["quantization"] == report.quantization
    assert "FakeQuantize" in {op.get_type_name() for op in ovb.read_ir(out).get_ops()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    segmenter = ovb.load_openvino_segmenter(out)
    assert segmenter.model.precision_hint == "f32"
    assert agreement(trained, segmenter) >= 0.99


@pytest.mark.parametrize("breakage", ["threshold", "calibration"])
def test_a_failing_guard_refuses_the_export_and_leaves_no_file(
    trained, tmp_path, monkeypatch, breakage
):
    if breakage == "threshold":  # no model agrees on more than 100% of the pixels
        monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    else:  # calibrated on black images: every activation range is wrong on real ones
        real = quantize.calibration_data

        def black(*args, **kwargs):
            data = real(*args, **kwargs)
            return dataclasses.replace(data, inputs=[0 * a - 5 for a in data.inputs])

        monkeypatch.setattr(quantize, "calibration_data", black)
    out = tmp_path / "out" / "m.onnx"
    message = (
        r"int8 onnx export of .* refused and not written: int8 guard on \d+ held-out images: "
        r"mask agreement with fp32 \d+\.\d\d% \(at least \d+%\), mean_iou \d+\.\d\d -> "
        r"\d+\.\d\d, a drop of -?\d+\.\d\d points \(at most 0\.5\)\. Export it in fp32"
    )
    with pytest.raises(QuantizationGuardError, match=message):
        export_model(trained, out, quantize="int8", calibration_images=8)
    assert list(out.parent.iterdir()) == []


def test_the_cli_prints_the_guard_or_refuses_with_both_numbers(
    trained, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "m.onnx"
    export = ["export", "--checkpoint", str(trained), "--out", str(out), "--quantize", "int8",
              "--calibration-images", "8", "--guard-images", "4"]  # fmt: skip
    assert main(export) == 0
    printed = capsys.readouterr().out
    assert re.search(
        r"int8 guard on 4 held-out images: mask agreement with fp32 \d+\.\d\d%", printed
    )
    assert json.loads(printed[: printed.rindex("}") + 1])["quantization"]["precision"] == "int8"

    scored = tmp_path / "scored"
    evaluate = ["evaluate", "--checkpoint", str(trained), "--exported", str(out), "--out",
                str(scored), "--no-progress", "--no-report", "--split", "val"]  # fmt: skip
    assert main(evaluate) == 0
    assert "backend: onnxruntime int8 (the runtime of the exported file)" in capsys.readouterr().out
    backend = json.loads((scored / "metrics.json").read_text())["inference"]["backend"]
    assert (backend["backend"], backend["label"]) == ("onnxruntime", "onnxruntime int8")

    refused = tmp_path / "refused.onnx"
    strict = [*export[:4], str(refused), *export[5:]]
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    assert main(strict) == 2
    error = capsys.readouterr().err
    assert "refused and not written" in error and "mask agreement with fp32" in error
    assert "a drop of" in error and "Export it in fp32" in error
    assert not refused.exists()
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(trained), "--out", str(out), "--quantize", "int4"])


def test_bench_times_the_int8_graphs(capsys):
    from unetkit.speed.bench import benchmark

    tiny = {"model_options": {"base_width": 4, "depth": 2}, "steps": 1, "warmup": 0}
    result = benchmark("unet", 32, 2, backend="onnxruntime", quantize="int8", **tiny)
    assert result["quantize"] == "int8" and result["inference"]["images_per_s"] > 0
    assert any(note.startswith("int8: static") for note in result["notes"])
    with pytest.raises(ValueError, match="int8 applies to onnxruntime and openvino"):
        benchmark("unet", 32, 2, backend="torch", quantize="int8", **tiny)
