"""Temperature with a bias (Platt scaling on the logit): the fit recovers known parameters, halves
an ECE that no temperature can, and every inference path applies the bias as stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_calibration_eval import _train
from test_calibration_inference import (
    FLOAT16_STEP,
    calibrated_copy,
    outputs,
    predict,
    raw_probabilities,
)
from test_ensemble_cli import sample_images
from test_export import write_checkpoint

from unetkit.checkpoint import load_checkpoint
from unetkit.cli.calibrate_commands import run_folders
from unetkit.cli.main import main
from unetkit.inference.calibrated import Tempered, load_model
from unetkit.inference.calibration import (
    Calibration,
    fit_calibration,
    fit_temperature,
    fit_temperature_and_bias,
)
from unetkit.inference.onnx_backend import read_metadata
from unetkit.inference.platt import fit_scale_and_biases
from unetkit.metrics.calibration import expected_calibration_error
from unetkit.tasks import IGNORE_INDEX, Task

pytestmark = pytest.mark.usefixtures("one_thread")
BINARY, LABELS = Task(2), Task(3, multilabel=True)


def bernoulli(probability: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """0/1 targets drawn with the given foreground probabilities."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(probability.shape, generator=generator) < probability).long()


def logits(count: int, scale: float = 4.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, generator=torch.Generator().manual_seed(seed)) * scale


def test_the_fit_recovers_a_known_scale_and_bias():
    z = logits(200_000)
    y = bernoulli(torch.sigmoid(0.5 * z - 0.7))
    scale, (bias,) = fit_scale_and_biases(z, y, torch.zeros_like(y), 1, (0.05, 20.0))
    assert scale == pytest.approx(0.5, abs=0.01)
    assert bias == pytest.approx(-0.7, abs=0.02)


def test_each_group_gets_its_bias_and_a_one_sided_group_keeps_zero_without_dragging_the_scale():
    z = logits(300_000)
    groups = torch.arange(300_000) % 3
    y = bernoulli(torch.sigmoid(2.0 * z + torch.tensor([-1.0, 0.0, 1.0])[groups]))
    scale, biases = fit_scale_and_biases(z, y, groups, 3, (0.05, 20.0))
    assert scale == pytest.approx(2.0, abs=0.05)
    assert biases == pytest.approx([-1.0, 0.0, 1.0], abs=0.05)
    y[groups == 2] = 0  # a label with no foreground: no finite best bias
    scale, biases = fit_scale_and_biases(z, y, groups, 3, (0.05, 20.0))
    assert scale == pytest.approx(2.0, abs=0.05)
    assert biases[2] == 0.0 and biases[0] == pytest.approx(-1.0, abs=0.05)


def test_separable_pixels_hold_the_scale_at_its_bound():
    z = logits(10_000)
    scale, (bias,) = fit_scale_and_biases(z, (z > 0).long(), torch.zeros(10_000), 1, (0.05, 20.0))
    assert scale == 20.0 and abs(bias) < 1.0
    with pytest.raises(ValueError, match="one logit, target and group per pixel"):
        fit_scale_and_biases(z, z[:5], torch.zeros(5), 1, (0.05, 20.0))


def test_a_bias_halves_an_ece_that_the_best_temperature_cannot():
    """Logits whose errors lean one way: the best T (fitted on the same pixels) leaves most of
    the ECE, T with a bias removes it."""
    z = logits(100_000)
    y = bernoulli(torch.sigmoid(z / 2.0 - 1.5))
    pixels = z[:, None]
    raw = _ece(pixels, y, Calibration())
    temperature_only = _ece(pixels, y, Calibration(fit_temperature(pixels, y, BINARY)))
    both = fit_temperature_and_bias(pixels, y, BINARY)
    assert both.temperature == pytest.approx(2.0, rel=0.05)
    assert both.bias == pytest.approx((-1.5,), abs=0.05)
    assert temperature_only > 0.5 * raw  # T alone misses the target here
    assert _ece(pixels, y, both) < 0.1 * raw


def _ece(pixels: torch.Tensor, targets: torch.Tensor, calibration: Calibration) -> float:
    probs = BINARY.probabilities(calibration.apply(pixels, channel_axis=-1).T[None, :, :, None])
    return expected_calibration_error(probs, targets[None, :, None])


def test_multilabel_pixels_get_one_temperature_and_a_bias_per_label_ignoring_255():
    z = logits(120_000).reshape(-1, 3)
    y = bernoulli(torch.sigmoid(z / 1.5 + torch.tensor([0.5, -0.5, 1.0])))
    y[::7, 1] = IGNORE_INDEX  # never counted
    fitted = fit_temperature_and_bias(z, y, LABELS)
    assert fitted.temperature == pytest.approx(1.5, rel=0.05)
    assert fitted.bias == pytest.approx((0.5, -0.5, 1.0), abs=0.06)
    with pytest.raises(ValueError, match="use fit_temperature"):
        fit_temperature_and_bias(z, y[:, 0], Task(3))


def test_fit_calibration_fits_the_bias_unless_asked_not_to():
    z = logits(40_000, seed=3).reshape(1, 1, 200, 200)
    target = bernoulli(torch.sigmoid(z[0, 0] - 1.0))
    probs = BINARY.probabilities(z)[0].numpy()
    with_bias = fit_calibration([(probs, target)], BINARY, per_image=40_000)
    assert with_bias.bias == pytest.approx((-1.0,), abs=0.1) and with_bias.threshold is not None
    assert fit_calibration([(probs, target)], BINARY, per_image=40_000, bias=False).bias is None
    three = torch.softmax(torch.randn(3, 20, 20), 0).numpy()  # multi-class: T only
    classes = torch.randint(0, 3, (20, 20))
    assert fit_calibration([(three, classes)], Task(3)).bias is None


