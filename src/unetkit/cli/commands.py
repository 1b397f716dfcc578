"""What each subcommand does once its arguments are parsed: build a config, call one function."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from unetkit.checkpoint import load_checkpoint
from unetkit.config import Config, ConfigError, available_presets, config_from_dict, load_config
from unetkit.data import DATASETS, DataError, build_splits
from unetkit.evaluation.evaluate import evaluate_source
from unetkit.inference.predict import collect_inputs, predict_files
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics import format_table
from unetkit.models import list_models

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError, KeyError)


def train(args: argparse.Namespace) -> int:
    from unetkit.cli.main import TRAIN_FLAGS
    from unetkit.training.loop import train as run_training

    overrides = {
        key: getattr(args, flag)
        for flag, key in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.no_progress:
        overrides["train.progress"] = False
    base = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        base = checkpoint["config"]
        overrides.setdefault("train.out", str(Path(args.resume).resolve().parent.parent))
    cfg = load_config(args.config, overrides=overrides, dotted=args.overrides, base=base)
    run_dir = run_training(cfg)
    print(f"done: {run_dir}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    cfg = _checkpoint_config(checkpoint, args.dataset, args.data_root)
    run_dir = Path(args.checkpoint).resolve().parent.parent
    record = _saved_split_record(run_dir, checkpoint, cfg)
    splits = build_splits(cfg, split_record=record)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, args.batch_size)
    source = getattr(splits, args.split)
    metrics = evaluate_source(segmenter, source, split=args.split, progress=not args.no_progress)
    metrics["checkpoint"] = str(args.checkpoint)
    out = Path(args.out) if args.out else run_dir / "evaluation" / args.split
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def predict(args: argparse.Namespace) -> int:
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, args.batch_size)
    inputs = collect_inputs(args.input)
    report = predict_files(segmenter, inputs, Path(args.out), args.overlay, not args.no_progress)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(
        f"wrote {len(report.written)} masks to {args.out}"
        + (f"; skipped {len(report.skipped)} unreadable files" if report.skipped else "")
    )
    return 1 if report.skipped and not report.written else 0


def list_things(args: argparse.Namespace) -> int:
    print("models:   " + ", ".join(list_models()))
    print("presets:  " + ", ".join(available_presets()))
    print("datasets: " + ", ".join(sorted(DATASETS)))
    return 0


def _checkpoint_config(checkpoint: dict[str, Any], dataset: str | None, root: str | None) -> Config:
    cfg = config_from_dict(checkpoint["config"])
    if dataset or root:
        data = dataclasses.replace(
            cfg.data, dataset=dataset or cfg.data.dataset, root=root or cfg.data.root
        )
        cfg = dataclasses.replace(cfg, data=data)
    return cfg


def _saved_split_record(run_dir: Path, checkpoint: dict[str, Any], cfg: Config) -> dict | None:
    """The run's own split, when evaluating on the data it was trained on."""
    trained = checkpoint["config"]["data"]
    same_data = (trained["dataset"], trained["root"]) == (cfg.data.dataset, cfg.data.root)
    path = run_dir / "splits.json"
    return json.loads(path.read_text()) if same_data and path.is_file() else None
