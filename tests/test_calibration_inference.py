"""A checkpoint's stored calibration in every inference path: the temperature softens the
probabilities (never the multi-class argmax), the threshold cuts binary masks, ``--threshold``
overrides it, an ONNX export predicts the same; ``--save-uncertainty`` by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import checkpoint_payload, preprocessing, tiny_model
from PIL import Image
from test_ensemble import perturbed_copy
from test_ensemble_cli import sample_images
from test_export import write_checkpoint

from unetkit.checkpoint import model_from_checkpoint, save_checkpoint
from unetkit.cli.main import main
from unetkit.inference.calibrated import load_model
from unetkit.inference.calibration import Calibration, store_calibration
from unetkit.inference.onnx_backend import read_metadata
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import Task

FLOAT16_STEP = 2.0**-10
TORCH = ["--backend", "torch", "--device", "cpu", "--precision", "fp32", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return sample_images(tmp_path_factory.mktemp("images"))


def raw_probabilities(path: Path, image: Path) -> np.ndarray:
    """The uncalibrated probabilities of ``image`` (T = 1) by the checkpoint's own model."""
    segmenter = Segmenter.from_loaded(model_from_checkpoint(path), "cpu")
    return segmenter.predict_proba(np.asarray(Image.open(image).convert("RGB")))


def predict(checkpoint: Path, images: Path, out: Path, *extra: str) -> Path:
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--out", str(out)]
    assert main([*args, "--save-probs", *TORCH, *extra]) == 0
    return out


