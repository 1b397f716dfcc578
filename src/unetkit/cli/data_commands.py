"""What ``unetkit data download | check | show`` do once their arguments are parsed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetkit.cli.flags import config_from_args
from unetkit.data.checks import format_problems, inspect_splits
from unetkit.data.download import (
    DOWNLOADABLE,
    MANUAL,
    MIRROR_ENV,
    DownloadError,
    download_dataset,
    known_datasets,
    manual_instructions,
    unknown_dataset_error,
)
from unetkit.data.registry import build_splits
from unetkit.data.statistics import format_statistics

__all__ = [
    "MANUAL_EXIT",
    "MIRROR_ENV",
    "check",
    "download",
    "known_datasets",
    "show",
]

# Exit status of `data download` for a dataset that must be fetched by hand: nothing was
# downloaded, so a script that goes on to train would fail later and less clearly.
MANUAL_EXIT = 3


def download(args: argparse.Namespace) -> int:
    name = args.name
    if name in MANUAL:
        print(manual_instructions(name, args.root))
        print(f"nothing was downloaded: {name} must be fetched by hand", file=sys.stderr)
        return MANUAL_EXIT
    if name not in DOWNLOADABLE:
        raise unknown_dataset_error(name)
    if not args.root:
        raise DownloadError(
            "--root is not set", fix=f"give the folder to put {name} in, e.g. --root data/{name}"
        )
    report = download_dataset(
        DOWNLOADABLE[name], args.root, args.mirror, not args.no_progress, args.keep_archives
    )
    for archive, action in report.actions.items():
        print(f"{archive}: {action}")
    if report.did_nothing:
        print(f"{name} is already in {report.root}: nothing was downloaded or extracted")
    print(f"ready: unetkit train --dataset {name} --data-root {report.root}")
    return 0


def check(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    splits = build_splits(cfg)
    report = inspect_splits(splits, progress=False if args.no_progress else None)
    print(format_problems(report.problems))
    print()
    print(format_statistics(report.statistics))
    print()
    errors = len(report.errors)
    if errors:
        print(f"data check failed: {errors} error(s); training would refuse this data")
        return 1
    print(f"data check passed: {cfg.data.dataset} at {cfg.data.root or '(built in)'}")
    return 0


def show(args: argparse.Namespace) -> int:
    from unetkit.data.preview import sample_grid, save_sample_grid
    from unetkit.data.transforms import build_train_transform

    cfg = config_from_args(args)
    splits = build_splits(cfg)
    source = splits.named()[args.split]
    transform = (
        build_train_transform(cfg.data.img_size, cfg.data.augment, cfg.data.in_channels)
        if args.augment
        else None
    )
    shown = f"augmented ({cfg.data.augment})" if args.augment else "as stored"
    figure = sample_grid(
        source,
        splits.class_names,
        count=args.count,
        transform=transform,
        seed=args.seed,
        title=f"{cfg.data.dataset} {args.split}: {min(args.count, len(source))} of "
        f"{len(source)} samples, {shown}",
    )
    suffix = "-augmented" if args.augment else ""
    out = Path(args.out or f"{cfg.data.dataset}-{args.split}-samples{suffix}.png")
    print(f"wrote {save_sample_grid(figure, out)}")
    return 0
