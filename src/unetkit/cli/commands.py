"""What each subcommand does once its arguments are parsed: build a config, call one function."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from unetkit.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint
from unetkit.cli.ensemble_evaluation import evaluate_ensemble
from unetkit.cli.flags import config_from_args, flag_overrides
from unetkit.cli.scoring import saved_split_record, score_split
from unetkit.config import Config, ConfigError, available_presets
from unetkit.data import DATASETS, DataError, build_splits
from unetkit.evaluation.evaluate import describe, write_evaluation
from unetkit.inference.backends import (
    BackendChoice,
    load_segmenter,
    member_count_of,
    path_label,
)
from unetkit.inference.calibration import Calibration
from unetkit.inference.ensemble import checkpoint_paths
from unetkit.inference.options import InferenceConfig
from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.predict import collect_inputs, predict_files
from unetkit.inference.segmenter import Segmenter
from unetkit.models import list_models, model_description
from unetkit.training.history import read_history_csv
from unetkit.training.resume import resolve_resume

# What `evaluate` honours of trailing KEY=VALUE pairs: the data to score, how to score it, and
# the binary threshold. Everything else (the model, its preprocessing, training) comes from the
# checkpoint, so setting it would be silently ignored: refused by name instead.
EVALUATE_KEYS = ("eval.", "task.threshold", "data.dataset", "data.root", "data.mode",
                 "data.split_ratios", "data.split_seed", "data.train_list", "data.val_list",
                 "data.test_list", "data.colour_map", "data.num_workers", "data.cache",
                 "data.cache_dir", "data.synthetic_count", "data.synthetic_seed")  # fmt: skip

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError, KeyError)


def train(args: argparse.Namespace) -> int:
    from unetkit.cli.plan_commands import planned_config, should_plan
    from unetkit.training.launch import launch, without_nproc
    from unetkit.training.loop import train as run_training

    overrides = flag_overrides(args)
    if args.no_progress:
        overrides["train.progress"] = False
    base = None
    if args.resume:
        resume_path = resolve_resume(args.resume, args.out)
        checkpoint = load_checkpoint(resume_path)
        base = checkpoint["config"]
        overrides["train.resume"] = str(resume_path)
        overrides.setdefault("train.out", str(resume_path.resolve().parent.parent))
    cfg = config_from_args(args, overrides, base)
    started = time.perf_counter()  # a time budget counts the planning too
    if should_plan(args, cfg):
        cfg = planned_config(args, cfg, overrides, base)
    if args.nproc is not None and args.nproc != 1:  # the config is valid: start the processes
        return launch(args.nproc, without_nproc(args.argv))
    run_dir = run_training(cfg, started=started)
    if os.environ.get("RANK", "0") == "0":  # torchrun's other processes say nothing
        print(f"done: {run_dir}")
    return 0


def _stored_calibration(args: argparse.Namespace, checkpoint: dict) -> Calibration | None:
    """The checkpoint's calibration for evaluate to measure beside the raw model (as the final
    test does); None for ``--exported``, whose graph may already hold the temperature."""
    return None if getattr(args, "exported", None) else Calibration.from_checkpoint(checkpoint)


def evaluate(args: argparse.Namespace) -> int:
    _refuse_ignored_overrides(args.overrides)
    paths = checkpoint_paths(args.checkpoint)
    if len(paths) > 1:
        evaluation, cfg, out = evaluate_ensemble(
            args, paths, lambda ck: _evaluation_config(ck, args), given_inference_options(args)
        )
        return _write_evaluation(evaluation, out, cfg, history=None)
    args.checkpoint = str(paths[0])
    checkpoint = load_checkpoint(args.checkpoint)
    cfg = _evaluation_config(checkpoint, args)
    run_dir = Path(args.checkpoint).resolve().parent.parent
    record = saved_split_record(run_dir, checkpoint, cfg)
    splits = build_splits(cfg, split_record=record)
    loaded = model_from_checkpoint(checkpoint)
    loaded.task = dataclasses.replace(loaded.task, threshold=cfg.task.threshold)
    segmenter, choice = _evaluated_segmenter(args, loaded)
    source = getattr(splits, args.split)
    evaluation = score_split(
        segmenter, source, args, cfg, calibration=_stored_calibration(args, checkpoint)
    )
    evaluation.metrics["checkpoint"] = str(args.checkpoint)
    evaluation.metrics["inference"]["backend"] = choice.to_dict()
    out = Path(args.out) if args.out else run_dir / "evaluation" / args.split
    history_file = run_dir / "history.csv"
    history = read_history_csv(history_file) if history_file.is_file() else None
    return _write_evaluation(evaluation, out, cfg, history)


def _write_evaluation(
    evaluation: Any, out: Path, cfg: Config, history: list[dict[str, Any]] | None
) -> int:
    written = write_evaluation(evaluation, out, cfg.eval, history=history)
    print(describe(evaluation.metrics))
    for path in written.values():
        print(f"wrote {path}")
    return 0


def predict(args: argparse.Namespace) -> int:
    segmenter = _load_segmenter(args)
    inputs = collect_inputs(args.input)
    report = predict_files(
        segmenter,
        inputs,
        Path(args.out),
        args.overlay,
        not args.no_progress,
        save_colour=not args.no_colour,
        save_probs=args.save_probs,
        save_uncertainty=args.save_uncertainty,
    )
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(
        f"wrote {len(report.written)} masks to {args.out}"
        + (f"; skipped {len(report.skipped)} unreadable files" if report.skipped else "")
    )
    if report.summary:
        print(f"class areas: {report.summary}")
    return 1 if report.skipped and not report.written else 0


def bench(args: argparse.Namespace) -> int:
    from unetkit.speed.bench import benchmark

    if args.backend == "all":
        return _bench_every_path(args)
    result = benchmark(
        args.model,
        _size(args.img_size),
        args.batch_size,
        backend=args.backend,
        channels_last=args.channels_last,
        precision=args.precision,
        gemm_size=args.gemm_size,
        num_classes=args.num_classes,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        quantize=args.quantize,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _bench_every_path(args: argparse.Namespace) -> int:
    """``bench --backend all``: every CPU path of the model, interleaved, in one table."""
    from unetkit.speed.cpu_paths import compare_paths, paths_table

    size = _size(args.img_size)
    if not isinstance(size, int) or args.device not in ("auto", "cpu") or args.quantize:
        raise ValueError(
            f"bench --backend all times every CPU path (int8 included) on square images: give "
            f"--img-size S, no --quantize and --device cpu or auto; got --img-size "
            f"{args.img_size}, --device {args.device}, --quantize {args.quantize}"
        )
    batches = sorted({1, args.batch_size})
    rows = compare_paths(args.model, size, batches, args.steps, args.warmup, args.threads)
    for row in rows:
        print(json.dumps(row))
    print(f"\n{rows[0]['threads']} threads, medians of {args.steps} interleaved calls\n")
    print(paths_table(rows, batches))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def export(args: argparse.Namespace) -> int:
    from unetkit.inference.export import export_model

    report = export_model(
        args.checkpoint,
        args.out,
        format=args.format,
        opset=args.opset,
        check=not args.no_check,
        tolerance=args.tolerance,
        quantize=args.quantize,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
        guard_images=args.guard_images,
    )
    print(json.dumps(report.to_dict(), indent=2))
    members = (report.metadata.get("ensemble") or {}).get("members", 1)
    if members > 1:
        print(f"ensemble of {members} members")
    if report.quantization:
        print(report.quantization["summary"])
    return 0


def serve(args: argparse.Namespace) -> int:
    from unetkit.serve.auth import resolve_api_key
    from unetkit.serve.server import run_server

    api_key = resolve_api_key(args.api_key)  # checked before the model loads
    run_server(
        args.checkpoint,
        backend=args.backend,
        exported=args.exported,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
        batch_size=args.batch_size,
        max_megapixels=args.max_megapixels,
        api_key=api_key,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        threshold=args.threshold,
        **given_inference_options(args),
    )
    return 0


def list_things(args: argparse.Namespace) -> int:
    print("models:")
    names = list_models()
    column = max(map(len, names))
    for name in names:
        print(f"  {name:<{column}}  {model_description(name)}")
    print("presets:  " + ", ".join(available_presets()))
    print("datasets: " + ", ".join(sorted(DATASETS)))
    return 0


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The one route from the shared inference flags to how the Segmenter runs (checked)."""
    postprocess = None
    if args.remove_smaller_than or args.keep_largest or args.fill_holes:
        classes = tuple(args.postprocess_classes) if args.postprocess_classes else None
        postprocess = PostProcessing(
            min_size=args.remove_smaller_than,
            keep_largest=args.keep_largest,
            fill_holes=args.fill_holes,
            classes=classes,
        )
    return InferenceConfig(
        mode=args.inference_mode,
        window_size=_size(args.window_size) if args.window_size else None,
        overlap=args.overlap,
        tta=bool(args.tta),  # None (neither flag): False here, the record's below
        postprocess=postprocess,
        precision=args.precision,
        channels_last=args.channels_last,
    )


