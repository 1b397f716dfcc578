"""Inference: the Segmenter on arrays and PIL images, checkpoints, palettes, and files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import checkpoint_payload, preprocessing, rgb, save_rgb, tiny_model
from PIL import Image

from unetkit.checkpoint import Preprocessing, load_checkpoint, save_checkpoint
from unetkit.data.image_files import read_image
from unetkit.inference.palette import class_palette, colourise, overlay
from unetkit.inference.predict import collect_inputs, output_paths, predict_files
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import IGNORE_INDEX, Task

BOUNDARY = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def class_names(num_classes: int) -> list[str]:
    return ["background", *(f"class{i}" for i in range(1, num_classes))]


def segmenter(
    num_classes: int = 3, in_channels: int = 3, batch_size: int = 4, seed: int = 0
) -> Segmenter:
    task = Task(num_classes)
    return Segmenter(
        tiny_model(task, in_channels, seed),
        task,
        class_names(num_classes),
        preprocessing(in_channels),
        device="cpu",
        batch_size=batch_size,
    )


def labels_of(probs: np.ndarray, task: Task) -> np.ndarray:
    """The decision rule written out independently of the package: argmax or threshold."""
    if task.is_binary:
        return (probs[1] > task.threshold).astype(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8)


def near_boundary(probs: np.ndarray, task: Task) -> np.ndarray:
    """Pixels whose label could flip under float noise of about ``BOUNDARY``."""
    if task.is_binary:
        return np.abs(probs[1] - task.threshold) < BOUNDARY
    top_two = np.sort(probs, axis=0)[-2:]
    return top_two[1] - top_two[0] < BOUNDARY


def assert_same_labels(a: np.ndarray, b: np.ndarray, probs: np.ndarray, task: Task) -> None:
    decided = ~near_boundary(probs, task)
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(a[decided], b[decided])


# --- one image ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 4], ids=["binary", "multiclass"])
def test_probabilities_and_labels_at_the_input_size(num_classes):
    seg = segmenter(num_classes)
    image = rgb(23, 37)
    probs = seg.predict_proba(image)
    mask = seg.predict(image)

    assert probs.shape == (num_classes, 23, 37) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert mask.shape == (23, 37) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, labels_of(probs, seg.task))
    assert len(np.unique(mask)) > 1, "the test model should predict more than one class"


def test_binary_labels_follow_the_task_threshold():
    seg = segmenter(2)
    image = rgb(20, 20, seed=3)
    foreground = seg.predict_proba(image)[1]
    low, high = np.quantile(foreground, [0.25, 0.75])
    for threshold in (low, high):
        seg.task = Task(2, threshold=float(threshold))
        np.testing.assert_array_equal(seg.predict(image), foreground > threshold)


def test_greyscale_pil_and_alpha_inputs_match_their_rgb_equivalent():
    seg = segmenter(3)
    image = rgb(18, 26, seed=1)
    grey = image[..., 0]
    expected = seg.predict_proba(image)
    expected_grey = seg.predict_proba(np.repeat(grey[..., None], 3, axis=2))
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])

    assert not np.allclose(expected, expected_grey)
    np.testing.assert_array_equal(seg.predict_proba(grey), expected_grey)
    np.testing.assert_array_equal(seg.predict_proba(grey[..., None]), expected_grey)
    np.testing.assert_array_equal(seg.predict_proba(Image.fromarray(grey)), expected_grey)
    np.testing.assert_array_equal(seg.predict_proba(Image.fromarray(image)), expected)
    np.testing.assert_array_equal(seg.predict_proba(rgba), expected)
    np.testing.assert_array_equal(seg.predict_proba(Image.fromarray(rgba, "RGBA")), expected)
    np.testing.assert_array_equal(seg.predict(image[:, ::-1]), seg.predict(image[:, ::-1].copy()))


def test_one_channel_model_converts_colour_like_the_file_reader(tmp_path):
    seg = segmenter(3, in_channels=1)
    image = rgb(21, 17, seed=2)
    luminance = np.asarray(Image.fromarray(image).convert("L"))
    Image.fromarray(image).save(tmp_path / "colour.png")

    expected = seg.predict_proba(luminance)
    assert expected.shape == (3, 21, 17)
    np.testing.assert_array_equal(seg.predict_proba(image), expected)
    np.testing.assert_array_equal(seg.predict_proba(Image.fromarray(image)), expected)
    np.testing.assert_array_equal(seg.predict_proba(np.dstack([image, luminance])), expected)
    np.testing.assert_array_equal(
        seg.predict_proba(read_image(tmp_path / "colour.png", 1)), expected
    )


# --- several images ----------------------------------------------------------------------------


def test_a_list_of_mixed_sizes_gives_a_list_at_each_size():
    seg = segmenter(3)
    images = [rgb(16, 20), rgb(31, 9, seed=1), rgb(8, 45, seed=2)]
    probs = seg.predict_proba(images)
    masks = seg.predict(tuple(images))

    assert isinstance(probs, list) and isinstance(masks, list)
    assert [p.shape for p in probs] == [(3, 16, 20), (3, 31, 9), (3, 8, 45)]
    assert [m.shape for m in masks] == [(16, 20), (31, 9), (8, 45)]
    assert seg.predict([]) == []


@pytest.mark.parametrize("num_classes", [2, 3], ids=["binary", "multiclass"])
def test_batches_give_the_one_by_one_results(num_classes):
    batched = segmenter(num_classes, batch_size=4)
    one_by_one = segmenter(num_classes, batch_size=1)
    images = [rgb(12 + 3 * i, 30 - 2 * i, seed=i) for i in range(6)]  # two batches of 4 and 2

    batch_probs = batched.predict_proba(images)
    batch_masks = batched.predict(images)
    for image, probs, mask in zip(images, batch_probs, batch_masks, strict=True):
        single_probs = one_by_one.predict_proba(image)
        np.testing.assert_allclose(probs, single_probs, atol=1e-5)
        assert_same_labels(mask, one_by_one.predict(image), single_probs, batched.task)


# --- errors for people -------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [3, 1])
def test_float_image_is_a_clear_error(in_channels):
    with pytest.raises(ValueError, match=r"got float64; convert first.*astype\(np.uint8\)"):
        segmenter(in_channels=in_channels).predict(rgb(8, 8) / 255.0)


@pytest.mark.parametrize(
    ("in_channels", "shape", "message"),
    [
        (3, (8, 8, 5), "expects 3-channel images.*got 5 channels"),
        (1, (8, 8, 5), "expects 1-channel images.*got 5 channels"),
        (3, (2, 8, 8, 3), r"shape \(2, 8, 8, 3\).*as a list"),
        (3, (0, 8, 3), r"shape \(0, 8, 3\)"),
    ],
)
def test_wrong_shapes_are_clear_errors(in_channels, shape, message):
    with pytest.raises(ValueError, match=message):
        segmenter(in_channels=in_channels).predict(np.zeros(shape, np.uint8))


def test_paths_and_bad_batch_sizes_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="predict_files"):
        segmenter().predict(str(tmp_path / "image.png"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        segmenter(batch_size=0)


def test_high_bit_depth_pil_image_is_not_silently_clipped():
    image = Image.fromarray(np.full((8, 8), 4000, np.uint16))
    with pytest.raises(ValueError, match="uint16"):
        segmenter().predict(image)


# --- checkpoints -------------------------------------------------------------------------------


def write_checkpoint(path: Path, num_classes: int, in_channels: int = 3) -> Segmenter:
    """A checkpoint laid out as training writes it; returns the Segmenter it was made from."""
    original = segmenter(num_classes, in_channels, seed=5)
    payload = checkpoint_payload(
        original.model, original.task, original.class_names, original.preprocessing
    )
    save_checkpoint(payload, path)
    return original


@pytest.mark.parametrize(
    ("num_classes", "in_channels"), [(2, 3), (4, 1)], ids=["binary-rgb", "multiclass-grey"]
)
def test_from_checkpoint_round_trips(tmp_path, num_classes, in_channels):
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    original = write_checkpoint(path, num_classes, in_channels)
    loaded = Segmenter.from_checkpoint(path, device="cpu", batch_size=2)

    assert loaded.task == original.task
    assert loaded.class_names == original.class_names
    assert loaded.preprocessing == original.preprocessing
    assert loaded.batch_size == 2
    original.batch_size = 2  # a different batch may round differently
    images = [rgb(19, 23, seed=s) for s in range(3)]
    for a, b in zip(loaded.predict_proba(images), original.predict_proba(images), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(images[0]), original.predict(images[0]))


def test_load_checkpoint_explains_what_to_pass(tmp_path):
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt could not be read as a checkpoint"):
        load_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=r"not a unetkit checkpoint.*checkpoints/best.pt"):
        load_checkpoint(foreign)

    run = tmp_path / "run"
    write_checkpoint(run / "checkpoints" / "best.pt", 2)
    best = str(run / "checkpoints" / "best.pt")
    with pytest.raises(FileNotFoundError, match=f"did you mean {best}"):
        load_checkpoint(run)
    with pytest.raises(FileNotFoundError, match=f"did you mean {best}"):
        Segmenter.from_checkpoint(run, device="cpu")


# --- palette and overlays ----------------------------------------------------------------------


def test_palette_colours_are_distinct_with_a_black_background():
    for count in (2, 16, 40):
        palette = class_palette(count)
        assert palette.shape == (count, 3) and palette.dtype == np.uint8
        assert len({tuple(c) for c in palette}) == count
        assert tuple(palette[0]) == (0, 0, 0)
    np.testing.assert_array_equal(class_palette(40)[:16], class_palette(16))


def test_colourise_paints_classes_and_ignore_white():
    mask = np.array([[0, 1, 2], [IGNORE_INDEX, 2, 0]], np.uint8)
    picture = colourise(mask, 3)
    palette = class_palette(3)
    assert picture.shape == (2, 3, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[0], palette[[0, 1, 2]])
    np.testing.assert_array_equal(picture[1, 0], [255, 255, 255])


@pytest.mark.parametrize("channels", [3, 1])
def test_overlay_tints_classes_and_leaves_background_alone(channels):
    image = rgb(6, 7, seed=4)[..., :channels]
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 1
    mask[4, :] = 2
    tinted = overlay(image, mask, 3, alpha=0.5)

    rgb_image = np.repeat(image, 3 // channels, axis=2).astype(np.float64)
    background = mask == 0
    np.testing.assert_array_equal(tinted[background], rgb_image[background])
    for label in (1, 2):
        expected = 0.5 * rgb_image[mask == label] + 0.5 * class_palette(3)[label]
        np.testing.assert_allclose(tinted[mask == label], expected, atol=0.5 + 1e-9)


# --- files on disk -----------------------------------------------------------------------------


def test_collect_inputs_from_a_file_a_folder_and_a_glob(tmp_path):
    first = save_rgb(tmp_path / "in" / "a.png", 8, 8)
    deep = save_rgb(tmp_path / "in" / "sub" / "deeper" / "b.JPG", 8, 8)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    save_rgb(tmp_path / "in" / ".hidden.png", 8, 8)
    save_rgb(tmp_path / "in" / ".ipynb_checkpoints" / "a-checkpoint.png", 8, 8)

    assert collect_inputs(str(first)) == [first]
    assert collect_inputs(tmp_path / "in") == [first, deep]
    assert collect_inputs(str(tmp_path / "in" / "**" / "*.JPG")) == [deep]
    assert collect_inputs(str(tmp_path / "in" / "*.png")) == [first]


def test_collect_inputs_names_what_it_could_not_find(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    pattern = str(tmp_path / "nowhere" / "*.png")
    with pytest.raises(FileNotFoundError, match="no images found at .*nowhere.*png"):
        collect_inputs(pattern)
    with pytest.raises(FileNotFoundError, match="no images found at .*empty"):
        collect_inputs(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="missing.png' does not exist"):
        collect_inputs(str(tmp_path / "missing.png"))


def test_output_paths_mirror_folders_and_never_collide():
    assert output_paths([Path("in/a/x.png")]) == [Path("x.png")]
    assert output_paths([Path("in/a/x.png"), Path("in/b/x.jpg"), Path("in/y.png")]) == [
        Path("a/x.png"),
        Path("b/x.png"),
        Path("y.png"),
    ]
    assert output_paths([Path("in/x.png"), Path("in/X.jpg"), Path("in/z.png")]) == [
        Path("x.png.png"),
        Path("X.jpg.png"),
        Path("z.png"),
    ]
    with_overlay = [Path("in/x.png"), Path("in/x_overlay.png")]
    assert output_paths(with_overlay) == [Path("x.png"), Path("x_overlay.png")]
    assert output_paths(with_overlay, with_overlays=True) == [
        Path("x.png.png"),
        Path("x_overlay.png.png"),
    ]


def test_predict_files_mirrors_sub_folders_and_skips_broken_files(tmp_path):
    seg = segmenter(3, batch_size=2)
    inputs = [
        save_rgb(tmp_path / "in" / "a" / "x.png", 20, 30, seed=1),
        save_rgb(tmp_path / "in" / "b" / "x.jpg", 25, 14, seed=2),
        save_rgb(tmp_path / "in" / "b" / "x.png", 11, 12, seed=3),
        save_rgb(tmp_path / "in" / "top.bmp", 9, 40, seed=4),
    ]
    (tmp_path / "in" / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"

    report = predict_files(
        seg, collect_inputs(tmp_path / "in"), out, save_overlay=True, progress=False
    )

    expected = [out / "a" / "x.png", out / "b" / "x.jpg.png", out / "b" / "x.png.png"]
    expected.append(out / "top.png")
    assert sorted(report.written) == sorted(expected)
    assert [p.name for p, _ in report.skipped] == ["broken.png"]
    for source, target in zip(inputs, expected, strict=True):
        written = np.asarray(Image.open(target))
        np.testing.assert_array_equal(written, seg.predict(read_image(source)))
        overlay_file = target.with_name(f"{target.stem}_overlay.png")
        assert np.asarray(Image.open(overlay_file)).shape == (*written.shape, 3)
    assert not (out / "a" / "broken.png").exists()


def test_predict_files_writes_one_file_flat(tmp_path):
    source = save_rgb(tmp_path / "in" / "deep" / "photo.jpg", 13, 17)
    report = predict_files(segmenter(2), [source], tmp_path / "out", progress=False)
    assert report.written == [tmp_path / "out" / "photo.png"]
    assert np.asarray(Image.open(report.written[0])).shape == (13, 17)
    assert not list((tmp_path / "out").glob("*_overlay.png"))


def test_load_checkpoint_on_a_folder_without_checkpoints_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is a folder; pass a checkpoint file"):
        load_checkpoint(tmp_path)


def test_a_one_number_image_size_means_a_square():
    prep = Preprocessing([128], (0.5,), (0.5,), 1)
    assert prep.img_size == (128, 128)
    assert Preprocessing(96, (0.5,), (0.5,), 1).img_size == (96, 96)
    with pytest.raises(ValueError, match="img_size"):
        Preprocessing([1, 2, 3], (0.5,), (0.5,), 1)


def test_inference_config_is_checked_once_and_recorded_as_json():
    import json

    from unetkit.inference.options import InferenceConfig
    from unetkit.inference.postprocess import PostProcessing

    config = InferenceConfig(mode="sliding", window_size=24, tta=True,
                             postprocess=PostProcessing(min_size=5, classes=(1,)))  # fmt: skip
    assert config.window_size == (24, 24)
    assert config.segmenter_options()["window_size"] == (24, 24)
    record = json.loads(json.dumps(config.to_dict()))
    assert record["window_size"] == [24, 24] and record["postprocess"]["classes"] == [1]
    assert InferenceConfig.from_dict(record) == config  # what a checkpoint or export reads
    assert record["tta_flips"] == [[], [-1], [-2], [-2, -1]]  # all four unless told
    older = {"mode": "sliding", "tile_size": [24, 24], "tta": True}  # the window's former name
    assert InferenceConfig.from_dict(older).window_size == (24, 24)
    assert InferenceConfig.from_dict(older).tta_flips == ((), (-1,), (-2,), (-2, -1))  # as run
    left_right = InferenceConfig.from_dict({**record, "tta_flips": [[], [-1]]})
    assert left_right.tta_flips == ((), (-1,))
    with pytest.raises(ValueError, match="best.pt records an inference config .*'tiles'"):
        InferenceConfig.from_dict({"mode": "tiles"}, "best.pt")
    for bad, message in [({"mode": "tiles"}, "mode must be one of"),
                         ({"window_size": (8,)}, r"got \(8,\)"),
                         ({"overlap": 1.0}, "overlap is a fraction"),
                         ({"precision": "int8"}, "precision is one of"),
                         ({"channels_last": "yes"}, "channels_last is True, False"),
                         ({"tta_flips": [[-2]]}, "tta_flips is a list of flips")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            InferenceConfig(**bad)
