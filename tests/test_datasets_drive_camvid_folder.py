"""DRIVE and CamVid builders on tiny replicas of their layouts as distributed, and the folder
dataset's other layouts (split sub-folders, MMSegmentation, mask suffixes, palette masks, RGB colour
masks with a colour map)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import data_config as _config
from dataset_helpers import random_rgb as _rgb
from dataset_helpers import save_image as _save
from PIL import Image

from unetkit.data.checks import check_splits
from unetkit.data.colour_map import read_colour_map
from unetkit.data.datasets.camvid import CLASS_NAMES as CAMVID_CLASSES
from unetkit.data.registry import build_contents, build_splits, list_datasets
from unetkit.data.sources import DataError


def _loaded(source, name: str) -> tuple[np.ndarray, np.ndarray]:
    return source.load(source.names.index(name))


def test_drive_and_camvid_are_registered():
    assert {"drive", "camvid", "folder"} <= set(list_datasets())


# --- DRIVE -----------------------------------------------------------------------------------

DRIVE_SIZE = (14, 12)  # H x W (the real images are 584 x 565)
DRIVE_TRAIN = [f"{n}_training" for n in range(21, 41)]
DRIVE_TEST = ["01_test", "02_test", "03_test"]


def _fov() -> np.ndarray:
    """A disc that leaves the four corners outside the field of view (0), inside 255."""
    ys, xs = np.mgrid[: DRIVE_SIZE[0], : DRIVE_SIZE[1]]
    inside = (ys - 6.5) ** 2 + (xs - 5.5) ** 2 <= 4.0**2
    return np.where(inside, 255, 0).astype(np.uint8)


def _vessels(seed: int) -> np.ndarray:
    """0/255 vessel annotation, with vessels on some pixels outside the FOV too."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(DRIVE_SIZE) < 0.3, 255, 0).astype(np.uint8)


def _palette_gif(values01: np.ndarray) -> Image.Image:
    """A palette image storing indices 0/1 with a black and white palette (as 2nd_manual)."""
    image = Image.fromarray(values01.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    return image


def _make_drive(root: Path, second_manual: bool = True, test_labels: bool = True) -> Path:
    """The DRIVE release layout: TIFF photos, GIF annotations and FOV masks of 0/255."""
    for part, stems in (("training", DRIVE_TRAIN), ("test", DRIVE_TEST)):
        for stem in stems:
            number = stem.split("_")[0]
            seed = int(number) + (100 if part == "test" else 0)
            _save(root / part / "images" / f"{stem}.tif", _rgb(seed, DRIVE_SIZE))
            _save(root / part / "mask" / f"{stem}_mask.gif", _fov(), optimize=False)
            if part == "training" or test_labels:
                manual = root / part / "1st_manual" / f"{number}_manual1.gif"
                _save(manual, _vessels(seed), optimize=False)
            if part == "test" and second_manual:
                second = (_vessels(seed + 1000) > 0).astype(np.uint8)
                _save(root / part / "2nd_manual" / f"{number}_manual2.gif", _palette_gif(second))
    return root


@pytest.fixture(scope="module")
def drive_root(tmp_path_factory) -> Path:
    return _make_drive(tmp_path_factory.mktemp("DRIVE"))


def test_drive_replica_files_are_what_the_release_holds(drive_root):
    with Image.open(drive_root / "training/1st_manual/21_manual1.gif") as manual:
        assert manual.format == "GIF" and set(np.unique(np.asarray(manual))) == {0, 255}
    with Image.open(drive_root / "test/2nd_manual/01_manual2.gif") as second:
        assert second.mode == "P" and set(np.unique(np.asarray(second))) == {0, 1}
    with Image.open(drive_root / "training/images/21_training.tif") as image:
        assert image.format == "TIFF" and image.mode == "RGB"


def test_drive_masks_are_vessels_inside_the_fov_and_ignore_outside(drive_root):
    splits = build_splits(_config("drive", drive_root))
    assert splits.class_names == ["background", "vessel"]
    assert splits.num_classes == 2
    name = splits.train.names[0]
    image, mask = _loaded(splits.train, name)
    seed = int(name.split("_")[0])
    np.testing.assert_array_equal(image, _rgb(seed, DRIVE_SIZE))
    expected = np.where(_fov() > 0, (_vessels(seed) > 0).astype(np.uint8), 255)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 255}
    assert mask[0, 0] == 255 and np.all(mask[_fov() > 0] != 255)
    assert check_splits(splits, progress=False) == []