# What the inference flags say when none is given: the checkpoint's or export's recorded config
# then applies (see unetkit.inference.options), so evaluate and predict without flags run as the
# training run's final test did.
UNSET_INFERENCE = InferenceConfig(precision="auto", channels_last="auto")


def given_inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Segmenter options the inference flags set; those left at their defaults are not
    passed, so the file's recorded config applies."""
    asked = inference_config(args).segmenter_options()
    unset = UNSET_INFERENCE.segmenter_options()
    given = {name: value for name, value in asked.items() if value != unset[name]}
    if args.tta is not None:  # --no-tta is given although it equals the default
        given["tta"] = args.tta
    return given


def _size(values: list[int]) -> int | tuple[int, int]:
    """``--flag S`` (square) or ``--flag H W``."""
    if len(values) not in (1, 2):
        raise ValueError(f"a size is S or H W; got {len(values)} numbers {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _load_segmenter(args: argparse.Namespace) -> Segmenter:
    """A Segmenter from ``--checkpoint`` or ``--exported FILE``, run by ``--backend`` (auto:
    the file's runtime, or the fastest installed path); the path it runs is printed."""
    options = given_inference_options(args)
    segmenter, choice = load_segmenter(
        args.backend,
        args.checkpoint,
        args.exported,
        args.device,
        args.batch_size,
        threshold=args.threshold,
        **options,
    )
    print(choice.describe())
    if member_count_of(segmenter) > 1:
        print(f"ensemble of {member_count_of(segmenter)} members")
    return segmenter


def _evaluated_segmenter(
    args: argparse.Namespace, loaded: LoadedModel
) -> tuple[Segmenter, BackendChoice]:
    """The checkpoint's model with PyTorch (default), or the runtime or export asked for,
    scored with the threshold asked (``task.threshold``); inference flags not given are the
    file's record."""
    options = given_inference_options(args)
    backend = args.backend or ("auto" if args.exported else "torch")
    if backend == "torch" and not args.exported:
        segmenter = Segmenter.from_loaded(loaded, args.device, args.batch_size, **options)
        return segmenter, BackendChoice("torch", path_label(segmenter, "torch"), "as asked")
    segmenter, choice = load_segmenter(
        backend, args.checkpoint, args.exported, args.device, args.batch_size, **options
    )
    if segmenter.task.num_classes != loaded.task.num_classes:
        raise ValueError(
            f"{args.exported} predicts {segmenter.task.num_classes} classes, the checkpoint "
            f"{loaded.task.num_classes}; evaluate an export of this checkpoint"
        )
    segmenter.task = loaded.task
    print(choice.describe())
    return segmenter, choice


def _refuse_ignored_overrides(pairs: list[str]) -> None:
    """Refuse the KEY=VALUE pairs that ``evaluate`` would accept but not use."""
    for pair in pairs:
        key = pair.split("=", 1)[0]
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVALUATE_KEYS):
            raise ConfigError(
                f"evaluate does not use {key!r}: the model, its input size and normalisation come "
                f"from the checkpoint, and training settings play no part in scoring. It takes "
                f"eval.*, task.threshold and the keys that pick the data "
                f"({', '.join(k for k in EVALUATE_KEYS if k.startswith('data.'))})"
            )


def _evaluation_config(checkpoint: dict[str, Any], args: argparse.Namespace) -> Config:
    """The checkpoint's config, pointed at other data if asked, with the evaluation flags."""
    return config_from_args(args, base=checkpoint["config"])
