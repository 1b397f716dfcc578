"""``unetkit cv``: its arguments, and the command that runs the folds (see
:mod:`unetkit.training.cv`).

``cv`` takes every ``train`` flag and ``KEY=VALUE`` pair; each fold runs ``unetkit train`` with
them, plus ``--out CV/fold_<i>``, ``--plan off`` and the fold's time budget (and ``--resume auto``
when the fold has a checkpoint). The test split, the fold assignment and the plan are fixed once
in the cv folder, so a rerun of the same command continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetkit.cli.flags import TRAIN_FLAGS, add_config_flags, config_from_args, flag_overrides
from unetkit.cli.plan_commands import PLAN_CHOICES, explicit_keys, should_plan
from unetkit.config import Config, ConfigError, load_config
from unetkit.training.budget import parse_duration
from unetkit.training.calibrate_ensemble import calibrate_ensemble
from unetkit.training.calibrate_folds import calibrate_folds
from unetkit.training.cv import (
    FoldAssignment,
    assignment_for,
    format_summary,
    run_folds,
    summarise_folds,
    test_untested_folds,
    write_summary,
)
from unetkit.training.distributed import under_torchrun

PLAN_FILE = "plan.yaml"
FOLD_CALIBRATIONS = ("shared", "own")  # see unetkit.training.calibrate_folds
# Flags of `cv` itself (one value each), not handed on to the folds' `train`.
CV_OPTIONS = (
    "--folds", "--fold-seed", "--out", "--time-budget", "--time-budget-per-fold",
    "--calibration-holdout", "--fold-calibration",
)  # fmt: skip
# Keys each fold sets itself: given as KEY=VALUE they would send every fold to one place.
FOLD_KEYS = {  # keys cv sets for each fold, and what to give instead
    "train.out": "--out (the cv folder)",
    "train.resume": "a rerun of the same command (it resumes fold by fold)",
    "train.time_budget": "--time-budget-per-fold or --time-budget",
    "train.seed": "--seed S (fold i trains with seed S + i)",
    "train.final_test": "nothing: cv tests every fold (under the shared calibration, after it)",
}


def add_cv_command(sub: argparse._SubParsersAction) -> None:
    """The ``cv`` subcommand: train's flags, the cv folder, the folds and the budget."""
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation over train + val, each fold a normal run folder",
        epilog="Any train flag and KEY=VALUE pair applies to every fold. Rerun the same command "
        "to continue: finished folds are skipped, an interrupted one resumes.",
        allow_abbrev=False,  # the folds' argv is this one less CV_OPTIONS, spelled out
    )
    own = ("out", "resume", "time_budget", "final_test")  # set by cv for each fold
    add_config_flags(p, [flag for flag in TRAIN_FLAGS if flag not in own])
    p.add_argument("--out", required=True, help="the cv folder (fold_0, ..., folds.json, summary)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--fold-seed", type=int, help="seed of the fold assignment (default: "
                   "data.split_seed)")  # fmt: skip
    p.add_argument("--calibration-holdout", type=float, default=0.0, metavar="FRACTION",
                   help="set this share of train + val (0 to 0.5, whole images) aside from every "
                   "fold and fit one calibration of the ensemble's mean there (default 0: each "
                   "member keeps its own)")  # fmt: skip
    p.add_argument("--fold-calibration", choices=FOLD_CALIBRATIONS, default="shared",
                   help="shared (default): after the folds, fit one calibration on every fold's "
                   "out-of-fold samples together, store it in every fold and test each fold "
                   "then (the folds train without their own test); own: each fold keeps the "
                   "one fitted on its own validation fold")  # fmt: skip
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget-per-fold", metavar="DURATION", help="each fold trains "
                        "this long (90s, 20m, 1.5h)")  # fmt: skip
    budget.add_argument("--time-budget", metavar="DURATION", help="all folds together train "
                        "this long (shared out equally, after planning and each fold's test "
                        "under the shared calibration)")  # fmt: skip
    p.add_argument("--plan", choices=PLAN_CHOICES, default="auto",
                   help="as for train, but planned once for every fold (plan.yaml)")  # fmt: skip
    p.add_argument("--nproc", type=int, help="each fold trains in N processes (as train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cv)


def cv(args: argparse.Namespace) -> int:
    """Fix the plan and the folds, run every fold, then write and print the summary."""
    from unetkit.cli.main import main

    if under_torchrun():
        raise RuntimeError("unetkit cv starts each fold's processes itself: give it --nproc N "
                           "instead of running it under torchrun")  # fmt: skip
    _refuse_fold_keys(args.overrides)
    cv_dir = Path(args.out)
    cfg, plan = _planned(args, cv_dir)
    budget = cfg.train.time_budget
    seed = cfg.data.split_seed if args.fold_seed is None else args.fold_seed
    assignment = assignment_for(cfg, args.folds, seed, cv_dir, args.calibration_holdout)
    _describe(assignment, cv_dir)

    shared = args.fold_calibration == "shared"

    def train_fold(index: int, run_dir: Path, resume: bool) -> int:
        seed = cfg.train.seed + index  # other initial weights and batches: a more diverse ensemble
        argv = fold_argv(args.argv[1:], run_dir, resume, budget, plan, seed, test=not shared)
        return main(["train", *argv])

    status = run_folds(cv_dir, assignment, train_fold, progress=not args.no_progress)
    if status:
        return status
    lines = calibrate_folds(cv_dir, assignment) if shared else []
    lines += test_untested_folds(cv_dir, assignment)
    for line in lines + calibrate_ensemble(cv_dir, assignment):
        print(line, flush=True)
    summary = summarise_folds(cv_dir, assignment)
    written = write_summary(summary, cv_dir)
    print(format_summary(summary))
    for path in written:
        print(f"wrote {path}")
    return 0


def fold_argv(
    argv: Sequence[str],
    run_dir: Path,
    resume: bool,
    budget: str | None,
    plan: Path | None,
    seed: int | None = None,
    test: bool = True,
) -> list[str]:
    """``train``'s arguments for one fold: ``cv``'s less its own options (and ``--config``,
    when the plan replaces it), then the fold's folder, budget, plan and seed, and ``--no-test``
    when ``test`` is off (the shared fold calibration tests each fold once its map is in: a
    fold's own test would be replaced, and its time goes to training instead)."""
    dropped = CV_OPTIONS + ("--seed",) + (("--config",) if plan else ())
    kept = without_options(argv, dropped)
    extra = ["--out", str(run_dir), "--plan", "off"]
    if seed is not None:
        extra += ["--seed", str(seed)]
    if not test:
        extra.append("--no-test")
    if budget is not None:
        extra += ["--time-budget", str(budget)]
    if plan is not None:
        extra += ["--config", str(plan)]
    if resume:
        extra += ["--resume", "auto"]
    return [*kept, *extra]


def without_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``argv`` less each of ``options`` with its one value (``--opt V`` or ``--opt=V``)."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token in options:
            next(tokens, None)
        elif token.partition("=")[0] not in options:
            kept.append(token)
    return kept


def _planned(args: argparse.Namespace, cv_dir: Path) -> tuple[Config, Path | None]:
    """The config every fold trains with, and the plan file it comes from (None: unplanned).

    The plan is made once, for one fold's budget, and kept in the cv folder; with a total budget
    each fold gets an equal share of what planning left (recorded in the plan)."""
    overrides = _overrides(args)
    cfg = config_from_args(args, overrides)
    path = cv_dir / PLAN_FILE
    if not path.is_file():
        deciding = argparse.Namespace(plan=args.plan, resume=None, nproc=None)
        if not should_plan(deciding, cfg):
            return _with_budget(cfg, _fold_seconds(args, 0.0)), None
        _make_plan(args, cfg, overrides, path)
    planned = argparse.Namespace(**{**vars(args), "config": str(path)})
    return config_from_args(planned, {**overrides, "train.time_budget": _read_budget(path)}), path


def _make_plan(
    args: argparse.Namespace, cfg: Config, overrides: dict[str, Any], path: Path
) -> None:
    """Plan for one fold's budget; write the plan with each fold's training budget in it."""
    from unetkit.planning.plan import make_plan

    planning_cfg = _with_budget(cfg, _fold_seconds(args, 0.0))
    explicit = explicit_keys(args, overrides) | {"train.time_budget"}
    budget = planning_cfg.train.time_budget
    made = make_plan(planning_cfg, budget and parse_duration(budget), cfg.train.progress, explicit)
    print(made.describe(), flush=True)
    retest = (
        made.config(planning_cfg).train.final_reserve if args.fold_calibration == "shared" else 0
    )
    fold_cfg = _with_budget(planning_cfg, _fold_seconds(args, made.seconds, retest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made.to_yaml(fold_cfg, explicit))
    print(f"wrote {path}: the plan of every fold", flush=True)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = flag_overrides(args)
    if args.no_progress:
        overrides["train.progress"] = False
    return overrides


def _fold_seconds(
    args: argparse.Namespace, planning_seconds: float, retest_seconds: float = 0.0
) -> float | None:
    """One fold's training budget: ``--time-budget-per-fold``, or an equal share of
    ``--time-budget`` less the planning and, per fold, ``retest_seconds`` (the shared fold
    calibration's sampling and test, about the plan's final reserve); None without a
    budget."""
    if args.time_budget_per_fold:
        return parse_duration(args.time_budget_per_fold)
    if not args.time_budget:
        return None
    left = parse_duration(args.time_budget) - planning_seconds
    share = left / args.folds - retest_seconds
    if share <= 0:
        raise ValueError(f"--time-budget {args.time_budget} leaves no training time to "
                         f"{args.folds} folds after planning ({planning_seconds:.0f} s) and "
                         f"testing each fold ({retest_seconds:.0f} s each); give a longer "
                         f"one")  # fmt: skip
    return share


def _with_budget(cfg: Config, seconds: float | None) -> Config:
    budget = None if seconds is None else f"{seconds:.1f}s"
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_budget=budget))


