"""Every CPU inference path in one run: PyTorch, ONNX Runtime and OpenVINO, fp32 and int8.

    python benchmarks/cpu_backends.py --models resnet34-unet unet --sizes 256 512 \
        --batches 1 8 --repeats 9 --warmup 2 --out cpu_backends.json

For each model and input size, the paths are built once from one randomly initialised model
(speed does not depend on the weights): eager PyTorch fp32; PyTorch in the precision and layout
``auto`` picks (timed as :mod:`unetkit.precision` does); ONNX Runtime on the fp32 graph and on its
static QDQ int8 version; OpenVINO with ``INFERENCE_PRECISION_HINT=f32`` on the fp32 IR and the
NNCF int8 IR, and where the CPU has bf16 units the same two with the ``bf16`` hint. The int8
graphs are calibrated on random images here: this measures speed only; the accuracy of int8 is
the export's guard (``unetkit export --quantize int8``) on real data.

Timing: batch 1 latency and batch 8 (``--batches``) throughput, each the median of ``--repeats``
calls after ``--warmup`` untimed ones, the paths **interleaved** (one call of each path per
round) so a change in the machine's load touches every path alike. Every path uses ``--threads``
CPU threads (default: PyTorch's). Prints one JSON line per model, size and path, then a table
with each path's images/s over eager fp32's at the largest batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def measure(model_name: str, size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per path: its execution and, per batch size, median latency and images/s."""
    torch.manual_seed(0)
    model = build_model(model_name, 3, 1).eval()
    generator = np.random.default_rng(0)
    calibration = [
        generator.standard_normal((1, 3, size, size), dtype=np.float32)
        for _ in range(args.calibration_images)
    ]
    graph = onnx_bytes(model, torch.from_numpy(calibration[0]))
    with tempfile.TemporaryDirectory() as folder:
        paths = {
            **torch_paths(model, size, max(args.batches)),
            **onnxruntime_paths(graph, calibration, Path(folder), args.threads),
        }
        if not args.no_openvino:
            paths.update(openvino_paths(graph, calibration, args.threads))
        rows = {label: {"execution": how} for label, (_, how) in paths.items()}
        for batch in args.batches:
            images = generator.standard_normal((batch, 3, size, size), dtype=np.float32)
            for label, median in interleaved_medians(
                paths, images, args.repeats, args.warmup
            ).items():
                rows[label][f"batch{batch}"] = {
                    "latency_s_median": median,
                    "images_per_s": batch / median,
                }
    return [
        {"model": model_name, "size": size, "path": label, "threads": args.threads, **row}
        for label, row in rows.items()
    ]


def table(rows: list[dict[str, Any]], batches: list[int]) -> str:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet34-unet", "unet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO's paths")
    parser.add_argument("--out", type=Path, help="also write the rows as a JSON list here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        for size in args.sizes:
            for row in measure(model_name, size, args):
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    print(f"\n{torch.get_num_threads()} threads, medians of {args.repeats} interleaved calls\n")
    print(table(rows, args.batches))


if __name__ == "__main__":
    main()
