"""A checkpoint can never run code: every command that reads one refuses a pickle that names
anything beyond tensors and plain data, before that name is called."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from unetkit.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.training.reproducibility import capture_rng_state, restore_rng_state


class _CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: proof that a loader ran the payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def hostile(tmp_path):
    """A file that looks like a unetkit checkpoint and would create ``marker`` if unpickled."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "shared.pt"
    torch.save({"format": FORMAT, "model": {}, "trap": _CreatesAFile(str(marker))}, path)
    return path, marker


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--checkpoint", "{file}"],
        ["predict", "--checkpoint", "{file}", "--input", "{dir}/*.png", "--out", "{dir}/masks"],
        ["export", "--checkpoint", "{file}", "--out", "{dir}/model.onnx"],
        ["serve", "--checkpoint", "{file}", "--port", "1"],
        ["train", "--resume", "{file}", "--out", "{dir}/run"],
    ],
    ids=lambda command: command[0],
)
def test_every_command_refuses_a_payload_that_would_run(hostile, tmp_path, command, capsys):
    path, marker = hostile
    args = [part.format(file=path, dir=tmp_path) for part in command]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{path} is not a safe checkpoint" in error and "it names io.open" in error
    assert "add_safe_globals" not in error  # torch's advice to switch the check off is not ours
    assert not marker.exists()


def test_a_written_checkpoint_is_plain_data_and_loads_back(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    path = tmp_path / "plain.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "rng": state, "best": 0.5}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoints_of_the_previous_format_keep_loading_and_resuming(tmp_path):
    """Before the plain-data rule, NumPy's RNG state was stored as its array tuple."""
    np.random.seed(7)
    old_state = {"python": random.getstate(), "numpy": np.random.get_state(),
                 "torch": torch.get_rng_state()}  # fmt: skip
    path = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "format_version": 1, "rng": old_state}, path)
    expected = np.random.rand()
    restore_rng_state(load_checkpoint(path)["rng"])
    assert np.random.rand() == expected


@pytest.mark.parametrize("value", [np.float64(0.5), np.arange(3), {1, 2}])
def test_writing_refuses_what_reading_would_refuse(tmp_path, value):
    path = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\] is a numpy|builtins.set"):
        save_checkpoint({"history": [value]}, path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary remains


def _onnx_with_metadata(path, text: str) -> None:
    """A one-node ONNX model whose unetkit metadata entry is ``text``."""
    import onnx
    from onnx import TensorProto, helper

    from unetkit.inference.export import METADATA_KEY

    tensor = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, tensor)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, tensor)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: text})
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"format": "unetkit-onnx", "format_version": 1, "task": {"run": "os.system"}}',
         "malformed unetkit metadata (TypeError"),
        ('{"format": "unetkit-onnx", "format_version": 1, "task": {"num_classes": 2}}',
         "malformed unetkit metadata (KeyError"),
        ("[" * 2_000_000, "2,000,000 characters, more than the 1,000,000"),
        ("__import__('os').system('true')", "not valid JSON"),
    ],
)  # fmt: skip
def test_onnx_metadata_is_read_as_bounded_data(tmp_path, text, expected):
    from unetkit.inference.export import METADATA_FORMAT
    from unetkit.inference.onnx_backend import load_onnx_segmenter

    path = tmp_path / "model.onnx"
    _onnx_with_metadata(path, text.replace("unetkit-onnx", METADATA_FORMAT))
    with pytest.raises(ValueError, match="model.onnx") as error:
        load_onnx_segmenter(path, device="cpu")
    assert expected in str(error.value)
