"""The command line end to end on tiny synthetic data: train, evaluate, predict, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from unetkit.checkpoint import load_checkpoint, save_checkpoint
from unetkit.cli.flags import flag_overrides
from unetkit.cli.main import build_parser, main
from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.segmenter import Segmenter

# fp32 and contiguous: runs and evaluations are compared exactly, so no probe may choose
# differently between them (on a CPU with bf16 units the auto probe's pick is timing noise)
TINY = [
    "--img-size",
    "32",
    "40",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--no-progress",
    "--precision",
    "fp32",
    "--no-channels-last",
    "data.synthetic_count=16",
    "model.options.base_width=4",
    "model.options.depth=2",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def test_no_test_ends_after_calibration_and_keeps_no_time_for_the_test(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "train.final_reserve=1000", "--no-test",
            "--plan", "off", "--time-budget", "6s"]  # fmt: skip
    assert main(args) == 0
    best = out / "checkpoints" / "best.pt"
    assert f"unetkit evaluate --checkpoint {best}" in capsys.readouterr().out
    assert not (out / "metrics.json").exists() and (out / "calibration.json").is_file()
    trained = json.loads((out / "trained.json").read_text())
    assert trained["final_test"] is False
    assert trained["epochs"] > 1  # a reserve for a test that will not run would leave one epoch


@pytest.fixture
def segmenter_options(monkeypatch):
    """The keyword options of every Segmenter built, in order: what the flags turned into."""
    built: list[dict] = []
    original = Segmenter.__init__

    def recording(self, *args, **options):
        built.append(options)
        original(self, *args, **options)

    monkeypatch.setattr(Segmenter, "__init__", recording)
    return built


def test_train_writes_the_whole_run_folder(trained_run):
    for name in [
        "config.yaml",
        "splits.json",
        "history.csv",
        "metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "plots/loss.png",
        "plots/metrics.png",
        "per_image.csv",
        "report.html",
        "trained.json",
    ]:
        assert (trained_run / name).is_file(), name
    trained = json.loads((trained_run / "trained.json").read_text())
    assert trained["epochs"] == 2 and trained["final_test"] is True
    assert trained["optimizer_steps"] == 2 * 2  # 2 epochs of 11 training images, 2 full batches
    assert any((trained_run / "tensorboard").iterdir())
    assert len((trained_run / "history.csv").read_text().strip().splitlines()) == 3
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for section in ["dataset", "per_image", "threshold_free", "instance", "boundary"]:
        assert section in metrics, section
    for key in ["pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "mean_dice", "fw_iou"]:
        assert key in metrics["dataset"] and key + "_no_background" in metrics["dataset"]
        assert set(metrics["per_image"][key]) == {"mean", "std", "images"}
    assert metrics["split"] == "test"
    test_names = json.loads((trained_run / "splits.json").read_text())["test"]
    assert metrics["num_images"] == len(test_names)
    assert 0.0 <= metrics["dataset"]["mean_iou"] <= 1.0
    assert [c["name"] for c in metrics["dataset"]["per_class"]][0] == "background"
    rows = (trained_run / "per_image.csv").read_text().strip().splitlines()
    assert rows[0].startswith("name,height,width,pixel_accuracy")
    assert sorted(row.split(",")[0] for row in rows[1:]) == sorted(test_names)
    report = (trained_run / "report.html").read_text()
    assert "data:image/png;base64," in report and "http" not in report


def test_checkpoint_is_self_describing(trained_run):
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    assert checkpoint["architecture"]["name"] == "unet"
    assert checkpoint["preprocessing"]["img_size"] == [32, 40]
    assert len(checkpoint["class_names"]) == checkpoint["task"]["num_classes"]


def test_evaluate_reuses_the_test_split_and_matches_training(trained_run, tmp_path, capsys):
    best = trained_run / "checkpoints" / "best.pt"
    exact = ["--precision", "fp32", "--no-channels-last"]  # as the training run's final test
    assert main(["evaluate", "--checkpoint", str(best), "--out", str(tmp_path), "--no-progress",
                 *exact]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    at_training_end = json.loads((trained_run / "metrics.json").read_text())
    for section, key in [("dataset", "mean_iou"), ("threshold_free", "mean_roc_auc")]:
        assert evaluated[section][key] == pytest.approx(at_training_end[section][key], abs=1e-9)
    assert evaluated["per_image"] == at_training_end["per_image"]
    assert "confidence_intervals" not in evaluated
    out = capsys.readouterr().out
    assert "mean_iou" in out and "report.html" in out and "per image" in out


def test_evaluate_flags_reach_the_metrics(trained_run, tmp_path, capsys, segmenter_options):
    best = trained_run / "checkpoints" / "best.pt"
    args = ["evaluate", "--checkpoint", str(best), "--out", str(tmp_path), "--no-progress",
            "--ci", "--ci-resamples", "50", "--metric-min-area", "7", "--no-report",
            "--batch-size", "3", "--tta", "--remove-smaller-than", "3", "--precision", "fp32",
            "eval.boundary=false"]  # fmt: skip
    assert main(args) == 0
    (options,) = segmenter_options
    assert options["batch_size"] == 3 and options["tta"] is True
    assert options["precision"] == "fp32" and options["postprocess"].min_size == 3
    recorded = json.loads((tmp_path / "metrics.json").read_text())["inference"]
    assert recorded["config"]["tta"] is True and recorded["config"]["window_size"] == [32, 40]
    assert recorded["config"]["postprocess"]["min_size"] == 3 and recorded["precision"] == "fp32"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    intervals = metrics["confidence_intervals"]
    assert intervals["resamples"] == 50
    low, high = intervals["intervals"]["dataset.mean_iou"]
    assert low <= metrics["dataset"]["mean_iou"] <= high
    assert metrics["instance"]["min_area"] == 7
    assert "boundary" not in metrics
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "per_image.csv").exists()
    assert "95% CI dataset.mean_iou" in capsys.readouterr().out


def test_evaluate_rejects_unknown_eval_key(trained_run, capsys):
    best = trained_run / "checkpoints" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(best), "eval.bootstrap=true"]) == 2
    assert "unknown config key 'eval.bootstrap'" in capsys.readouterr().err


@pytest.mark.parametrize("pair", ["model.options.base_width=8", "data.img_size=[64,64]",
                                  "train.lr=0.1", "task.class_names=[a,b,c,d]"])  # fmt: skip
def test_evaluate_refuses_keys_it_would_ignore(trained_run, capsys, pair):
    best = trained_run / "checkpoints" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(best), pair]) == 2
    error = capsys.readouterr().err
    assert f"evaluate does not use {pair.split('=')[0]!r}" in error and "task.threshold" in error


def test_predict_writes_masks_at_input_size_and_skips_corrupt(trained_run, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 21, 3), dtype=np.uint8)).save(
        inputs / "sub" / "b.jpg"
    )
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    best = str(trained_run / "checkpoints" / "best.pt")
    code = main(
        [
            "predict",
            "--checkpoint",
            best,
            "--input",
            str(inputs),
            "--out",
            str(out),
            "--overlay",
            "--no-progress",
        ]
    )
    assert code == 0
    mask = np.asarray(Image.open(out / "a.png"))
    assert mask.shape == (50, 70)
    assert mask.max() < 4
    assert np.asarray(Image.open(out / "sub" / "b.png")).shape == (33, 21)
    assert np.asarray(Image.open(out / "a_overlay.png")).shape == (50, 70, 3)
    assert not (out / "broken.png").exists()


def test_predict_inference_flags_reach_the_segmenter(
    trained_run, tmp_path, capsys, segmenter_options
):
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    best = str(trained_run / "checkpoints" / "best.pt")
    common = ["predict", "--checkpoint", best, "--input", str(tmp_path / "big.png"),
              "--no-progress"]  # fmt: skip
    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    assert main([*common, "--out", str(plain), "--inference-mode", "resize"]) == 0
    args = ["--out", str(tuned), "--inference-mode", "sliding", "--window-size", "32", "40",
            "--overlap", "0.5", "--tta", "--remove-smaller-than", "30", "--save-probs"]  # fmt: skip
    bad_class = ["--out", str(tmp_path / "bad"), "--remove-smaller-than", "3",
                 "--postprocess-classes", "9"]  # fmt: skip
    assert main([*common, *bad_class]) == 2
    assert "9" in capsys.readouterr().err
    three_numbers = ["--out", str(tmp_path / "bad"), "--window-size", "32", "40", "48"]
    assert main([*common, *three_numbers]) == 2
    assert "a size is S or H W; got 3 numbers" in capsys.readouterr().err
    segmenter_options.clear()
    assert main([*common, *args]) == 0
    (options,) = segmenter_options
    assert options["mode"] == "sliding" and options["window_size"] == (32, 40)
    assert options["overlap"] == 0.5 and options["tta"] is True
    assert options["postprocess"] == PostProcessing(min_size=30)
    probs = np.load(tuned / "big_probs.npz")["probs"]
    assert probs.dtype == np.float16 and probs.shape[1:] == (90, 120)
    mask = np.asarray(Image.open(tuned / "big.png"))
    for c in range(1, probs.shape[0]):  # no component of a foreground class below 30 pixels
        labels, count = ndimage.label(mask == c, structure=np.ones((3, 3)))
        assert count == 0 or np.bincount(labels.ravel())[1:].min() >= 30
    assert (tuned / "big_colour.png").is_file() and (tuned / "summary.csv").is_file()
    assert "class areas" in capsys.readouterr().out


def test_predict_and_evaluate_without_flags_run_as_the_checkpoint_records(
    trained_run, tmp_path, segmenter_options
):
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    recorded = {**checkpoint["inference"], "tta": True, "overlap": 0.5, "mode": "sliding"}
    best = tmp_path / "checkpoints" / "best.pt"
    save_checkpoint({**checkpoint, "inference": recorded}, best)
    image = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    common = ["--checkpoint", str(best), "--no-progress"]
    assert main(["predict", *common, "--input", str(tmp_path / "x.png"), "--out",
                 str(tmp_path / "masks")]) == 0  # fmt: skip
    assert main(["evaluate", *common, "--out", str(tmp_path / "eval"), "--no-report",
                 "--overlap", "0.3"]) == 0  # fmt: skip
    as_recorded, overridden = segmenter_options
    assert (as_recorded["tta"], as_recorded["overlap"], as_recorded["mode"]) == (
        True,
        0.5,
        "sliding",
    )
    assert (overridden["tta"], overridden["overlap"]) == (True, 0.3)  # the flag wins
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["inference"]["config"]
    assert scored == {**recorded, "overlap": 0.3}


def test_no_tta_runs_one_pass_where_the_checkpoint_records_tta(
    trained_run, tmp_path, segmenter_options
):
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    best = tmp_path / "best.pt"
    save_checkpoint({**checkpoint, "inference": {**checkpoint["inference"], "tta": True}}, best)
    common = ["--checkpoint", str(best), "--no-progress", "--no-report"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "on")]) == 0
    assert main(["evaluate", *common, "--out", str(tmp_path / "off"), "--no-tta"]) == 0
    as_recorded, one_pass = segmenter_options
    assert as_recorded["tta"] is True and one_pass["tta"] is False
    scored = {name: json.loads((tmp_path / name / "metrics.json").read_text())["inference"]
              for name in ("on", "off")}  # fmt: skip
    assert scored["on"]["config"]["tta"] is True and scored["off"]["config"]["tta"] is False


def test_old_inference_flag_names_still_work_with_a_notice(trained_run, tmp_path, capsys,
                                                           segmenter_options):  # fmt: skip
    image = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    old = ["predict", "--checkpoint", str(trained_run / "checkpoints" / "best.pt"), "--input",
           str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--no-progress", "--mode",
           "sliding", "--tile-size", "24", "--min-size", "5"]  # fmt: skip
    assert main(old) == 0
    (options,) = segmenter_options
    assert (options["mode"], options["window_size"]) == ("sliding", (24, 24))
    assert options["postprocess"].min_size == 5
    err = capsys.readouterr().err
    for old_flag, new_flag in [("--mode", "--inference-mode"), ("--tile-size", "--window-size"),
                               ("--min-size", "--remove-smaller-than")]:  # fmt: skip
        assert f"{old_flag} is deprecated; use {new_flag}" in err


def test_evaluate_mode_is_the_dataset_variant():
    args = build_parser().parse_args(["evaluate", "--checkpoint", "best.pt", "--mode", "second"])
    assert flag_overrides(args)["data.mode"] == "second" and args.inference_mode == "auto"


def test_predict_explains_a_missing_model(capsys, tmp_path):
    args = ["predict", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main([*args, "--backend", "onnxruntime"]) == 2
    assert "needs --exported FILE" in capsys.readouterr().err


def test_export_then_onnxruntime_predicts_the_same_masks(trained_run, tmp_path, capsys):
    best = str(trained_run / "checkpoints" / "best.pt")
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", best, "--out", str(onnx_file)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert max(report["max_abs_diff"].values()) < 1e-4 and onnx_file.is_file()
    rng = np.random.default_rng(2)
    for name, shape in (("a", (45, 61, 3)), ("b", (32, 40, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / f"{name}.png")
    common = ["predict", "--input", str(tmp_path / "*.png"), "--no-progress", "--no-colour"]
    exact = ["--precision", "fp32", "--no-channels-last"]  # the export runs fp32: compare like
    assert main([*common, *exact, "--checkpoint", best, "--out", str(tmp_path / "torch")]) == 0
    ort_out = str(tmp_path / "ort")
    onnx_args = ["--backend", "onnxruntime", "--exported", str(onnx_file), "--out", ort_out]
    assert main([*common, *onnx_args]) == 0
    for name in ("a", "b"):
        torch_mask = np.asarray(Image.open(tmp_path / "torch" / f"{name}.png"))
        onnx_mask = np.asarray(Image.open(tmp_path / "ort" / f"{name}.png"))
        assert (torch_mask != onnx_mask).mean() < 0.001  # at most a pixel at a decision boundary


def test_bench_prints_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "unet", "--img-size", "32", "--batch-size", "2", "--steps", "1",
            "--warmup", "0", "--gemm-size", "128", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["model"] == "unet" and result["img_size"] == [32, 32]
    assert result["inference"]["images_per_s"] > 0 and result["training"]["images_per_s"] > 0
    assert result["gflops_per_image"] == pytest.approx(96.3 / 64, rel=0.02)  # 96.3 at 256x256
    # the default is auto: each section says which path ran and what the probe measured
    for section in ("inference", "training"):
        execution = result[section]["execution"]
        assert (
            execution["precision"] in ("fp32", "bf16") and "fp32" in execution["seconds_per_step"]
        )
    training = result["training"]
    assert training["gemm_gflops_per_s"] > 0
    assert training["fraction_of_gemm"] == pytest.approx(
        training["achieved_gflops_per_s"] / training["gemm_gflops_per_s"]
    )


def test_resume_auto_continues_the_run_in_out(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = [arg if arg != "2" else "1" for arg in TINY]  # one epoch first
    assert main(["train", "--out", str(out), *tiny]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert main(["train", "--resume", "auto", "--out", str(out), *TINY]) == 0  # epochs 2
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    assert main(["train", "--resume", "auto", *TINY]) == 2
    assert "--out RUN" in capsys.readouterr().err


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    args = [*TINY, "--epochs", "3", "--seed", "5", "--augment", "light"]
    assert main(["train", "--out", str(whole), *args]) == 0

    import unetkit.training.loop as loop

    original = loop._end_of_epoch

    def crash_after_second_epoch(parts, state, row):
        original(parts, state, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(loop, "_end_of_epoch", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--out", str(broken), *args])
    monkeypatch.setattr(loop, "_end_of_epoch", original)
    assert (
        main(["train", "--resume", str(broken / "checkpoints" / "last.pt"), "--no-progress"]) == 0
    )

    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(broken / "checkpoints" / "last.pt")
    assert b["epoch"] == 3
    for key, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][key], tensor, rtol=0, atol=0, msg=key)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_bad_data_root_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["train", "--dataset", "folder", "--data-root", str(tmp_path / "nowhere"), "--no-progress"]
    )
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def _write_binary_folder(root, count=12, size=(36, 44)):
    """A folder dataset with binary 0/255 masks, made from the synthetic generator."""
    from unetkit.data.datasets.synthetic import SyntheticSource

    source = SyntheticSource(count, size=size, num_classes=2, seed=3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, name in enumerate(source.names):
        image, mask = source.load(index)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")


def test_binary_folder_run_with_accumulation(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_binary_folder(data)
    args = ["train", "--dataset", "folder", "--data-root", str(data), "--out", str(out),
            "--loss", "bce:0.5,dice:0.5", "--accum-steps", "2", "--monitor", "val_foreground_iou",
            *TINY]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["name"] for c in metrics["dataset"]["per_class"]] == ["background", "foreground"]
    assert 0.0 <= metrics["dataset"]["foreground_iou"] <= 1.0
    assert metrics["task"] == "binary"
    assert set(metrics["threshold_free"]) >= {"roc_auc", "average_precision"}
    checkpoint = load_checkpoint(out / "checkpoints" / "best.pt")
    assert checkpoint["task"]["num_classes"] == 2
    assert checkpoint["model"]["head.weight"].shape[0] == 1  # one sigmoid channel

    # evaluate honours task.threshold: an extreme one marks (almost) every pixel foreground
    best, exact = str(out / "checkpoints" / "best.pt"), ["--precision", "fp32", "--no-progress"]
    for threshold in (0.5, 0.001):
        where = tmp_path / f"at{threshold}"
        assert main(["evaluate", "--checkpoint", best, "--out", str(where), "--no-report",
                     *exact, f"task.threshold={threshold}"]) == 0  # fmt: skip
    at_half, at_low = (json.loads((tmp_path / f"at{t}" / "metrics.json").read_text())
                       for t in (0.5, 0.001))  # fmt: skip
    assert (at_half["threshold"], at_low["threshold"]) == (0.5, 0.001)
    assert at_half["dataset"]["foreground_iou"] == pytest.approx(
        metrics["dataset"]["foreground_iou"]
    )
    recall = [m["dataset"]["per_class"][1]["recall"] for m in (at_half, at_low)]
    assert recall[1] > recall[0] and recall[1] > 0.99


def test_bad_masks_stop_training_before_the_first_step(tmp_path, capsys):
    data = tmp_path / "data"
    _write_binary_folder(data, count=6)
    Image.fromarray(np.full((36, 44), 9, np.uint8)).save(data / "masks" / "synthetic_00002.png")
    code = main(["train", "--dataset", "folder", "--data-root", str(data), "--num-classes", "3",
                 "--out", str(tmp_path / "run"), *TINY])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "synthetic_00002.png" in err and "9" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
