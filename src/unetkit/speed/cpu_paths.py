"""Every CPU inference path of one model, timed in one run: PyTorch fp32 and ``auto``, ONNX
Runtime fp32 and static int8, OpenVINO fp32 and NNCF int8 (and both with the bf16 hint where the
CPU has bf16 units).

``unetkit bench --backend all`` and ``benchmarks/cpu_backends.py`` print these rows. The paths are
built once from one randomly initialised model (speed does not depend on the weights) and timed
*interleaved* (one call of each path per round), so a change in a shared machine's load touches
every path alike. The int8 graphs are calibrated on random images: this measures speed only; the
accuracy of int8 is the export's guard (``unetkit export --quantize int8``).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.inference.backends import installed
from unetkit.inference.export import onnx_bytes
from unetkit.inference.onnx_backend import onnxruntime_module
from unetkit.inference.quantize import quantize_onnx
from unetkit.models import build_model
from unetkit.precision import choose_execution, detect_capabilities
from unetkit.precision_probe import inference_timer

Run = Callable[[np.ndarray], object]


def torch_paths(model: torch.nn.Module, size: int, batch: int) -> dict[str, tuple[Run, str]]:
    """Eager fp32, and the execution ``auto`` picks for this model at this size."""
    device = torch.device("cpu")
    eager = model.eval()

    def run_eager(images: np.ndarray) -> object:
        with torch.inference_mode():
            return eager(torch.from_numpy(images))

    shape = (batch, 3, size, size)
    choice = choose_execution(
        "auto", "auto", detect_capabilities(device), inference_timer(model, shape, device)
    )
    execution = choice.execution
    tuned = execution.prepare(copy.deepcopy(model).eval())

    def run_auto(images: np.ndarray) -> object:
        batch = torch.from_numpy(images).contiguous(memory_format=execution.memory_format)
        with torch.inference_mode(), execution.autocast("cpu"):
            return tuned(batch)

    return {"torch fp32": (run_eager, "eager fp32"), "torch auto": (run_auto, execution.label)}


def onnxruntime_paths(
    graph: bytes, calibration: list[np.ndarray], folder: Path, threads: int
) -> dict[str, tuple[Run, str]]:
    """ONNX Runtime on the fp32 graph and on its static QDQ int8 version."""
    ort = onnxruntime_module()
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    fp32.write_bytes(graph)
    quantize_onnx(fp32, int8, calibration)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    paths = {}
    for label, path in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        paths[label] = (lambda images, s=session, n=name: s.run(None, {n: images}), "CPU EP")
    return paths


def openvino_paths(
    graph: bytes, calibration: list[np.ndarray], threads: int
) -> dict[str, tuple[Run, str]]:
    """OpenVINO fp32 and NNCF int8, with the f32 hint and (where the CPU has it) bf16."""
    from unetkit.inference.openvino_backend import compile_ir, compiled_hint, onnx_to_ir
    from unetkit.inference.quantize import quantize_openvino

    fp32 = onnx_to_ir(graph, {})
    int8 = quantize_openvino(fp32, calibration)
    precisions = ["fp32", "bf16"] if has_bf16_units() else ["fp32"]
    paths = {}
    for precision in precisions:
        for kind, model in (("fp32", fp32), ("int8", int8)):
            compiled = compile_ir(model, precision, threads)
            label = f"openvino {kind}" + ("" if precision == "fp32" else f" ({precision} hint)")
            paths[label] = (lambda images, c=compiled: c(images), f"hint {compiled_hint(compiled)}")
    return paths


def has_bf16_units() -> bool:
    from unetkit.inference.openvino_backend import openvino_module

    capabilities = openvino_module().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


def interleaved_medians(
    paths: dict[str, tuple[Run, str]], images: np.ndarray, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each path, the paths taking turns call by call."""
    for run, _ in paths.values():
        for _ in range(warmup):
            run(images)
    seconds: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(repeats):
        for label, (run, _) in paths.items():
            started = time.perf_counter()
            run(images)
            seconds[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in seconds.items()}


def compare_paths(
    model_name: str,
    size: int,
    batches: Sequence[int] = (1, 8),
    repeats: int = 9,
    warmup: int = 2,
    threads: int | None = None,
    calibration_images: int = 8,
    openvino: bool = True,
    model_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per path for ``model_name`` (with ``model_options``) at ``size``² (RGB in, one
    logit channel): its execution and, per batch size, the median latency and images/s.
    OpenVINO's paths are left out when ``openvino`` is False or the package is not installed."""
    threads = threads or torch.get_num_threads()
    torch.manual_seed(0)
    model = build_model(model_name, 3, 1, **(model_options or {})).eval()
    generator = np.random.default_rng(0)
    calibration = [
        generator.standard_normal((1, 3, size, size), dtype=np.float32)
        for _ in range(calibration_images)
    ]
    graph = onnx_bytes(model, torch.from_numpy(calibration[0]))
    with tempfile.TemporaryDirectory() as folder:
        paths = {
            **torch_paths(model, size, max(batches)),
            **onnxruntime_paths(graph, calibration, Path(folder), threads),
        }
        if openvino and installed("openvino"):
            paths.update(openvino_paths(graph, calibration, threads))
        rows = {label: {"execution": how} for label, (_, how) in paths.items()}
        for batch in batches:
            images = generator.standard_normal((batch, 3, size, size), dtype=np.float32)
            medians = interleaved_medians(paths, images, repeats, warmup)
            for label, median in medians.items():
                rows[label][f"batch{batch}"] = {
                    "latency_s_median": median,
                    "images_per_s": batch / median,
                }
    return [
        {"model": model_name, "size": size, "path": label, "threads": threads, **row}
        for label, row in rows.items()
    ]


def paths_table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    """Markdown: latency at the smallest batch, images/s at the largest, and the speed-up."""
    small, large = min(batches), max(batches)
    lines = [
        f"model | size | path | execution | batch {small} ms | batch {large} img/s | x eager fp32",
        "--- | --- | --- | --- | --- | --- | ---",
    ]
    baseline = {
        (r["model"], r["size"]): r[f"batch{large}"]["images_per_s"]
        for r in rows
        if r["path"] == "torch fp32"
    }
    for r in rows:
        speed = r[f"batch{large}"]["images_per_s"]
        lines.append(
            f"{r['model']} | {r['size']} | {r['path']} | {r['execution']} | "
            f"{1000 * r[f'batch{small}']['latency_s_median']:.1f} | {speed:.2f} | "
            f"{speed / baseline[r['model'], r['size']]:.2f}"
        )
    return "\n".join(lines)
