"""OpenVINO IR export and runtime: parity with PyTorch, metadata in the IR, the same masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import checkpoint_payload, preprocessing, rgb, save_rgb, tiny_model
from PIL import Image

from unetkit.checkpoint import model_from_checkpoint, save_checkpoint
from unetkit.inference import export as export_module
from unetkit.inference.export import (
    ExportParityError,
    export_metadata,
    export_model,
    quiet_tracing,
    trace_example,
)
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import Task

pytest.importorskip("openvino")

from unetkit.inference import openvino_backend as ovb  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
UNSEEN_SIZES = [(3, 64, 96), (1, 83, 61), (2, 5, 7)]  # (batch, H, W)


def settled_checkpoint(path: Path, num_classes: int) -> Path:
    """A tiny random U-Net checkpoint whose BatchNorm holds its inputs' statistics (as after
    training), so float32 rounding stays far below the tolerance."""
    task = Task(num_classes)
    model = tiny_model(task)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    names = ["background", *(f"class{i}" for i in range(1, num_classes))]
    save_checkpoint(checkpoint_payload(model.eval(), task, names, preprocessing()), path)
    return path


def write_ir(checkpoint: Path, out: Path) -> Path:
    loaded = model_from_checkpoint(checkpoint)
    ovb.write_ir(loaded.model, trace_example(loaded), export_metadata(loaded), out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("openvino")
    checkpoint = settled_checkpoint(folder / "c.pt", 3)
    return {"checkpoint": checkpoint, "ir": write_ir(checkpoint, folder / "m.xml")}


def test_the_ir_is_dynamic_float32_and_matches_pytorch(exported):
    ir = exported["ir"]
    assert ir.is_file() and ovb.weights_of(ir).is_file()
    model = ovb.OpenVinoModel(ir)
    shape = model.graph.inputs[0].get_partial_shape()
    assert [str(d) for d in shape] == ["?", "3", "?", "?"] and model.in_channels == 3
    assert model.precision_hint == "f32"  # set explicitly: some CPUs default to bf16
    assert model.describe()["inference_precision_hint"] == "f32"
    types = {w.get_element_type().to_string() for w in _constants(model.graph)}
    assert "f32" in types and "f16" not in types  # weights saved in float32, not halved

    reference = model_from_checkpoint(exported["checkpoint"]).model
    generator = torch.Generator().manual_seed(5)
    for batch, height, width in UNSEEN_SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = reference(images)
        actual = model(images)
        assert actual.shape == (batch, 3, height, width)
        assert (actual - expected).abs().max() < TOLERANCE


def _constants(graph) -> list:
    return [op.output(0) for op in graph.get_ops() if op.get_type_name() == "Constant"]


def test_metadata_round_trips_in_the_ir(exported):
    loaded = model_from_checkpoint(exported["checkpoint"])
    metadata = ovb.read_openvino_metadata(exported["ir"])
    assert metadata == export_metadata(loaded)
    assert metadata["class_names"] == ["background", "class1", "class2"]
    assert metadata["preprocessing"]["img_size"] == [16, 20]
    segmenter = ovb.load_openvino_segmenter(exported["ir"])
    assert (segmenter.task, segmenter.class_names) == (loaded.task, loaded.class_names)
    assert segmenter.preprocessing == loaded.preprocessing
    assert segmenter.model.precision_hint == "f32"


def test_the_openvino_segmenter_gives_the_pytorch_masks(exported):
    images = [rgb(37, 23, seed=1), rgb(16, 20, seed=2), rgb(61, 83, seed=3)]
    options = {"mode": "sliding", "tta": True}
    reference = Segmenter.from_checkpoint(exported["checkpoint"], "cpu", 2, **options)
    segmenter = ovb.load_openvino_segmenter(exported["ir"], batch_size=2, **options)
    assert (segmenter.mode, segmenter.tta, segmenter.batch_size) == ("sliding", True, 2)
    for expected, actual in zip(
        reference.predict_proba(images), segmenter.predict_proba(images), strict=True
    ):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    masks = reference.predict(images)
    assert len(np.unique(np.concatenate([m.ravel() for m in masks]))) == 3  # a mix of classes


def test_files_without_metadata_or_weights_are_refused(exported, tmp_path):
    ov = ovb.openvino_module()
    conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1).eval()
    plain = tmp_path / "plain.xml"
    with quiet_tracing():
        ovb.save_ir(ov.convert_model(conv, example_input=torch.randn(1, 3, 8, 8)), plain)
    with pytest.raises(ValueError, match="holds no unetkit metadata"):
        ovb.load_openvino_segmenter(plain)
    images = torch.randn(1, 3, 8, 8)
    with torch.no_grad():  # the wrapper itself still runs any IR
        assert (ovb.OpenVinoModel(plain)(images) - conv(images)).abs().max() < 1e-5

    ovb.weights_of(plain).unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights file plain\.bin beside it"):
        ovb.OpenVinoModel(plain)
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("not a model")
    ovb.weights_of(garbage).write_bytes(b"")
    with pytest.raises(ValueError, match="could not be loaded as an OpenVINO model"):
        ovb.OpenVinoModel(garbage)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ovb.OpenVinoModel(tmp_path / "missing.xml")


def test_devices_and_precisions_openvino_cannot_run_are_clear_errors(exported):
    with pytest.raises(ValueError, match="on the CPU only; got device 'cuda'"):
        ovb.OpenVinoModel(exported["ir"], device="cuda")
    with pytest.raises(ValueError, match="must be one of fp32, bf16, fp16; got 'int4'"):
        ovb.OpenVinoModel(exported["ir"], precision="int4")
    model = ovb.OpenVinoModel(exported["ir"])
    with pytest.raises(
        ValueError, match=r"expects images shaped \(N, 3, H, W\); got \(1, 1, 8, 8\)"
    ):
        model(torch.zeros(1, 1, 8, 8))


def test_publish_moves_the_weights_before_the_graph(exported, tmp_path):
    with ovb.temporary_ir(tmp_path / "out.xml") as temporary:
        ovb.save_ir(ovb.read_ir(exported["ir"]), temporary)
        assert temporary.name.endswith(".tmp.xml") and ovb.weights_of(temporary).is_file()
        ovb.publish_ir(temporary, tmp_path / "out.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.xml"]
    with pytest.raises(ValueError, match=r"an OpenVINO export is an \.xml file"):
        ovb.publish_ir(tmp_path / "out.xml", tmp_path / "out.onnx")
    with ovb.temporary_ir(tmp_path / "other.xml") as temporary:
        ovb.save_ir(ovb.read_ir(exported["ir"]), temporary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.xml"]  # cleaned up


def test_export_writes_a_checked_ir_pair(exported, tmp_path):
    report = export_model(exported["checkpoint"], tmp_path / "m.xml", format="openvino")
    assert report.format == "openvino" and report.opset is None and report.quantization is None
    assert set(report.max_abs_diff) == {"16x20", "29x27"}
    assert all(0 <= d < TOLERANCE for d in report.max_abs_diff.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    assert ovb.read_openvino_metadata(report.path) == report.metadata


def test_a_failed_parity_check_leaves_neither_file(exported, tmp_path, monkeypatch):
    real = export_module._exported_logits
    monkeypatch.setattr(
        export_module, "_exported_logits", lambda fmt, path: lambda x: real(fmt, path)(x) + 0.01
    )
    with pytest.raises(ExportParityError, match="openvino export .* not written"):
        export_model(exported["checkpoint"], tmp_path / "out" / "m.xml", format="openvino")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(
        ValueError, match=r"an OpenVINO export is an \.xml file .* Use e\.g\. m\.xml"
    ):
        export_model(exported["checkpoint"], tmp_path / "m.onnx", format="openvino")


def test_predict_runs_an_ir_and_says_which_hint(exported, tmp_path, capsys):
    from unetkit.cli.main import main

    image = tmp_path / "in" / "a.png"
    save_rgb(image, 37, 23, seed=4)
    args = ["predict", "--exported", str(exported["ir"]), "--input", str(image.parent), "--out",
            str(tmp_path / "ov"), "--no-progress", "--no-colour"]  # fmt: skip
    assert main(args) == 0
    assert "backend: openvino fp32 (hint f32) (the runtime of the exported file)" in (
        capsys.readouterr().out
    )
    reference = Segmenter.from_checkpoint(exported["checkpoint"], "cpu", precision="fp32")
    expected = reference.predict(rgb(37, 23, seed=4))
    actual = np.asarray(Image.open(tmp_path / "ov" / "a.png"))
    assert np.mean(expected == actual) > 0.99


def test_bench_runs_openvino_with_an_explicit_hint():
    from unetkit.speed.bench import benchmark

    tiny = {"model_options": {"base_width": 4, "depth": 2}, "steps": 1, "warmup": 0}
    result = benchmark("unet", 32, 2, backend="openvino", **tiny)
    assert result["backend"] == "openvino" and result["inference_precision_hint"] == "f32"
    assert result["training"] is None and result["inference"]["images_per_s"] > 0
    with pytest.raises(ValueError, match="precision fp16 applies to the torch backend"):
        benchmark("unet", 32, 2, backend="openvino", precision="fp16", **tiny)