def test_drive_split_is_the_official_test_folder_and_a_seeded_15_percent_val(drive_root):
    splits = build_splits(_config("drive", drive_root))
    assert splits.test.names == DRIVE_TEST
    assert len(splits.val) == 3 and len(splits.train) == 17
    assert sorted(splits.train.names + splits.val.names) == DRIVE_TRAIN
    again = build_splits(_config("drive", drive_root))
    assert again.val.names == splits.val.names
    other_seed = build_splits(_config("drive", drive_root, split_seed=1))
    assert other_seed.val.names != splits.val.names
    assert other_seed.test.names == DRIVE_TEST


def test_drive_second_observer_mode_scores_test_against_2nd_manual(drive_root):
    first = build_splits(_config("drive", drive_root))
    second = build_splits(_config("drive", drive_root, mode="second_observer"))
    assert second.train.names == first.train.names and second.test.names == DRIVE_TEST
    _, test_mask = _loaded(second.test, "01_test")
    expected = np.where(_fov() > 0, (_vessels(101 + 1000) > 0).astype(np.uint8), 255)
    np.testing.assert_array_equal(test_mask, expected)
    name = first.train.names[0]
    np.testing.assert_array_equal(_loaded(second.train, name)[1], _loaded(first.train, name)[1])
    with pytest.raises(DataError, match="observer.*modes: vessels, second_observer"):
        build_contents(_config("drive", drive_root, mode="observer"))


def test_drive_without_test_labels_splits_training_by_ratios(tmp_path):
    root = _make_drive(tmp_path, second_manual=False, test_labels=False)
    splits = build_splits(_config("drive", root))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [14, 2, 4]
    every = splits.train.names + splits.val.names + splits.test.names
    assert sorted(every) == DRIVE_TRAIN
    assert any("1st_manual" in p.where and p.severity == "warning" for p in splits.problems)
    with pytest.raises(DataError, match="2nd_manual"):
        build_contents(_config("drive", root, mode="second_observer"))


def test_drive_tiles_keep_only_patches_touching_the_fov(drive_root):
    splits = build_splits(_config("drive", drive_root, tile_size=4))
    # 14 x 12 -> rows at 0, 4, 8, 10 and columns at 0, 4, 8: 12 tiles, the 4 corners outside
    names = splits.train.names
    image = splits.train.names[0].split("@")[0]
    tiles_of_one = [n for n in names if n.startswith(image + "@")]
    assert len(tiles_of_one) == 8
    assert f"{image}@0,0" not in names and f"{image}@10,8" not in names
    assert f"{image}@4,4" in names
    assert len(names) == 17 * 8 and len(splits.val) == 3 * 8
    assert splits.test.names == DRIVE_TEST
    image_array, mask = _loaded(splits.train, f"{image}@4,0")
    assert image_array.shape == (4, 4, 3) and mask.shape == (4, 4)
    assert np.any(mask != 255)


def test_drive_bad_annotation_values_and_missing_files_name_the_file(tmp_path):
    root = _make_drive(tmp_path, second_manual=False)
    grey = np.full(DRIVE_SIZE, 128, np.uint8)
    grey[0, 0] = 0
    _save(root / "training/1st_manual/22_manual1.gif", grey, optimize=False)
    (root / "training/mask/23_training_mask.gif").unlink()
    splits = build_splits(_config("drive", root))
    assert "23_training" not in splits.train.names + splits.val.names
    missing = [p for p in splits.problems if p.where.endswith("23_training.tif")]
    assert len(missing) == 1 and missing[0].severity == "warning"
    problems = check_splits(splits, progress=False)
    bad = [p for p in problems if "22_manual1.gif" in p.message]
    assert len(bad) == 1 and "[0, 128]" in bad[0].message
    (root / "training" / "mask").rename(root / "training" / "fov")
    with pytest.raises(DataError, match=r"training/mask does not exist.*1st_manual"):
        build_contents(_config("drive", root))


