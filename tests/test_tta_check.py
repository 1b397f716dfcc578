"""The end-of-training TTA check (unetkit.training.tta_check): TTA stays on only where the mean
of the trained flips scores higher on validation than the image alone, and the checkpoint then
runs as the check chose."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch
from test_cv import TINY

from unetkit.checkpoint import load_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.inference.view_calibration import ViewSample
from unetkit.tasks import Task
from unetkit.training.calibrate import calibration_line, fit_sample
from unetkit.training.tta_check import choose_views, monitored_score, planned_tta

pytestmark = pytest.mark.usefixtures("one_thread")

BINARY, CLASSES = Task(2), Task(3)


def _sample(task: Task, views: list[torch.Tensor], targets: torch.Tensor) -> ViewSample:
    """A sample of one 'image' holding every pixel: ``views`` are (P, out_channels) logits."""
    sample = ViewSample(task, per_image=len(targets))
    picked = sample.pick(targets[None, :])
    sample.add([view[picked.positions] for view in views], picked)
    return sample


def _fit(monitor: str):
    return lambda sample: fit_sample(sample, ["background", "thing"], monitor)


def _binary_truth(pixels: int = 20_000) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(pixels, generator=generator) < 0.3).long()
    signal = (targets.float() * 2 - 1)[:, None] * 2.0  # +2 on the foreground, -2 elsewhere
    return generator, targets, signal


def test_a_view_that_knows_nothing_turns_tta_off_and_the_one_view_fit_is_stored():
    generator, targets, signal = _binary_truth()
    upright = signal + torch.randn(len(targets), 1, generator=generator) * 1.5
    noise = torch.randn(len(targets), 1, generator=generator) * 3  # a view never trained on
    sample = _sample(BINARY, [upright, noise], targets)
    record, check = choose_views(sample, _fit("val_foreground_iou"), "val_foreground_iou")
    assert check["kept"] is False and check["views"] == 2
    assert check["metric"] == "foreground_iou" and check["without"] > check["with"] + 0.05
    alone = fit_sample(sample.one_view(0), ["background", "thing"], "val_foreground_iou")
    assert record == alone and record["views"] == 1  # the calibration of the pass that runs
    assert "TTA off: one pass (val foreground_iou" in calibration_line({**record, "tta": check})


def test_views_that_err_independently_keep_tta_on():
    generator, targets, signal = _binary_truth()
    views = [signal + torch.randn(len(targets), 1, generator=generator) * 2.5 for _ in range(2)]
    sample = _sample(BINARY, views, targets)
    record, check = choose_views(sample, _fit("val_foreground_dice"), "val_foreground_dice")
    assert check["kept"] is True and record["views"] == 2
    assert check["with"] > check["without"]  # the mean halves the noise's variance
    assert record["metric"]["after"] == check["with"]


def test_one_view_is_nothing_to_check():
    generator, targets, signal = _binary_truth(2_000)
    sample = _sample(BINARY, [signal], targets)
    record, check = choose_views(sample, _fit("val_foreground_dice"), "val_foreground_dice")
    assert check is None and record["views"] == 1


def test_a_multi_class_check_scores_the_monitored_mean_of_the_calibrated_labels():
    # 6 pixels, targets 0 0 1 1 2 2; the logits' argmax predicts 0 1 1 1 2 0
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 4
    sample = _sample(CLASSES, [logits], targets)
    record = {"calibration": {"temperature": 1.0}}
    # IoU per class: 0 -> 1/3, 1 -> 2/3, 2 -> 1/2; Dice: 1/2, 4/5, 2/3
    name, iou = monitored_score(record, sample, "val_mean_iou")
    assert name == "mean_iou" and iou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    name, dice = monitored_score(record, sample, "val_loss")  # a loss: the mean Dice
    assert name == "mean_dice" and dice == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        ({"config": {"eval": {"tta": True}}, "inference": {"tta": False, "tta_flips": [[], [-1]]}},
         True),  # an earlier check turned it off: asked again
        ({"config": {"eval": {"tta": True}}, "inference": {"tta": False, "tta_flips": [[]]}},
         False),  # augment none: nothing to average
        ({"config": {"eval": {"tta": False}}, "inference": {"tta": False}}, False),
        ({"inference": {"tta": True}}, True),  # no saved config: as recorded (all four flips)
        ({}, False),
    ],
)  # fmt: skip
def test_the_planned_tta_is_what_the_run_asked_for(checkpoint, expected):
    assert planned_tta(checkpoint) is expected


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta") / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(
            ["train", "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--seed", "5",
             "--no-progress", "--precision", "fp32", "--no-channels-last", "--out", str(out),
             "data.synthetic_count=16", "model.options.base_width=4", "model.options.depth=2",
             "task.num_classes=2", "data.augment=light", "eval.tta=true",
             "eval.boundary=false", "eval.instances=false"]
        )  # fmt: skip
    assert code == 0
    return out, buffer.getvalue()


def test_training_checks_its_tta_and_the_checkpoint_runs_as_chosen(tta_run):
    out, printed = tta_run
    check = json.loads((out / "calibration.json").read_text())["best.pt"]["tta"]
    assert check["views"] == 2 and check["metric"] == "mean_iou"  # the monitor, val_mean_iou
    assert check["kept"] == (check["with"] > check["without"])
    assert f"TTA {'kept' if check['kept'] else 'off: one pass'} (val mean_iou" in printed
    stored = load_checkpoint(out / "checkpoints" / "best.pt")
    assert stored["inference"]["tta"] is check["kept"]
    assert stored["inference"]["tta_flips"] == [[], [-1]]
    fitted = json.loads((out / "calibration.json").read_text())["best.pt"]
    assert fitted["views"] == (2 if check["kept"] else 1)
    assert stored["calibration"] == fitted["calibration"]
    metrics = json.loads((out / "metrics.json").read_text())  # the final test ran as chosen
    assert metrics["inference"]["config"]["tta"] is check["kept"]


def test_calibrating_again_asks_the_planned_tta_again(tta_run, tmp_path, capsys):
    out, _ = tta_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    best = copy / "checkpoints" / "best.pt"
    save_checkpoint(with_tta_off(load_checkpoint(best)), best)  # as if a check had dropped it
    assert main(["calibrate", str(copy), "--device", "cpu"]) == 0
    check = json.loads((copy / "calibration.json").read_text())["best.pt"]["tta"]
    assert check["views"] == 2  # both flips sampled again, not the one pass recorded
    assert load_checkpoint(best)["inference"]["tta"] is check["kept"]
    assert "TTA " in capsys.readouterr().out


def with_tta_off(payload: dict) -> dict:
    return {**payload, "inference": {**payload["inference"], "tta": False}}


def test_a_cv_checks_tta_once_on_every_fold_s_held_out_pixels(tmp_path):
    out = tmp_path / "cv"
    args = ["cv", "--folds", "2", "--out", str(out), *TINY, "task.num_classes=2", "eval.tta=true"]
    assert main(args) == 0
    shared = json.loads((out / "fold_calibration.json").read_text())["best.pt"]
    check = shared["tta"]
    assert check["views"] == 2 and shared["views"] == (2 if check["kept"] else 1)
    for fold in range(2):  # one choice for every fold, and each fold's test ran with it
        run = out / f"fold_{fold}"
        assert load_checkpoint(run / "checkpoints" / "best.pt")["inference"]["tta"] is check["kept"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["inference"]["config"]["tta"] is check["kept"]