def outputs(out: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The mask and the stored probabilities of one image."""
    probs = np.load(out / f"{name}_probs.npz")["probs"].astype(np.float32)
    return np.asarray(Image.open(out / f"{name}.png")), probs


def calibrated_copy(source: Path, target: Path, calibration: Calibration) -> Path:
    target.write_bytes(source.read_bytes())
    store_calibration(target, calibration)
    return target


def test_a_stored_temperature_softens_probabilities_but_keeps_the_argmax(
    image_folder, tmp_path
) -> None:
    plain = write_checkpoint(tmp_path / "plain.pt", 3)
    tempered = calibrated_copy(plain, tmp_path / "tempered.pt", Calibration(temperature=2.5))
    before = predict(plain, image_folder, tmp_path / "before")
    after = predict(tempered, image_folder, tmp_path / "after")
    for name in ("one", "two"):
        mask_before, probs_before = outputs(before, name)
        mask_after, probs_after = outputs(after, name)
        assert np.abs(probs_after - probs_before).max() > 0.05
        assert probs_after.max() < probs_before.max()  # softer
        np.testing.assert_array_equal(mask_after, mask_before)
    logits = np.log(raw_probabilities(plain, image_folder / "two.png"))  # the model's size
    by_hand = torch.softmax(torch.from_numpy(logits / 2.5), dim=0).numpy()
    assert np.abs(outputs(after, "two")[1] - by_hand).max() <= 2 * FLOAT16_STEP


def test_a_stored_threshold_cuts_a_binary_mask_and_the_flag_overrides_it(
    image_folder, tmp_path
) -> None:
    plain = write_checkpoint(tmp_path / "plain.pt", 2)
    stored = calibrated_copy(plain, tmp_path / "cut.pt", Calibration(threshold=0.7))
    foreground = raw_probabilities(plain, image_folder / "one.png")[1]
    for extra, threshold in (((), 0.7), (("--threshold", "0.3"), 0.3)):
        out = predict(stored, image_folder, tmp_path / f"at{threshold}", *extra)
        mask, _ = outputs(out, "one")
        clear = np.abs(foreground - threshold) > 1e-4
        assert 0 < (foreground > threshold).mean() < 1
        np.testing.assert_array_equal(mask[clear], (foreground > threshold)[clear])
        assert (mask != (foreground > 0.5)).any()  # not the task's own 0.5
    with pytest.raises(ValueError, match=r"--threshold 0.3: .*applies to a binary task"):
        load_model(write_checkpoint(tmp_path / "three.pt", 3), threshold=0.3)


def test_an_onnx_export_bakes_the_calibration_in(image_folder, tmp_path, capsys) -> None:
    plain = write_checkpoint(tmp_path / "plain.pt", 2)
    stored = calibrated_copy(
        plain, tmp_path / "cal.pt", Calibration(temperature=1.7, threshold=0.6)
    )
    onnx_file = tmp_path / "cal.onnx"
    assert main(["export", "--checkpoint", str(stored), "--out", str(onnx_file)]) == 0
    metadata = read_metadata(onnx_file)
    assert metadata["task"]["threshold"] == 0.6
    assert metadata["calibrated"]["temperatures"] == [1.7]
    assert "calibration" not in metadata  # applied in the graph, never a second time
    base = ["predict", "--input", str(image_folder), "--no-progress", "--save-probs"]
    for extra in ((), ("--threshold", "0.45")):
        torch_out, onnx_out = tmp_path / f"torch{extra}", tmp_path / f"onnx{extra}"
        predict(stored, image_folder, torch_out, *extra)
        assert main([*base, "--out", str(onnx_out), "--exported", str(onnx_file), *extra]) == 0
        for name in ("one", "two"):
            mask, probs = outputs(torch_out, name)
            onnx_mask, onnx_probs = outputs(onnx_out, name)
            assert np.abs(onnx_probs - probs).max() <= FLOAT16_STEP
            threshold = 0.45 if extra else 0.6
            clear = np.abs(probs[1] - threshold) > 2 * FLOAT16_STEP
            np.testing.assert_array_equal(onnx_mask[clear], mask[clear])
            np.testing.assert_array_equal(mask[clear], (probs[1] > threshold)[clear])


def test_an_ensemble_tempers_each_member_before_averaging(tmp_path) -> None:
    first = calibrated_copy(
        write_checkpoint(tmp_path / "raw.pt", 3), tmp_path / "a.pt", Calibration(2.0)
    )
    second = perturbed_copy(first, tmp_path / "b.pt", 1)
    store_calibration(second, Calibration(0.5))
    loaded = load_model([first, second])
    images = torch.randn(1, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [model_from_checkpoint(p).model(images) for p in (first, second)]
        expected = (logits[0].div(2.0).softmax(1) + logits[1].div(0.5).softmax(1)) / 2
        found = loaded.task.probabilities(loaded.model(images))
    assert torch.allclose(found, expected, atol=1e-5)
    assert loaded.checkpoint["calibrated"] == {"temperatures": [2.0, 0.5], "threshold": None}


def constant_logit_checkpoint(path: Path, task: Task, logits: list[float]) -> Path:
    """A checkpoint whose model gives the same logits at every pixel: every weight zero but
    the head's bias."""
    model = tiny_model(task)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.zero_()
        model.head.bias.copy_(torch.tensor(logits))
    names = [f"label{i}" for i in range(task.num_classes)]
    save_checkpoint(checkpoint_payload(model, task, names, preprocessing()), path)
    return path


def summary_scores(out: Path, column: str) -> list[float]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


def test_save_uncertainty_writes_the_entropy_by_hand(image_folder, tmp_path) -> None:
    logits = [0.0, 1.0, 2.0]
    checkpoint = constant_logit_checkpoint(tmp_path / "constant.pt", Task(3), logits)
    out = predict(checkpoint, image_folder, tmp_path / "out", "--save-uncertainty")
    probs = np.exp(logits) / np.exp(logits).sum()
    entropy = -(probs * np.log(probs)).sum() / math.log(3)
    assert summary_scores(out, "uncertainty") == pytest.approx([entropy] * 2, abs=1e-5)
    with pytest.raises(KeyError):  # one model: no members to disagree
        summary_scores(out, "mutual_information")
    values = np.load(out / "one_entropy.npy")
    assert values.dtype == np.float16 and values.shape == (21, 17)
    assert np.abs(values.astype(np.float32) - entropy).max() <= FLOAT16_STEP
    picture = np.asarray(Image.open(out / "one_entropy.png"))
    assert picture.shape == (21, 17, 3) and (picture == picture[0, 0]).all()
    assert not (out / "one_mutual_information.npy").exists()


def test_a_multilabel_entropy_is_the_mean_of_each_labels_binary_entropy(
    image_folder, tmp_path
) -> None:
    logits = [0.0, 2.0]
    task = Task(2, multilabel=True)
    checkpoint = constant_logit_checkpoint(tmp_path / "labels.pt", task, logits)
    out = predict(checkpoint, image_folder, tmp_path / "out", "--save-uncertainty")
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    entropy = float((-(p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2)).mean())
    assert summary_scores(out, "uncertainty") == pytest.approx([entropy] * 2, abs=1e-5)
    values = np.load(out / "two_entropy.npy").astype(np.float32)
    assert np.abs(values - entropy).max() <= FLOAT16_STEP