# --- CamVid ----------------------------------------------------------------------------------

CAMVID_SIZE = (6, 8)
CAMVID_SPLITS = {
    "train": ["0001TP_006690", "0006R0_f02160", "Seq05VD_f00030"],
    "val": ["0016E5_07959", "0016E5_08017"],
    "test": ["0001TP_008550", "Seq05VD_f05100"],
}


def _camvid_annotation(seed: int) -> np.ndarray:
    """Class ids 0..10 with a void (11) row."""
    annotation = np.random.default_rng(seed).integers(0, 11, CAMVID_SIZE).astype(np.uint8)
    annotation[0] = 11
    return annotation


def _make_camvid(root: Path) -> Path:
    seed = 0
    for split, names in CAMVID_SPLITS.items():
        for name in names:
            _save(root / split / f"{name}.png", _rgb(seed, CAMVID_SIZE))
            _save(root / f"{split}annot" / f"{name}.png", _camvid_annotation(seed))
            seed += 1
    (root / "train.txt").write_text("/SegNet/CamVid/train/0001TP_006690.png ...\n")
    return root


def test_camvid_has_11_classes_sky_first_and_void_is_ignored(tmp_path):
    root = _make_camvid(tmp_path)
    splits = build_splits(_config("camvid", root))
    assert splits.class_names == CAMVID_CLASSES
    assert splits.num_classes == 11 and splits.class_names[0] == "Sky"
    image, mask = _loaded(splits.train, "0001TP_006690")
    np.testing.assert_array_equal(image, _rgb(0, CAMVID_SIZE))
    annotation = _camvid_annotation(0)
    np.testing.assert_array_equal(mask, np.where(annotation == 11, 255, annotation))
    assert set(np.unique(mask)) <= set(range(11)) | {255} and 255 in mask
    assert check_splits(splits, progress=False) == []


def test_camvid_splits_are_the_official_folders(tmp_path):
    splits = build_splits(_config("camvid", _make_camvid(tmp_path), split_ratios=[1, 1, 1]))
    assert {k: sorted(v) for k, v in splits.split_record.items()} == CAMVID_SPLITS


def test_camvid_sky_only_mask_stays_sky_not_binary_foreground(tmp_path):
    """Class 0 is Sky: a frame of Sky and void must not be read as a 0/255 binary mask."""
    root = _make_camvid(tmp_path)
    sky = np.zeros(CAMVID_SIZE, np.uint8)
    sky[3:] = 11
    _save(root / "testannot" / "0001TP_008550.png", sky)
    splits = build_splits(_config("camvid", root))
    _, mask = _loaded(splits.test, "0001TP_008550")
    np.testing.assert_array_equal(mask, np.where(sky == 11, 255, 0))


def test_camvid_errors_name_the_folder_and_the_contradiction(tmp_path):
    root = _make_camvid(tmp_path)
    cfg = _config("camvid", root)
    cfg.task.num_classes = 12
    with pytest.raises(DataError, match="12 classes.*CamVid's 11 classes says 11"):
        build_contents(cfg)
    (root / "valannot").rename(root / "val_labels")
    with pytest.raises(DataError, match=r"valannot does not exist.*\{train,val,test\}annot"):
        build_contents(_config("camvid", root))


# --- folder: split sub-folders and MMSegmentation --------------------------------------------

FOLDER_SIZE = (5, 6)


def _ids(seed: int, num_classes: int = 3, void: bool = True) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, num_classes, FOLDER_SIZE).astype(np.uint8)
    if void:
        ids[0, 0] = 255
    return ids


