"""``unetkit cv``: k-fold cross-validation over train + val, each fold a normal training run.

One split of a few hundred images gives a number whose spread nobody knows. Cross-validation
trains ``k`` models, each holding out a different ``1/k`` of the samples, and reports how much
the headline metrics move between them, and how well every sample is predicted by the model that
never saw it (the *out-of-fold* metrics).

* **Folds** are drawn over the dataset's train + val split; its test split is never touched and
  is the same for every fold, so the folds' test metrics are comparable. Samples are assigned by
  *group*: the tiles of one image (``<image>@<y>,<x>``, see :mod:`unetkit.data.tiles`) share a
  group, every other sample is a group of its own, so no image has tiles on both sides. Groups
  are shuffled with the seed, then placed largest first into the fold holding the fewest samples
  (round-robin when every group is one sample). The assignment is saved as ``folds.json``.
* **Each fold** is an ordinary run folder ``fold_<i>`` made by ``unetkit train``: its
  ``splits.json`` (train = the other folds, val = this fold, test = the test split) is written
  before training starts, and training reuses a saved split, so ``evaluate`` and ``predict`` work
  on it as on any run.
* **Shared fold calibration** (``--fold-calibration shared``, the default): after the folds, one
  temperature (and bias, threshold) is fitted on every fold's held-out samples together, each
  predicted by its own fold, and replaces each fold's own fit; each fold's test is run then
  (:mod:`unetkit.training.calibrate_folds`). The folds train without their own test
  (``train --no-test``), which would only be replaced; :func:`test_untested_folds` tests any
  fold the shared fit leaves.
* **Calibration holdout** (``--calibration-holdout FRACTION``, off by default): that share of the
  groups, drawn with the seed, is set aside before folding and trains no fold. After the folds,
  one temperature (and bias, threshold) is fitted on the *ensemble's* mean probabilities there
  (:mod:`unetkit.training.calibrate_ensemble`): averaging members that were each calibrated on
  their own fold can leave the mean under-confident, and held-out data is the only data that
  none of the members saw.
* **Resuming**: a fold whose training ended (its ``trained.json``, or ``metrics.json`` from
  before that file) is done; one with a checkpoint continues with ``--resume auto``; any other
  starts afresh.
* **Out-of-fold**: each fold's ``best.pt`` is evaluated on the samples it held out (their whole
  images where the data is tiled and the dataset holds them), written to
  ``fold_<i>/evaluation/val`` as ``unetkit evaluate --split val`` would. The out-of-fold pooled
  metrics come from the summed confusion matrices, the per-image ones from every fold's
  ``per_image.csv``; both through :mod:`unetkit.metrics`.
* **Summary**: ``cv_summary.json`` and ``cv_summary.csv``: each fold's headline validation and
  test metrics, their mean and sample standard deviation (``ddof = 1``) over folds, and the
  out-of-fold metrics.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import Config
from unetkit.data.registry import build_splits
from unetkit.data.sources import DataError
from unetkit.data.splits import SplitRecord, save_split_record, validate_split_record
from unetkit.data.tiles import image_name_of
from unetkit.metrics.per_image import spread
from unetkit.metrics.summary import CLASS_METRICS, headline_keys, summarise
from unetkit.training.resume import RESUMABLE, TRAINED_FILE

FOLDS_FILE = "folds.json"
SUMMARY_JSON = "cv_summary.json"
SUMMARY_CSV = "cv_summary.csv"
# What the printed table shows of the headline metrics (all of them go to the files).
SHOWN = {"binary": ("foreground_iou", "foreground_dice"), "multiclass": ("mean_iou", "mean_dice")}


@dataclass
class Fold:
    """One fold: the groups it holds out, their samples (its validation split), and what its
    out-of-fold evaluation scores (the groups' whole images where the dataset has them)."""

    groups: list[str]
    val: list[str]
    evaluate: list[str]


@dataclass
class FoldAssignment:
    """The folds of a cross-validation, the test split they all share and the samples held out
    of every fold to calibrate their ensemble (``folds.json``)."""

    seed: int
    folds: list[Fold]
    test: list[str]
    calibration: list[str] = field(default_factory=list)

    def split_record(self, index: int) -> SplitRecord:
        """Fold ``index``'s split: train = every other fold's samples, val = its own."""
        train = sorted(name for i, fold in enumerate(self.folds) if i != index for name in fold.val)
        record = {"train": train, "val": list(self.folds[index].val), "test": list(self.test)}
        return validate_split_record(record, where=f"fold {index}")

    def evaluation_record(self, index: int) -> SplitRecord:
        """The split whose ``val`` is what fold ``index``'s out-of-fold evaluation scores."""
        return {**self.split_record(index), "val": list(self.folds[index].evaluate)}

    def calibration_record(self) -> SplitRecord:
        """The split whose ``val`` is the calibration holdout (train: every fold's samples)."""
        train = sorted(name for fold in self.folds for name in fold.val)
        record = {"train": train, "val": list(self.calibration), "test": list(self.test)}
        return validate_split_record(record, where="the calibration holdout")

    def to_dict(self) -> dict[str, Any]:
        return {"folds": len(self.folds), "seed": self.seed, "test": self.test,
                "calibration": self.calibration,
                "fold": [asdict(fold) for fold in self.folds]}  # fmt: skip

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> FoldAssignment:
        folds = [Fold(**fold) for fold in tree["fold"]]
        return cls(tree["seed"], folds, list(tree["test"]), list(tree.get("calibration", [])))


def sample_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """``{group: its samples}``: a tile's group is its image's name, any other sample's its own
    name (:func:`unetkit.data.tiles.image_name_of`); groups and their samples sorted."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(image_name_of(name), []).append(name)
    return dict(sorted(groups.items()))


def assign_groups(groups: dict[str, list[str]], folds: int, seed: int) -> list[list[str]]:
    """The group names of each of ``folds`` folds: shuffled with ``seed``, then largest first
    (stable, so equal sizes keep the shuffled order) into the fold with the fewest samples."""
    if folds < 2:
        raise ValueError(
            f"--folds must be at least 2 (one fold held out, one trained); got {folds}"
        )
    if len(groups) < folds:
        raise DataError(
            f"{folds} folds need at least {folds} groups of samples in train + val; the data has "
            f"{len(groups)} (tiles of one image are one group)",
            fix="use fewer --folds, or add images",
        )
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda group: -len(groups[group]))
    assigned: list[list[str]] = [[] for _ in range(folds)]
    sizes = [0] * folds
    for group in order:
        smallest = sizes.index(min(sizes))
        assigned[smallest].append(group)
        sizes[smallest] += len(groups[group])
    return [sorted(fold) for fold in assigned]


def hold_out_groups(
    groups: dict[str, list[str]], fraction: float, seed: int
) -> tuple[list[str], dict[str, list[str]]]:
    """``(held-out samples, the groups left)``: ``fraction`` of the groups (at least one when
    above 0), drawn with ``seed``, set aside whole so no image has tiles on both sides."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(
            f"--calibration-holdout must be a fraction from 0 to 0.5 of train + val; got "
            f"{fraction} (0.1 sets a tenth of the images aside to calibrate the ensemble)"
        )
    if fraction == 0.0:
        return [], groups
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(fraction * len(order)))])
    samples = sorted(sample for group in held for sample in groups[group])
    return samples, {group: names for group, names in groups.items() if group not in held}


