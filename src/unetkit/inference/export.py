"""Export a checkpoint to ONNX, TorchScript or OpenVINO, with its recipe inside and its parity
proven; ONNX and OpenVINO also as static int8, guarded.

The exported file is self-describing: the model's architecture, task, class names, every
:class:`~unetkit.checkpoint.Preprocessing` field and the checkpoint's recorded inference config
(``inference``, see :mod:`unetkit.inference.options`; null for a checkpoint without one) travel
inside it as JSON (:data:`METADATA_KEY` in the ONNX ``metadata_props``, an extra file of that name
in a TorchScript archive, the IR's runtime info for OpenVINO), so a runtime needs nothing but the
file (:mod:`unetkit.inference.onnx_backend`, :mod:`unetkit.inference.openvino_backend`). An
OpenVINO export is an ``.xml`` with its ``.bin`` beside it, converted from the ONNX graph below.

Batch, height and width stay dynamic. The models pad inside ``forward`` to a multiple of
``2 ** depth`` and crop back; both formats are made by tracing, which records that padding
arithmetic on the input's shape rather than the numbers of the example, so any size works. The one
Python branch tracing freezes is reflect-versus-replicate padding: the files always reflect. PyTorch
does too, except on some sides no longer than half the size multiple (16 pixels or fewer for
``resnet34-unet``), where it repeats the edge pixels instead; the ONNX wrapper refuses those.

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``). The ``torch.export``-based
exporter (PyTorch's default since 2.9) gives the same dynamic graphs and the same numbers when
asked for ``Dim.DYNAMIC`` axes (named ``Dim``s fail on ``resnet34-unet``'s derived size
constraints), but takes 25 to 60 times longer: 4 to 6 s for a U-Net of base width 4 and 19 s for
``resnet34-unet``, against 0.1 s and 0.7 s. The parity check below would catch a difference
either way; should the older exporter be removed, ``onnx_bytes`` is the one function to change.

After writing, the file is loaded back and compared with the PyTorch model on random inputs of
two sizes, neither of them the traced one: the training size with a batch of two, and an odd size
that needs uneven padding. The largest absolute logit difference must stay below ``tolerance``
(1e-4); otherwise :class:`ExportParityError` is raised and no file is left behind, since the
export is written to a temporary file and renamed only once it passes. ``max_abs_diff`` is None
(not 0) when the check is skipped.

``quantize="int8"`` (ONNX and OpenVINO) then replaces the checked fp32 graph with its static int8
version, calibrated on the checkpoint's training images and kept only if, on its validation
images, it agrees with the fp32 model on at least 99% of the pixels and loses at most 0.5 points
of the headline metric (:mod:`unetkit.inference.quantize`); otherwise
:class:`~unetkit.inference.quantize.QuantizationGuardError` is raised, naming both numbers, and
no file is left. The report and the file's metadata (``quantization``) carry both numbers.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetkit import __version__
from unetkit.checkpoint import LoadedModel, model_metadata
from unetkit.inference.calibrated import (
    APPLIED_KEY,
    Sources,
    applied_calibration,
    load_model,
    source_names,
)
from unetkit.inference.ensemble import member_count
from unetkit.inference.options import RECORD_KEY, recorded_inference

FORMATS = ("onnx", "torchscript", "openvino")
METADATA_KEY = "unetkit"
METADATA_FORMAT = "unetkit-export"
METADATA_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_TOLERANCE = 1e-4

Logits = Callable[[torch.Tensor], torch.Tensor]


class ExportParityError(ValueError):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how closely the file reproduces PyTorch.

    ``max_abs_diff`` maps each checked size ``"HxW"`` to the largest absolute logit difference
    from PyTorch (of the fp32 graph); None when the check was skipped. ``opset`` is None for
    TorchScript and OpenVINO. ``quantization`` is the int8 record (method, calibration data,
    guard numbers), None for an fp32 export.
    """

    path: Path
    format: str
    opset: int | None
    max_abs_diff: dict[str, float] | None
    tolerance: float
    seconds: float
    metadata: dict[str, Any] = field(repr=False)
    quantization: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the metadata left out: it lives in the file)."""
        summary = asdict(self)
        summary.pop("metadata")
        return {**summary, "path": str(self.path)}


def export_model(
    checkpoint_path: Sources,
    out_path: str | Path,
    format: str = "onnx",
    opset: int | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: str | None = None,
    calibration: str | None = None,
    calibration_images: int | None = None,
    guard_images: int | None = None,
) -> ExportReport:
    """Export a unetkit checkpoint to ``out_path`` as ONNX, TorchScript or OpenVINO (an ``.xml``
    with its ``.bin``), checked for parity; with ``quantize="int8"``, static int8, guarded.

    ``opset`` (ONNX only) defaults to the exporter's; parity is checked at
    :func:`parity_sizes`. Raises :class:`ExportParityError` when the file is not trustworthy.
    ``calibration`` is the data root of the training data (None: the checkpoint's recorded one);
    ``calibration_images`` and ``guard_images`` cap the images used (see
    :mod:`unetkit.inference.quantize`).

    ``checkpoint_path`` may name several checkpoints (or a ``unetkit cv`` folder): their ensemble
    is one graph (:mod:`unetkit.inference.ensemble`, metadata ``ensemble.members``; fp32 only).
    A checkpoint's stored temperature and threshold (``checkpoint["calibration"]``) are baked in:
    ``logits / T`` in the graph, the threshold as the task's (see
    :mod:`unetkit.inference.calibrated`), so every runtime predicts as PyTorch does.
    """
    from unetkit.inference import quantize as int8

    started = time.perf_counter()
    out_path = Path(out_path)
    _check_arguments(format, opset, tolerance, out_path)
    int8.check_quantization(quantize, format, calibration)
    loaded = load_model(checkpoint_path)
    if quantize and member_count(loaded) > 1:
        raise ValueError(
            f"--quantize int8 exports one checkpoint; got an ensemble of {member_count(loaded)} "
            f"({source_names(checkpoint_path)}): export it in fp32, or quantise one member"
        )
    if quantize and loaded.task.is_multilabel:
        raise ValueError(
            f"--quantize int8 does not take multi-label models yet (its accuracy guard scores "
            f"class-id masks); {source_names(checkpoint_path)} is multi-label: export it in fp32"
        )
    checkpoint_path = source_names(checkpoint_path)
    metadata = export_metadata(loaded)
    data = None
    if quantize:  # the data first: a wrong root fails before anything is exported
        counts = {"calibration_images": calibration_images, "guard_images": guard_images}
        record = int8.run_split_record(checkpoint_path, calibration)
        data = int8.calibration_data(
            loaded, calibration, split_record=record, **{k: v for k, v in counts.items() if v}
        )
    quantization = None
    with _temporary_export(format, out_path) as temporary:
        written_opset = _write(format, loaded, metadata, temporary, opset)
        differences = None
        if check:
            sizes = parity_sizes(loaded)
            differences = _parity(loaded, _exported_logits(format, temporary), sizes)
            _require_parity(differences, tolerance, format, checkpoint_path)
        if data is not None:
            quantization = int8.quantize_in_place(
                format, temporary, loaded, metadata, data, checkpoint_path
            )
            metadata = {**metadata, int8.QUANTIZATION_KEY: quantization}
        _publish(format, temporary, out_path)
    seconds = time.perf_counter() - started
    return ExportReport(
        out_path, format, written_opset, differences, tolerance, seconds, metadata, quantization
    )


def _write(
    format: str, loaded: LoadedModel, metadata: dict[str, Any], path: Path, opset: int | None
) -> int | None:
    """Write the fp32 export of ``format``; the ONNX opset, None for the other formats."""
    example = trace_example(loaded)
    if format == "onnx":
        return _write_onnx(loaded.model, example, metadata, path, opset)
    if format == "openvino":
        from unetkit.inference.openvino_backend import write_ir

        write_ir(loaded.model, example, metadata, path)
    else:
        _write_torchscript(loaded.model, example, metadata, path)
    return None


def _temporary_export(format: str, path: Path) -> AbstractContextManager[Path]:
    """Where the export is written before it is checked: an IR pair for OpenVINO."""
    if format == "openvino":
        from unetkit.inference.openvino_backend import temporary_ir

        return temporary_ir(path)
    return _temporary_sibling(path)


def _publish(format: str, temporary: Path, path: Path) -> None:
    """Move a checked export into place (renamed, so ``path`` is never half written)."""
    if format == "openvino":
        from unetkit.inference.openvino_backend import publish_ir

        publish_ir(temporary, path)
    else:
        os.replace(temporary, path)


def export_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """The JSON-ready description stored in an exported file: all a runtime needs besides it."""
    architecture = loaded.checkpoint["architecture"]
    description = model_metadata(
        architecture["name"],
        architecture["options"],
        loaded.task,
        loaded.class_names,
        loaded.preprocessing,
    )
    return {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "unetkit_version": __version__,
        **description,
        "size_multiple": getattr(loaded.model, "size_multiple", None),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "channels": loaded.task.out_channels},
        RECORD_KEY: _recorded_inference(loaded.checkpoint),
        **_ensemble_and_calibration(loaded),
    }


def _ensemble_and_calibration(loaded: LoadedModel) -> dict[str, Any]:
    """``ensemble: {members: k}`` for an ensemble, ``calibrated`` (the temperatures in the graph,
    the threshold in ``task``) for a calibrated model; nothing for a plain checkpoint."""
    record: dict[str, Any] = {}
    if member_count(loaded) > 1:
        record["ensemble"] = {"members": member_count(loaded)}
    if applied_calibration(loaded.checkpoint) is not None:
        record[APPLIED_KEY] = {**applied_calibration(loaded.checkpoint), "in_graph": True}
    return record


def _recorded_inference(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's inference config, checked and in today's words; None if it has none."""
    if checkpoint.get(RECORD_KEY) is None:
        return None
    return recorded_inference(checkpoint, "the checkpoint").to_dict()