def _make_split_folders(
    root: Path,
    images: str,
    masks: str,
    splits: dict[str, list[str]],
    suffix: str = "",
    image_ext: str = ".jpg",
) -> Path:
    seed = 0
    for split, names in splits.items():
        for name in names:
            image_format = {"format": "PNG"} if image_ext == ".jpg" else {}
            _save(
                root / images / split / f"{name}{image_ext}",
                _rgb(seed, FOLDER_SIZE),
                **image_format,
            )
            _save(root / masks / split / f"{name}{suffix}.png", _ids(seed))
            seed += 1
    return root


MMSEG_SPLITS = {"train": ["a1", "a2", "a3", "a4"], "val": ["b1", "b2"], "test": ["c1"]}


def test_mmseg_layout_pairs_label_train_ids_and_keeps_the_official_split(tmp_path):
    root = _make_split_folders(tmp_path, "img_dir", "ann_dir", MMSEG_SPLITS, "_labelTrainIds")
    splits = build_splits(_config("folder", root))
    assert splits.split_record == MMSEG_SPLITS
    assert splits.class_names == ["background", "class_1", "class_2"]
    _, mask = _loaded(splits.val, "b1")
    np.testing.assert_array_equal(mask, _ids(4))
    assert mask[0, 0] == 255
    assert check_splits(splits, progress=False) == []


def test_split_folders_without_test_draw_it_from_train(tmp_path):
    names = {"training": [f"t{i}" for i in range(10)], "validation": ["v1", "v2"]}
    root = _make_split_folders(tmp_path, "img_dir", "ann_dir", names)
    (root / "img_dir" / "test").mkdir()
    _save(root / "img_dir" / "test" / "u1.jpg", _rgb(0, FOLDER_SIZE), format="PNG")
    splits = build_splits(_config("folder", root))
    record = splits.split_record
    assert record["val"] == ["v1", "v2"]
    assert len(record["test"]) == 2  # 0.2 / (0.7 + 0.2) of 10 train images
    assert sorted(record["train"] + record["test"]) == names["training"]
    assert build_splits(_config("folder", root)).split_record == record
    assert any("test images have no mask folder" in p.message for p in splits.problems)


def test_split_folders_without_val_draw_it_from_train_and_keep_test(tmp_path):
    names = {"train": [f"t{i}" for i in range(8)], "test": ["z1", "z2"]}
    root = _make_split_folders(tmp_path, "images", "masks", names, image_ext=".png")
    record = build_splits(_config("folder", root)).split_record
    assert record["test"] == ["z1", "z2"]
    assert len(record["val"]) == 1  # 0.1 / (0.7 + 0.1) of 8 train images
    assert sorted(record["train"] + record["val"]) == names["train"]


def test_images_masks_split_subfolders_with_mask_suffix(tmp_path):
    splits_in = {"train": ["x1", "x2", "x3"], "val": ["y1"], "test": ["z1"]}
    root = _make_split_folders(tmp_path, "images", "masks", splits_in, "_mask", ".png")
    splits = build_splits(_config("folder", root))
    assert splits.split_record == splits_in
    assert "x1" in splits.train.names


def test_flat_folder_with_mask_suffix_and_palette_masks_read_as_indices(tmp_path):
    for i in range(4):
        _save(tmp_path / "images" / f"cell{i}.png", _rgb(i, FOLDER_SIZE))
        indices = _ids(i, void=False)
        palette = Image.fromarray(indices, mode="P")
        palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
        _save(tmp_path / "masks" / f"cell{i}_mask.png", palette)
    splits = build_splits(_config("folder", tmp_path))
    assert sorted(splits.train.names + splits.val.names + splits.test.names) == [
        f"cell{i}" for i in range(4)
    ]
    assert splits.num_classes == 3
    source = build_contents(_config("folder", tmp_path)).source
    np.testing.assert_array_equal(_loaded(source, "cell2")[1], _ids(2, void=False))


def test_folder_without_a_known_layout_lists_the_accepted_ones(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DataError, match=r"sub-folders found: \['pictures'\].*img_dir.*ann_dir"):
        build_contents(_config("folder", tmp_path))


def test_same_name_in_two_split_folders_is_an_error(tmp_path):
    root = _make_split_folders(tmp_path, "img_dir", "ann_dir", {"train": ["a"], "val": ["a"]})
    with pytest.raises(DataError, match=r"same name 'a' \(in val and train\)"):
        build_contents(_config("folder", root))


