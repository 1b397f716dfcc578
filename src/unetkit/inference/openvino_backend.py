"""Run exported models with OpenVINO, Intel's CPU runtime, through the ordinary Segmenter.

An OpenVINO export is an IR pair: ``model.xml`` (the graph) beside ``model.bin`` (its weights,
kept in float32: OpenVINO's own saver would halve them to float16 by default). The graph is
converted from the very ONNX graph :mod:`unetkit.inference.export` writes, so it is dynamic in
batch, height and width, and the unetkit metadata travels in the IR's runtime info (key
:data:`~unetkit.inference.export.METADATA_KEY`, the same JSON as in an ONNX file), read back and
checked as the ONNX loaders do.

:class:`OpenVinoModel` acts like the PyTorch model the Segmenter expects, as
:class:`~unetkit.inference.onnx_backend.OnnxModel` does for ONNX Runtime, so resizing, sliding
windows, TTA and post-processing are the code every backend goes through.

Precision: OpenVINO's CPU plugin runs a model in the inference precision its hint names, and on a
CPU with bf16 units (AVX-512 BF16 or AMX) that hint defaults to bf16, not f32: a plain
``compile_model`` does not compute the float32 graph it was given. So :class:`OpenVinoModel`
always sets ``INFERENCE_PRECISION_HINT`` (``precision="fp32"`` by default, the exact path the
parity check holds to) and reports the hint the compiled model runs in
(:attr:`OpenVinoModel.precision_hint`). ``bf16`` is there to ask for; where a CPU has no bf16
units OpenVINO runs f32 and says so in that attribute. OpenVINO runs on the CPU only here.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from unetkit.inference.export import METADATA_KEY, onnx_bytes
from unetkit.inference.onnx_backend import (
    OnnxModel,
    _decoded,
    _require_metadata,
    segmenter_recipe,
)
from unetkit.inference.options import recorded_options
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.sliding_window import DEFAULT_BATCH_SIZE

# unetkit's precision words -> OpenVINO's inference precision hints
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
DEFAULT_PRECISION = "fp32"


class OpenVinoModel:
    """An OpenVINO IR callable like a PyTorch segmentation model: logits for NCHW float32 images.

    ``precision`` picks the inference precision hint (see the module docstring); ``threads``
    sets OpenVINO's CPU threads (None: its own default). The logits come back on the input's
    device (always the CPU here).
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        precision: str = DEFAULT_PRECISION,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = _cpu_only(device, self.path)
        self.precision = check_precision_word(precision)
        self.graph = read_ir(self.path)
        self.metadata = ir_metadata(self.path, self.graph)
        self.compiled = compile_ir(self.graph, precision, threads)
        self.precision_hint = compiled_hint(self.compiled)
        channels = self.graph.inputs[0].get_partial_shape()[1]
        self.in_channels = channels.get_length() if channels.is_static else None
        self.size_multiple = (self.metadata or {}).get("size_multiple")

    def to(self, device: str | torch.device) -> OpenVinoModel:
        """Stay on the CPU; any other device is an error naming the fix."""
        self.device = _cpu_only(device, self.path)
        return self

    def eval(self) -> OpenVinoModel:
        """Nothing to switch: an exported graph is always in inference mode."""
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` of images ``(N, in_channels, H, W)``."""
        OnnxModel._check_input(self, images)  # type: ignore[arg-type]  # the same rules as ONNX
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.compiled(array)[0]
        return torch.from_numpy(logits.copy()).to(images.device)

    def describe(self) -> dict[str, Any]:
        """What runs: backend, the precision asked and the hint OpenVINO compiled with."""
        return {
            "backend": "openvino",
            "precision": self.precision,
            "inference_precision_hint": self.precision_hint,
            "openvino_version": openvino_module().__version__,
        }


def load_openvino_segmenter(
    path: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    openvino_precision: str = DEFAULT_PRECISION,
    **options: Any,
) -> Segmenter:
    """A :class:`Segmenter` running an exported OpenVINO IR (``model.xml``).

    ``options`` are the Segmenter's keyword options; those not given are the file's recorded
    inference config. ``openvino_precision`` is OpenVINO's inference precision (fp32 default).
    """
    device = "cpu" if device == "auto" else device
    model = OpenVinoModel(path, device=device, precision=openvino_precision)
    metadata = _require_metadata(model.path, model.metadata)
    task, class_names, preprocessing = segmenter_recipe(metadata, model.path)
    options = recorded_options(metadata, str(model.path), **options)
    return Segmenter(
        model, task, class_names, preprocessing, device=device, batch_size=batch_size, **options
    )


def read_openvino_metadata(path: str | Path) -> dict[str, Any]:
    """The unetkit metadata of an OpenVINO IR, or an error saying why not."""
    path = Path(path)
    return _require_metadata(path, ir_metadata(path, read_ir(path)))


def check_precision_word(precision: str) -> str:
    if precision not in PRECISION_HINTS:
        raise ValueError(
            f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}; got {precision!r}"
        )
    return precision


def compile_ir(graph: Any, precision: str = DEFAULT_PRECISION, threads: int | None = None) -> Any:
    """The graph compiled for the CPU with an explicit inference precision hint."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return openvino_module().Core().compile_model(graph, "CPU", config)


def compiled_hint(compiled: Any) -> str:
    """The inference precision a compiled model runs in, in OpenVINO's words (f32, bf16, f16)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


# --- the IR on disk ----------------------------------------------------------------------------


def read_ir(path: Path) -> Any:
    """The OpenVINO model of ``path`` (an ``.xml`` with its ``.bin``), with errors that say what
    the file is not."""
    ov = openvino_module()
    if not path.is_file():
        raise FileNotFoundError(f"OpenVINO model {path} does not exist")
    if not weights_of(path).is_file():
        raise FileNotFoundError(
            f"OpenVINO model {path} has no weights file {weights_of(path).name} beside it; keep "
            f"the .xml and .bin of an export together"
        )
    try:
        return ov.Core().read_model(str(path), str(weights_of(path)))
    except Exception as error:  # OpenVINO raises its own exception types for unreadable files
        raise ValueError(
            f"{path} could not be loaded as an OpenVINO model ({error}); pass a file written by "
            f"'unetkit export --format openvino'"
        ) from error


def ir_metadata(path: Path, graph: Any) -> dict[str, Any] | None:
    """The decoded unetkit metadata in the IR's runtime info; None when it has none."""
    if not graph.has_rt_info([METADATA_KEY]):
        return None
    return _decoded(path, str(graph.get_rt_info([METADATA_KEY]).astype(str)))


def write_ir(
    model: torch.nn.Module, example: torch.Tensor, metadata: dict[str, Any], path: Path
) -> None:
    """Write the IR of ``model``'s dynamic ONNX graph (traced on ``example``) to ``path``."""
    save_ir(onnx_to_ir(onnx_bytes(model, example), metadata), path)


def onnx_to_ir(onnx_model: bytes, metadata: dict[str, Any]) -> Any:
    """The OpenVINO model of a serialized ONNX graph, carrying ``metadata``."""
    graph = openvino_module().Core().read_model(io.BytesIO(onnx_model))
    set_metadata(graph, metadata)
    return graph


def set_metadata(graph: Any, metadata: dict[str, Any]) -> None:
    graph.set_rt_info(json.dumps(metadata, default=str), [METADATA_KEY])


def save_ir(graph: Any, path: Path) -> None:
    """Write ``path`` (.xml) and its .bin, weights kept in float32 (not OpenVINO's default f16)."""
    openvino_module().save_model(graph, str(path), compress_to_fp16=False)


def weights_of(path: Path) -> Path:
    """The ``.bin`` beside an IR's ``.xml``."""
    return path.with_suffix(".bin")


@contextmanager
def temporary_ir(path: Path) -> Iterator[Path]:
    """An unused ``.xml`` name next to ``path`` (same file system); the pair written there is
    removed afterwards unless :func:`publish_ir` moved it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp.xml")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)
        weights_of(temporary).unlink(missing_ok=True)


def publish_ir(temporary: Path, path: Path) -> None:
    """Rename a written pair into place, weights first, so an ``.xml`` never lacks its ``.bin``."""
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO export is an .xml file (with its .bin); got {path}")
    os.replace(weights_of(temporary), weights_of(path))
    os.replace(temporary, path)


def _cpu_only(device: str | torch.device, path: Path) -> torch.device:
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(
            f"unetkit runs OpenVINO models ({path.name}) on the CPU only; got device "
            f"{str(device)!r}. Use device 'cpu', or --backend onnxruntime / torch for a GPU"
        )
    return device


def openvino_module() -> Any:
    """The openvino package, or an ImportError saying how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            "running OpenVINO models needs openvino: pip install 'unetkit[openvino]' "
            "(or pip install openvino)"
        ) from error
    return openvino