def make_assignment(
    record: SplitRecord,
    dataset_names: set[str],
    folds: int,
    seed: int,
    calibration_holdout: float = 0.0,
) -> FoldAssignment:
    """Folds over ``record``'s train + val less the calibration holdout, its test kept; a fold's
    out-of-fold evaluation scores its groups' whole images when each is a sample of the data."""
    held, groups = hold_out_groups(
        sample_groups(record["train"] + record["val"]), calibration_holdout, seed
    )
    made = []
    for names in assign_groups(groups, folds, seed):
        val = sorted(sample for group in names for sample in groups[group])
        whole = set(names) <= dataset_names and names != val
        made.append(Fold(names, val, list(names) if whole else val))
    return FoldAssignment(seed, made, sorted(record["test"]), held)


def assignment_for(
    cfg: Config, folds: int, seed: int, cv_dir: Path, calibration_holdout: float = 0.0
) -> FoldAssignment:
    """The saved ``folds.json`` of ``cv_dir``, or a new assignment saved there.

    A saved one must match what this command would draw (the same folds, seed, holdout and
    data): folds already trained on it must not change under a rerun."""
    from unetkit.data.registry import build_contents

    record = build_splits(cfg).split_record
    names = set(build_contents(cfg).source.names)
    fresh = make_assignment(record, names, folds, seed, calibration_holdout)
    path = cv_dir / FOLDS_FILE
    if path.is_file():
        saved = FoldAssignment.from_dict(json.loads(path.read_text()))
        if saved != fresh:
            raise ValueError(
                f"{path} holds {len(saved.folds)} folds (seed {saved.seed}, "
                f"{len(saved.calibration)} samples held out to calibrate) that differ from the "
                f"{folds} folds (seed {seed}, {len(fresh.calibration)} held out) this command "
                f"draws from the data; rerun the command that made it, or give a new --out"
            )
        return saved
    cv_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fresh.to_dict(), indent=1) + "\n")
    return fresh


