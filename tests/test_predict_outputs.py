"""Files that ``predict_files`` writes per image (mask, colour, overlay, probabilities), the
``summary.csv`` beside them, and output names that never collide."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from model_helpers import checkpoint_payload, preprocessing, save_rgb, tiny_model
from PIL import Image

from unetkit.checkpoint import save_checkpoint
from unetkit.data.image_files import read_image
from unetkit.inference.predict import output_paths, predict_files
from unetkit.inference.segmenter import Segmenter
from unetkit.palette import class_palette
from unetkit.tasks import Task

FLOAT16_STEP = 2.0**-11  # float16 rounding error of values in [0, 1] is at most half of 2**-10


pytestmark = pytest.mark.usefixtures("one_thread")


def class_names(num_classes: int) -> list[str]:
    return ["background", *(f"class {i}" for i in range(1, num_classes))]


def checkpoint_segmenter(tmp_path: Path, num_classes: int, batch_size: int = 2) -> Segmenter:
    """A Segmenter loaded from a tiny checkpoint saved as training saves it."""
    task = Task(num_classes)
    prep = preprocessing(img_size=(16, 16))
    payload = checkpoint_payload(tiny_model(task), task, class_names(num_classes), prep)
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(payload, path)
    return Segmenter.from_checkpoint(path, device="cpu", batch_size=batch_size)


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sample_inputs(folder: Path) -> list[Path]:
    """Three images of different sizes with a corrupt file between them."""
    broken = folder / "b_broken.png"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"this is not a png")
    return [
        save_rgb(folder / "a.png", 13, 21, seed=1),
        broken,
        save_rgb(folder / "sub" / "c.jpg", 19, 10, seed=2),
        save_rgb(folder / "d.bmp", 8, 30, seed=3),
    ]


@pytest.mark.parametrize("num_classes", [2, 4], ids=["binary", "multiclass"])
def test_every_file_is_written_and_matches_the_segmenter(tmp_path, num_classes):
    seg = checkpoint_segmenter(tmp_path, num_classes)
    inputs = sample_inputs(tmp_path / "in")
    out = tmp_path / "out"

    report = predict_files(seg, inputs, out, save_overlay=True, progress=False, save_probs=True)

    readable = [inputs[0], inputs[2], inputs[3]]
    assert report.written == [out / "a.png", out / "sub" / "c.png", out / "d.png"]
    assert [path for path, _ in report.skipped] == [inputs[1]]
    assert "b_broken.png" in report.skipped[0][1]  # the reason names the file
    assert report.summary == out / "summary.csv"
    for source, mask_file in zip(readable, report.written, strict=True):
        image = read_image(source)
        expected_probs = seg.predict_proba(image)
        mask = np.asarray(Image.open(mask_file))
        np.testing.assert_array_equal(mask, seg.predict(image))
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8

        stored = np.load(mask_file.with_name(f"{mask_file.stem}_probs.npz"))
        probs = stored["probs"]
        assert probs.dtype == np.float16 and probs.shape == (num_classes, *image.shape[:2])
        np.testing.assert_allclose(probs, expected_probs, atol=FLOAT16_STEP)
        np.testing.assert_allclose(probs.astype(np.float64).sum(0), 1.0, atol=num_classes * 1e-3)
        assert list(stored["class_names"]) == class_names(num_classes)

        colour = np.asarray(Image.open(mask_file.with_name(f"{mask_file.stem}_colour.png")))
        np.testing.assert_array_equal(colour, class_palette(num_classes)[mask])
        assert (colour[mask == 0] == 0).all()  # background is black
        picture = Image.open(mask_file.with_name(f"{mask_file.stem}_overlay.png"))
        assert picture.size == (image.shape[1], image.shape[0]) and picture.mode == "RGB"
    assert len(np.unique(np.asarray(Image.open(report.written[0])))) > 1


def test_summary_lists_areas_per_class_and_the_skipped_file(tmp_path):
    seg = checkpoint_segmenter(tmp_path, 3, batch_size=3)
    inputs = sample_inputs(tmp_path / "in")
    out = tmp_path / "out"

    report = predict_files(seg, inputs, out, progress=False)

    rows = read_summary(out / "summary.csv")
    area_columns = ["pixels/background", "pixels/class 1", "pixels/class 2"]
    assert list(rows[0]) == ["input", "status", "mask", "height", "width", *area_columns, "error"]
    assert [row["input"] for row in rows] == [str(p) for p in inputs]  # input order
    assert [row["status"] for row in rows] == ["written", "skipped", "written", "written"]
    skipped = rows[1]
    assert skipped["error"] == report.skipped[0][1] and "b_broken.png" in skipped["error"]
    assert all(skipped[column] == "" for column in ["mask", "height", "width", *area_columns])

    written = [rows[0], rows[2], rows[3]]
    assert [row["mask"] for row in written] == ["a.png", "sub/c.png", "d.png"]
    assert [(row["height"], row["width"]) for row in written] == [
        ("13", "21"),
        ("19", "10"),
        ("8", "30"),
    ]
    for row in written:
        mask = np.asarray(Image.open(out / row["mask"]))
        areas = [int(row[column]) for column in area_columns]
        assert sum(areas) == mask.size == int(row["height"]) * int(row["width"])
        assert areas == np.bincount(mask.ravel(), minlength=3).tolist()
        assert row["error"] == ""


def test_defaults_write_mask_colour_and_summary_only(tmp_path):
    seg = checkpoint_segmenter(tmp_path, 2)
    source = save_rgb(tmp_path / "in" / "photo.png", 9, 11, seed=0)
    out = tmp_path / "out"

    predict_files(seg, [source], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "photo_colour.png", "summary.csv"]

    bare = tmp_path / "bare"
    report = predict_files(seg, [source], bare, progress=False, save_colour=False, summary=False)
    assert report.summary is None
    assert [p.name for p in bare.iterdir()] == ["photo.png"]


def test_probabilities_and_masks_come_from_one_pass(tmp_path):
    seg = checkpoint_segmenter(tmp_path, 3, batch_size=2)
    calls = {"predict": 0, "predict_with_proba": 0}
    for name in calls:
        method = getattr(seg, name)

        def counted(images, method=method, name=name):
            calls[name] += 1
            return method(images)

        setattr(seg, name, counted)
    inputs = [save_rgb(tmp_path / "in" / f"{i}.png", 10, 10, seed=i) for i in range(3)]

    predict_files(seg, inputs, tmp_path / "out", progress=False, save_probs=True)
    assert calls == {"predict": 0, "predict_with_proba": 2}  # batches of 2 and 1


# --- output names ------------------------------------------------------------------------------


def test_colour_and_probability_files_cannot_overwrite_other_outputs():
    inputs = [Path("in/x.png"), Path("in/x_colour.png"), Path("in/x_probs.png")]
    assert output_paths(inputs) == [Path("x.png"), Path("x_colour.png"), Path("x_probs.png")]
    assert output_paths(inputs, with_colours=True) == [
        Path("x.png.png"),
        Path("x_colour.png.png"),
        Path("x_probs.png"),
    ]
    # the probabilities are .npz files, so x_probs.png (a mask) does not clash with them
    assert output_paths(inputs, with_probs=True) == [
        Path("x.png"),
        Path("x_colour.png"),
        Path("x_probs.png"),
    ]
    assert output_paths([Path("x.png"), Path("x_probs.npz.png")], with_probs=True) == [
        Path("x.png"),
        Path("x_probs.npz.png"),
    ]


def test_names_that_clash_even_with_their_extension_get_their_position():
    # x.png and x.jpg fall back to x.png.png and x.jpg.png; the colour picture of x.png would then
    # be x.png_colour.png, the mask of the third input, so both move on once more.
    inputs = [Path("in/x.png"), Path("in/x.jpg"), Path("in/x.png_colour.png")]
    assert output_paths(inputs, with_colours=True) == [
        Path("x.png~0.png"),
        Path("x.jpg.png"),
        Path("x.png_colour.png.png"),
    ]
    assert output_paths([Path("a/x.png"), Path("a/x.png")]) == [
        Path("x.png~0.png"),
        Path("x.png~1.png"),
    ]


def all_written_names(masks: list[Path], flags: tuple[bool, bool, bool]) -> list[str]:
    """Every file name the outputs would use, written out independently of the package."""
    endings = [".png"] + [
        e for e, on in zip(["_overlay.png", "_colour.png", "_probs.npz"], flags, strict=True) if on
    ]
    stems = [mask.with_suffix("") for mask in masks]
    return [(stem.parent / f"{stem.name}{e}").as_posix().lower() for stem in stems for e in endings]


@pytest.mark.parametrize("seed", range(5))
def test_random_names_never_collide(seed):
    rng = np.random.default_rng(seed)
    parts = ["x", "X", ".png", "_overlay", "_colour", "_probs", "~0", "~1", ".npz"]
    extensions = [".png", ".PNG", ".jpg"]
    inputs = set()
    while len(inputs) < 20:
        name = "".join(rng.choice(parts, size=rng.integers(1, 4))) + rng.choice(extensions)
        inputs.add(Path(rng.choice(["in", "in/sub"])) / name)
    ordered = sorted(inputs)
    for flags in itertools.product([False, True], repeat=3):
        masks = output_paths(ordered, *flags)
        names = all_written_names(masks, flags)
        assert len(names) == len(set(names)), (ordered, flags)
        assert all(mask.suffix == ".png" for mask in masks)
