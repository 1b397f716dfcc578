"""Issue 15's three targets on real data: a k-fold ensemble against its best fold, the ECE
before and after calibration (temperature, and bias where stored), and risk-coverage against
random referral, on the test split.

For each dataset: ``unetkit cv --folds K --time-budget-per-fold B --plan on`` (skipped when the
cv folder is complete), then ``unetkit evaluate --checkpoint CV_FOLDER`` (the ensemble, each member
beside it), each in its own process, one after another. Prints one Markdown table per target from
the JSON files those commands write, so every figure can be traced to a file.

    python benchmarks/cv_ensemble.py --runs pet isbi --out runs/cv-bench
    python benchmarks/cv_ensemble.py --runs pet --out runs/cv-bench --skip-train   # tables only
    python benchmarks/cv_ensemble.py --runs pet --budget pet=10m --out runs/cv-bench-10m
    python benchmarks/cv_ensemble.py --runs pet isbi --calibration-holdout 0.1 --out runs/cv-pooled

Data are read from ../shared/data (the checkout's neighbour), as distributed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = {  # dataset, folder under DATA, budget per fold
    "pet": ("oxford-pet", "oxford_pet_subset", "4m"),
    "isbi": ("isbi2012", "isbi2012_membrane", "3m"),
}


def run_commands(
    name: str,
    cv_folder: Path,
    folds: int,
    skip_train: bool,
    budget: str | None = None,
    holdout: float = 0.0,
) -> dict[str, float]:
    """Train the folds (unless done) and evaluate their ensemble; wall seconds of each step.
    ``budget`` per fold overrides the dataset's default; ``holdout``: cv's
    ``--calibration-holdout`` (the ensemble calibrated as a whole)."""
    dataset, folder, default_budget = RUNS[name]
    budget = budget or default_budget
    cli = [sys.executable, "-m", "unetkit"]
    steps = {
        "cv": [*cli, "cv", "--dataset", dataset, "--data-root", str(DATA / folder),
               "--folds", str(folds), "--time-budget-per-fold", budget, "--plan", "on",
               "--calibration-holdout", str(holdout), "--out", str(cv_folder), "--no-progress"],
        "evaluate": [*cli, "evaluate", "--checkpoint", str(cv_folder), "--no-progress"],
    }  # fmt: skip
    if skip_train or (cv_folder / "cv_summary.json").is_file():
        steps.pop("cv")
    walls = {}
    for step, command in steps.items():
        started = time.perf_counter()
        with open(cv_folder.parent / f"{name}_{step}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
        walls[step] = time.perf_counter() - started
    return walls


def ensemble_row(name: str, metrics: dict) -> str:
    """Target (a): the ensemble, its best member and the paired bootstrap difference."""
    section = metrics["ensemble"]
    verdict = section["versus_best_member"]
    key = verdict["metric"]
    members = [member["dataset"][key] for member in section["members"]]
    low, high = verdict["interval"]
    ensemble = metrics["dataset"][key]
    return (
        f"| {name} | {len(members)} | {key} | {min(members):.4f} - {max(members):.4f} | "
        f"{ensemble:.4f} | {verdict['difference']:+.4f} [{low:+.4f}, {high:+.4f}] | "
        f"{verdict['share_above_zero']:.1%} |"
    )


def calibration_rows(name: str, metrics: dict) -> list[str]:
    """Target (b): the test ECE of each member and of the ensemble, before and after."""
    rows = []
    for index, member in enumerate(metrics["ensemble"]["members"]):
        calibration = member["calibration"]
        rows.append(_ece_row(name, f"fold {index} ({_mapping(calibration)})",
                             calibration["ece_before"], calibration["ece_after"]))  # fmt: skip
    before, after = metrics["calibration"]["before"], metrics["calibration"]["after"]
    pooled = metrics["ensemble"].get("pooled_calibration")
    if pooled is not None:  # the rule it replaced, on the same pixels
        rows.append(_ece_row(name, "ensemble, mean of calibrated members", before["ece"],
                             pooled["ece_mean_of_calibrated_members"]))  # fmt: skip
        rows.append(_ece_row(name, f"ensemble, pooled {_mapping(pooled)}", before["ece"],
                             after["ece"]))  # fmt: skip
    else:
        rows.append(_ece_row(name, "ensemble", before["ece"], after["ece"]))
    return rows


def _mapping(calibration: dict) -> str:
    """The member's stored calibration, e.g. ``T = 1.31, bias -0.42``."""
    bias = calibration.get("bias")
    shift = f", bias {', '.join(f'{b:+.2f}' for b in bias)}" if bias else ""
    return f"T = {calibration['temperature']:.2f}{shift}"


