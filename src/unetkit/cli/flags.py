"""The one table from command-line flags to config keys, and the one route through it.

Every config-backed flag of every command is a row of :data:`CONFIG_FLAGS`; a subcommand picks
its rows with :func:`add_config_flags`, and its handler turns what was given into a
:class:`~unetkit.config.Config` with :func:`config_from_args`. Every other key is reachable as a
trailing ``section.key=value``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from unetkit.config import Config, load_config

# `--device` and `--batch-size`, declared once: a config key for `train` and `plan` (default in
# the config), a plain option of the commands that run a model (see `add_device_flags`).
DEVICE_OPTIONS: dict[str, Any] = {"help": "auto (default), cpu, cuda or cuda:N"}
BATCH_SIZE_OPTIONS: dict[str, Any] = {"type": int, "metavar": "N"}

# Command-line flag -> (config key, argparse options). Every other key is reachable as a trailing
# `section.key=value`. Subcommands pick the flags they take with `add_config_flags`.
CONFIG_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "dataset": ("data.dataset", {"help": "dataset name (see `unetkit list`), default synthetic"}),
    "data_root": ("data.root", {"help": "dataset folder"}),
    "mode": ("data.mode", {"help": "dataset variant, e.g. oxford-pet: binary or trimap"}),
    "model": ("model.name", {"help": "model name from the registry"}),
    "num_classes": (
        "task.num_classes",
        {"type": int, "help": "classes including background; 2 = binary"},
    ),
    "img_size": (
        "data.img_size",
        {"type": int, "nargs": "+", "metavar": ("H", "W"), "help": "training size"},
    ),
    "epochs": ("train.epochs", {"type": int}),
    "batch_size": ("train.batch_size", {**BATCH_SIZE_OPTIONS, "help": "images per step"}),
    "lr": ("optim.lr", {"type": float}),
    "loss": ("loss.spec", {"help": "weighted sum, e.g. ce:0.7,dice:0.3 (ce/bce/dice/focal)"}),
    "optimizer": ("optim.optimizer", {"choices": ["adam", "adamw", "sgd"]}),
    "scheduler": ("optim.scheduler", {"choices": ["cosine", "plateau", "poly", "none"]}),
    "accum_steps": ("train.accum_steps", {"type": int, "help": "gradient accumulation steps"}),
    "precision": (
        "train.precision",
        {
            "choices": ["auto", "fp32", "bf16", "fp16"],
            "help": "auto (default) times a few steps and keeps the fastest safe option",
        },
    ),
    "seed": ("train.seed", {"type": int}),
    "device": ("train.device", DEVICE_OPTIONS),
    "out": ("train.out", {"help": "run folder (default runs/<dataset>-<model>-<time>)"}),
    "resume": (
        "train.resume",
        {"help": "checkpoint to continue from (RUN/checkpoints/last.pt), or auto with --out"},
    ),
    "augment": ("data.augment", {"choices": ["none", "light", "strong"]}),
    "monitor": ("train.monitor", {"help": "val_loss or val_<metric> picking best.pt"}),
    "workers": ("data.num_workers", {"type": int, "help": "data-loading worker processes"}),
    "time_budget": (
        "train.time_budget",
        {"help": "train for this long (90s, 20m, 1.5h), LR schedule spread over it"},
    ),
    "patience": (
        "train.patience",
        {"type": int, "help": "stop after N epochs without a better monitor"},
    ),
    "ema": ("train.ema", {"type": float, "help": "keep a weight moving average, e.g. 0.999"}),
    "compile": (
        "train.compile",
        {"action": "store_true", "default": None, "help": "torch.compile the model"},
    ),
    "channels_last": (
        "train.channels_last",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "channels-last memory format, or not; default: measured (auto)",
        },
    ),
    "sync_bn": (
        "train.sync_bn",
        {
            "action": "store_true",
            "default": None,
            "help": "SyncBatchNorm across processes (several GPUs)",
        },
    ),
    "final_test": (
        "train.final_test",
        {
            "flag": "--no-test",
            "action": "store_false",
            "default": None,
            "help": "end after training and calibration, without the test evaluation",
        },
    ),
    "ci": (
        "eval.ci",
        {"action": "store_true", "default": None, "help": "bootstrap 95%% CIs over images"},
    ),
    "ci_resamples": (
        "eval.ci_resamples",
        {"type": int, "help": "bootstrap resamples (default 1000)"},
    ),
    "metric_min_area": (
        "eval.min_component_area",
        {"type": int, "help": "instance metrics ignore predicted components below N pixels"},
    ),
    "boundary_width": (
        "eval.boundary_width",
        {"type": int, "help": "boundary IoU band (default 2%% of diagonal)"},
    ),
    "panels": (
        "eval.panels",
        {"type": int, "help": "best and worst images in the report (default 4)"},
    ),
    "report": (
        "eval.report",
        {
            "flag": "--no-report",
            "action": "store_false",
            "default": None,
            "help": "write metrics.json only",
        },
    ),
}
# `train` takes every flag of the table but evaluate's.
TRAIN_FLAGS = {flag: key for flag, (key, _) in CONFIG_FLAGS.items() if not key.startswith("eval.")}
# The flags that say which data a command reads (the `data` subcommands take only these).
DATASET_FLAGS = ("dataset", "data_root", "mode", "num_classes", "img_size")
# The flags of `evaluate` that are config keys (the rest of `eval.*` through KEY=VALUE pairs).
EVALUATE_FLAGS = ("dataset", "data_root", "mode", "ci", "ci_resamples", "metric_min_area",
                  "boundary_width", "panels", "report")  # fmt: skip


def add_config_flags(
    parser: argparse.ArgumentParser,
    flags: Iterable[str],
    *,
    config_file: bool = True,
    helps: Mapping[str, str] | None = None,
    overrides_help: str = "any config key",
) -> None:
    """``--config`` (unless ``config_file`` is off), the ``flags`` named (keys of CONFIG_FLAGS,
    with this command's ``helps`` if given), and trailing KEY=VALUE pairs.

    The parsed namespace carries ``config_keys`` ({flag: config key}) so a command can turn
    the flags into overrides without knowing this table.
    """
    flags = list(flags)
    if config_file:
        parser.add_argument("--config", help="a YAML file or a preset name (see `unetkit list`)")
    for flag in flags:
        options = dict(CONFIG_FLAGS[flag][1])
        if helps and flag in helps:
            options["help"] = helps[flag]
        name = options.pop("flag", "--" + flag.replace("_", "-"))
        parser.add_argument(name, dest=flag, **options)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    parser.set_defaults(config_keys={flag: CONFIG_FLAGS[flag][0] for flag in flags})


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    new: str,
    dest: str,
    **options: Any,
) -> None:
    """``old``, hidden from ``--help``, doing what ``new`` does after a one-line notice."""

    class Alias(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            print(f"unetkit: {old} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=dest, action=Alias, help=argparse.SUPPRESS, **options)


DOTTED_KEY = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def reclaim_overrides(args: argparse.Namespace) -> None:
    """Move KEY=VALUE pairs that a several-valued flag swallowed back into ``overrides``.

    ``--checkpoint A B eval.boundary=false`` hands all three to ``--checkpoint`` (argparse cannot
    tell where its list ends); a dotted key with ``=`` and no ``/`` before it is an override,
    unless a file of that name exists (``best.v2=final.pt`` beside the command)."""
    checkpoints = getattr(args, "checkpoint", None)
    if not isinstance(checkpoints, list) or not hasattr(args, "overrides"):
        return
    keys = [item for item in checkpoints if DOTTED_KEY.match(item) and not Path(item).exists()]
    if keys:
        args.checkpoint = [item for item in checkpoints if item not in keys]
        args.overrides = keys + list(args.overrides or [])


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{config key: value}`` of the config flags given on the command line."""
    return {
        key: getattr(args, flag)
        for flag, key in args.config_keys.items()
        if getattr(args, flag) is not None
    }


def config_from_args(
    args: argparse.Namespace,
    overrides: Mapping[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """The config of ``--config`` (if the command takes it), then ``overrides`` (default: the
    flags given), then trailing KEY=VALUE pairs, over ``base`` (a checkpoint's config) if any."""
    overrides = flag_overrides(args) if overrides is None else dict(overrides)
    return load_config(
        getattr(args, "config", None), overrides=overrides, dotted=args.overrides, base=base
    )
