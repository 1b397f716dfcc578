"""``unetkit cv``: fold assignment by hand, the summary's numbers, and two folds end to end."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from unetkit.cli import cv_commands
from unetkit.cli.main import build_parser, main
from unetkit.config import load_config
from unetkit.data import build_splits
from unetkit.data.sources import DataError
from unetkit.metrics.summary import summarise
from unetkit.planning.plan import Plan
from unetkit.training.cv import (
    FoldAssignment,
    assign_groups,
    assignment_for,
    fold_spread,
    make_assignment,
    out_of_fold_metrics,
    sample_groups,
)

# fp32 and contiguous, and the cheap metrics only: the numbers are compared between files
TINY = [
    "--dataset", "synthetic", "--img-size", "32", "--epochs", "1", "--batch-size", "4",
    "--no-progress", "--precision", "fp32", "--no-channels-last",
    "data.synthetic_count=12", "model.options.base_width=4", "model.options.depth=2",
    "eval.boundary=false", "eval.instances=false", "eval.threshold_free=false",
    "eval.report=false",
]  # fmt: skip


def tiles(image: str, count: int) -> list[str]:
    return [f"{image}@0,{16 * i}" for i in range(count)]


# --- fold assignment ---------------------------------------------------------------------------


def test_tiles_of_one_image_are_one_group_and_other_samples_their_own():
    names = [*tiles("b", 2), "a", *tiles("c", 3)]
    assert sample_groups(names) == {"a": ["a"], "b": tiles("b", 2), "c": tiles("c", 3)}


def test_groups_go_largest_first_into_the_emptiest_fold():
    # a (3 samples) fills fold 0; b, c, d (1 each) then all fit fold 1 before it reaches 3
    groups = {"a": ["a1", "a2", "a3"], "b": ["b"], "c": ["c"], "d": ["d"]}
    for seed in range(5):
        assert assign_groups(groups, 2, seed) == [["a"], ["b", "c", "d"]]


def test_single_samples_are_dealt_round_robin_after_a_seeded_shuffle():
    groups = {f"s{i:02d}": [f"s{i:02d}"] for i in range(10)}
    folds = assign_groups(groups, 3, seed=7)
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert sorted(n for f in folds for n in f) == sorted(groups)  # disjoint and covering
    assert assign_groups(groups, 3, seed=7) == folds
    assert assign_groups(groups, 3, seed=8) != folds


def test_too_few_groups_or_folds_are_refused():
    with pytest.raises(DataError, match="3 folds need at least 3 groups"):
        assign_groups({"a": tiles("a", 4), "b": tiles("b", 4)}, 3, 0)
    with pytest.raises(ValueError, match="at least 2"):
        assign_groups({"a": ["a"], "b": ["b"]}, 1, 0)


def test_fold_splits_cover_train_and_val_keep_test_and_never_split_an_image():
    record = {
        "train": [*tiles("a", 2), *tiles("b", 2), *tiles("c", 2), *tiles("d", 2)],
        "val": tiles("e", 2),
        "test": ["f", "g"],
    }
    pool = set(record["train"] + record["val"])
    dataset = {"a", "b", "c", "d", "e", "f", "g"} | pool  # whole images and their tiles
    assignment = make_assignment(record, dataset, folds=3, seed=1)
    seen = []
    for i, fold in enumerate(assignment.folds):
        split = assignment.split_record(i)
        assert split["test"] == ["f", "g"]
        assert set(split["train"]) | set(split["val"]) == pool
        assert not set(split["train"]) & set(split["val"])
        assert {n.split("@")[0] for n in split["val"]}.isdisjoint(
            {n.split("@")[0] for n in split["train"]}
        )
        assert fold.evaluate == fold.groups  # scored on whole images, as the test split is
        assert assignment.evaluation_record(i)["val"] == fold.groups
        seen += split["val"]
    assert sorted(seen) == sorted(pool)
    assert FoldAssignment.from_dict(json.loads(json.dumps(assignment.to_dict()))) == assignment


def test_without_whole_images_the_held_out_tiles_are_scored():
    record = {"train": tiles("a", 2), "val": tiles("b", 2), "test": ["c@0,0"]}
    assignment = make_assignment(record, set(tiles("a", 2) + tiles("b", 2)), 2, 0)
    assert [fold.evaluate for fold in assignment.folds] == [f.val for f in assignment.folds]


def test_a_tiled_dataset_is_folded_by_image_and_scored_on_whole_images(tmp_path):
    cfg = load_config(overrides={"data.synthetic_count": 12, "data.img_size": 32,
                                 "data.tile_size": 16})  # fmt: skip
    assignment = assignment_for(cfg, 3, 0, tmp_path)
    assert [len(fold.val) for fold in assignment.folds] == [12, 12, 12]  # 3 images x 4 tiles
    assert assignment.test == build_splits(cfg).split_record["test"]
    for i, fold in enumerate(assignment.folds):
        assert {name.split("@")[0] for name in fold.val} == set(fold.groups)
        held_out = build_splits(cfg, split_record=assignment.evaluation_record(i)).val
        assert held_out.names == fold.groups  # the whole images, as the test split holds them
    assert json.loads((tmp_path / "folds.json").read_text()) == assignment.to_dict()


# --- summary numbers ---------------------------------------------------------------------------


def test_fold_spread_is_the_sample_standard_deviation_of_defined_values():
    result = fold_spread([0.5, None, 0.7])
    assert result["mean"] == pytest.approx(0.6)
    assert result["std"] == pytest.approx(math.sqrt(0.02))  # (0.1^2 + 0.1^2) / (2 - 1)
    assert result["folds"] == 2
    assert fold_spread([0.4]) == {"mean": 0.4, "std": None, "folds": 1}
    assert fold_spread([None]) == {"mean": None, "std": None, "folds": 0}


def test_out_of_fold_pools_the_folds_confusion_matrices_and_images(tmp_path):
    folds = []
    for i, (matrix, ious) in enumerate(
        [([[3, 1], [0, 4]], ["0.8", "1"]), ([[2, 0], [1, 1]], ["0.5"])]
    ):
        folder = tmp_path / f"fold_{i}"
        folder.mkdir()
        with open(folder / "per_image.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "height", "foreground_iou"])
            writer.writerows([f"img{i}{j}", 2, iou] for j, iou in enumerate(ious))
        folds.append(
            {"task": "binary", "class_names": ["bg", "fg"], "dataset": {"confusion_matrix": matrix}}
        )
    result = out_of_fold_metrics(folds, [tmp_path / "fold_0", tmp_path / "fold_1"])
    assert result["num_images"] == 3
    assert result["dataset"]["foreground_iou"] == pytest.approx(5 / 7)  # [[5, 1], [1, 5]]
    assert result["dataset"] == summarise(np.array([[5, 1], [1, 5]]), ["bg", "fg"], binary=True)
    per_image = result["per_image"]["foreground_iou"]
    assert per_image["mean"] == pytest.approx(2.3 / 3)
    assert per_image["std"] == pytest.approx(np.std([0.8, 1.0, 0.5]))
    assert per_image["images"] == 3


def test_out_of_fold_of_a_multilabel_task_sums_each_labels_matrices(tmp_path):
    folds = []
    for i, labels in enumerate(
        [([[6, 0], [1, 3]], [[9, 0], [0, 1]]), ([[5, 1], [0, 4]], [[8, 1], [0, 1]])]
    ):
        folder = tmp_path / f"fold_{i}"
        folder.mkdir()
        (folder / "per_image.csv").write_text(f"name,mean_iou\nimg{i},0.{i + 4}\n")
        per_label = [{"dataset": {"confusion_matrix": m}} for m in labels]
        folds.append({"task": "multilabel", "class_names": ["a", "b"], "per_label": per_label})
    result = out_of_fold_metrics(folds, [tmp_path / "fold_0", tmp_path / "fold_1"])
    # label a: [[11, 1], [1, 7]] -> IoU 7 / 9; label b: [[17, 1], [0, 2]] -> IoU 2 / 3
    assert result["dataset"]["mean_iou"] == pytest.approx((7 / 9 + 2 / 3) / 2)
    assert [row["name"] for row in result["dataset"]["per_class"]] == ["a", "b"]
    assert result["per_image"]["mean_iou"]["mean"] == pytest.approx(0.45)


# --- command line ------------------------------------------------------------------------------


def test_each_fold_gets_the_train_arguments_less_the_cv_options(tmp_path):
    argv = ["--folds", "3", "--out", "cv", "--fold-seed=2", "--nproc", "2", "--config", "c.yaml",
            "--time-budget", "9m", "--fold-calibration", "own", "--epochs", "1",
            "a.b=1"]  # fmt: skip
    run = tmp_path / "fold_1"
    assert cv_commands.fold_argv(argv, run, False, None, None) == [
        "--nproc", "2", "--config", "c.yaml", "--epochs", "1", "a.b=1",
        "--out", str(run), "--plan", "off",
    ]  # fmt: skip
    plan = tmp_path / "plan.yaml"
    assert cv_commands.fold_argv(argv, run, True, "30.0s", plan) == [
        "--nproc", "2", "--epochs", "1", "a.b=1", "--out", str(run), "--plan", "off",
        "--time-budget", "30.0s", "--config", str(plan), "--resume", "auto",
    ]  # fmt: skip
    seeded = cv_commands.fold_argv([*argv, "--seed=4"], run, False, None, None, seed=5)
    assert "--seed=4" not in seeded and seeded[-2:] == ["--seed", "5"]
    untested = cv_commands.fold_argv(argv, run, False, None, None, test=False)
    assert untested[-1] == "--no-test"
    assert build_parser().parse_args(["train", *untested]).final_test is False


def test_keys_that_each_fold_sets_are_refused(capsys, tmp_path):
    assert main(["cv", "--out", str(tmp_path), "train.out=elsewhere"]) == 2
    assert "use --out" in capsys.readouterr().err
    assert main(["cv", "--out", str(tmp_path), "train.seed=3"]) == 2
    assert "use --seed S (fold i trains with seed S + i)" in capsys.readouterr().err


def cv_args(tmp_path, *extra: str) -> argparse.Namespace:
    args = build_parser().parse_args(["cv", "--out", str(tmp_path), *TINY, *extra])
    args.argv = ["cv", *extra]
    return args


class QuickPlan(Plan):
    """A plan made without measuring, so ``describe`` has nothing to say."""

    def describe(self) -> str:
        return "plan"


def test_a_total_budget_is_shared_out_after_planning_once(tmp_path, monkeypatch):
    calls = []

    def make_plan(cfg, budget, progress, fixed):
        calls.append(budget)
        return QuickPlan(settings={"data.augment": "light"}, seconds=10.0)

    monkeypatch.setattr("unetkit.planning.plan.make_plan", make_plan)
    args = cv_args(tmp_path, "--folds", "2", "--time-budget", "70s", "--plan", "on")
    cfg, plan = cv_commands._planned(args, tmp_path)
    assert calls == [35.0]  # planned for one fold's share of the budget
    assert plan == tmp_path / "plan.yaml"
    assert cfg.train.time_budget == "30.0s"  # (70 s - 10 s planning) / 2 folds
    assert cfg.data.augment == "light"
    again, _ = cv_commands._planned(args, tmp_path)
    assert calls == [35.0] and again.train.time_budget == "30.0s"  # the plan file is reused


@pytest.mark.parametrize("calibration, budget", [("shared", "25.0s"), ("own", "30.0s")])
def test_a_total_budget_keeps_time_for_each_folds_test_under_the_shared_calibration(
    tmp_path, monkeypatch, calibration, budget
):
    def make_plan(cfg, seconds, progress, fixed):  # the plan keeps 5 s for a fold's test
        return QuickPlan(settings={"train.final_reserve": 5.0}, seconds=10.0)

    monkeypatch.setattr("unetkit.planning.plan.make_plan", make_plan)
    args = cv_args(tmp_path, "--folds", "2", "--time-budget", "70s", "--plan", "on",
                   "--fold-calibration", calibration)  # fmt: skip
    cfg, _ = cv_commands._planned(args, tmp_path)
    assert cfg.train.time_budget == budget  # (70 s - 10 s) / 2 folds, less 5 s when shared
    assert cfg.train.final_reserve == 5.0


def test_without_a_plan_each_fold_gets_its_budget(tmp_path):
    cfg, plan = cv_commands._planned(cv_args(tmp_path, "--time-budget-per-fold", "2m"), tmp_path)
    assert plan is None and cfg.train.time_budget == "120.0s"


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    assert main(["cv", "--folds", "2", "--out", str(out), *TINY]) == 0
    return out


def test_two_folds_end_to_end(cv_run, capsys):
    folds = json.loads((cv_run / "folds.json").read_text())
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    assert set(summary) >= {"folds", "per_fold", "over_folds", "out_of_fold", "headline"}
    held_out = []
    for i in range(2):
        run = cv_run / f"fold_{i}"
        for name in ("config.yaml", "checkpoints/best.pt", "metrics.json", "history.csv"):
            assert (run / name).is_file(), name
        assert load_config(str(run / "config.yaml")).train.seed == i  # a diverse ensemble
        split = json.loads((run / "splits.json").read_text())
        assert split["test"] == folds["test"]
        assert split["val"] == folds["fold"][i]["val"]
        held_out += split["val"]
    assert len(held_out) == len(set(held_out)) == summary["out_of_fold"]["num_images"]
    tests = [json.loads((cv_run / f"fold_{i}" / "metrics.json").read_text()) for i in range(2)]
    vals = [
        json.loads((cv_run / f"fold_{i}" / "evaluation" / "val" / "metrics.json").read_text())
        for i in range(2)
    ]
    plain = build_splits(load_config(overrides={"data.synthetic_count": 12, "data.img_size": 32}))
    assert folds["test"] == plain.split_record["test"]  # the split a plain train run tests on
    for split, files in (("test", tests), ("val", vals)):
        values = [m["dataset"]["mean_iou"] for m in files]
        stats = summary["over_folds"][split]["mean_iou"]
        assert stats["mean"] == pytest.approx((values[0] + values[1]) / 2)
        assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    pooled = np.sum([m["dataset"]["confusion_matrix"] for m in vals], axis=0)
    assert summary["out_of_fold"]["dataset"]["mean_iou"] == pytest.approx(
        summarise(pooled, vals[0]["class_names"])["mean_iou"]
    )
    rows = list(csv.DictReader((cv_run / "cv_summary.csv").read_text().splitlines()))
    assert [r["fold"] for r in rows] == ["fold_0", "fold_1", "mean", "std", "out_of_fold"]
    assert float(rows[2]["test_mean_iou"]) == pytest.approx(
        summary["over_folds"]["test"]["mean_iou"]["mean"]
    )


def test_a_rerun_skips_finished_folds_and_resumes_an_interrupted_one(cv_run, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("unetkit.training.loop.train", no_training)
    assert main(["cv", "--folds", "2", "--out", str(cv_run), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "fold 0: done" in printed and "fold 1: done" in printed
    assert "mean ± std" in printed
    monkeypatch.undo()
    for name in ("trained.json", "metrics.json"):  # as if stopped before the end of training
        (cv_run / "fold_1" / name).unlink()
    assert main(["cv", "--folds", "2", "--out", str(cv_run), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "fold 0: done" in printed and "fold 1: resuming" in printed
    assert "resumed from" in printed and (cv_run / "fold_1" / "metrics.json").is_file()


def test_under_the_shared_calibration_folds_train_untested_and_are_tested_once_after_it(cv_run):
    for i in range(2):
        run = cv_run / f"fold_{i}"
        trained = json.loads((run / "trained.json").read_text())
        assert trained["final_test"] is False and trained["epochs"] == 1
        assert not load_config(str(run / "config.yaml")).train.final_test
        calibration = json.loads((run / "calibration.json").read_text())["best.pt"]["calibration"]
        tested = json.loads((run / "metrics.json").read_text())["calibration"]
        assert tested["temperature"] == pytest.approx(calibration["temperature"])  # the shared map


def test_folds_that_no_calibration_tests_are_tested_by_the_cv(tmp_path, capsys):
    assert main(["cv", "--folds", "2", "--out", str(tmp_path), *TINY,
                 "eval.calibrate=false"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "fold calibration: skipped" in printed
    for i in range(2):
        assert f"fold {i} tested (wrote" in printed
        run = tmp_path / f"fold_{i}"
        assert json.loads((run / "trained.json").read_text())["final_test"] is False
        assert (run / "metrics.json").is_file()


def test_a_rerun_with_other_folds_is_refused(cv_run, capsys):
    assert main(["cv", "--folds", "3", "--out", str(cv_run), *TINY]) == 2
    assert "folds.json holds 2 folds" in capsys.readouterr().err
