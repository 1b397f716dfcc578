"""`unetkit data check` and `unetkit data show` on small generated folder datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.cli.main import DATASET_FLAGS, TRAIN_FLAGS, build_parser, main
from unetkit.config import Config
from unetkit.data.checks import dataset_statistics, inspect_splits
from unetkit.data.preview import preview_indices, sample_grid
from unetkit.data.registry import build_splits
from unetkit.data.sources import DataError
from unetkit.palette import class_palette

GREY = 128
# (H, W) of the clean dataset's ten images: three sizes.
SIZES = [(20, 16)] * 4 + [(24, 30)] * 4 + [(12, 40)] * 2


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mask(height: int, width: int, index: int) -> np.ndarray:
    """Class 1 in the top rows, class 2 in a band below, a few ignore pixels in every third."""
    mask = np.zeros((height, width), np.uint8)
    mask[: 4 + index % 3] = 1
    mask[8:11, 2:10] = 2
    if index % 3 == 0:
        mask[-1, :5] = 255
    return mask


def _clean_folder(root: Path) -> list[np.ndarray]:
    masks = []
    for index, (height, width) in enumerate(SIZES):
        _write(root / "images" / f"s{index:02d}.png", np.full((height, width, 3), GREY, np.uint8))
        masks.append(_mask(height, width, index))
        _write(root / "masks" / f"s{index:02d}.png", masks[-1])
    (root / "classes.txt").write_text("background\nfur\ncollar\n")
    return masks


def _broken_folder(root: Path) -> Path:
    _clean_folder(root)
    (root / "images" / "s01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = _mask(20, 16, 2)
    bad[0, 0] = 7
    _write(root / "masks" / "s02.png", bad)
    _write(root / "masks" / "s04.png", np.zeros((10, 10), np.uint8))  # image is 24x30
    _write(root / "images" / "lonely.png", np.full((8, 8, 3), GREY, np.uint8))
    return root


def _folder_args(root: Path) -> list[str]:
    return ["--dataset", "folder", "--data-root", str(root)]


# --- statistics in the data layer -----------------------------------------------------------


def test_statistics_count_every_pixel_once_per_class(tmp_path):
    masks = _clean_folder(tmp_path)
    cfg = Config()
    cfg.data.dataset = "folder"
    cfg.data.root = str(tmp_path)
    splits = build_splits(cfg)
    report = inspect_splits(splits, progress=False)
    stats = report.statistics

    assert report.problems == []
    everything = np.concatenate([m.reshape(-1) for m in masks])
    expected = [int((everything == c).sum()) for c in range(3)]
    assert stats.class_pixels.tolist() == expected
    assert stats.ignored_pixels == int((everything == 255).sum()) == 4 * 5
    assert stats.labelled_pixels == sum(expected)
    assert stats.class_fractions().sum() == pytest.approx(1.0)
    assert stats.class_names == ["background", "fur", "collar"]
    counts = {split: len(source) for split, source in splits.named().items()}
    assert {split: len(sizes) for split, sizes in stats.sizes.items()} == counts
    whole = stats.size_summary()
    assert (whole.count, whole.height, whole.width) == (10, (12, 20, 24), (16, 30, 40))
    assert dataset_statistics(splits, progress=False).class_pixels.tolist() == expected


def test_statistics_reads_each_sample_once(tmp_path, monkeypatch):
    _clean_folder(tmp_path)
    cfg = Config()
    cfg.data.dataset = "folder"
    cfg.data.root = str(tmp_path)
    splits = build_splits(cfg)
    loads = []
    for source in splits.named().values():
        original = source.load
        monkeypatch.setattr(source, "load", lambda i, f=original: loads.append(i) or f(i))
    inspect_splits(splits, progress=False)
    assert len(loads) == len(SIZES)


# --- data check -----------------------------------------------------------------------------


def test_check_prints_frequencies_and_sizes_and_passes(tmp_path, capsys):
    masks = _clean_folder(tmp_path)
    assert main(["data", "check", *_folder_args(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out

    everything = np.concatenate([m.reshape(-1) for m in masks])
    labelled = int((everything != 255).sum())
    assert "no data problems found" in out
    assert f"class pixel frequencies ({labelled} labelled pixels, all splits)" in out
    for class_id, name in enumerate(["background", "fur", "collar"]):
        pixels = int((everything == class_id).sum())
        share = f"{100 * pixels / labelled:.2f}%"
        assert any(
            line.split() == [str(class_id), name, str(pixels), share] for line in out.splitlines()
        ), (name, out)
    assert "ignored (255, not in the shares): 20 pixels" in out
    all_row = next(line for line in out.splitlines() if line.split()[:1] == ["all"])
    assert all_row.split() == ["all", "10", "12", "/", "20", "/", "24", "16", "/", "30", "/", "40"]
    assert "data check passed" in out


def test_check_reports_every_problem_with_its_file_and_fails(tmp_path, capsys):
    root = _broken_folder(tmp_path)
    assert main(["data", "check", *_folder_args(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()

    def problem_line(file_name: str) -> str:
        found = [line for line in lines if line.lstrip().startswith("[") and file_name in line]
        assert len(found) == 1, (file_name, out)
        return found[0]

    assert "cannot be read" in problem_line(str(root / "images" / "s01.png"))
    assert "mask values [7]" in problem_line(str(root / "masks" / "s02.png"))
    assert "24x30" in problem_line(str(root / "masks" / "s04.png"))
    assert "[warning]" in problem_line(str(root / "images" / "lonely.png"))
    assert "4 data problem(s): 3 error(s), 1 warning(s)" in out
    assert "data check failed: 3 error(s)" in out
    assert "class pixel frequencies" in out  # statistics of the readable samples still shown


def test_check_takes_config_flags_and_overrides(tmp_path, capsys):
    _clean_folder(tmp_path)
    (tmp_path / "classes.txt").unlink()
    # Two classes cannot hold the masks' class 2: every sample is an error.
    assert main(["data", "check", *_folder_args(tmp_path), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{len(SIZES)} data problem(s): {len(SIZES)} error(s)" in out
    assert "outside the class ids 0..1" in out
    names = "task.class_names=[sky, fur, collar]"
    assert main(["data", "check", *_folder_args(tmp_path), names, "--num-classes", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.split()[:1] in (["1"], ["2"])] == [
        "fur",
        "collar",
    ]


def test_data_commands_take_the_train_dataset_flags():
    parser = build_parser()
    for command in ["check", "show"]:
        args = parser.parse_args(
            ["data", command, "--dataset", "folder", "--data-root", "d", "--mode", "m"]
            + ["--num-classes", "3", "--img-size", "32", "48", "--config", "c.yaml", "a.b=1"]
        )
        assert args.config_keys == {flag: TRAIN_FLAGS[flag] for flag in DATASET_FLAGS}
        assert (args.dataset, args.data_root, args.mode) == ("folder", "d", "m")
        assert (args.num_classes, args.img_size, args.config) == (3, [32, 48], "c.yaml")
        assert args.overrides == ["a.b=1"]


# --- data show ------------------------------------------------------------------------------


def _near(picture: np.ndarray, colour: np.ndarray, tolerance: int = 3) -> int:
    return int((np.abs(picture.astype(int) - colour).max(axis=2) <= tolerance).sum())


def test_show_writes_a_grid_with_the_masks_overlaid(tmp_path, capsys):
    _clean_folder(tmp_path / "data")
    out = tmp_path / "grid.png"
    args = ["data", "show", *_folder_args(tmp_path / "data"), "--count", "4", "--out", str(out)]
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (610, 520, 3)  # 2 x 2 cells of 2.6 in + a legend strip, 100 dpi
    palette = class_palette(3).astype(float)
    for class_id in (1, 2):
        tinted = np.round(0.5 * GREY + 0.5 * palette[class_id])
        assert _near(picture, tinted) > 200, class_id  # the overlay colour of each class
        assert _near(picture, palette[class_id]) > 20  # its legend patch
    assert _near(picture, np.array([GREY] * 3)) > 500  # untinted background


def test_show_augmented_uses_the_default_name_and_training_size(tmp_path, monkeypatch, capsys):
    _clean_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["data", "show", *_folder_args(tmp_path / "data"), "--count", "3", "--augment"]
    assert main([*args, "data.augment=strong", "--img-size", "32"]) == 0
    out = tmp_path / "folder-train-samples-augmented.png"
    assert out.is_file() and f"wrote {out.name}" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert (width, height) == (520, 610)


def test_show_of_broken_data_names_the_file(tmp_path, capsys):
    root = _broken_folder(tmp_path / "data")
    args = ["data", "show", *_folder_args(root), "--split", "train", "--count", "20"]
    assert main([*args, "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert str(root) in err and ("s01.png" in err or "s04.png" in err or "s02" in err)
    assert not (tmp_path / "g.png").exists()


def test_grid_of_an_empty_split_says_so(tmp_path):
    _clean_folder(tmp_path)
    cfg = Config()
    cfg.data.dataset = "folder"
    cfg.data.root = str(tmp_path)
    splits = build_splits(cfg)
    with pytest.raises(DataError, match="no samples to show"):
        sample_grid(splits.train.subset([]), splits.class_names)
    assert preview_indices(10, 4) == [0, 3, 6, 9]
    assert preview_indices(3, 16) == [0, 1, 2]
