"""A cv ensemble calibrated as a whole: the holdout drawn before folding, one calibration of the
mean fitted there, applied by every inference path, and refused once its members change."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_cv import TINY, tiles

from unetkit.cli.main import main
from unetkit.config import EvalConfig
from unetkit.evaluation.members import MemberScores
from unetkit.inference.calibrated import load_model
from unetkit.inference.calibration import Calibration
from unetkit.inference.ensemble import load_ensemble
from unetkit.inference.ensemble_calibration import FILE, pooled_calibration
from unetkit.inference.onnx_backend import read_metadata
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import Task
from unetkit.training.cv import FoldAssignment, hold_out_groups, make_assignment

pytestmark = pytest.mark.usefixtures("one_thread")

# --- the holdout -------------------------------------------------------------------------------


def test_the_holdout_takes_whole_images_and_is_drawn_with_the_seed():
    groups = {"a": tiles("a", 3), **{name: [name] for name in "bcdefgh"}}
    held, left = hold_out_groups(groups, 0.25, seed=3)
    assert len(set(groups) - set(left)) == 2  # a quarter of 8 groups
    assert sorted(held) == sorted(s for g in set(groups) - set(left) for s in groups[g])
    assert hold_out_groups(groups, 0.25, seed=3) == (held, left)
    drawn = {tuple(hold_out_groups(groups, 0.25, seed)[0]) for seed in range(10)}
    assert len(drawn) > 1
    assert hold_out_groups(groups, 0.0, seed=3) == ([], groups)
    assert len(hold_out_groups(groups, 0.01, seed=3)[0]) >= 1  # at least one group


def test_a_holdout_outside_zero_to_a_half_is_refused():
    with pytest.raises(ValueError, match="from 0 to 0.5 .* got 0.7"):
        hold_out_groups({"a": ["a"], "b": ["b"]}, 0.7, seed=0)


def test_the_folds_never_see_the_holdout_and_an_old_folds_file_reads_without_one():
    record = {"train": [f"s{i}" for i in range(8)], "val": ["s8", "s9"], "test": ["t0", "t1"]}
    names = set(record["train"] + record["val"] + record["test"])
    assignment = make_assignment(record, names, folds=2, seed=0, calibration_holdout=0.2)
    assert len(assignment.calibration) == 2
    folded = {name for fold in assignment.folds for name in fold.val}
    assert folded | set(assignment.calibration) == set(record["train"] + record["val"])
    assert not folded & set(assignment.calibration)
    for index in range(2):
        split = assignment.split_record(index)
        assert not set(split["train"] + split["val"]) & set(assignment.calibration)
    assert assignment.calibration_record()["val"] == assignment.calibration
    tree = assignment.to_dict()
    assert FoldAssignment.from_dict(tree) == assignment
    del tree["calibration"]  # folds.json of a cv run made before the holdout existed
    plain = make_assignment(record, names, folds=2, seed=0)
    assert FoldAssignment.from_dict({**plain.to_dict(), "calibration": []}) == plain
    assert FoldAssignment.from_dict(tree).calibration == []


# --- the pooled calibration in evaluation, by hand ---------------------------------------------


def test_members_scores_return_the_pooled_calibration_of_the_raw_mean():
    task = Task(2)
    pooled = Calibration(temperature=2.0)
    scores = MemberScores(["a", "b"], [Calibration(), Calibration()], task, ["bg", "fg"],
                          EvalConfig(), pooled=pooled)  # fmt: skip
    members = np.array([[[[0.1]], [[0.9]]], [[[0.5]], [[0.5]]]], dtype=np.float32)  # (M, C, 1, 1)
    result = scores.add("x", members, np.ones((1, 1), dtype=np.uint8))
    # mean foreground 0.7: logit log(0.7 / 0.3) halved, back through the sigmoid
    expected = 1.0 / (1.0 + math.exp(-math.log(0.7 / 0.3) / 2.0))
    assert result[1, 0, 0] == pytest.approx(expected, abs=1e-5)
    assert result[0, 0, 0] == pytest.approx(1.0 - expected, abs=1e-5)
    assert "pooled T = 2.00" in scores.ensemble_check().after_label


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out_cv(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv_holdout")
    args = ["cv", "--folds", "2", "--calibration-holdout", "0.25", "--out", str(out), *TINY]
    assert main(args) == 0
    return out


def test_cv_fits_one_calibration_on_the_holdout_and_names_its_members(held_out_cv, capsys):
    folds = json.loads((held_out_cv / "folds.json").read_text())
    record = json.loads((held_out_cv / FILE).read_text())
    assert len(folds["calibration"]) == record["samples"] >= 1
    for fold in folds["fold"]:
        assert not set(fold["val"]) & set(folds["calibration"])
    assert [m["checkpoint"] for m in record["members"]] == [
        f"fold_{i}/checkpoints/best.pt" for i in range(2)
    ]
    assert all(len(m["sha256"]) == 64 for m in record["members"])
    assert record["calibration"]["temperature"] > 0 and "ece" in record


def test_inference_applies_the_pooled_calibration_to_the_raw_mean(held_out_cv):
    pooled = pooled_calibration([held_out_cv])
    loaded = load_model(held_out_cv)
    applied = loaded.checkpoint["calibrated"]
    assert applied["pooled"] is True and applied["temperatures"] == [pooled.temperature]
    raw = load_ensemble([held_out_cv])
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = pooled.apply(raw.model(images))
        found = loaded.model(images)
    torch.testing.assert_close(found, expected)
    assert not torch.allclose(raw.model(images), found)  # the calibration is not the identity
    # the members' path (uncertainty) gives the same ensemble probabilities
    segmenter = Segmenter.from_loaded(loaded, "cpu", precision="fp32", channels_last=False)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    _, mean, _ = segmenter.predict_members([image])[0]
    np.testing.assert_allclose(mean, segmenter.predict_proba(image), atol=1e-5)


def test_the_exported_ensemble_carries_the_pooled_calibration(held_out_cv, tmp_path, capsys):
    onnx_file = tmp_path / "ensemble.onnx"
    assert main(["export", "--checkpoint", str(held_out_cv), "--out", str(onnx_file)]) == 0
    metadata = read_metadata(onnx_file)
    assert metadata["calibrated"]["pooled"] is True and metadata["ensemble"] == {"members": 2}


def test_evaluate_reports_the_pooled_calibration_beside_the_mean_of_calibrated_members(
    held_out_cv, tmp_path
):
    out = tmp_path / "evaluation"
    args = ["evaluate", "--checkpoint", str(held_out_cv), "--split", "test", "--out", str(out)]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    pooled = metrics["ensemble"]["pooled_calibration"]
    assert pooled["temperature"] == pooled_calibration([held_out_cv]).temperature
    assert 0.0 <= pooled["ece_mean_of_calibrated_members"] <= 1.0
    assert "pooled" in metrics["calibration"]["after_label"]


def test_changed_members_are_refused_until_a_rerun_fits_again(held_out_cv, monkeypatch, capsys):
    path = held_out_cv / FILE
    record = json.loads(path.read_text())
    record["members"][1]["sha256"] = "0" * 64  # as if fold 1 had been trained again
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="fold_1/checkpoints/best.pt changed"):
        load_model(held_out_cv)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("unetkit.training.loop.train", no_training)
    args = ["cv", "--folds", "2", "--calibration-holdout", "0.25", "--out", str(held_out_cv)]
    assert main([*args, *TINY]) == 0
    assert "held-out samples" in capsys.readouterr().out
    assert pooled_calibration([held_out_cv]) is not None  # refitted on the members as they are
    assert main([*args, *TINY]) == 0
    assert "kept" in capsys.readouterr().out
    path.write_text("{not json")  # an unreadable file is fitted again, not a crash
    assert main([*args, *TINY]) == 0
    assert "fitting again" in capsys.readouterr().out
    assert pooled_calibration([held_out_cv]) is not None


# --- the TTA check on the holdout ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flipped_cv(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv_holdout_tta")
    args = ["cv", "--folds", "2", "--calibration-holdout", "0.25", "--out", str(out), *TINY,
            "data.augment=light", "eval.tta=true"]  # fmt: skip
    assert main(args) == 0
    return out


def test_the_ensemble_checks_its_tta_on_the_holdout_and_every_path_runs_the_choice(
    flipped_cv, tmp_path
):
    record = json.loads((flipped_cv / FILE).read_text())
    check = record["tta"]
    assert check["views"] == 2 and check["metric"] == "mean_iou"  # the monitor, val_mean_iou
    assert check["kept"] is (check["with"] is not None and check["with"] > check["without"])
    for kept in (True, False):  # the stored choice, whichever it is, reaches every path
        (flipped_cv / FILE).write_text(json.dumps({**record, "tta": {**check, "kept": kept}}))
        assert load_model(flipped_cv).checkpoint["inference"]["tta"] is kept
        out = tmp_path / f"kept_{kept}"
        assert main(["evaluate", "--checkpoint", str(flipped_cv), "--out", str(out),
                     "--no-progress", "--no-report"]) == 0  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["inference"]["config"]["tta"] is kept
    members = [load_model(flipped_cv / f"fold_{i}" / "checkpoints" / "best.pt") for i in (0, 1)]
    assert all(m.checkpoint["inference"]["tta_flips"] == [[], [-1]] for m in members)
