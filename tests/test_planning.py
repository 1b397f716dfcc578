"""The planner: its rules on hand-made fingerprints and timings, the plan on real folders, and the
CLI paths (`unetkit plan`, `train` following the plan under whatever the user set)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import yaml
from PIL import Image
from test_fingerprint import ArraySource

from unetkit.cli.main import main
from unetkit.cli.plan_commands import explicit_keys, should_plan
from unetkit.config import Config, EvalConfig, load_config
from unetkit.evaluation.calibration import CalibrationCheck
from unetkit.planning import decisions
from unetkit.planning.decisions import Candidate
from unetkit.planning.fingerprint import ClassProfile, DatasetFingerprint, SizeStats
from unetkit.planning.measure import scoring_seconds_per_image
from unetkit.planning.plan import Plan, _calibration_seconds, make_plan
from unetkit.training.budget import TimeBudget


def fingerprint(
    width: float, side: float, sides: tuple[float, float] | None = None, p90: float = 0.0
):
    low, high = sides or (side, side)
    size = SizeStats(low, side, high)
    return DatasetFingerprint(
        images=10,
        total_images=10,
        channels=3,
        height=size,
        width=size,
        classes=[
            ClassProfile("background", 0.8, 1.0),
            ClassProfile("thing", 0.2, 1.0, width, width / 2, width**2, 3),
        ],
        foreground_share=SizeStats(0.1, 0.2, 0.3),
        long_side_p90=p90,
    )


# --- rules -----------------------------------------------------------------------------------


def test_large_structures_are_resized_and_thin_ones_tiled_at_native_resolution():
    pets = decisions.choose_scale(fingerprint(78, 500, (150, 1600)), 256)
    assert not pets.tiles and "keep it 12 px wide" in pets.reason
    membranes = decisions.choose_scale(fingerprint(6, 512), 256)
    assert membranes.tiles and membranes.factor == 1.0 and "native resolution" in membranes.reason
    # wide structures in huge images: tiles, downscaled so they stay 16 px wide
    fields = decisions.choose_scale(fingerprint(100, 8000), 256)
    assert fields.tiles and fields.factor == pytest.approx(0.16)


def test_mixed_image_sizes_are_judged_by_nine_images_in_ten():
    # nuclei 12 px wide: a 256 px image could be resized, a 1024 px one could not
    assert decisions.choose_scale(fingerprint(12, 256, (256, 256)), 256).tiles is False
    assert decisions.choose_scale(fingerprint(12, 256, (256, 1024)), 256).tiles is True
    # ... unless the 1024 px images are the odd one in ten: the 90th percentile decides
    few_large = fingerprint(12, 256, (256, 1024), p90=256)
    assert decisions.choose_scale(few_large, 256).tiles is False
    assert "9 in 10 images" in decisions.choose_scale(few_large, 256).reason


def test_a_fingerprint_without_foreground_resizes():
    empty = fingerprint(10, 300)
    empty.classes[1] = ClassProfile("thing", 0.0, 0.0)
    assert not decisions.choose_scale(empty, 128).tiles


def test_the_budget_buys_the_largest_candidate_that_still_converges():
    candidates = [
        Candidate("unet", {"base_width": 16}, 128, 0.1),
        Candidate("unet", {"base_width": 32}, 128, 0.3),
        Candidate("unet", {"base_width": 32}, 256, 1.2),
    ]
    chosen, reason = decisions.choose_candidate(candidates, training_seconds=1000, min_steps=3000)
    assert (chosen.options["base_width"], chosen.input_side) == (32, 128)  # 3333 steps
    assert "3333" in reason
    chosen, reason = decisions.choose_candidate(candidates, training_seconds=100, min_steps=3000)
    assert chosen.step_seconds == 0.1 and "longer budget" in reason
    with pytest.raises(ValueError, match="no candidate"):
        decisions.choose_candidate([], 100)


def test_a_candidate_label_names_every_option_of_the_model():
    plain = Candidate("unet", {"base_width": 16}, 192, 0.1)
    timm = Candidate("unet", {"base_width": 16, "encoder": "mobilenetv3_large_100"}, 192, 0.1)
    assert plain.label == "unet (base width 16) at 192 px"
    assert timm.label == "unet (base width 16, encoder mobilenetv3_large_100) at 192 px"
    assert Candidate("resnet34-unet", {}, 160, 0.1).label == "resnet34-unet at 160 px"


def test_validation_share_augmentation_and_tta_follow_the_measured_costs():
    assert decisions.train_repeats(train_seconds_per_pass=100, validation_seconds=5) == 1
    assert decisions.train_repeats(train_seconds_per_pass=2, validation_seconds=1) == 5
    assert decisions.choose_augmentation(200)[0] == "strong"
    assert decisions.choose_augmentation(10)[0] == "light"
    assert decisions.choose_tta(inference_seconds=5, scoring_seconds=10, budget_seconds=1200)[0]
    assert not decisions.choose_tta(20, 10, 1200)[0]  # 90 s > 60 s
    assert decisions.choose_tta(20, 10, 1200, views=2)[0]  # left-right only: 50 s <= 60 s
    assert not decisions.choose_tta(0.1, 0.1, 1200, views=1)[0]  # no flip was trained
    assert decisions.warmup_epochs(100) == 3.0


def test_the_evaluation_reserve_is_the_safe_estimate_capped_at_half_the_budget():
    reserve, reason = decisions.evaluation_reserve(evaluation_seconds=50, budget_seconds=1200)
    assert reserve == 70.0 and reason == "70 s of the budget kept for it"  # 50 x 1.3 + 5
    reserve, reason = decisions.evaluation_reserve(evaluation_seconds=150, budget_seconds=240)
    assert reserve == 120.0  # 200 s wanted: the run is told it will end ~80 s late
    assert "needs ~200 s" in reason and "~80 s late" in reason
    reserve, reason = decisions.evaluation_reserve(evaluation_seconds=16.5, budget_seconds=1200)
    assert reserve == 26.5 and "late" not in reason  # 26.45 s wanted


def test_the_reserve_counts_the_calibration_pass_per_flip_and_checkpoint():
    validation_s = 10.0  # one pass over val
    plain = load_config()
    assert _calibration_seconds(plain, validation_s, views=1) == 10.0
    assert _calibration_seconds(plain, validation_s, views=4) == 40.0  # one pass per flip
    ema = load_config(overrides={"train.ema": 0.999})
    assert _calibration_seconds(ema, validation_s, views=2) == 40.0  # best.pt and ema.pt
    off = load_config(overrides={"eval.calibrate": False})
    assert _calibration_seconds(off, validation_s, views=4) == 0.0


def test_the_scoring_probe_times_the_calibration_section_as_the_evaluation_runs_it(monkeypatch):
    scored = []
    add = CalibrationCheck.add

    def counted(check, probs, prediction, target, calibrated=None):
        scored.append((check.calibration.describe(), probs.shape))
        add(check, probs, prediction, target, calibrated)

    monkeypatch.setattr(CalibrationCheck, "add", counted)
    masks = [np.zeros((48, 48), np.uint8) for _ in range(4)]
    for index, mask in enumerate(masks):
        mask[8 + index : 30 + index, 10:34] = 1
    source = ArraySource(masks)
    assert scoring_seconds_per_image(source, ["background", "square"], EvalConfig(), 3) > 0
    # each probed image is re-tempered (T != 1) at native size, as after training
    assert scored == [("T = 1.50", (2, 48, 48))] * 3


def test_a_final_reserve_ends_the_training_steps_earlier():
    plain, reserved = TimeBudget(100.0), TimeBudget(100.0, final_reserve=50.0)
    started = time.perf_counter() - 30
    plain.continue_from(30), reserved.continue_from(30)
    assert plain.progress() == pytest.approx(0.3, abs=0.01)
    assert reserved.progress() == pytest.approx(0.6, abs=0.02)
    assert TimeBudget(10.0, started=started).exhausted()


def test_plan_overrides_leave_every_key_the_user_set():
    plan = Plan(settings={"model.name": "unet", "model.options": {"base_width": 24},
                          "data.img_size": [160, 160], "data.augment": "strong"})  # fmt: skip
    assert set(plan.overrides({"data.img_size"})) == {"model.name", "model.options", "data.augment"}
    assert set(plan.overrides({"model.options.depth"})) == {"data.img_size", "data.augment"}


# --- plans of real folders ---------------------------------------------------------------------


def write_folder(root, draw, count=12, size=(200, 240)):
    """A folder dataset whose masks ``draw(mask, index)`` paints (class 1 = 255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        mask = np.zeros(size, np.uint8)
        draw(mask, index)
        image = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(root / "images" / f"s{index:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"s{index:02d}.png")
    return root


def thin_lines(mask, index):
    for row in range(10 + index, mask.shape[0], 37):
        mask[row : row + 2] = 1


def blob(mask, index):
    mask[40:160, 50 + index : 190] = 1


def folder_config(root, **train) -> Config:
    overrides = {"data.dataset": "folder", "data.root": str(root), "data.cache_dir": str(root)}
    return load_config(overrides={**overrides, **{f"train.{k}": v for k, v in train.items()}})


def test_without_a_budget_thin_structures_get_tiles_and_blobs_keep_the_default(tmp_path):
    thin = make_plan(folder_config(write_folder(tmp_path / "thin", thin_lines)), None, False)
    assert thin.settings["data.tile_size"] == 256 and thin.settings["data.img_size"] == [256, 256]
    assert "native resolution" in thin.reasons["scale"]
    blobs = make_plan(folder_config(write_folder(tmp_path / "blob", blob)), None, False)
    assert blobs.settings == {} and "keep it" in blobs.reasons["scale"]
    # the fingerprint is cached where data.cache_dir says, beside the samples
    assert len(list((tmp_path / "blob" / "fingerprints").glob("*.json"))) == 1


def test_a_budget_plan_measures_and_sets_every_compute_choice(tmp_path):
    root = write_folder(tmp_path / "blob", blob)
    cfg = folder_config(root, batch_size=2, precision="fp32", channels_last=False)
    plan = make_plan(cfg, budget_seconds=40.0, progress=False)
    keys = {"model.name", "model.options", "data.img_size", "train.batch_size", "data.augment",
            "data.train_repeats", "optim.warmup_epochs", "eval.tta", "train.final_reserve",
            "train.precision", "train.channels_last"}  # fmt: skip
    assert keys <= set(plan.settings)
    assert plan.settings["train.precision"] == "fp32" and "as asked" in plan.reasons["precision"]
    assert plan.settings["train.execution"]["by"] == "unetkit plan"  # the run keeps the record
    assert plan.measured["candidates_ms_per_step"]  # measured, not assumed
    side = plan.settings["data.img_size"][0]  # the reason names the side the model got
    assert f"resized to {side} px" in plan.reasons["scale"]
    assert 0 < plan.settings["train.final_reserve"] < 40
    assert "to calibrate on val" in plan.reasons["test evaluation"]
    assert "planned in" in plan.describe()
    written = yaml.safe_load(plan.to_yaml(cfg))
    assert written["model"]["name"] == plan.settings["model.name"]


def test_a_budget_plan_measures_the_model_size_and_tta_the_user_fixed(tmp_path):
    root = write_folder(tmp_path / "blob", blob)
    cfg = folder_config(root, batch_size=2, precision="fp32", channels_last=False)
    cfg = load_config(
        base=cfg.to_dict(),
        overrides={"model.options.base_width": 8, "data.img_size": [96, 96], "eval.tta": True},
    )
    fixed = {"model.options.base_width", "data.img_size", "eval.tta"}
    plan = make_plan(cfg, budget_seconds=40.0, progress=False, fixed=fixed)
    assert list(plan.measured["candidates_ms_per_step"]) == ["unet (base width 8) at 96 px"]
    assert plan.settings["eval.tta"] is True and "as configured" in plan.reasons["test evaluation"]
    assert "model.name" not in plan.overrides(fixed)  # the user's model is kept as set


# --- the CLI -----------------------------------------------------------------------------------


def namespace(**values) -> argparse.Namespace:
    defaults = {"plan": "auto", "resume": None, "nproc": None, "config": None, "overrides": []}
    return argparse.Namespace(**{**defaults, **values})


def test_train_plans_real_datasets_in_one_process_only(monkeypatch):
    real = load_config(overrides={"data.dataset": "folder"})
    assert should_plan(namespace(), real)
    assert not should_plan(namespace(), Config())  # the synthetic demo keeps its speed
    assert should_plan(namespace(plan="on"), Config())
    assert not should_plan(namespace(plan="off"), real)
    assert not should_plan(namespace(resume="auto"), real)
    assert not should_plan(namespace(nproc=2), real)
    with pytest.raises(ValueError, match="plan first"):
        should_plan(namespace(nproc=2, plan="on"), real)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not should_plan(namespace(), real)


def test_explicit_keys_come_from_flags_pairs_and_the_config_file(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  name: resnet34-unet\ndata:\n  augment: none\n")
    args = namespace(config=str(config), overrides=["optim.lr=0.01"])
    keys = explicit_keys(args, {"data.img_size": [64]})
    assert keys == {"data.img_size", "optim.lr", "model.name", "data.augment"}


def test_plan_command_writes_a_config_that_train_takes(tmp_path, capsys):
    root = write_folder(tmp_path / "thin", thin_lines, count=8)
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                 "--no-progress", f"data.cache_dir={tmp_path}"]) == 0  # fmt: skip
    assert "native resolution" in capsys.readouterr().out
    planned = load_config(str(out))
    assert planned.data.tile_size == 256 and planned.data.cache


def test_train_follows_the_plan_under_explicit_flags(tmp_path, capsys):
    root = write_folder(tmp_path / "thin", thin_lines, count=8)
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
            "--epochs", "1", "--batch-size", "2", "--no-progress", "--precision", "fp32",
            "--img-size", "64", "64", "--no-channels-last", f"data.cache_dir={tmp_path}",
            "model.options.base_width=4", "model.options.depth=2",
            "eval.boundary=false"]  # fmt: skip
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["img_size"] == [64, 64]  # the flag wins over the plan's 256
    assert saved["data"]["tile_size"] == 64  # the plan: thin lines need native-resolution tiles
    assert "plan:" in capsys.readouterr().out


def test_a_planned_config_or_a_resume_is_not_planned_again():
    planned = load_config(
        overrides={"data.dataset": "folder", "train.execution": {"by": "unetkit plan"}}
    )
    assert not should_plan(namespace(), planned)
    resumed = load_config(overrides={"data.dataset": "folder", "train.resume": "auto"})
    assert not should_plan(namespace(), resumed)


def test_a_budget_too_short_for_the_evaluation_is_refused_with_the_reason(tmp_path):
    root = write_folder(tmp_path / "blob", blob, count=6)
    cfg = folder_config(root, batch_size=2, precision="fp32", channels_last=False)
    with pytest.raises(ValueError, match="leaves no training time"):
        make_plan(cfg, budget_seconds=0.01, progress=False)