def test_apply_and_undo_are_inverse_and_the_probabilities_are_by_hand():
    calibration = Calibration(2.0, bias=(0.5, -1.0, 0.25))
    z = torch.randn(2, 3, 4, 5)
    mapped = calibration.apply(z)
    assert torch.allclose(mapped[:, 1], z[:, 1] / 2.0 - 1.0)
    assert torch.allclose(calibration.undo(mapped), z, atol=1e-6)
    pixels = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.allclose(calibration.apply(pixels, channel_axis=-1)[:, 2], pixels[:, 2] / 2 + 0.25)
    probs = torch.sigmoid(z[0]).numpy()  # a multi-label image (L, H, W)
    calibrated = calibration.apply_to_probabilities(probs, LABELS)
    by_hand = torch.sigmoid(z[0] / 2.0 + torch.tensor([0.5, -1.0, 0.25])[:, None, None])
    np.testing.assert_allclose(calibrated, by_hand.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        calibration.undo_on_probabilities(calibrated, LABELS), probs, atol=1e-5
    )


def test_the_record_reads_back_and_refuses_a_bias_that_does_not_fit():
    calibration = Calibration(1.3, threshold=0.4, bias=(-0.2,))
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert "bias" not in Calibration(1.3).to_dict()  # older records read as before
    assert Calibration.from_dict({"temperature": 1.3, "threshold": None}).bias is None
    assert calibration.describe() == "T = 1.30, bias -0.20"
    assert calibration.logit_map() == Calibration(1.3, bias=(-0.2,))
    with pytest.raises(ValueError, match="finite numbers"):
        Calibration(bias=(float("nan"),))
    with pytest.raises(ValueError, match="softmax classes"):
        calibration.check_channels(Task(3))
    with pytest.raises(ValueError, match=r"one value per sigmoid channel \(3\)"):
        calibration.check_channels(LABELS)


def test_a_tempered_model_adds_its_bias_after_the_temperature():
    model = torch.nn.Conv2d(3, 1, 1)
    tempered = Tempered(model, 2.0, bias=(-0.5,)).eval()
    images = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        assert torch.allclose(tempered(images), model(images) / 2.0 - 0.5)
    assert tempered.calibration == Calibration(2.0, bias=(-0.5,))


def test_predict_and_an_onnx_export_apply_the_stored_bias(tmp_path):
    images = sample_images(tmp_path / "images")
    plain = write_checkpoint(tmp_path / "plain.pt", 2)
    stored = calibrated_copy(
        plain, tmp_path / "cal.pt", Calibration(1.5, threshold=0.4, bias=(-0.8,))
    )
    out = predict(stored, images, tmp_path / "torch")
    raw = raw_probabilities(plain, images / "two.png")[1]  # the model's own size
    by_hand = torch.sigmoid(torch.logit(torch.from_numpy(raw).double()) / 1.5 - 0.8).numpy()
    mask, probs = outputs(out, "two")
    assert np.abs(probs[1] - by_hand).max() <= 2 * FLOAT16_STEP
    clear = np.abs(by_hand - 0.4) > 2 * FLOAT16_STEP
    np.testing.assert_array_equal(mask[clear], (by_hand > 0.4)[clear])
    onnx_file = tmp_path / "cal.onnx"
    assert main(["export", "--checkpoint", str(stored), "--out", str(onnx_file)]) == 0
    assert read_metadata(onnx_file)["calibrated"]["biases"] == [[-0.8]]
    onnx_out = tmp_path / "onnx"
    base = ["predict", "--input", str(images), "--no-progress", "--save-probs"]
    assert main([*base, "--out", str(onnx_out), "--exported", str(onnx_file)]) == 0
    assert np.abs(outputs(onnx_out, "two")[1] - probs).max() <= FLOAT16_STEP
    loaded = load_model([stored, calibrated_copy(plain, tmp_path / "b.pt", Calibration(2.0))])
    assert loaded.checkpoint["calibrated"]["biases"] == [[-0.8], None]


def test_training_without_the_bias_stores_a_temperature_only_and_calibrate_refits_it(
    tmp_path, capsys
):
    run = tmp_path / "run"
    printed = _train(run, capsys, "task.num_classes=2", "eval.calibration_bias=false")
    best = run / "checkpoints" / "best.pt"
    stored = load_checkpoint(best)["calibration"]
    assert "bias" not in stored and stored["temperature"] > 0
    assert "calibration: T = " in printed and ", bias" not in printed
    weights = load_checkpoint(best)["model"]
    assert main(["calibrate", str(run), "--bias", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    refitted = load_checkpoint(best)
    assert len(refitted["calibration"]["bias"]) == 1
    assert f"{refitted['calibration']['bias'][0]:+.2f}" in printed and str(run) in printed
    assert all(torch.equal(weights[k], refitted["model"][k]) for k in weights)  # weights kept
    assert main(["calibrate", str(best), "--device", "cpu"]) == 0  # the run's own setting: off
    assert "bias" not in load_checkpoint(best)["calibration"]
    assert "  calibration: T = " in capsys.readouterr().out
    (run / "splits.json").unlink()
    assert main(["calibrate", str(run)]) != 0
    assert "splits.json is missing" in capsys.readouterr().err


def test_calibrate_takes_every_fold_of_a_cv_folder(tmp_path):
    for fold in (1, 0, 10):
        (tmp_path / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"fold_{fold}" / "checkpoints" / "best.pt").touch()
    folders = run_folders([str(tmp_path), str(tmp_path / "fold_0")])
    assert [path.name for path in folders] == ["fold_0", "fold_1", "fold_10"]
