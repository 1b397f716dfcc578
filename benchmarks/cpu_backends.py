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
import json
from pathlib import Path

import torch

from unetkit.speed.cpu_paths import compare_paths, paths_table


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
            for row in compare_paths(
                model_name,
                size,
                args.batches,
                args.repeats,
                args.warmup,
                args.threads,
                args.calibration_images,
                openvino=not args.no_openvino,
            ):
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    print(f"\n{torch.get_num_threads()} threads, medians of {args.repeats} interleaved calls\n")
    print(paths_table(rows, args.batches))


if __name__ == "__main__":
    main()
