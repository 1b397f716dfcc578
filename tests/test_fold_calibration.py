"""``unetkit cv``'s shared fold calibration: one map fitted on every fold's out-of-fold pixels,
stored in every fold, measured by each fold's test run again, kept on a rerun while the folds are
unchanged; ``--fold-calibration own`` leaves each fold its own."""

from __future__ import annotations

import json

import pytest
import torch
from test_cv import TINY

from unetkit.checkpoint import load_checkpoint
from unetkit.cli.main import main
from unetkit.config import config_from_dict
from unetkit.inference.calibration import Calibration, store_calibration
from unetkit.inference.ensemble_calibration import member_digests
from unetkit.inference.view_calibration import view_nll
from unetkit.training.calibrate_folds import FILE, sample_folds
from unetkit.training.cv import FoldAssignment

pytestmark = pytest.mark.usefixtures("one_thread")
FOLDS = 2


def cv_args(out, calibration: str) -> list[str]:
    return ["cv", "--folds", str(FOLDS), "--fold-calibration", calibration,
            "--out", str(out), *TINY]  # fmt: skip


def stored(out, fold: int) -> Calibration:
    return Calibration.from_checkpoint(load_checkpoint(out / f"fold_{fold}/checkpoints/best.pt"))


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """A cv trained with each fold's own calibration, then given the shared one by a rerun; the
    own calibrations and their records, as the first run left them."""
    out = tmp_path_factory.mktemp("cv_shared")
    assert main(cv_args(out, "own")) == 0
    own = [stored(out, fold) for fold in range(FOLDS)]
    records = [json.loads((out / f"fold_{f}/calibration.json").read_text()) for f in range(FOLDS)]
    assert not (out / FILE).exists()  # own: nothing shared
    assert main(cv_args(out, "shared")) == 0
    return out, own, records


def test_own_leaves_each_fold_the_fit_on_its_validation_fold(folds):
    _, own, records = folds
    for calibration, record in zip(own, records, strict=True):
        assert calibration.temperature == pytest.approx(
            record["best.pt"]["calibration"]["temperature"]
        )
        assert "fitted_on" not in record["best.pt"]
    assert own[0].temperature != pytest.approx(own[1].temperature)  # two fits, two maps


def test_every_fold_stores_the_map_fitted_on_all_out_of_fold_pixels(folds):
    out, _, records = folds
    record = json.loads((out / FILE).read_text())["best.pt"]
    shared = Calibration.from_dict(record["calibration"])
    assert record["pixels"] == sum(r["best.pt"]["pixels"] for r in records)  # both folds' pixels
    assignment = FoldAssignment.from_dict(json.loads((out / "folds.json").read_text()))
    assert record["samples"] == sum(len(fold.val) for fold in assignment.folds)
    paths = [out / f"fold_{f}/checkpoints/best.pt" for f in range(FOLDS)]
    assert json.loads((out / FILE).read_text())["best.pt"]["members"] == member_digests(out, paths)
    for fold in range(FOLDS):
        assert stored(out, fold) == shared
        in_run = json.loads((out / f"fold_{fold}/calibration.json").read_text())["best.pt"]
        assert FILE in in_run["fitted_on"] and in_run["calibration"] == record["calibration"]
        tested = json.loads((out / f"fold_{fold}/metrics.json").read_text())["calibration"]
        assert tested["temperature"] == pytest.approx(shared.temperature)  # tested again


def test_the_shared_map_is_the_likeliest_on_the_pooled_pixels(folds):
    """The fit maximises the likelihood of every fold's held-out pixels together, so on them it
    does at least as well as either fold's own map (each the best on half of them)."""
    out, own, _ = folds
    assignment = FoldAssignment.from_dict(json.loads((out / "folds.json").read_text()))
    paths = [out / f"fold_{fold}/checkpoints/best.pt" for fold in range(FOLDS)]
    cfg = config_from_dict(load_checkpoint(paths[0])["config"])
    sample, _, _ = sample_folds(paths, assignment, cfg)

    def nll(calibration: Calibration) -> float:
        bias = None if calibration.bias is None else torch.tensor(calibration.bias).double()
        return float(view_nll(sample.logits.double(), sample.targets, sample.task,
                              calibration.temperature, bias))  # fmt: skip

    shared = nll(stored(out, 0))
    assert all(shared <= nll(calibration) + 1e-6 for calibration in own)


def test_a_rerun_keeps_the_fit_and_a_changed_fold_is_fitted_and_tested_again(
    folds, monkeypatch, capsys
):
    out, _, _ = folds
    shared = stored(out, 0)

    def no_test(*args, **kwargs):
        raise AssertionError("an unchanged fold was tested again")

    monkeypatch.setattr("unetkit.training.final_test.final_test", no_test)
    assert main(cv_args(out, "shared")) == 0
    assert "fold calibration of best.pt: kept" in capsys.readouterr().out
    monkeypatch.undo()
    store_calibration(out / "fold_1/checkpoints/best.pt", Calibration(3.0))  # as a retrained fold
    assert main(cv_args(out, "shared")) == 0
    printed = capsys.readouterr().out
    assert "out-of-fold samples" in printed
    assert "fold 0 tested with the shared" in printed and "fold 1 tested with the shared" in printed
    assert stored(out, 1).temperature == pytest.approx(shared.temperature)  # from the raw weights
    (out / FILE).write_text("[not an object]")
    assert main(cv_args(out, "shared")) == 0
    assert "fitting again" in capsys.readouterr().out
