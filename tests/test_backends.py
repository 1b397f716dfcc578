"""Which runtime runs a model: asked for by name, by an exported file's kind, or the fastest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import checkpoint_payload, preprocessing, rgb, tiny_model

from unetkit.checkpoint import save_checkpoint
from unetkit.inference import backends
from unetkit.inference.backends import MARGIN, load_segmenter
from unetkit.inference.export import export_model
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGES = [rgb(37, 23, seed=1), rgb(16, 20, seed=2)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    task = Task(3)
    model = tiny_model(task).eval()
    names = ["background", "a", "b"]
    path = tmp_path_factory.mktemp("backends") / "c.pt"
    save_checkpoint(checkpoint_payload(model, task, names, preprocessing()), path)
    return path


def assert_pytorch_masks(checkpoint: Path, segmenter: Segmenter) -> None:
    reference = Segmenter.from_checkpoint(checkpoint, "cpu", precision="fp32")
    for expected, actual in zip(reference.predict(IMAGES), segmenter.predict(IMAGES), strict=True):
        assert np.mean(expected == actual) > 0.99


def timings(by_label: dict[str, float], others: float | None = None):
    """A timer that answers from a table instead of measuring (``others`` for the rest)."""
    return lambda label, run: by_label[label] if others is None else by_label.get(label, others)


def test_an_exported_file_runs_with_the_runtime_of_its_kind(checkpoint, tmp_path):
    onnx_file = export_model(checkpoint, tmp_path / "m.onnx").path
    segmenter, choice = load_segmenter("auto", exported=onnx_file, device="cpu")
    assert (choice.backend, choice.label) == ("onnxruntime", "onnxruntime fp32")
    assert choice.reason == "the runtime of the exported file" and not choice.seconds
    assert_pytorch_masks(checkpoint, segmenter)
    with pytest.raises(ValueError, match=r"m\.onnx is run by --backend onnxruntime .* not"):
        load_segmenter("openvino", exported=onnx_file)
    with pytest.raises(ValueError, match=r"not an export unetkit knows by its suffix"):
        load_segmenter("auto", exported=tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="give --checkpoint"):
        load_segmenter("auto")
    with pytest.raises(ValueError, match="backend must be one of auto, torch"):
        load_segmenter("tensorrt", checkpoint=checkpoint)


def test_a_checkpoint_is_exported_on_the_fly_for_another_runtime(checkpoint):
    segmenter, choice = load_segmenter("onnxruntime", checkpoint=checkpoint, device="cpu")
    assert (choice.backend, choice.label, choice.reason) == (
        "onnxruntime",
        "onnxruntime fp32",
        "as asked",
    )
    assert type(segmenter.model).__name__ == "OnnxModel"
    assert_pytorch_masks(checkpoint, segmenter)


def test_auto_keeps_the_fastest_path_and_says_which(checkpoint, monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda backend: backend == "onnxruntime")
    fast = timings({"torch fp32": 1.0, "onnxruntime fp32": 0.5})
    segmenter, choice = load_segmenter(
        "auto", checkpoint=checkpoint, device="cpu", timer=fast, precision="fp32"
    )
    assert (choice.backend, choice.label) == ("onnxruntime", "onnxruntime fp32")
    assert choice.seconds == {"torch fp32": 1.0, "onnxruntime fp32": 0.5}
    assert choice.describe() == (
        "backend: onnxruntime fp32 (the fastest of 2 paths probed on a batch of 8); seconds per "
        "batch: torch fp32 1.0000, onnxruntime fp32 0.5000"
    )
    assert type(segmenter.model).__name__ == "OnnxModel"

    slow = timings({"torch fp32": 1.0, "onnxruntime fp32": 1.0 - MARGIN / 2})  # within the noise
    segmenter, choice = load_segmenter(
        "auto", checkpoint=checkpoint, device="cpu", timer=slow, precision="fp32"
    )
    assert (choice.backend, choice.label) == ("torch", "torch fp32")
    assert choice.reason == "no other runtime was 5% faster on a batch of 8"
    assert isinstance(segmenter.model, torch.nn.Module)


def test_auto_is_pytorch_where_nothing_else_is_installed(checkpoint, monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda backend: False)
    never = timings({})  # nothing to time: one path
    _, choice = load_segmenter("auto", checkpoint=checkpoint, device="cpu", timer=never)
    assert (choice.backend, choice.reason) == ("torch", "no other runtime is installed")


def test_openvino_joins_the_probe_with_its_hints(checkpoint, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(backends, "_cpu_has_bf16", lambda: False)  # any CPU: f32 only
    fast = timings({"openvino fp32 (hint f32)": 0.4, "onnxruntime fp32": 0.8}, others=1.0)
    segmenter, choice = load_segmenter(
        "auto", checkpoint=checkpoint, device="cpu", timer=fast, precision="auto"
    )
    assert choice.label == "openvino fp32 (hint f32)" and choice.backend == "openvino"
    assert list(choice.seconds)[1:] == ["onnxruntime fp32", "openvino fp32 (hint f32)"]
    assert list(choice.seconds)[0].startswith("torch ")  # fp32 or bf16: what auto measured
    assert segmenter.model.precision_hint == "f32"
    assert_pytorch_masks(checkpoint, segmenter)

    monkeypatch.setattr(backends, "_cpu_has_bf16", lambda: True)
    assert backends._paths("auto")[-2:] == [("openvino", "fp32"), ("openvino", "bf16")]
    assert backends._paths("fp32") == [("torch", "fp32"), ("onnxruntime", "fp32"),
                                       ("openvino", "fp32")]  # fmt: skip