def _ece_row(name: str, who: str, before: float, after: float) -> str:
    return f"| {name} | {who} | {before:.4f} | {after:.4f} | {after / before:.2f} |"


def risk_row(name: str, who: str, metrics: dict) -> str:
    """Target (c): errors removed by referring the most uncertain 10% of pixels, vs at random."""
    risk = metrics["uncertainty"]["risk_coverage"]
    return (
        f"| {name} | {who} | {risk['referred']:.0%} | {risk['errors_removed']:.1%} | "
        f"{risk['errors_removed_random']:.1%} |"
    )


def print_tables(names: list[str], out: Path) -> None:
    evaluations = {n: _read(out / n / "evaluation" / "test" / "metrics.json") for n in names}
    print("\n(a) ensemble vs its best member on the test split (paired bootstrap, 95%)\n")
    print("| data | members | metric | members' range | ensemble | ensemble - best [95% CI] | "
          "resamples > 0 |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name, metrics in evaluations.items():
        print(ensemble_row(name, metrics))
    print("\n(b) test ECE before and after calibration (target: after/before <= 0.5)\n")
    print("| data | model | ECE before | ECE after | after/before |\n|---|---|---|---|---|")
    ratios = []
    for name, metrics in evaluations.items():
        print("\n".join(calibration_rows(name, metrics)))
        members = [m["calibration"] for m in metrics["ensemble"]["members"]]
        ratios += [m["ece_after"] / m["ece_before"] for m in members]
        raw = metrics["calibration"]["before"]["ece"] / statistics.mean(
            m["ece_before"] for m in members
        )
        print(f"| {name} | raw ensemble / members' mean ECE at T = 1 | | | {raw:.2f} |")
    print(f"\nmedian after/before over the {len(ratios)} members: {statistics.median(ratios):.2f}")
    print("\n(c) risk-coverage on the test split\n")
    print("| data | model | referred | errors removed (most uncertain) | at random |")
    print("|---|---|---|---|---|")
    for name, metrics in evaluations.items():
        print(risk_row(name, "ensemble", metrics))
        for fold in sorted((out / name).glob("fold_*/metrics.json")):
            print(risk_row(name, fold.parent.name, _read(fold)))


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run without --skip-train, or check the logs")
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-train", action="store_true", help="tables from existing folders")
    parser.add_argument(
        "--budget", nargs="+", default=[], metavar="NAME=B",
        help="time budget per fold of a run, e.g. pet=10m (default: pet=4m, isbi=3m)",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-holdout", type=float, default=0.0, metavar="FRACTION",
        help="cv's option: calibrate the ensemble's mean on this held-out share",
    )  # fmt: skip
    args = parser.parse_args()
    budgets = dict(item.partition("=")[::2] for item in args.budget)
    unknown = sorted(name for name, budget in budgets.items() if name not in RUNS or not budget)
    if unknown:
        parser.error(f"--budget takes NAME=B with NAME in {sorted(RUNS)}; got {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        if not (args.skip_train and (args.out / name / "evaluation").is_dir()):
            walls = run_commands(
                name, args.out / name, args.folds, args.skip_train, budgets.get(name),
                args.calibration_holdout,
            )  # fmt: skip
            print(f"{name}: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items()))
    print_tables(args.runs, args.out)


if __name__ == "__main__":
    main()
