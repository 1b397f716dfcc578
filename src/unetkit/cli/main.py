"""``unetkit``: one command, subcommands that turn arguments into a config and call one function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from unetkit.cli import calibrate_commands, commands, cv_commands, data_commands, plan_commands
from unetkit.cli.flags import (
    BATCH_SIZE_OPTIONS,
    DATASET_FLAGS,
    DEVICE_OPTIONS,
    EVALUATE_FLAGS,
    TRAIN_FLAGS,
    add_config_flags,
    add_deprecated_alias,
    reclaim_overrides,
)
from unetkit.inference.backends import BACKENDS as RUNTIMES
from unetkit.inference.sliding_window import DEFAULT_BATCH_SIZE

__all__ = ["DATASET_FLAGS", "TRAIN_FLAGS", "build_parser", "main"]


def add_device_flags(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """``--device`` and ``--batch-size`` of the commands that run a model outside training."""
    parser.add_argument("--device", default="auto", **DEVICE_OPTIONS)
    parser.add_argument(
        "--batch-size",
        default=DEFAULT_BATCH_SIZE,
        help=f"{batch_help} (default {DEFAULT_BATCH_SIZE})",
        **BATCH_SIZE_OPTIONS,
    )


CHECKPOINTS_HELP = (
    "RUN/checkpoints/best.pt; several files, or a `unetkit cv` folder (its folds' best.pt), "
    "are one ensemble averaging their probabilities"
)


def add_threshold_flag(parser: argparse.ArgumentParser) -> None:
    """``--threshold`` of predict and serve: the binary cut over the stored (calibrated) one."""
    parser.add_argument(
        "--threshold",
        type=float,
        help="binary / multi-label foreground threshold (default: the checkpoint's calibrated "
        "one where stored, else its task's)",
    )


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--exported`` of predict and serve (see unetkit.inference.backends)."""
    parser.add_argument(
        "--backend",
        choices=list(RUNTIMES),
        default="auto",
        help="auto (default): an exported file's runtime, or for a checkpoint the fastest "
        "installed path by a short probe (printed); or torch, onnxruntime, openvino, torchscript",
    )
    parser.add_argument("--exported", metavar="FILE", help="an exported FILE.onnx / FILE.xml / "
                        "FILE.pt (see unetkit export); its suffix names the runtime")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetkit", description="Train, evaluate and deploy U-Net segmentation models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    cv_commands.add_cv_command(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_predict(sub)
    _add_plan(sub)
    _add_bench(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_data(sub)
    info = sub.add_parser("list", help="list models, presets and datasets")
    info.set_defaults(handler=commands.list_things)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: a small U-Net on built-in synthetic data)",
        epilog="Any config key can be set with trailing section.key=value pairs, e.g. "
        "optim.weight_decay=0 model.options.depth=3. See `unetkit list` for presets.",
    )
    add_config_flags(p, TRAIN_FLAGS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--plan",
        choices=plan_commands.PLAN_CHOICES,
        default="auto",
        help="auto (default): a real dataset's run follows `unetkit plan` for every setting not "
        "given; on: the synthetic demo too; off: the defaults",
    )
    p.add_argument(
        "--nproc",
        type=int,
        help="train in N processes on this machine (DDP through torchrun; one per GPU)",
    )
    p.set_defaults(handler=commands.train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a checkpoint on a split, at original resolution"
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        help=CHECKPOINTS_HELP + "; the ensemble's report scores each member beside it",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--out",
        help="folder for metrics.json, per_image.csv and report.html "
        "(default: RUN/evaluation/SPLIT)",
    )
    add_device_flags(p, "images per model call, or windows when sliding")
    p.add_argument(
        "--backend",
        choices=list(RUNTIMES),
        help="the runtime to score (default: torch, or that of --exported); onnxruntime / "
        "openvino export the checkpoint on the fly (parity-checked), auto picks the fastest",
    )
    p.add_argument("--exported", metavar="FILE", help="score this export (e.g. an int8 "
                   "FILE.onnx) instead of the checkpoint's model")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(
        p,
        EVALUATE_FLAGS,
        config_file=False,
        helps={
            "dataset": "default: the dataset the checkpoint was trained on",
            "data_root": "default: the checkpoint's data root",
        },
        overrides_help="eval.* keys, task.threshold (binary) and the data keys (data.root, "
        "data.mode, data.split_ratios, ...), e.g. eval.boundary=false task.threshold=0.3; keys "
        "that the checkpoint fixes (model, input size, training) are refused",
    )
    add_deprecated_alias(p, "--min-area", "--metric-min-area", "metric_min_area", type=int)
    add_inference_flags(p)
    p.set_defaults(handler=commands.evaluate)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a finished run's temperature, bias and threshold again on its validation split",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders, checkpoint files (RUN/checkpoints/best.pt) or a `unetkit cv` folder",
    )
    p.add_argument(
        "--bias",
        action=argparse.BooleanOptionalAction,
        help="fit a logit bias beside the temperature (binary, multi-label; default: the run's "
        "eval.calibration_bias)",
    )
    add_device_flags(p, "images per model call")
    p.set_defaults(handler=calibrate_commands.calibrate)


