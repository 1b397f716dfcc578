"""Issue 15, ensembles in ``unetkit evaluate``: several checkpoints or a cv folder are scored as
one ensemble, each member beside it, and the ensemble against its best member with a paired
bootstrap interval; the members must share the split scored."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from unetkit.checkpoint import model_from_checkpoint
from unetkit.cli.main import main
from unetkit.config import config_from_dict
from unetkit.data import build_splits
from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.bootstrap import paired_difference
from unetkit.metrics.calibration import CalibrationHistogram
from unetkit.metrics.summary import headline_arrays

TINY = [
    "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--no-progress",
    "--precision", "fp32", "--no-channels-last",
]  # fmt: skip
KEYS = [
    "data.synthetic_count=16", "model.options.base_width=4", "model.options.depth=2",
    "eval.boundary=false", "eval.instances=false", "task.num_classes=2",
]  # fmt: skip
EVALUATE = ["--no-progress", "--precision", "fp32", "--no-channels-last", "eval.ci_resamples=200"]

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory):
    """A folder laid out as `unetkit cv` leaves it: two runs of one split, other seeds."""
    folder = tmp_path_factory.mktemp("cv")
    for fold, seed in ((0, "3"), (1, "4")):
        out = folder / f"fold_{fold}"
        assert quiet_main(["train", *TINY, "--seed", seed, "--out", str(out), *KEYS]) == 0
    return folder


def best(cv_folder, fold: int):
    return cv_folder / f"fold_{fold}" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def ensemble_metrics(cv_folder):
    assert quiet_main(["evaluate", "--checkpoint", str(cv_folder), *EVALUATE]) == 0
    return json.loads((cv_folder / "evaluation" / "test" / "metrics.json").read_text())


def test_each_member_scores_as_it_does_alone(cv_folder, ensemble_metrics, tmp_path):
    members = ensemble_metrics["ensemble"]["members"]
    assert [m["checkpoint"] for m in members] == [str(best(cv_folder, k)) for k in (0, 1)]
    for fold, member in enumerate(members):
        out = tmp_path / str(fold)
        argv = ["evaluate", "--checkpoint", str(best(cv_folder, fold)), "--out", str(out)]
        assert quiet_main(argv + EVALUATE) == 0
        alone = json.loads((out / "metrics.json").read_text())
        for key in ("foreground_iou", "mean_iou", "pixel_accuracy"):
            assert member["dataset"][key] == pytest.approx(alone["dataset"][key], abs=1e-9)
        assert member["calibration"]["ece_before"] == pytest.approx(
            alone["calibration"]["before"]["ece"], abs=1e-6
        )
        assert member["calibration"]["ece_after"] == pytest.approx(
            alone["calibration"]["after"]["ece"], abs=1e-6
        )


def test_the_ensemble_is_the_mean_and_its_calibration_that_of_tempered_members(
    cv_folder, ensemble_metrics
):
    """By hand: each member alone, their raw mean (before) and tempered mean (after)."""
    loaded = [model_from_checkpoint(best(cv_folder, k)) for k in (0, 1)]
    singles = [
        Segmenter.from_loaded(m, "cpu", precision="fp32", channels_last=False) for m in loaded
    ]
    calibrations = [Calibration.from_checkpoint(m.checkpoint) for m in loaded]
    assert all(c.temperature != 1.0 for c in calibrations)
    record = json.loads((cv_folder / "fold_0" / "splits.json").read_text())
    cfg = config_from_dict(loaded[0].checkpoint["config"])
    source = build_splits(cfg, split_record=record).test
    before, after = CalibrationHistogram(2), CalibrationHistogram(2)
    confusion = np.zeros((2, 2))
    task = loaded[0].task
    for index in range(len(source)):
        image, mask = source.load(index)
        probs = [single.predict_proba(image) for single in singles]
        raw = np.mean(probs, axis=0)
        tempered = np.mean(
            [c.apply_to_probabilities(p, task) for p, c in zip(probs, calibrations, strict=True)],
            axis=0,
        )
        before.update(raw, mask)
        after.update(tempered, mask)
        predicted = (raw[1] > task.threshold).astype(int)
        np.add.at(confusion, (mask.ravel(), predicted.ravel()), 1)
    calibration = ensemble_metrics["calibration"]
    assert calibration["before"]["ece"] == pytest.approx(before.ece(), abs=1e-6)
    assert calibration["after"]["ece"] == pytest.approx(after.ece(), abs=1e-6)
    assert (
        calibration["temperature"] is None
        and "each member at its own T" in (calibration["after_label"])
    )
    iou = headline_arrays(confusion[None], binary=True)["foreground_iou"][0]
    assert ensemble_metrics["dataset"]["foreground_iou"] == pytest.approx(iou, abs=1e-9)


def test_the_comparison_is_against_the_best_member_with_an_interval(ensemble_metrics):
    section = ensemble_metrics["ensemble"]
    scores = [m["dataset"]["foreground_iou"] for m in section["members"]]
    assert section["best_member"] == int(np.argmax(scores))
    comparison = section["versus_best_member"]
    expected = ensemble_metrics["dataset"]["foreground_iou"] - max(scores)
    assert comparison["difference"] == pytest.approx(expected, abs=1e-9)
    low, high = comparison["interval"]
    assert low <= high and comparison["resamples"] == 200
    assert 0.0 <= comparison["share_above_zero"] <= 1.0


def test_the_report_and_summary_name_every_member(cv_folder, ensemble_metrics, capsys):
    page = (cv_folder / "evaluation" / "test" / "report.html").read_text()
    assert "Ensemble and its members" in page
    assert "fold_0 (best.pt)" in page and "fold_1 (best.pt)" in page and "ensemble of 2" in page
    assert main(["evaluate", "--checkpoint", str(cv_folder), *EVALUATE, "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 members, pooled foreground_iou each:" in printed
    assert "paired bootstrap CI" in printed


def test_members_of_other_splits_are_refused_for_that_split(cv_folder, tmp_path, capsys):
    other = tmp_path / "fold_9"
    shutil.copytree(cv_folder / "fold_1", other)
    record = json.loads((other / "splits.json").read_text())
    record["val"][0], record["train"][0] = record["train"][0], record["val"][0]
    (other / "splits.json").write_text(json.dumps(record))
    files = [str(best(cv_folder, 0)), str(other / "checkpoints" / "best.pt")]
    argv = ["evaluate", "--checkpoint", *files, "--out", str(tmp_path / "e"), *EVALUATE]
    assert main([*argv, "--split", "val"]) != 0
    assert "evaluate the ensemble with --split test" in capsys.readouterr().err


def test_several_files_need_an_output_folder(cv_folder, capsys):
    files = [str(best(cv_folder, 0)), str(best(cv_folder, 1))]
    assert main(["evaluate", "--checkpoint", *files, *EVALUATE]) != 0
    assert "give --out FOLDER" in capsys.readouterr().err


def test_paired_difference_by_hand():
    """Two images; model A right everywhere, model B misses image 2's foreground."""
    a = np.array([[[5, 0], [0, 5]], [[2, 0], [0, 8]]], dtype=float)
    b = np.array([[[5, 0], [0, 5]], [[2, 0], [8, 0]]], dtype=float)
    result = paired_difference(a, b, binary=True, key="foreground_iou", resamples=400)
    assert result["difference"] == pytest.approx(1.0 - 5 / 13)
    # a resample draws image 1 twice (difference 0, a quarter of them), image 2 twice (1) or both
    assert result["interval"] == [0.0, 1.0]
    assert result["share_above_zero"] == pytest.approx(0.75, abs=0.05)
    same = paired_difference(a, a, binary=True, key="foreground_iou", resamples=50)
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]
    assert same["share_above_zero"] == 0.0
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, a[:1], binary=True, key="foreground_iou")


def test_overrides_after_several_checkpoints_are_overrides_not_files():
    """`--checkpoint A B eval.boundary=false`: argparse hands all three to --checkpoint."""
    from unetkit.cli.flags import reclaim_overrides
    from unetkit.cli.main import build_parser

    argv = ["evaluate", "--checkpoint", "a.pt", "runs/lr=0.1/best.pt", "eval.boundary=false"]
    args = build_parser().parse_args(argv)
    reclaim_overrides(args)
    assert args.checkpoint == ["a.pt", "runs/lr=0.1/best.pt"]
    assert args.overrides == ["eval.boundary=false"]


def test_a_checkpoint_file_named_like_an_override_stays_a_checkpoint(tmp_path, monkeypatch):
    from unetkit.cli.flags import reclaim_overrides
    from unetkit.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.v2=final.pt").write_bytes(b"")
    argv = ["evaluate", "--checkpoint", "a.pt", "best.v2=final.pt", "eval.boundary=false"]
    args = build_parser().parse_args(argv)
    reclaim_overrides(args)
    assert args.checkpoint == ["a.pt", "best.v2=final.pt"]
    assert args.overrides == ["eval.boundary=false"]
