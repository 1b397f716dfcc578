"""Several checkpoints as one model in predict, export and serve: the mean of the members'
probabilities, one exported graph, a cv folder as the argument, the members' disagreement."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_helpers import rgb, save_rgb
from PIL import Image
from test_ensemble import perturbed_copy
from test_export import write_checkpoint

from unetkit.checkpoint import model_from_checkpoint
from unetkit.cli.main import main
from unetkit.inference.onnx_backend import read_metadata
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.uncertainty import mutual_information, predictive_entropy

FLOAT16_STEP = 2.0**-10
TORCH = ["--backend", "torch", "--device", "cpu", "--precision", "fp32", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("members")
    first = write_checkpoint(folder / "a.pt", 3)
    return [first, perturbed_copy(first, folder / "b.pt", 1)]


def sample_images(folder: Path) -> Path:
    """``one.png`` (21x17, resized for the model) and ``two.png`` (16x20, the model's size)."""
    save_rgb(folder / "one.png", 21, 17, seed=3)
    save_rgb(folder / "two.png", 16, 20, seed=4)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return sample_images(tmp_path_factory.mktemp("images"))


def member_probabilities(members: list[Path], image: Path) -> np.ndarray:
    """Each member's probabilities ``(M, C, H, W)`` of ``image``, computed one by one."""
    array = np.asarray(Image.open(image).convert("RGB"))
    singles = [Segmenter.from_loaded(model_from_checkpoint(path), "cpu") for path in members]
    return np.stack([single.predict_proba(array) for single in singles])


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_argmax_of(mask: np.ndarray, probs: np.ndarray) -> None:
    """``mask`` is the argmax of ``probs`` wherever the top two are not within rounding."""
    ranked = np.sort(probs, axis=0)
    clear = ranked[-1] - ranked[-2] > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(mask[clear], probs.argmax(axis=0)[clear])


def test_predict_with_two_checkpoints_writes_the_mean_of_their_probabilities(
    members, images, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", *map(str, members), "--input", str(images)]
    assert main([*args, "--out", str(out), "--save-probs", "--save-uncertainty", *TORCH]) == 0
    assert "ensemble of 2 members" in capsys.readouterr().out
    rows = {Path(row["input"]).name: row for row in read_summary(out / "summary.csv")}
    for name in ("one.png", "two.png"):
        each = member_probabilities(members, images / name)
        assert np.abs(each[0] - each[1]).max() > 1e-3  # the members differ
        mean = each.mean(axis=0)
        assert_argmax_of(read_mask(out / name), mean)
        stored = np.load(out / f"{Path(name).stem}_probs.npz")["probs"].astype(np.float32)
        assert np.abs(stored - mean).max() <= FLOAT16_STEP
        entropy = np.load(out / f"{Path(name).stem}_entropy.npy").astype(np.float32)
        information = np.load(out / f"{Path(name).stem}_mutual_information.npy")
        assert np.abs(entropy - predictive_entropy(mean)).max() <= 2e-3
        by_hand = mutual_information(each)
        assert by_hand.max() > 1e-4 and np.abs(information - by_hand).max() <= 2e-3
        assert float(rows[name]["mutual_information"]) == pytest.approx(by_hand.mean(), abs=1e-4)
        assert (out / f"{Path(name).stem}_mutual_information.png").is_file()


def test_a_cv_folder_predicts_as_its_folds_listed(members, images, tmp_path, capsys) -> None:
    for fold, member in enumerate(members):
        folder = tmp_path / "cv" / f"fold_{fold}" / "checkpoints"
        folder.mkdir(parents=True)
        shutil.copy(member, folder / "best.pt")
    listed, folded = tmp_path / "listed", tmp_path / "folded"
    base = ["predict", "--input", str(images), *TORCH, "--checkpoint"]
    assert main([*base, *map(str, members), "--out", str(listed)]) == 0
    assert main([*base, str(tmp_path / "cv"), "--out", str(folded)]) == 0
    assert capsys.readouterr().out.count("ensemble of 2 members") == 2
    for name in ("one.png", "two.png"):
        np.testing.assert_array_equal(read_mask(folded / name), read_mask(listed / name))


def test_an_exported_ensemble_is_one_checked_graph_predicting_as_torch(
    members, images, tmp_path, capsys
) -> None:
    onnx_file = tmp_path / "ensemble.onnx"
    export = ["export", "--checkpoint", *map(str, members), "--out", str(onnx_file)]
    assert main(export) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 members" in printed and '"max_abs_diff"' in printed
    assert read_metadata(onnx_file)["ensemble"] == {"members": 2}
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    base = ["predict", "--input", str(images), "--no-progress", "--save-probs"]
    assert main([*base, "--out", str(torch_out), *TORCH, "--checkpoint", *map(str, members)]) == 0
    assert main([*base, "--out", str(onnx_out), "--exported", str(onnx_file)]) == 0
    assert "ensemble of 2 members" in capsys.readouterr().out
    for name in ("one", "two"):
        expected = np.load(torch_out / f"{name}_probs.npz")["probs"].astype(np.float32)
        found = np.load(onnx_out / f"{name}_probs.npz")["probs"].astype(np.float32)
        assert np.abs(found - expected).max() <= FLOAT16_STEP
        assert_argmax_of(read_mask(onnx_out / f"{name}.png"), expected)


def test_serve_answers_with_the_ensemble_and_the_threshold_asked(tmp_path) -> None:
    from test_serve import decoded_png, get_json, png_file, serving, upload

    first = write_checkpoint(tmp_path / "a.pt", 2)
    pair = [first, perturbed_copy(first, tmp_path / "b.pt", 2)]
    image = rgb(19, 23, seed=5)
    with serving(pair, backend="torch", threshold=0.7) as base:
        _, info = get_json(f"{base}/model")
        status, _, body = upload(base, png_file(image))
    assert (info["model"], info["threshold"]) == ("ensemble of 2 unet", 0.7)
    assert status == 200
    singles = [Segmenter.from_loaded(model_from_checkpoint(p), "cpu") for p in pair]
    foreground = np.mean([single.predict_proba(image)[1] for single in singles], axis=0)
    clear = np.abs(foreground - 0.7) > 1e-4
    assert 0 < (foreground > 0.7).mean() < 1
    np.testing.assert_array_equal(decoded_png(body)[clear], (foreground > 0.7)[clear])


def test_an_openvino_ensemble_of_calibrated_members_predicts_as_torch(
    members, images, tmp_path, capsys
) -> None:
    pytest.importorskip("openvino")
    from unetkit.inference.calibration import Calibration, store_calibration
    from unetkit.inference.openvino_backend import read_openvino_metadata

    tempered = []
    for member, temperature in zip(members, (1.5, 0.8), strict=True):
        copy = tmp_path / member.name
        shutil.copy(member, copy)
        store_calibration(copy, Calibration(temperature))
        tempered.append(str(copy))
    ir = tmp_path / "ensemble.xml"
    assert (
        main(["export", "--checkpoint", *tempered, "--format", "openvino", "--out", str(ir)]) == 0
    )
    metadata = read_openvino_metadata(ir)
    assert metadata["ensemble"] == {"members": 2}
    assert metadata["calibrated"]["temperatures"] == [1.5, 0.8]
    torch_out, ir_out = tmp_path / "torch", tmp_path / "ir"
    base = ["predict", "--input", str(images), "--no-progress", "--save-probs"]
    assert main([*base, "--out", str(torch_out), *TORCH, "--checkpoint", *tempered]) == 0
    assert main([*base, "--out", str(ir_out), "--exported", str(ir)]) == 0
    assert "ensemble of 2 members" in capsys.readouterr().out
    for name in ("one", "two"):
        expected = np.load(torch_out / f"{name}_probs.npz")["probs"].astype(np.float32)
        found = np.load(ir_out / f"{name}_probs.npz")["probs"].astype(np.float32)
        untempered = member_probabilities(members, images / f"{name}.png").mean(axis=0)
        assert np.abs(expected - untempered).max() > 0.01  # the temperatures count
        assert np.abs(found - expected).max() <= FLOAT16_STEP
        assert_argmax_of(read_mask(ir_out / f"{name}.png"), expected)


def test_auto_probes_the_ensemble_as_one_exported_graph(members, monkeypatch) -> None:
    from test_backends import timings

    from unetkit.inference import backends

    monkeypatch.setattr(backends, "installed", lambda backend: backend == "onnxruntime")
    fast = timings({"torch fp32": 1.0, "onnxruntime fp32": 0.5})
    segmenter, choice = backends.load_segmenter(
        "auto", checkpoint=members, device="cpu", timer=fast, precision="fp32"
    )
    assert choice.label == "onnxruntime fp32"
    assert backends.member_count_of(segmenter) == 2
    image = rgb(16, 20, seed=6)
    ensemble = Segmenter.from_checkpoint(members, "cpu")
    assert np.abs(segmenter.predict_proba(image) - ensemble.predict_proba(image)).max() < 1e-4


def test_an_int8_ensemble_is_refused_by_name(members, tmp_path) -> None:
    from unetkit.inference.export import export_model

    with pytest.raises(ValueError, match=r"exports one checkpoint; got an ensemble of 2 \(.*a\.pt"):
        export_model(members, tmp_path / "int8.onnx", quantize="int8")
    assert not (tmp_path / "int8.onnx").exists()