def parity_sizes(loaded: LoadedModel) -> list[tuple[int, int]]:
    """The default parity sizes ``(H, W)``: the training size, then an odd size above it."""
    height, width = loaded.preprocessing.img_size
    return [(height, width), (_odd_above(height, 13), _odd_above(width, 7))]


def _check_arguments(format: str, opset: int | None, tolerance: float, out: Path) -> None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "openvino" and out.suffix != ".xml":
        raise ValueError(
            f"an OpenVINO export is an .xml file (its weights go beside it as .bin); got --out "
            f"{out}. Use e.g. {out.with_suffix('.xml').name}"
        )
    if opset is not None and format != "onnx":
        raise ValueError(f"opset applies to ONNX only; got opset={opset} with format={format!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number; got {tolerance!r}")


def _odd_above(size: int, offset: int) -> int:
    """An odd size ``offset`` or so above ``size``: it needs uneven padding in every model."""
    return 2 * (size // 2) + offset


def trace_example(loaded: LoadedModel) -> torch.Tensor:
    """The tracing input: larger than either parity size (so never one of them), and large
    enough that padding reflects."""
    multiple = getattr(loaded.model, "size_multiple", 1)
    height, width = loaded.preprocessing.img_size
    size = (_odd_above(max(height, multiple), 15), _odd_above(max(width, multiple), 9))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, loaded.preprocessing.in_channels, *size, generator=generator)


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence the warnings tracing and TorchScript always give here; see the module doc.

    Tracing warns about the input check and the reflect/replicate choice it freezes, and that the
    TorchScript tools are deprecated; none of it is actionable for the person exporting.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*(legacy TorchScript|torch\.jit).*")
        yield


@contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """An unused name next to ``path`` (same file system, so renaming is atomic); whatever was
    written there is removed afterwards unless it was renamed into place.

    The writers create the file, so it gets the usual permissions rather than mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _write_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    metadata: dict[str, Any],
    path: Path,
    opset: int | None,
) -> int:
    """Write the ONNX file with dynamic batch, height and width; return the opset used."""
    onnx = _import_onnx()
    proto = onnx.load_model_from_string(onnx_bytes(model, example, opset))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)
    onnx.save_model(proto, str(path))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int | None = None) -> bytes:
    """The serialized ONNX graph, dynamic in batch, height and width, from PyTorch's
    TorchScript-based exporter (see the module docstring); no metadata, no check."""
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _write_torchscript(
    model: torch.nn.Module, example: torch.Tensor, metadata: dict[str, Any], path: Path
) -> None:
    """Write a traced TorchScript archive with the metadata as an extra file."""
    with quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        extra = {METADATA_KEY: json.dumps(metadata, default=str)}
        torch.jit.save(traced, str(path), _extra_files=extra)


def _exported_logits(format: str, path: Path) -> Logits:
    """A function running the exported file: what the parity check compares with PyTorch."""
    if format == "onnx":
        from unetkit.inference.onnx_backend import OnnxModel

        return OnnxModel(path, device="cpu")
    if format == "openvino":
        from unetkit.inference.openvino_backend import OpenVinoModel

        return OpenVinoModel(path, device="cpu")  # the f32 hint: the graph as exported
    with quiet_tracing():
        return torch.jit.load(str(path), map_location="cpu").eval()


def _parity(
    loaded: LoadedModel, exported: Logits, sizes: Sequence[tuple[int, int]]
) -> dict[str, float]:
    """The largest absolute logit difference per size; the first size runs a batch of two."""
    generator = torch.Generator().manual_seed(1)
    channels = loaded.preprocessing.in_channels
    differences: dict[str, float] = {}
    for index, (height, width) in enumerate(sizes):
        batch = torch.randn(2 if index == 0 else 1, channels, height, width, generator=generator)
        with torch.no_grad():
            expected = loaded.model(batch)
            try:
                actual = exported(batch)
            except Exception as error:  # ONNX Runtime and TorchScript raise their own types
                raise ExportParityError(
                    f"the exported model fails on a {len(batch)}x{channels}x{height}x{width} input "
                    f"({error}); it is not trustworthy and was not written"
                ) from error
        differences[f"{height}x{width}"] = _max_abs_difference(expected, actual)
    return differences


def _max_abs_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """The largest absolute difference; infinite for a shape mismatch or non-finite values."""
    if expected.shape != actual.shape:
        return float("inf")
    difference = (expected.float() - actual.float()).abs()
    return float(difference.max()) if bool(torch.isfinite(difference).all()) else float("inf")


def _require_parity(
    differences: dict[str, float], tolerance: float, format: str, checkpoint: str | Path
) -> None:
    failed = {size: d for size, d in differences.items() if not d < tolerance}
    if not failed:
        return
    details = "; ".join(_difference_text(size, d) for size, d in failed.items())
    raise ExportParityError(
        f"the {format} export of {checkpoint} does not reproduce the PyTorch model "
        f"(tolerance {tolerance:g} on the largest absolute logit difference): {details}. The "
        f"export is not trustworthy and was not written; try the other format or another "
        f"opset, or report the model's architecture"
    )


def _difference_text(size: str, difference: float) -> str:
    if difference == float("inf"):
        return f"at {size} its logits have a wrong shape or non-finite values"
    return f"at {size} its logits differ by up to {difference:.3g}"


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx package (and onnxruntime to check it): "
            "pip install onnx onnxruntime"
        ) from error
    return onnx