def add_inference_flags(parser: argparse.ArgumentParser, mode_alias: bool = False) -> None:
    """How the Segmenter runs: resize or sliding windows, TTA, post-processing.

    ``mode_alias``: also take the old ``--mode`` for ``--inference-mode`` (predict, serve; for
    evaluate ``--mode`` is the dataset variant, as for train).
    """
    group = parser.add_argument_group("inference")
    group.add_argument(
        "--inference-mode",
        choices=["auto", "resize", "sliding"],
        default="auto",
        help="resize each image to the training size, or slide training-size windows over it; "
        "auto slides for models trained on tiles (default auto)",
    )
    window = {"type": int, "nargs": "+", "metavar": ("H", "W")}
    group.add_argument("--window-size", help="sliding window size (default: the model's input)",
                       **window)  # fmt: skip
    group.add_argument(
        "--overlap", type=float, default=0.25, help="sliding window overlap (default 0.25)"
    )
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average flipped predictions, or with --no-tta run one pass, e.g. for an ensemble "
        "whose members already average (default: as the checkpoint records)",
    )
    add_execution_flags(group, ["auto", "fp32", "bf16"])
    group.add_argument(
        "--remove-smaller-than",
        type=int,
        default=0,
        metavar="N",
        help="post-processing: remove predicted components below N pixels",
    )
    group.add_argument(
        "--keep-largest", action="store_true", help="keep each class's largest component"
    )
    group.add_argument("--fill-holes", action="store_true", help="fill holes inside each class")
    group.add_argument(
        "--postprocess-classes",
        type=int,
        nargs="+",
        metavar="C",
        help="class ids the three options above apply to (default: every foreground class)",
    )
    add_deprecated_alias(group, "--tile-size", "--window-size", "window_size", **window)
    add_deprecated_alias(group, "--min-size", "--remove-smaller-than", "remove_smaller_than",
                         type=int)  # fmt: skip
    if mode_alias:
        add_deprecated_alias(group, "--mode", "--inference-mode", "inference_mode",
                             choices=["auto", "resize", "sliding"])  # fmt: skip


