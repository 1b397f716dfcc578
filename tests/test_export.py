"""Export to ONNX and TorchScript: dynamic sizes, parity with PyTorch, metadata, same masks."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from model_helpers import checkpoint_payload, rgb, tiny_model

from unetkit.checkpoint import (
    Preprocessing,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from unetkit.cli.main import main
from unetkit.inference import export as export_module
from unetkit.inference.export import (
    ExportParityError,
    export_model,
    parity_sizes,
    quiet_tracing,
)
from unetkit.inference.onnx_backend import (
    OnnxModel,
    load_onnx_segmenter,
    load_torchscript_segmenter,
    read_metadata,
    reflectable,
    segmenter_recipe,
)
from unetkit.inference.options import InferenceConfig
from unetkit.inference.segmenter import Segmenter
from unetkit.models.padding import pad_to_multiple
from unetkit.tasks import Task

TOLERANCE = 1e-4
UNET_OPTIONS = {"base_width": 4, "depth": 2}
IMG_SIZE = (16, 20)
UNSEEN_SIZES = [(3, 64, 96), (1, 83, 61), (2, 5, 7)]  # (batch, H, W): none traced nor checked


pytestmark = pytest.mark.usefixtures("one_thread")


def preprocessing(in_channels: int = 3, tile_size: int | None = None) -> Preprocessing:
    mean, std = (0.4, 0.5, 0.6)[:in_channels], (0.2, 0.25, 0.3)[:in_channels]
    return Preprocessing(IMG_SIZE, mean, std, in_channels, tile_size=tile_size)


def write_checkpoint(
    path: Path,
    num_classes: int,
    model_name: str = "unet",
    options: dict | None = None,
    prep: Preprocessing | None = None,
) -> Path:
    """A checkpoint of a random model whose head is scaled up so it predicts a mix of classes."""
    options = dict(UNET_OPTIONS if options is None else options)
    prep = preprocessing() if prep is None else prep
    task = Task(num_classes)
    model = tiny_model(task, prep.in_channels, num_classes, model_name, options)
    _settle_batch_norm(model, prep.in_channels)  # the head comes after every BatchNorm
    names = ["background", *(f"class{i}" for i in range(1, num_classes))]
    save_checkpoint(checkpoint_payload(model, task, names, prep, model_name, options), path)
    return path


def _settle_batch_norm(model: torch.nn.Module, in_channels: int) -> None:
    """Give BatchNorm the statistics of its inputs, as training does: with the default ones a
    random ResNet-34 has logits in the hundreds, so float32 rounding alone exceeds 1e-4."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        model(torch.randn(4, in_channels, 64, 64, generator=torch.Generator().manual_seed(0)))
    model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {n: write_checkpoint(folder / f"classes{n}.pt", n) for n in (2, 3)}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict[tuple[int, str], object]:
    """Both formats of both checkpoints, exported once for the whole module."""
    folder = tmp_path_factory.mktemp("exports")
    suffix = {"onnx": "onnx", "torchscript": "ts"}
    return {
        (n, fmt): export_model(path, folder / f"classes{n}.{suffix[fmt]}", format=fmt)
        for n, path in checkpoints.items()
        for fmt in ("onnx", "torchscript")
    }


