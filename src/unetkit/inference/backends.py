"""Which runtime runs a model: PyTorch, ONNX Runtime or OpenVINO, asked for or the fastest.

:func:`load_segmenter` turns a backend name and a model (a checkpoint, or an exported file) into
a :class:`~unetkit.inference.segmenter.Segmenter` and a :class:`BackendChoice` saying what runs:

- an **exported file** runs with the runtime of its kind (``.onnx`` ONNX Runtime, ``.xml``
  OpenVINO, ``.pt`` / ``.ts`` TorchScript), int8 or fp32 as it was exported (an int8 file passed
  the export's accuracy guard);
- a **checkpoint** runs with PyTorch (``torch``), or is exported to a temporary folder for
  ``onnxruntime`` / ``openvino``, through :func:`~unetkit.inference.export.export_model` and so
  its parity check (fp32, 1e-4);
- ``auto`` with a checkpoint builds every path the installed packages allow (PyTorch in the
  precision asked; ONNX Runtime fp32; OpenVINO with the f32 hint, and with precision ``auto``
  also the bf16 hint where the CPU has bf16 units, as PyTorch's ``auto`` may pick bf16), times
  each model on one batch of random inputs of ``batch_size`` at the window size
  (:func:`probe_seconds`: one untimed call, the median of three) and only the fastest becomes
  the Segmenter. PyTorch, the trained model itself, is kept unless another path is
  :data:`MARGIN` faster, so probe noise never swaps it for an equal one; on a CPU where no
  other runtime is faster, PyTorch runs. int8 is never made on the fly: it needs calibration
  data and the guard, so export it (``unetkit export --quantize int8``) and pass the file.
  On a GPU ``auto`` is PyTorch.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetkit.checkpoint import LoadedModel
from unetkit.devices import resolve_device
from unetkit.inference.calibrated import Sources, load_model, source_names, with_threshold
from unetkit.inference.options import InferenceConfig, recorded_options
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.sliding_window import DEFAULT_BATCH_SIZE
from unetkit.precision import Execution, choose_execution, detect_capabilities
from unetkit.precision_probe import inference_timer

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "torchscript")
RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".pt": "torchscript",
                     ".ts": "torchscript"}  # fmt: skip
PACKAGE_OF = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
MARGIN = 0.05  # another runtime must beat PyTorch by this fraction to be chosen
PROBE_STEPS = 3

Timer = Callable[[str, Callable[[], object]], float]  # (path label, one call) -> seconds


@dataclass
class BackendChoice:
    """What runs a Segmenter, and why: ``seconds`` per probed batch when ``auto`` measured."""

    backend: str
    label: str  # the path, e.g. "openvino fp32 (hint f32)" or "onnxruntime int8"
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    folder: Any = field(default=None, repr=False)  # keeps a temporary export alive

    def describe(self) -> str:
        """One line for the terminal or the log: the path, why, and the probe's figures."""
        text = f"backend: {self.label} ({self.reason})"
        if self.seconds:
            text += "; seconds per batch: " + ", ".join(
                f"{label} {value:.4f}" for label, value in self.seconds.items()
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "label": self.label,
            "reason": self.reason,
            "seconds": dict(self.seconds),
        }


def load_segmenter(
    backend: str = "auto",
    checkpoint: Sources | None = None,
    exported: str | Path | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    timer: Timer | None = None,
    threshold: float | None = None,
    **options: Any,
) -> tuple[Segmenter, BackendChoice]:
    """The Segmenter of ``exported`` (when given) or ``checkpoint`` (one, several as an
    ensemble, or a ``unetkit cv`` folder; calibrated as stored), run by ``backend``.

    ``threshold`` overrides the stored (or exported) binary threshold; ``options`` are the
    Segmenter's keyword options; ``timer`` replaces :func:`probe_seconds` (tests inject timings).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if exported is not None:
        path = Path(exported)
        segmenter, choice = _exported_segmenter(backend, path, device, batch_size, options)
        segmenter.task = with_threshold(segmenter.task, threshold, "--threshold")
        return segmenter, choice
    if checkpoint is None:
        if backend in ("auto", "torch"):
            raise ValueError(
                "give --checkpoint RUN/checkpoints/best.pt or --exported FILE (.onnx, .xml, .pt)"
            )
        raise ValueError(
            f"--backend {backend} needs --exported FILE (see unetkit export), or --checkpoint "
            f"RUN/checkpoints/best.pt to export on the fly"
        )
    if backend == "torchscript":
        raise ValueError("--backend torchscript runs an exported file: add --exported FILE.pt")
    loaded = load_model(checkpoint, threshold)
    if backend == "auto":
        return _fastest(loaded, checkpoint, device, batch_size, timer or probe_seconds, options)
    if backend == "torch":
        segmenter = Segmenter.from_loaded(loaded, device, batch_size, **options)
        return segmenter, BackendChoice("torch", path_label(segmenter, "torch"), "as asked")
    folder = tempfile.TemporaryDirectory(prefix="unetkit-")
    model = _exported_model(backend, _hint(options), checkpoint, Path(folder.name))
    segmenter = _runtime_segmenter(model, loaded, options, source_names(checkpoint), batch_size)
    choice = BackendChoice(backend, path_label(segmenter, backend), "as asked", folder=folder)
    return segmenter, choice


def member_count_of(segmenter: Segmenter) -> int:
    """How many models ``segmenter`` averages: a PyTorch ensemble's members, or what an
    exported file's metadata records (1 for a single model)."""
    members = getattr(segmenter.model, "members", None)
    if members is not None:
        return len(members)
    metadata = getattr(segmenter.model, "metadata", None) or {}
    return int((metadata.get("ensemble") or {}).get("members", 1))