def add_execution_flags(parser: Any, precisions: list[str]) -> None:
    """``--precision`` and ``--channels-last`` / ``--no-channels-last`` of the commands that run
    a model outside training (default ``auto``: measured, see :mod:`unetkit.precision`)."""
    parser.add_argument(
        "--precision",
        choices=precisions,
        default="auto",
        help="auto (default) times a few batches and keeps the fastest safe option",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default="auto",
        help="channels-last memory format, or not; default: measured (auto)",
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write masks for new images")
    p.add_argument("--checkpoint", nargs="+", help=CHECKPOINTS_HELP)
    p.add_argument("--input", required=True, help="an image file, a folder (recursive) or a glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--no-colour", action="store_true", help="no <name>_colour.png")
    p.add_argument(
        "--save-probs", action="store_true", help="also write <name>_probs.npz (float16)"
    )
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <name>_entropy.png / .npy (float16; an ensemble adds "
        "<name>_mutual_information) and an uncertainty column in summary.csv",
    )
    add_threshold_flag(p)
    add_backend_flags(p)
    add_deprecated_alias(p, "--model", "--exported", "exported")
    add_device_flags(p, "images per model call, or windows when sliding")
    p.add_argument("--no-progress", action="store_true")
    add_inference_flags(p, mode_alias=True)
    p.set_defaults(handler=commands.predict)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="fingerprint a dataset, measure this machine, write the training config they call for",
        epilog="With --time-budget the plan also picks model, input size, precision, "
        "augmentation, validation share and TTA from measured step times; without it only the "
        "data-driven choices (resize or tiles, scale). Train with --config FILE.",
    )
    flags = (*DATASET_FLAGS, "time_budget", "batch_size", "device", "precision", "channels_last")
    add_config_flags(p, flags)
    p.add_argument("--out", help="the config YAML to write (default plan-<dataset>.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=plan_commands.plan)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="training-step and inference speed, GFLOPs per image, GFLOP/s (JSON)"
    )
    p.add_argument("--model", default="unet", help="model name from the registry")
    p.add_argument("--img-size", type=int, nargs="+", default=[256], metavar=("H", "W"))
    add_device_flags(p, "random images per timed step")
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime", "openvino", "all"],
        default="torch",
        help="all: every CPU path in one interleaved run (torch fp32 / auto, ONNX Runtime and "
        "OpenVINO fp32 / int8), a table of images/s over torch fp32",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="onnxruntime / openvino: time the static int8 graph (calibrated on random images: "
        "speed only)",
    )
    add_execution_flags(p, ["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--num-classes", type=int, default=2, help="classes including background")
    p.add_argument("--steps", type=int, default=10, help="timed steps (medians are reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's setting)")
    p.add_argument(
        "--gemm-size",
        type=int,
        help="matrix size of the GEMM ceiling (default 4096 CPU / 8192 GPU; 0 skips it)",
    )
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(handler=commands.bench)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an ONNX, TorchScript or OpenVINO file (dynamic batch, height, width), checked; "
        "optionally static int8",
        epilog="The file carries the preprocessing, task and class names, so `unetkit predict "
        "--exported FILE` needs nothing else. The export is checked against PyTorch on random "
        "inputs of two sizes; above the tolerance nothing is written. With --quantize int8 the "
        "graph is calibrated on the checkpoint's training images and kept only if, on its "
        "validation images, its masks agree with fp32 on >= 99%% of the pixels and the headline "
        "metric drops <= 0.5 points (both printed); else nothing is written (exit 2).",
    )
    p.add_argument("--checkpoint", nargs="+", required=True, help=CHECKPOINTS_HELP)
    p.add_argument("--format", choices=["onnx", "torchscript", "openvino"], default="onnx")
    p.add_argument("--out", required=True, help="FILE.onnx, FILE.pt or FILE.xml (+ FILE.bin)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--quantize", choices=["int8"], help="static int8 (onnx, openvino), guarded")
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="with --quantize: the training data's root, if it moved since training (default: "
        "the checkpoint's recorded data); its training split calibrates, its validation split "
        "is the guard's",
    )
    p.add_argument("--calibration-images", type=int, default=64, help="at most (default 64)")
    p.add_argument("--guard-images", type=int, default=200, help="at most (default 200)")
    p.set_defaults(handler=commands.export)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an HTTP service: POST /predict, GET /health, GET /model, an upload page at /",
        epilog="It listens on 127.0.0.1 unless --host says otherwise. Without an API key anyone "
        "who reaches the port may use it; with one (--api-key or $UNETKIT_API_KEY) every route "
        "but / and /health needs 'Authorization: Bearer KEY' (401 otherwise), and the page at / "
        "asks for the key. A full queue or a request past --request-timeout gets 503 with "
        "Retry-After. Worst-case upload memory is about --max-queue x --max-upload-mb.",
    )
    p.add_argument("--checkpoint", nargs="+", help=CHECKPOINTS_HELP + " (or --exported FILE)")
    add_threshold_flag(p)
    add_backend_flags(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request size limit")
    p.add_argument("--max-megapixels", type=float, default=25.0, help="image size limit")
    add_device_flags(p, "requests batched per model call")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' (default: $UNETKIT_API_KEY, else no key); "
        "prefer the variable, a command line is visible to other users",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="prediction requests taken at once, receiving, waiting or predicted; more get 503 "
        "with Retry-After (default 64)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a prediction not answered this long after it was taken gets 503 and its queued "
        "work is dropped (default 30)",
    )
    add_inference_flags(p, mode_alias=True)
    p.set_defaults(handler=commands.serve)


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="download, check and look at datasets")
    group = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    _add_data_download(group)
    _add_data_check(group)
    _add_data_show(group)


def _add_data_download(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "download",
        help="fetch a dataset (oxford-pet) or print how to get one by hand",
        epilog=f"{data_commands.known_datasets()}. Exit status: 0 when the dataset is in place "
        f"(a second call downloads nothing), {data_commands.MANUAL_EXIT} when it must be "
        "downloaded by hand (the instructions are printed), 2 on an error.",
    )
    p.add_argument("name", help="dataset name, e.g. oxford-pet")
    p.add_argument("--root", help="folder to put the dataset in (then use it as --data-root)")
    p.add_argument(
        "--mirror",
        help=f"base URL or folder holding the same archive files (default: "
        f"${data_commands.MIRROR_ENV}, else the publisher)",
    )
    p.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=data_commands.download)


def _add_data_check(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "check",
        help="report every data problem, class pixel frequencies and image sizes",
        epilog="Takes the same data flags and KEY=VALUE pairs as train. Exit status 1 when "
        "any problem is an error (training would refuse the data), else 0.",
    )
    add_config_flags(p, DATASET_FLAGS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=data_commands.check)


def _add_data_show(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "show",
        help="write a PNG grid of samples with their masks overlaid",
        epilog="Takes the same data flags and KEY=VALUE pairs as train; with --augment the "
        "level is data.augment (e.g. data.augment=strong).",
    )
    add_config_flags(p, DATASET_FLAGS)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--count", type=int, default=16, help="samples in the grid (default 16)")
    p.add_argument("--out", help="PNG file (default <dataset>-<split>-samples.png)")
    p.add_argument("--augment", action="store_true", help="show the training augmentation applied")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentations shown")
    p.set_defaults(handler=data_commands.show)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    reclaim_overrides(args)
    args.argv = argv  # what `train --nproc` hands on to the processes it starts
    try:
        return args.handler(args) or 0
    except commands.USER_ERRORS as error:
        if os.environ.get("UNETKIT_DEBUG"):
            raise
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"unetkit {command}: error: {error}", file=sys.stderr)
        print("(set UNETKIT_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