def fold_dir(cv_dir: Path, index: int) -> Path:
    return cv_dir / f"fold_{index}"


def fold_finished(run_dir: Path) -> bool:
    """Whether a fold's training is complete: it wrote :data:`TRAINED_FILE` (or, from before
    that file existed, its final test wrote ``metrics.json``)."""
    return (run_dir / TRAINED_FILE).is_file() or fold_tested(run_dir)


def fold_tested(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def fold_resumable(run_dir: Path) -> bool:
    """Whether an unfinished fold has a checkpoint to continue from (``--resume auto``)."""
    return any((run_dir / "checkpoints" / name).is_file() for name in RESUMABLE)


# train(run_dir, resume) -> exit status: one fold's run by the ordinary training entry point.
TrainFold = Callable[[int, Path, bool], int]  # fold index, its run folder, resume


def run_folds(
    cv_dir: Path, assignment: FoldAssignment, train_fold: TrainFold, progress: bool = True
) -> int:
    """Train (or resume, or skip) every fold, then evaluate what it held out; 0 when all are
    done, else the failing fold's exit status (the folds after it are left for a rerun)."""
    for index in range(len(assignment.folds)):
        run_dir = fold_dir(cv_dir, index)
        if fold_finished(run_dir):
            print(f"fold {index}: done ({run_dir}), skipped", flush=True)
        else:
            status = _train_one(run_dir, assignment, index, train_fold)
            if status:
                return status
        evaluate_held_out(run_dir, assignment.evaluation_record(index), progress)
    return 0


def _train_one(run_dir: Path, assignment: FoldAssignment, index: int, train: TrainFold) -> int:
    """Fold ``index``'s run with its split saved first; non-zero when it did not finish."""
    resume = fold_resumable(run_dir)
    print(f"fold {index}: {'resuming' if resume else 'training'} in {run_dir}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_split_record(assignment.split_record(index), run_dir / "splits.json")
    status = train(index, run_dir, resume)
    if status == 0 and not fold_finished(run_dir):
        print(f"fold {index} stopped before the end of its training; rerun the same command "
              f"to resume it", flush=True)  # fmt: skip
        return 1
    return status


def test_fold(run_dir: Path, assignment: FoldAssignment, index: int) -> dict[str, Any]:
    """Fold ``index``'s test evaluation of its ``best.pt`` as it is now, as its own end of
    training runs it (``metrics.json``, report); its metrics."""
    from unetkit.checkpoint import trained_config
    from unetkit.training.final_test import final_test
    from unetkit.training.history import read_history_csv

    cfg = trained_config(run_dir / "checkpoints" / "best.pt")
    test = build_splits(cfg, split_record=assignment.split_record(index)).test
    history_file = run_dir / "history.csv"
    history = read_history_csv(history_file) if history_file.is_file() else None
    metrics, _ = final_test(run_dir, test, cfg, cfg.train.device, history)
    return metrics


def test_untested_folds(cv_dir: Path, assignment: FoldAssignment) -> list[str]:
    """Test each fold that trained without its test; the lines to print. Under the shared fold
    calibration the folds train without it, and the calibration tests every fold once its map
    is in; this catches the folds it left (calibration off, or no map could be fitted)."""
    lines = []
    for index in range(len(assignment.folds)):
        run_dir = fold_dir(cv_dir, index)
        if not fold_tested(run_dir):
            test_fold(run_dir, assignment, index)
            lines.append(f"fold {index} tested (wrote {run_dir / 'metrics.json'})")
    return lines


def evaluate_held_out(run_dir: Path, record: SplitRecord, progress: bool = True) -> Path:
    """``best.pt`` scored on the samples its fold held out, into ``RUN/evaluation/val`` (as
    ``unetkit evaluate --split val``); kept when already there."""
    from unetkit.checkpoint import model_from_checkpoint, trained_config
    from unetkit.evaluation.evaluate import evaluate_source, write_evaluation, write_per_image_csv
    from unetkit.inference.segmenter import Segmenter

    out = run_dir / "evaluation" / "val"
    if (out / "metrics.json").is_file() and (out / "per_image.csv").is_file():
        return out
    best = run_dir / "checkpoints" / "best.pt"
    cfg = trained_config(best)
    # the raw model, as `unetkit evaluate` runs it: the threshold stored by the end-of-training
    # calibration was tuned on these very samples, so applying it would flatter the fold
    segmenter = Segmenter.from_loaded(
        model_from_checkpoint(best), cfg.train.device, cfg.train.batch_size
    )
    source = build_splits(cfg, split_record=record).val
    evaluation = evaluate_source(segmenter, source, "val", cfg.eval, progress)
    evaluation.metrics["checkpoint"] = str(best)
    written = write_evaluation(evaluation, out, cfg.eval)
    if "per_image" not in written:  # the out-of-fold per-image metrics read it
        write_per_image_csv(evaluation.rows, out / "per_image.csv")
    return out


def summarise_folds(cv_dir: Path, assignment: FoldAssignment) -> dict[str, Any]:
    """``cv_summary.json``'s content, from the folds' metrics files (see the module docstring)."""
    runs = [fold_dir(cv_dir, i) for i in range(len(assignment.folds))]
    val = [_read_json(run / "evaluation" / "val" / "metrics.json") for run in runs]
    test = [_read_json(run / "metrics.json") for run in runs]
    task = test[0]["task"]
    keys = task_headline(task)
    per_fold = [
        {"fold": i, "run": str(run), "val_images": v["num_images"], "test_images": t["num_images"],
         "val": _headline(v, keys), "test": _headline(t, keys)}
        for i, (run, v, t) in enumerate(zip(runs, val, test, strict=True))
    ]  # fmt: skip
    over = {split: {key: fold_spread([row[split][key] for row in per_fold]) for key in keys}
            for split in ("val", "test")}  # fmt: skip
    return {
        "folds": len(runs),
        "seed": assignment.seed,
        "task": task,
        "class_names": test[0]["class_names"],
        "headline": keys,
        "per_fold": per_fold,
        "over_folds": over,
        "out_of_fold": out_of_fold_metrics(val, [run / "evaluation" / "val" for run in runs]),
    }


def fold_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "folds"}`` of the defined values; ``std`` the sample standard deviation
    (``ddof = 1``: the folds are a sample of the splits one could have drawn), None below two."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if defined.size == 0:
        return {"mean": None, "std": None, "folds": 0}
    std = float(defined.std(ddof=1)) if defined.size > 1 else None
    return {"mean": float(defined.mean()), "std": std, "folds": int(defined.size)}


def task_headline(task: str) -> list[str]:
    """The headline metrics of a ``metrics.json`` ``task`` (binary, multiclass, multilabel)."""
    if task == "multilabel":  # the means over labels (unetkit.metrics.multilabel)
        return [f"mean_{key}" for key in CLASS_METRICS]
    return list(headline_keys(task == "binary"))


def out_of_fold_metrics(val: list[dict[str, Any]], folders: list[Path]) -> dict[str, Any]:
    """Every held-out sample scored by the fold that held it out: pooled metrics of the summed
    confusion matrices, per-image mean and spread over every fold's ``per_image.csv`` rows."""
    rows = [row for folder in folders for row in _read_rows(folder / "per_image.csv")]
    keys = task_headline(val[0]["task"])
    return {
        "num_images": len(rows),
        "dataset": _pooled(val),
        "per_image": {key: spread([row.get(key) for row in rows]) for key in keys},
    }


def _pooled(val: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``dataset`` section of the folds' summed confusion matrices (one per label for a
    multi-label task)."""
    names, task = val[0]["class_names"], val[0]["task"]
    if task == "multilabel":
        from unetkit.metrics.multilabel import summarise_labels

        per_label = [
            [label["dataset"]["confusion_matrix"] for label in v["per_label"]] for v in val
        ]
        return summarise_labels(np.sum(per_label, axis=0).astype(np.int64), names)
    matrix = np.sum([v["dataset"]["confusion_matrix"] for v in val], axis=0)
    return summarise(matrix.astype(np.int64), names, binary=task == "binary")


def write_summary(summary: dict[str, Any], cv_dir: Path) -> list[Path]:
    """``cv_summary.json`` and ``cv_summary.csv`` (a row per fold, then mean, std and
    out-of-fold; a column per split and headline metric)."""
    json_path, csv_path = cv_dir / SUMMARY_JSON, cv_dir / SUMMARY_CSV
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    columns = [f"{split}_{key}" for split in ("val", "test") for key in summary["headline"]]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", *columns])
        for label, values in _summary_rows(summary):
            writer.writerow([label, *("" if values.get(c) is None else values[c] for c in columns)])
    return [json_path, csv_path]


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, float | None]]]:
    """``(label, {split_key: value})`` of each fold, the mean, the std and the out-of-fold."""
    rows = [(f"fold_{row['fold']}", {f"{s}_{k}": v for s in ("val", "test")
             for k, v in row[s].items()}) for row in summary["per_fold"]]  # fmt: skip
    for stat in ("mean", "std"):
        over = summary["over_folds"]
        rows.append((stat, {f"{s}_{k}": over[s][k][stat] for s in over for k in over[s]}))
    pooled = summary["out_of_fold"]["dataset"]
    rows.append(("out_of_fold", {f"val_{k}": pooled.get(k) for k in summary["headline"]}))
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: the shown headline metrics per fold, mean ± std, out-of-fold."""
    shown = SHOWN.get(summary["task"], SHOWN["multiclass"])
    keys = [key for key in shown if key in summary["headline"]] or summary["headline"][:2]
    columns = [f"{split}_{key}" for split in ("val", "test") for key in keys]
    rows = dict(_summary_rows(summary))
    mean, std = rows.pop("mean"), rows.pop("std")
    table = [("", columns)]
    table += [(label, [_cell(values.get(c)) for c in columns]) for label, values in rows.items()]
    table.insert(-1, ("mean ± std", [f"{_cell(mean[c])} ± {_cell(std[c])}" for c in columns]))
    lines = [f"{label:<12}" + "".join(f"{cell:>22}" for cell in cells) for label, cells in table]
    lines.append(f"(out_of_fold: the {summary['out_of_fold']['num_images']} held-out samples, "
                 "each predicted by the fold that held it out)")  # fmt: skip
    return "\n".join(lines)


def _headline(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, float | None]:
    return {key: metrics["dataset"].get(key) for key in keys}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rerun the same `unetkit cv` command")
    return json.loads(path.read_text())


def _read_rows(path: Path) -> list[dict[str, float | None]]:
    """``per_image.csv`` rows as numbers (an empty cell: undefined); text columns dropped."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: _number(v) for k, v in row.items() if k != "name"} for row in rows]


def _number(text: str) -> float | None:
    try:
        return float(text) if text != "" else None
    except ValueError:
        return None