# --- folder: RGB colour masks with a colour map ------------------------------------------------

COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 192)]  # background, building, sky
VOID_COLOUR = (255, 255, 255)


def _colour_mask(ids: np.ndarray) -> np.ndarray:
    table = np.array([*COLOURS, VOID_COLOUR], np.uint8)
    return table[np.where(ids == 255, 3, ids)]


def _make_colour_folder(root: Path) -> Path:
    for i in range(3):
        _save(root / "images" / f"f{i}.png", _rgb(i, FOLDER_SIZE))
        _save(root / "masks" / f"f{i}.png", _colour_mask(_ids(i)))
    (root / "colours.txt").write_text(
        "# R G B name\n0 0 0 background\n\n128,0,0 building\n0, 128, 192 sky\n255 255 255 Ignore\n"
    )
    return root


def test_colour_masks_become_class_ids_through_the_colour_map(tmp_path):
    root = _make_colour_folder(tmp_path)
    cfg = _config("folder", root, colour_map="colours.txt")  # relative to the root
    contents = build_contents(cfg)
    assert contents.class_names == ["background", "building", "sky"]
    for i in range(3):
        np.testing.assert_array_equal(_loaded(contents.source, f"f{i}")[1], _ids(i))
    assert check_splits(build_splits(cfg), progress=False) == []


def test_json_colour_map_and_palette_masks_through_their_palette(tmp_path):
    root = _make_colour_folder(tmp_path)
    palette = Image.fromarray(np.array([[0, 1, 2, 3]] * 2, np.uint8), mode="P")
    palette.putpalette([c for colour in [*COLOURS, VOID_COLOUR] for c in colour])
    _save(root / "masks" / "f0.png", palette)
    _save(root / "images" / "f0.png", _rgb(0, (2, 4)))
    names = {"background": [0, 0, 0], "building": [128, 0, 0], "sky": [0, 128, 192]}
    (root / "map.json").write_text(json.dumps({**names, "ignore": list(VOID_COLOUR)}))
    contents = build_contents(_config("folder", root, colour_map=str(root / "map.json")))
    assert contents.class_names == ["background", "building", "sky"]
    np.testing.assert_array_equal(_loaded(contents.source, "f0")[1], [[0, 1, 2, 255]] * 2)


def test_unknown_colour_is_a_problem_naming_the_mask_and_the_colour(tmp_path):
    root = _make_colour_folder(tmp_path)
    stray = _colour_mask(_ids(1))
    stray[2, 3] = (10, 20, 30)
    _save(root / "masks" / "f1.png", stray)
    cfg = _config("folder", root, colour_map="colours.txt", split_ratios=[1, 1, 1])
    problems = check_splits(build_splits(cfg), progress=False)
    assert len(problems) == 1
    assert "f1.png" in problems[0].message and "(10, 20, 30)" in problems[0].message


def test_colour_map_file_errors_name_the_line(tmp_path):
    bad_line = tmp_path / "a.txt"
    bad_line.write_text("0 0 0 background\n12 34 sky\n")
    with pytest.raises(DataError, match=r"a\.txt line 2"):
        read_colour_map(bad_line)
    repeated = tmp_path / "b.txt"
    repeated.write_text("0 0 0 background\n0,0,0 road\n")
    with pytest.raises(DataError, match=r"\(0, 0, 0\) is given to both 'background' and 'road'"):
        read_colour_map(repeated)
    out_of_range = tmp_path / "c.json"
    out_of_range.write_text('{"background": [0, 0, 0], "road": [0, 300, 0]}')
    with pytest.raises(DataError, match=r"'road'.*0\.\.255"):
        read_colour_map(out_of_range)
    root = _make_colour_folder(tmp_path / "root")
    (root / "classes.txt").write_text("background\nroof\nsky\n")
    with pytest.raises(DataError, match="classes.txt names the classes.*colours.txt"):
        build_contents(_config("folder", root, colour_map="colours.txt"))