def runtime_of(path: Path) -> str:
    """The runtime an exported file needs, from its suffix."""
    try:
        return RUNTIME_OF_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path} is not an export unetkit knows by its suffix ({', '.join(RUNTIME_OF_SUFFIX)})"
            f"; write one with 'unetkit export', or pass --checkpoint for a PyTorch checkpoint"
        ) from None


def installed(backend: str) -> bool:
    """Whether the package a backend needs can be imported (PyTorch always can)."""
    package = PACKAGE_OF.get(backend)
    return package is None or importlib.util.find_spec(package) is not None


def probe_seconds(label: str, run: Callable[[], object], steps: int = PROBE_STEPS) -> float:
    """Median seconds of ``run`` (one model call on the probe batch) after one untimed call;
    ``label`` names the path (unused here: an injected timer may read it)."""
    run()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def path_label(segmenter: Segmenter, backend: str) -> str:
    """``torch bf16+channels-last``, ``onnxruntime int8``, ``openvino fp32 (hint f32)`` ..."""
    if backend == "torch":
        return f"torch {segmenter.execution.label}"
    return _model_label(backend, segmenter.model)


def choose_fastest(runs: dict[str, Callable[[], object]], timer: Timer) -> tuple[str, dict]:
    """The label of the fastest path, and every path's seconds; the first (PyTorch, the trained
    model itself) stays unless another is :data:`MARGIN` faster."""
    seconds = {label: timer(label, run) for label, run in runs.items()}
    reference = next(iter(seconds))
    best = min(seconds, key=seconds.__getitem__)
    if seconds[best] > (1 - MARGIN) * seconds[reference]:
        best = reference
    return best, seconds


def _fastest(
    loaded: LoadedModel,
    checkpoint: Sources,
    device: str,
    batch_size: int,
    timer: Timer,
    options: dict[str, Any],
) -> tuple[Segmenter, BackendChoice]:
    """``auto`` for the model ``loaded`` of ``checkpoint``: every installed path's model timed on
    one batch of random inputs at the window size; only the fastest becomes a Segmenter."""
    config = InferenceConfig(
        **recorded_options(loaded.checkpoint, source_names(checkpoint), **options)
    )
    window = config.window_size or loaded.preprocessing.img_size
    shape = (batch_size, loaded.preprocessing.in_channels, *window)
    on = resolve_device(device)
    execution = _torch_execution(loaded, config, shape, on)
    torch_label = f"torch {execution.label}"
    paths = _paths(config.precision)
    if on.type != "cpu" or len(paths) == 1:
        reason = "on a GPU PyTorch runs" if on.type != "cpu" else "no other runtime is installed"
        segmenter = _torch_segmenter(loaded, device, batch_size, options, execution)
        return segmenter, BackendChoice("torch", torch_label, reason)
    folder = tempfile.TemporaryDirectory(prefix="unetkit-")
    models = {torch_label: execution.prepare(loaded.model.to(on))}
    for backend, precision in paths[1:]:
        model = _exported_model(backend, precision, checkpoint, Path(folder.name))
        models[_model_label(backend, model)] = model
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(on)
    best, seconds = choose_fastest(
        {label: _call(model, batch, execution) for label, model in models.items()}, timer
    )
    if best == torch_label:
        segmenter = _torch_segmenter(loaded, device, batch_size, options, execution)
        reason = f"no other runtime was {MARGIN:.0%} faster on a batch of {batch_size}"
    else:
        where = source_names(checkpoint)
        segmenter = _runtime_segmenter(models[best], loaded, options, where, batch_size)
        reason = f"the fastest of {len(seconds)} paths probed on a batch of {batch_size}"
    return segmenter, BackendChoice(best.split()[0], best, reason, seconds, folder)


def _runtime_segmenter(
    model: Any, loaded: LoadedModel, options: dict[str, Any], where: str, batch_size: int
) -> Segmenter:
    """A Segmenter around an exported model of ``loaded``, on the CPU, as the checkpoint
    records unless ``options`` say otherwise (PyTorch's execution options left out)."""
    run = recorded_options(loaded.checkpoint, where, **_exact(options))
    recipe = (loaded.task, loaded.class_names, loaded.preprocessing)
    return Segmenter(model, *recipe, "cpu", batch_size, **_exact(run))


def _hint(options: dict[str, Any]) -> str:
    """OpenVINO's precision for the asked one: as asked where it can, else fp32."""
    precision = options.get("precision", "fp32")
    return precision if precision in ("fp32", "bf16", "fp16") else "fp32"


