"""``unetkit plan``, and the planning step of ``unetkit train`` (see :mod:`unetkit.planning.plan`).

``train`` plans when ``--plan`` is ``auto`` (the default) and the run trains a real dataset from
scratch in one process; ``--plan on`` plans the synthetic demo too, ``--plan off`` never plans.
The plan fills only the config keys that neither ``--config`` nor a flag nor a ``KEY=VALUE``
pair set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from unetkit.cli.flags import config_from_args, flag_overrides
from unetkit.config import Config, resolve_config_path
from unetkit.data.preprocess import size_hw
from unetkit.training.budget import parse_duration

PLAN_CHOICES = ("auto", "on", "off")


def plan(args: argparse.Namespace) -> int:
    from unetkit.planning.plan import make_plan

    cfg = config_from_args(args)
    explicit = explicit_keys(args, flag_overrides(args))
    made = make_plan(cfg, _budget_seconds(cfg), not args.no_progress, explicit)
    print(made.describe())
    out = Path(args.out or f"plan-{cfg.data.dataset}.yaml")
    out.write_text(made.to_yaml(cfg, explicit))
    print(f"wrote {out}; train with: unetkit train --config {out}")
    return 0


def should_plan(args: argparse.Namespace, cfg: Config) -> bool:
    """Whether ``train`` plans this run (see the module docstring)."""
    planned_before = (cfg.train.execution or {}).get("by") == "unetkit plan"
    if args.plan == "off" or args.resume or cfg.train.resume or planned_before:
        return False  # a resume keeps its run's settings; a planned config is a plan already
    if cfg.task.type == "multilabel":  # the planner reads class-id masks
        if args.plan == "on":
            raise ValueError(
                "--plan on: the planner measures class-id masks, not multi-label ones; train "
                "a multi-label task with --plan off (the default for it) and explicit settings"
            )
        return False
    several = (args.nproc or 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several:
        if args.plan == "on":
            raise ValueError(
                "--plan on runs in one process; plan first with `unetkit plan ... --out "
                "plan.yaml`, then train with --config plan.yaml --plan off"
            )
        return False
    return args.plan == "on" or cfg.data.dataset != "synthetic"


def planned_config(
    args: argparse.Namespace, cfg: Config, overrides: dict[str, Any], base: dict | None
) -> Config:
    """``cfg`` with the plan under every key the user set, the plan printed."""
    from unetkit.planning.plan import make_plan

    explicit = explicit_keys(args, overrides)
    made = make_plan(cfg, _budget_seconds(cfg), cfg.train.progress, explicit)
    print(made.describe(), flush=True)
    planned = made.overrides(explicit, max(size_hw(cfg.data.img_size)))
    return config_from_args(args, {**planned, **overrides}, base)


def _budget_seconds(cfg: Config) -> float | None:
    """``train.time_budget`` in seconds, None without one."""
    return None if cfg.train.time_budget is None else parse_duration(cfg.train.time_budget)


def explicit_keys(args: argparse.Namespace, overrides: dict[str, Any]) -> set[str]:
    """The dotted config keys a person set: flags, ``KEY=VALUE`` pairs and ``--config``."""
    keys = set(overrides)
    keys |= {item.partition("=")[0].strip() for item in args.overrides or []}
    if args.config:
        tree = yaml.safe_load(resolve_config_path(args.config).read_text()) or {}
        keys |= {f"{section}.{key}" for section, values in tree.items()
                 if isinstance(values, dict) for key in values}  # fmt: skip
    return keys
