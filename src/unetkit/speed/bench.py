"""How fast a model runs: inference latency and throughput, training-step throughput, and FLOPs.

:func:`benchmark` returns a JSON-ready dict; every figure is measured on random inputs of the asked
size, on one device, in the precision and memory format asked (``auto``: the fastest safe option,
measured as training and inference choose it, see :mod:`unetkit.precision`); which path ran is in
each section's ``execution``. Definitions:

- **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real pass of the
  model, with one multiply-add counted as 2 FLOPs. Only convolutions (transposed ones included)
  and matrix products are counted; normalisation, activations, pooling, resizing and the loss are
  not, as they cost little next to the convolutions. Figures are per image (the batch's count
  divided by the batch size) and in GFLOPs (1e9).
- **Training FLOPs** are counted the same way on one forward + backward pass, so the backward is
  counted, not assumed: for each convolution, the gradients of the input and of the weights cost
  one forward each (about 2x the forward in all), except the first layer, whose input needs no
  gradient. The AdamW update is element-wise and not counted. (FlopCounterMode ignores groups in
  the weight gradient of a grouped convolution; unetkit's models have none.)
- **Latency** is the wall-clock time of one batch (CUDA synchronised), over ``steps`` timed
  iterations after ``warmup`` untimed ones. ``median`` and ``p90`` (NumPy's linear-interpolation
  90th percentile) are reported; images/s = batch size / median latency; achieved GFLOP/s =
  GFLOPs per image x images/s. PyTorch's batch already sits on the device; ONNX Runtime is fed
  a NumPy batch, as its users feed it, so on a GPU its latency includes the copy to the device.
- **GEMM throughput** is the machine's own ceiling at the training step's precision: the median
  GFLOP/s of a square matrix product (4096 x 4096 on a CPU, 8192 on a GPU; 2 n^3 FLOPs);
  ``fraction_of_gemm`` = achieved training GFLOP/s / that.
- A **training step** is zero-grad, forward, the ``ce`` loss of :mod:`unetkit.losses` on random
  labels, backward and an AdamW step, with the model in training mode. ONNX Runtime only runs
  inference: its ``training`` entry is None (not applicable), with the reason in ``notes``.

Undefined values are None (JSON null), never NaN or 0.

Why here (``unetkit.speed``, not beside ``config`` and ``tasks`` at the package top): a benchmark
builds models, runs the losses and an optimiser step, and exports to ONNX and runs it through the
inference backend, so it depends on ``models``, ``losses`` and ``inference`` and belongs with the
other users of those layers (training, evaluation, serve), below ``cli`` only. The package top
holds what every layer may import (config, tasks, checkpoint, precision).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from unetkit.devices import resolve_device
from unetkit.inference.export import onnx_bytes
from unetkit.inference.onnx_backend import onnx_device, onnxruntime_module, ort_providers
from unetkit.losses import build_loss
from unetkit.models import build_model
from unetkit.models import model_options as accepted_options
from unetkit.precision import (
    DTYPES,
    PRECISIONS,
    check_layout,
    check_precision,
    choose_execution,
    detect_capabilities,
)
from unetkit.precision_probe import inference_timer, training_step_timer
from unetkit.tasks import Task

BACKENDS = ("torch", "onnxruntime", "openvino")
QUANTIZED_BACKENDS = ("onnxruntime", "openvino")  # where ``quantize="int8"`` applies
FLOP_CONVENTION = (
    "one multiply-add = 2 FLOPs; convolutions and matrix products counted by "
    "torch.utils.flop_counter.FlopCounterMode; norms, activations, pooling, resizing not counted"
)
TRAINING_FLOP_CONVENTION = (
    "forward + backward counted by FlopCounterMode on a real training pass (backward: input and "
    "weight gradients, about 2x the forward); the AdamW update is not counted"
)


def benchmark(
    model_name: str,
    img_size: int | tuple[int, int],
    batch_size: int,
    backend: str = "torch",
    channels_last: bool | str = False,
    num_classes: int = 2,
    steps: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    model_options: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    in_channels: int = 3,
    precision: str = "fp32",
    gemm_size: int | None = None,
    quantize: str | None = None,
) -> dict[str, Any]:
    """Speed and cost of ``model_name`` on ``batch_size`` random images of ``img_size``.

    ``num_classes`` counts the background (2 = binary, one logit channel). ``threads`` sets the
    CPU threads of PyTorch and of ONNX Runtime alike (default: PyTorch's current setting).
    ``gemm_size`` sets the matrix product of the GEMM ceiling (None: 4096 on a CPU, 8192 on a
    GPU; 0 skips it and its fields are None). For ``openvino`` the precision is its inference
    precision hint (``auto``: f32, the graph as given); ``quantize="int8"`` times the static int8
    graph of ONNX Runtime or OpenVINO, calibrated on random images (speed only).
    """
    height, width = _check_arguments(img_size, batch_size, backend, channels_last, steps, warmup)
    _check_runtime_options(backend, precision, quantize)
    task = Task(num_classes)
    options = dict(model_options or {})
    torch.manual_seed(0)
    model = build_model(model_name, in_channels, task.out_channels, **options)
    images = torch.randn(batch_size, in_channels, height, width)
    targets = torch.randint(0, num_classes, (batch_size, height, width))
    result = _description(model_name, options, model, (height, width), batch_size, backend)
    with _torch_threads(threads) as thread_count:
        if backend == "torch":
            execution = (precision, channels_last)
            measured = _measure_torch(
                model, images, targets, task, resolve_device(device), execution, steps, warmup
            )
            _add_gemm_ceiling(measured["training"], resolve_device(device), gemm_size)
        elif backend == "openvino":
            measured = _measure_openvino(
                model, images, thread_count, precision, quantize, steps, warmup
            )
        else:
            measured = _measure_onnxruntime(
                model, images, thread_count, device, quantize, steps, warmup
            )
    return {
        **result,
        "quantize": quantize,
        "threads": thread_count,
        "precision": precision,
        "channels_last": channels_last,
        "num_classes": num_classes,
        "steps": steps,
        "warmup": warmup,
        "flop_convention": FLOP_CONVENTION,
        **measured,
    }


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of whatever ``run`` computes (see the module docstring for what is counted)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _measure_torch(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    device: torch.device,
    asked: tuple[str, bool | str],
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Forward FLOPs, inference timing and training-step timing with eager PyTorch, each in the
    execution ``asked`` (precision, channels-last) resolves to for it."""
    model, images, targets = model.to(device).eval(), images.to(device), targets.to(device)
    forward = _forward_gflops(model, images)
    capabilities = detect_capabilities(device)
    shape = tuple(images.shape)
    choice = choose_execution(*asked, capabilities, inference_timer(model, shape, device))
    execution = choice.execution
    execution.prepare(model)
    batch = images.contiguous(memory_format=execution.memory_format)

    @torch.inference_mode()
    def infer() -> torch.Tensor:
        with execution.autocast(device.type):
            return model(batch)

    timing = _time_calls(infer, steps, warmup, device)
    inference = {**_throughput(timing, len(images), forward), "execution": choice.to_dict()}
    return {
        "device": _device_name(device),
        "gflops_per_image": forward,
        "inference": inference,
        "training": _training(model, images, targets, task, asked, steps, warmup),
        "notes": [],
    }


def _measure_onnxruntime(
    model: torch.nn.Module,
    images: torch.Tensor,
    threads: int,
    device: str | torch.device,
    quantize: str | None,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Forward FLOPs (counted in PyTorch) and the timing of an ONNX Runtime session."""
    ort_device = torch.device(onnx_device(device))
    model = model.eval()
    forward = _forward_gflops(model, images)
    graph = onnx_bytes(model, images)
    if quantize:
        graph = _int8_onnx(graph, images)
    timing = _time_onnxruntime(graph, images, threads, ort_device, steps, warmup)
    return {
        "device": _device_name(ort_device),
        "onnxruntime_version": onnxruntime_module().__version__,
        "gflops_per_image": forward,
        "inference": _throughput(timing, len(images), forward),
        "training": None,
        "notes": [
            "training: not applicable (ONNX Runtime runs inference only)",
            *_int8_note(quantize),
        ],  # fmt: skip
    }


def _check_runtime_options(backend: str, precision: str, quantize: str | None) -> None:
    """Precision and quantisation as each backend takes them (see :func:`benchmark`)."""
    allowed = {"torch": PRECISIONS, "openvino": ("auto", "fp32", "bf16")}
    if check_precision(precision) not in allowed.get(backend, ("auto", "fp32")):
        raise ValueError(
            f"precision {precision} applies to the torch backend; {backend} runs the exported "
            f"fp32 graph. Drop --precision or use --backend torch"
        )
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be int8 or None; got {quantize!r}")
    if quantize and backend not in QUANTIZED_BACKENDS:
        raise ValueError(
            f"int8 applies to {' and '.join(QUANTIZED_BACKENDS)}; got backend {backend!r}. Use "
            f"--backend onnxruntime or openvino with --quantize int8"
        )


def _forward_gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.inference_mode():
        return count_flops(lambda: model(images)) / len(images) / 1e9


def _check_arguments(
    img_size: int | tuple[int, int],
    batch_size: int,
    backend: str,
    channels_last: bool | str,
    steps: int,
    warmup: int,
) -> tuple[int, int]:
    """``(height, width)``, after checking every argument that a person may get wrong."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(_is_count(side, minimum=1) for side in size):
        raise ValueError(
            f"img_size must be a positive integer or (height, width); got {img_size!r}"
        )
    for name, value, minimum in (("batch_size", batch_size, 1), ("steps", steps, 1)):
        if not _is_count(value, minimum):
            raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if not _is_count(warmup, minimum=0):
        raise ValueError(f"warmup must be an integer >= 0; got {warmup!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if check_layout(channels_last) is True and backend != "torch":
        raise ValueError(
            f"channels_last is a PyTorch memory layout; it does not apply to backend {backend!r}. "
            f"Drop --channels-last or use --backend torch"
        )
    return size[0], size[1]


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` PyTorch CPU threads (restored after); yields the count in use."""
    if threads is not None and not _is_count(threads, minimum=1):
        raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _description(
    model_name: str,
    options: dict[str, Any],
    model: torch.nn.Module,
    img_size: tuple[int, int],
    batch_size: int,
    backend: str,
) -> dict[str, Any]:
    """What was measured: the software, the model and the input."""
    effective = {**accepted_options(model_name), **options}
    return {
        "torch_version": torch.__version__,
        "model": model_name,
        "model_options": {k: list(v) if isinstance(v, tuple) else v for k, v in effective.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "img_size": list(img_size),
        "batch_size": batch_size,
        "backend": backend,
    }


def _throughput(
    latencies: list[float], batch_size: int, gflops_per_image: float
) -> dict[str, float]:
    """Median and p90 seconds per batch, images/s and achieved GFLOP/s (module docstring)."""
    median = statistics.median(latencies)
    images_per_s = batch_size / median
    return {
        "latency_s_median": median,
        "latency_s_p90": float(np.percentile(latencies, 90)),
        "images_per_s": images_per_s,
        "achieved_gflops_per_s": gflops_per_image * images_per_s,
    }


def _time_calls(
    run: Callable[[], object], steps: int, warmup: int, device: torch.device
) -> list[float]:
    """Seconds of each of ``steps`` calls of ``run``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    asked: tuple[str, bool | str],
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """FLOPs and timing of a training step, in the execution ``asked`` resolves to for
    training, against the machine's GEMM throughput at that precision (the model is left
    trained on random data)."""
    device = images.device
    criterion = build_loss("ce", task).to(device)
    model.to(memory_format=torch.contiguous_format).train()
    batch_size = images.shape[0]
    flops = count_flops(lambda: criterion(model(images), targets).backward()) / batch_size / 1e9
    timer = training_step_timer(model, criterion, tuple(images.shape), task, device)
    choice = choose_execution(*asked, detect_capabilities(device), timer)
    execution = choice.execution
    execution.prepare(model)
    batch = images.contiguous(memory_format=execution.memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast(device.type):
            logits = model(batch)
        criterion(logits.float(), targets).backward()
        optimizer.step()

    timing = _time_calls(step, steps, warmup, device)
    return {
        "gflops_per_image": flops,
        "flop_convention": TRAINING_FLOP_CONVENTION,
        **_throughput(timing, batch_size, flops),
        "execution": choice.to_dict(),
    }


def _add_gemm_ceiling(training: dict[str, Any], device: torch.device, size: int | None) -> None:
    """``gemm_gflops_per_s`` at the training step's precision and ``fraction_of_gemm``."""
    gemm = None
    if size != 0:
        dtype = DTYPES[training["execution"]["precision"]]
        gemm = gemm_gflops_per_s(dtype, device, size)
    training["gemm_gflops_per_s"] = gemm
    training["fraction_of_gemm"] = (
        None if gemm is None else training["achieved_gflops_per_s"] / gemm
    )


def gemm_gflops_per_s(
    dtype: torch.dtype, device: torch.device, size: int | None = None, repeats: int = 3
) -> float:
    """The median GFLOP/s of a square ``size`` matrix product in ``dtype`` (default 4096 on a
    CPU, 8192 on a GPU): the machine's own ceiling at that precision."""
    size = size or (8192 if device.type == "cuda" else 4096)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    timing = _time_calls(lambda: a @ b, repeats, 1, device)
    return 2 * size**3 / statistics.median(timing) / 1e9


# --- ONNX Runtime ------------------------------------------------------------------------------


def _time_onnxruntime(
    graph: bytes,
    images: torch.Tensor,
    threads: int,
    device: torch.device,
    steps: int,
    warmup: int,
) -> list[float]:
    """Seconds per batch of an ONNX Runtime session on the serialized graph."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = ort_providers(device)
    session = ort.InferenceSession(graph, options, providers=providers)
    feed = {session.get_inputs()[0].name: images.numpy()}
    return _time_calls(lambda: session.run(None, feed), steps, warmup, torch.device("cpu"))


def _int8_onnx(graph: bytes, images: torch.Tensor) -> bytes:
    """The static QDQ int8 version of a serialized ONNX graph, calibrated on random images."""
    from unetkit.inference.quantize import quantize_onnx

    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        fp32.write_bytes(graph)
        quantize_onnx(fp32, int8, _random_calibration(images))
        return int8.read_bytes()


# --- OpenVINO ----------------------------------------------------------------------------------


def _measure_openvino(
    model: torch.nn.Module,
    images: torch.Tensor,
    threads: int,
    precision: str,
    quantize: str | None,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Forward FLOPs (counted in PyTorch) and the timing of OpenVINO on the model's IR, compiled
    with an explicit inference precision hint (fp32 for ``auto``: the graph as given)."""
    from unetkit.inference.openvino_backend import (
        compile_ir,
        compiled_hint,
        onnx_to_ir,
        openvino_module,
    )

    model = model.eval()
    forward = _forward_gflops(model, images)
    graph = onnx_to_ir(onnx_bytes(model, images), {})
    if quantize:
        from unetkit.inference.quantize import quantize_openvino

        graph = quantize_openvino(graph, _random_calibration(images))
    compiled = compile_ir(graph, "fp32" if precision == "auto" else precision, threads)
    batch = images.numpy()
    timing = _time_calls(lambda: compiled(batch), steps, warmup, torch.device("cpu"))
    return {
        "device": _device_name(torch.device("cpu")),
        "openvino_version": openvino_module().__version__,
        "inference_precision_hint": compiled_hint(compiled),
        "quantize": quantize,
        "gflops_per_image": forward,
        "inference": _throughput(timing, len(images), forward),
        "training": None,
        "notes": ["training: not applicable (OpenVINO runs inference only)", *_int8_note(quantize)],
    }


def _random_calibration(images: torch.Tensor, count: int = 8) -> list[np.ndarray]:
    """Calibration inputs for a speed measurement: random images of the batch's size (int8
    accuracy is the export's guard, on real data; speed does not depend on the weights)."""
    generator = torch.Generator().manual_seed(2)
    shape = (1, *images.shape[1:])
    return [torch.randn(shape, generator=generator).numpy() for _ in range(count)]


def _int8_note(quantize: str | None) -> list[str]:
    if not quantize:
        return []
    return [
        "int8: static, calibrated on random images (speed only; accuracy is the export's guard)"
    ]


# --- devices -----------------------------------------------------------------------------------


def _device_name(device: torch.device) -> str:
    """``cuda: <GPU name>`` or ``cpu: <processor>``, to tell result files apart."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_processor_name()}"


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