def _torch_segmenter(
    loaded: LoadedModel,
    device: str,
    batch_size: int,
    options: dict[str, Any],
    execution: Execution,
) -> Segmenter:
    """The PyTorch Segmenter in the execution already measured (not probed a second time)."""
    fixed = {"precision": execution.precision, "channels_last": execution.channels_last}
    return Segmenter.from_loaded(loaded, device, batch_size, **{**options, **fixed})


def _torch_execution(
    loaded: LoadedModel, config: InferenceConfig, shape: tuple[int, ...], device: torch.device
) -> Execution:
    """The precision and layout PyTorch runs in: as asked, ``auto`` parts measured as the
    Segmenter measures them."""
    timer = inference_timer(loaded.model, shape, device)
    capabilities = detect_capabilities(device)
    return choose_execution(config.precision, config.channels_last, capabilities, timer).execution


def _call(model: Any, batch: torch.Tensor, execution: Execution) -> Callable[[], object]:
    """One model call on ``batch``: PyTorch in its execution, the others as they run."""
    if not isinstance(model, torch.nn.Module):
        return lambda: model(batch)
    inputs = batch.contiguous(memory_format=execution.memory_format)

    @torch.inference_mode()
    def run() -> object:
        with execution.autocast(batch.device.type):
            return model(inputs)

    return run


def _model_label(backend: str, model: Any) -> str:
    """``onnxruntime int8``, ``openvino bf16 (hint bf16)``: an exported path's name (int8 when
    its metadata records the quantisation, else the precision asked of it)."""
    metadata = getattr(model, "metadata", None) or {}
    quantized = (metadata.get("quantization") or {}).get("precision")
    precision = quantized or getattr(model, "precision", "fp32")
    hint = getattr(model, "precision_hint", None)
    return f"{backend} {precision}" + ("" if hint is None else f" (hint {hint})")


def _exported_model(backend: str, precision: str, checkpoint: Sources, folder: Path) -> Any:
    """The checkpoint's (or ensemble's) calibrated model exported to ``folder`` (once per
    format, parity-checked) and loaded by ``backend``."""
    from unetkit.inference.export import export_model

    fmt, suffix = ("onnx", ".onnx") if backend == "onnxruntime" else ("openvino", ".xml")
    path = folder / f"model{suffix}"
    if not path.is_file():
        export_model(checkpoint, path, format=fmt)
    if backend == "onnxruntime":
        from unetkit.inference.onnx_backend import OnnxModel

        return OnnxModel(path)
    from unetkit.inference.openvino_backend import OpenVinoModel

    return OpenVinoModel(path, precision=precision)


def _paths(precision: str) -> list[tuple[str, str]]:
    """(backend, precision) of every path ``auto`` tries on a CPU, PyTorch first."""
    paths = [("torch", precision)]
    if installed("onnxruntime") and precision in ("auto", "fp32"):
        paths.append(("onnxruntime", "fp32"))
    if installed("openvino"):
        hints = {"auto": ["fp32", "bf16"], "fp32": ["fp32"], "bf16": ["bf16"]}.get(precision, [])
        if "bf16" in hints and not _cpu_has_bf16():
            hints.remove("bf16")
        paths += [("openvino", hint) for hint in hints]
    return paths


def _cpu_has_bf16() -> bool:
    from unetkit.inference.openvino_backend import openvino_module

    capabilities = openvino_module().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def _exported_segmenter(
    backend: str, path: Path, device: str, batch_size: int, options: dict[str, Any]
) -> tuple[Segmenter, BackendChoice]:
    runtime = runtime_of(path)
    if backend not in ("auto", runtime):
        raise ValueError(
            f"{path.name} is run by --backend {runtime} (from its suffix), not {backend}; pass "
            f"--backend {runtime} or auto, or a file of the other kind"
        )
    segmenter = _exported_loader(runtime)(path, device, batch_size, _hint(options), options)
    reason = "the runtime of the exported file" if backend == "auto" else "as asked"
    return segmenter, BackendChoice(runtime, path_label(segmenter, runtime), reason)


def _exported_loader(runtime: str) -> Callable[..., Segmenter]:
    """``load(path, device, batch_size, precision, options)`` for each exported kind; the
    precision is OpenVINO's inference precision hint, the other runtimes run the file as is."""
    from unetkit.inference import onnx_backend

    def onnx(path, device, batch_size, precision, options):
        return onnx_backend.load_onnx_segmenter(path, batch_size, device, **_exact(options))

    def script(path, device, batch_size, precision, options):
        return onnx_backend.load_torchscript_segmenter(path, batch_size, device, **_exact(options))

    def openvino(path, device, batch_size, precision, options):
        from unetkit.inference.openvino_backend import load_openvino_segmenter

        device = "cpu" if device == "auto" else device
        return load_openvino_segmenter(path, batch_size, device, precision, **_exact(options))

    return {"onnxruntime": onnx, "torchscript": script, "openvino": openvino}[runtime]


def _exact(options: dict[str, Any]) -> dict[str, Any]:
    """The Segmenter options without PyTorch's execution ones: an exported graph runs as is."""
    return {k: v for k, v in options.items() if k not in ("precision", "channels_last")}