def raw_onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    """Logits straight from onnxruntime, independent of unetkit's wrapper."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def test_parity_and_trace_sizes_are_distinct_and_odd(checkpoints):
    loaded = model_from_checkpoint(checkpoints[2])
    # 16x20 training size; odd sizes 2 * (16 // 2) + 13 = 29 and 2 * (20 // 2) + 7 = 27
    assert parity_sizes(loaded) == [(16, 20), (29, 27)]
    # traced at 16 + 15 = 31 by 20 + 9 = 29: a size that no parity check uses
    assert tuple(export_module.trace_example(loaded).shape) == (1, 3, 31, 29)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_onnx_export_is_dynamic_and_matches_pytorch(checkpoints, exports, num_classes):
    report = exports[num_classes, "onnx"]
    assert report.format == "onnx" and report.path.is_file() and report.seconds > 0
    assert set(report.max_abs_diff) == {"16x20", "29x27"}
    assert all(0 <= d < TOLERANCE for d in report.max_abs_diff.values())

    graph_input = onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph_input] == ["batch", 3, "height", "width"]

    model = model_from_checkpoint(checkpoints[num_classes]).model
    out_channels = Task(num_classes).out_channels
    generator = torch.Generator().manual_seed(5)
    for batch, height, width in UNSEEN_SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        actual = raw_onnx_logits(report.path, images)
        assert actual.shape == (batch, out_channels, height, width)
        assert np.abs(actual - expected).max() < TOLERANCE


def test_torchscript_export_is_dynamic_and_matches_pytorch(checkpoints, exports):
    report = exports[3, "torchscript"]
    assert report.format == "torchscript" and report.opset is None
    assert all(0 <= d < TOLERANCE for d in report.max_abs_diff.values())
    model = model_from_checkpoint(checkpoints[3]).model
    with quiet_tracing():
        traced = torch.jit.load(str(report.path))
    generator = torch.Generator().manual_seed(6)
    for batch, height, width in UNSEEN_SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            assert (traced(images) - model(images)).abs().max() < TOLERANCE


def test_opset_is_honoured_and_reported(checkpoints, tmp_path):
    report = export_model(checkpoints[2], tmp_path / "m.onnx", opset=17, check=False)
    opsets = {o.domain: o.version for o in onnx.load(str(report.path)).opset_import}
    assert report.opset == 17 and opsets.get("", opsets.get("ai.onnx")) == 17
    assert report.max_abs_diff is None  # not checked: unknown, not zero
    assert json.loads(json.dumps(report.to_dict()))["max_abs_diff"] is None


def test_metadata_round_trips_in_both_formats(tmp_path):
    prep = preprocessing(in_channels=1, tile_size=24)
    checkpoint = write_checkpoint(tmp_path / "c.pt", 3, prep=prep)
    expected = {
        "architecture": {"name": "unet", "options": UNET_OPTIONS},
        "task": {"num_classes": 3, "threshold": 0.5},
        "class_names": ["background", "class1", "class2"],
        "preprocessing": json.loads(json.dumps(asdict(prep))),
        "size_multiple": 4,
    }
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        report = export_model(checkpoint, tmp_path / name, format=fmt, check=False)
        metadata = read_metadata(report.path)
        assert metadata == report.metadata
        assert {key: metadata[key] for key in expected} == expected
        assert segmenter_recipe(metadata) == (Task(3), expected["class_names"], prep)

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["unetkit"])["preprocessing"]["tile_size"] == 24


def test_a_trained_checkpoint_and_its_exports_record_how_the_test_was_scored(tmp_path):
    run = tmp_path / "run"
    tiny = ["--img-size", "32", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--precision", "fp32", "--no-channels-last", "data.synthetic_count=8",
            "model.options.base_width=4", "model.options.depth=2", "eval.tta=true",
            "eval.tta_check=false", "eval.report=false"]  # fmt: skip
    assert main(["train", "--out", str(run), *tiny]) == 0  # tta_check off: TTA as planned
    best = run / "checkpoints" / "best.pt"
    scored = json.loads((run / "metrics.json").read_text())["inference"]["config"]
    expected = InferenceConfig(
        window_size=32, tta=True, tta_flips=((), (-1,)), precision="fp32", channels_last=False
    )  # fmt: skip  (light: left-right flips only)
    assert InferenceConfig.from_dict(scored) == expected  # what the final test ran with
    assert InferenceConfig.from_dict(load_checkpoint(best)["inference"]) == expected
    assert Segmenter.from_checkpoint(best, device="cpu").inference_config() == expected
    untuned = Segmenter.from_checkpoint(best, device="cpu", tta=False, overlap=0.5)
    assert (untuned.tta, untuned.overlap, untuned.window_size) == (False, 0.5, (32, 32))
    loaders = {"onnx": load_onnx_segmenter, "torchscript": load_torchscript_segmenter}
    for fmt, load in loaders.items():
        report = export_model(best, tmp_path / f"m.{fmt}", format=fmt, check=False)
        assert InferenceConfig.from_dict(read_metadata(report.path)["inference"]) == expected
        assert load(report.path, device="cpu").inference_config() == expected
        assert load(report.path, device="cpu", mode="sliding").mode == "sliding"


def test_a_checkpoint_without_a_recorded_config_exports_and_runs_with_the_defaults(
    checkpoints, exports
):
    assert "inference" not in load_checkpoint(checkpoints[2])
    assert exports[2, "onnx"].metadata["inference"] is None
    segmenter = load_onnx_segmenter(exports[2, "onnx"].path, device="cpu")
    expected = InferenceConfig(window_size=IMG_SIZE)
    assert segmenter.inference_config() == expected
    assert Segmenter.from_checkpoint(checkpoints[2], device="cpu").inference_config() == expected


def assert_same_masks(expected: Segmenter, actual: Segmenter, images: list[np.ndarray]) -> None:
    """Equal masks wherever PyTorch is not within float noise of the decision boundary."""
    for image, (probs, mask), other in zip(
        images, expected.predict_with_proba(images), actual.predict(images), strict=True
    ):
        ranked = np.sort(probs, axis=0)
        margin = ranked[-1] - ranked[-2] if probs.shape[0] > 2 else np.abs(probs[1] - 0.5)
        decided = margin > 1e-4
        assert other.shape == image.shape[:2] and other.dtype == np.uint8
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(other[decided], mask[decided])
        assert len(np.unique(mask)) > 1  # a mix of classes, so the comparison means something


@pytest.mark.parametrize("num_classes", [2, 3])
def test_exported_segmenters_give_the_pytorch_masks(checkpoints, exports, num_classes):
    images = [rgb(37, 23, seed=1), rgb(16, 20, seed=2), rgb(61, 83, seed=3)]
    reference = Segmenter.from_checkpoint(checkpoints[num_classes], device="cpu", batch_size=2)
    onnx_segmenter = load_onnx_segmenter(exports[num_classes, "onnx"].path, batch_size=2)
    script_segmenter = load_torchscript_segmenter(
        exports[num_classes, "torchscript"].path, batch_size=2, device="cpu"
    )
    for segmenter in (onnx_segmenter, script_segmenter):
        assert segmenter.task == reference.task
        assert segmenter.class_names == reference.class_names
        assert segmenter.preprocessing == reference.preprocessing
        assert_same_masks(reference, segmenter, images)
    probs = onnx_segmenter.predict_proba(images[0])
    np.testing.assert_allclose(probs, reference.predict_proba(images[0]), atol=1e-5)


def test_segmenter_options_reach_the_onnx_segmenter(checkpoints, exports):
    options = {"mode": "sliding", "tta": True, "batch_size": 3}
    reference = Segmenter.from_checkpoint(checkpoints[3], device="cpu", **options)
    segmenter = load_onnx_segmenter(exports[3, "onnx"].path, device="cpu", **options)
    assert (segmenter.mode, segmenter.tta, segmenter.batch_size) == ("sliding", True, 3)
    assert_same_masks(reference, segmenter, [rgb(45, 52, seed=4)])


def test_resnet34_unet_exports_with_dynamic_padding(tmp_path):
    options = {"decoder_widths": [16, 16, 8, 8, 4]}
    checkpoint = write_checkpoint(tmp_path / "r.pt", 3, "resnet34-unet", options)
    report = export_model(checkpoint, tmp_path / "r.onnx")
    assert set(report.max_abs_diff) == {"16x20", "29x27"}
    assert all(d < TOLERANCE for d in report.max_abs_diff.values())
    images = torch.randn(1, 3, 83, 61, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model_from_checkpoint(checkpoint).model(images).numpy()
    assert np.abs(raw_onnx_logits(report.path, images) - expected).max() < TOLERANCE


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        (
            lambda logits, width: logits + (0.01 if width % 2 else 0.0),
            r"tolerance 0\.0001 .*: at 29x27 its logits differ by up to 0\.01\. The",
        ),
        (
            lambda logits, width: logits * float("nan"),
            r"at 16x20 its logits have a wrong shape or non-finite values; at 29x27 its",
        ),
        (lambda logits, width: logits[:, :, 1:], r"at 16x20 its logits have a wrong shape"),
    ],
    ids=["off-on-odd-widths", "nan", "cropped"],
)
def test_bad_parity_raises_names_the_size_and_leaves_no_file(
    checkpoints, tmp_path, monkeypatch, corruption, message
):
    real = export_module._exported_logits

    def corrupted(format, path):
        run = real(format, path)
        return lambda images: corruption(run(images), images.shape[-1])

    monkeypatch.setattr(export_module, "_exported_logits", corrupted)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportParityError, match=message + r".*export is not trustworthy"):
        export_model(checkpoints[2], out)
    assert list(out.parent.iterdir()) == []


def test_a_static_export_is_caught_by_the_parity_check(checkpoints, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def without_dynamic_axes(*args, **kwargs):
        return real_export(*args, **{**kwargs, "dynamic_axes": None})

    monkeypatch.setattr(torch.onnx, "export", without_dynamic_axes)
    with pytest.raises(ExportParityError, match=r"(?s)fails on a 2x3x16x20 input.*not trustworthy"):
        export_model(checkpoints[2], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_files_without_unetkit_metadata_are_refused(tmp_path):
    conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
    images = torch.randn(1, 3, 9, 7)
    plain = tmp_path / "plain.onnx"
    with quiet_tracing():
        torch.onnx.export(conv, (images,), str(plain), dynamo=False, input_names=["x"])
    with pytest.raises(ValueError, match="holds no unetkit metadata.*unetkit export"):
        load_onnx_segmenter(plain)
    with pytest.raises(ValueError, match="holds no unetkit metadata"):
        read_metadata(plain)
    with torch.no_grad():  # the wrapper itself still runs any ONNX model
        assert (OnnxModel(plain)(images) - conv(images)).abs().max() < 1e-5

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded as an ONNX model"):
        load_onnx_segmenter(garbage)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_onnx_segmenter(tmp_path / "missing.onnx")


def test_reflectable_agrees_with_torch_reflect_padding():
    # hand-computed: side 1 needs 3 pixels to reach 4, 2 of them on one side: too many to reflect
    assert [reflectable(side, 4) for side in (1, 2, 3, 4)] == [False, True, True, True]
    assert [reflectable(side, 32) for side in (5, 9, 16, 17)] == [False, False, True, True]
    for multiple in (4, 16, 32):
        for side in range(1, 3 * multiple):
            _, (_, _, top, bottom) = pad_to_multiple(torch.zeros(1, 1, side, 1), multiple)
            try:
                F.pad(torch.zeros(1, 1, side, 1), (0, 0, top, bottom), mode="reflect")
                torch_reflects = True
            except RuntimeError:
                torch_reflects = False
            assert reflectable(side, multiple) == torch_reflects, (side, multiple)


def test_onnx_model_explains_inputs_it_cannot_take(exports):
    model = OnnxModel(exports[2, "onnx"].path)
    assert model.to("cpu") is model and model.eval() is model
    with pytest.raises(ValueError, match=r"side of 1 pixels is too short .*; got 1x9"):
        model(torch.zeros(1, 3, 1, 9))
    with pytest.raises(
        ValueError, match=r"expects images shaped \(N, 3, H, W\); got \(1, 1, 8, 8\)"
    ):
        model(torch.zeros(1, 1, 8, 8))


def test_cuda_without_an_onnxruntime_provider_is_a_clear_error(exports):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(ValueError, match="install onnxruntime-gpu, or use device 'cpu'"):
        OnnxModel(exports[2, "onnx"].path, device="cuda")
    assert load_onnx_segmenter(exports[2, "onnx"].path).device == torch.device("cpu")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "tflite"}, "format must be one of onnx, torchscript, openvino; got 'tflite'"),
        ({"format": "torchscript", "opset": 17}, "opset applies to ONNX only"),
        ({"tolerance": 0.0}, "tolerance must be a positive number"),
    ],
)
def test_bad_export_arguments_are_clear_errors(checkpoints, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export_model(checkpoints[2], tmp_path / "m.onnx", **options)
    assert list(tmp_path.iterdir()) == []


def test_a_one_number_image_size_is_written_as_height_and_width(tmp_path):
    prep = Preprocessing((24,), (0.5,), (0.25,), 1)  # older checkpoints store img_size: [S]
    checkpoint = write_checkpoint(tmp_path / "c.pt", 2, prep=prep)
    report = export_model(checkpoint, tmp_path / "m.onnx")
    assert set(report.max_abs_diff) == {"24x24", "37x31"}  # 24 + 13 and 24 + 7
    assert read_metadata(report.path)["preprocessing"]["img_size"] == [24, 24]