def _read_budget(plan: Path) -> str | None:
    """The per-fold budget a plan file holds (``train.time_budget``)."""
    return load_config(str(plan)).train.time_budget


def _refuse_fold_keys(pairs: list[str]) -> None:
    for pair in pairs:
        key = pair.partition("=")[0].strip()
        if key in FOLD_KEYS:
            raise ConfigError(
                f"cv sets {key} for each fold; drop {pair!r} and use {FOLD_KEYS[key]} instead"
            )


def _describe(assignment: FoldAssignment, cv_dir: Path) -> None:
    """One line: the folds' sizes (and images, where tiles are grouped), the shared test split."""
    sizes = "/".join(str(len(fold.val)) for fold in assignment.folds) + " samples"
    groups = "/".join(str(len(fold.groups)) for fold in assignment.folds) + " images"
    if [len(f.groups) for f in assignment.folds] != [len(f.val) for f in assignment.folds]:
        sizes += f" ({groups})"
    held = len(assignment.calibration)
    kept = f"{held} held out to calibrate the ensemble; " if held else ""
    print(
        f"cv: {len(assignment.folds)} folds of {sizes}, seed {assignment.seed}; {kept}"
        f"{len(assignment.test)} test samples shared; {cv_dir / 'folds.json'}",
        flush=True,
    )
