"""Oxford-IIIT Pet, ISBI 2012 and CCAgT builders on tiny replicas of their layouts, then on the
real copies under /work/shared/data when they are there; and the tiling helper they rely on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import data_config as _config
from dataset_helpers import random_rgb as _rgb
from dataset_helpers import save_image as _save
from PIL import Image

from unetkit.data.datasets.ccagt import CLASS_NAMES as CCAGT_CLASS_NAMES
from unetkit.data.registry import build_contents, build_splits, list_datasets
from unetkit.data.sources import DataError
from unetkit.data.tiles import TiledSource, image_name_of, tile_grid, tile_origins

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _stripes(values: list[int], size: tuple[int, int]) -> np.ndarray:
    """A mask whose row ``i`` holds ``values[i % len(values)]``."""
    rows = np.array([values[i % len(values)] for i in range(size[0])], dtype=np.uint8)
    return np.repeat(rows[:, None], size[1], axis=1)


def test_the_three_datasets_are_registered():
    assert {"oxford-pet", "isbi2012", "ccagt"} <= set(list_datasets())


# --- Oxford-IIIT Pet ---------------------------------------------------------------------------

PET_SIZE = (9, 7)
PET_TRAINVAL = ["Abyssinian_1", "Abyssinian_5", "Bengal_2", "american_bulldog_3"]
PET_TEST = ["Bengal_7"]
PET_UNLISTED = "Abyssinian_34"
PET_TRIMAP_ROWS = [1, 2, 3]  # pet, background, border


def _make_pet(root: Path) -> Path:
    """The publisher's layout: JPEGs (one really a palette GIF, one an RGBA PNG), trimaps, lists."""
    names = PET_TRAINVAL + PET_TEST + [PET_UNLISTED]
    for i, name in enumerate(names):
        _save(root / "annotations" / "trimaps" / f"{name}.png", _stripes(PET_TRIMAP_ROWS, PET_SIZE))
        image_path = root / "images" / f"{name}.jpg"
        if name == "Abyssinian_5":  # as in the real archive: an RGBA PNG named .jpg
            rgba = np.dstack([_rgb(i, PET_SIZE), np.full(PET_SIZE, 200, np.uint8)])
            _save(image_path, rgba, format="PNG")
        elif name == PET_UNLISTED:  # as in the real archive: a palette GIF named .jpg
            Image.fromarray(_rgb(i, PET_SIZE)).convert("P").save(image_path, format="GIF")
        else:
            _save(image_path, _rgb(i, PET_SIZE))
    (root / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    lists = {"trainval.txt": PET_TRAINVAL, "test.txt": PET_TEST}
    for file_name, listed in lists.items():
        lines = [f"{name} {i + 1} {1 + i % 2} {i + 1}" for i, name in enumerate(listed)]
        (root / "annotations" / file_name).write_text("\n".join(lines) + "\n")
    return root


def test_pet_binary_merges_border_into_the_pet(tmp_path):
    splits = build_splits(_config("oxford-pet", _make_pet(tmp_path)))
    assert splits.class_names == ["background", "pet"]
    image, mask = splits.train.subset(["Abyssinian_1"]).load(0)
    assert image.shape == (*PET_SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, _stripes([1, 0, 1], PET_SIZE))


def test_pet_trimap_puts_background_at_zero(tmp_path):
    splits = build_splits(_config("oxford-pet", _make_pet(tmp_path), mode="trimap"))
    assert splits.class_names == ["background", "pet", "border"]
    _, mask = splits.test.load(0)
    np.testing.assert_array_equal(mask, _stripes([1, 0, 2], PET_SIZE))


def test_pet_reads_palette_and_rgba_files_as_rgb(tmp_path):
    contents = build_contents(_config("oxford-pet", _make_pet(tmp_path)))
    rgba, _ = contents.source.subset(["Abyssinian_5"]).load(0)
    np.testing.assert_array_equal(rgba, _rgb(1, PET_SIZE))  # alpha dropped, colours kept
    palette, _ = contents.source.subset([PET_UNLISTED]).load(0)
    assert palette.shape == (*PET_SIZE, 3)


def test_pet_splits_follow_the_official_lists(tmp_path):
    root = _make_pet(tmp_path)
    splits = build_splits(_config("oxford-pet", root))
    assert splits.test.names == PET_TEST
    assert sorted(splits.train.names + splits.val.names) == sorted(PET_TRAINVAL)
    assert len(splits.val) == 1  # 10 % of 4, at least one
    every_split = splits.train.names + splits.val.names + splits.test.names
    assert PET_UNLISTED not in every_split
    assert "Abyssinian_100" not in build_contents(_config("oxford-pet", root)).source.names
    again = build_splits(_config("oxford-pet", root))
    assert again.split_record == splits.split_record
    vals = {
        tuple(build_splits(_config("oxford-pet", root, split_seed=s)).val.names) for s in range(8)
    }
    assert len(vals) > 1  # the seed draws the validation images


def test_pet_val_is_a_tenth_of_trainval(tmp_path):
    root = tmp_path / "pet"
    names = [f"Bengal_{i}" for i in range(30)]
    for i, name in enumerate(names):
        _save(root / "images" / f"{name}.jpg", _rgb(i, (4, 4)))
        _save(root / "annotations" / "trimaps" / f"{name}.png", _stripes([1, 2], (4, 4)))
    (root / "annotations" / "trainval.txt").write_text("\n".join(f"{n} 1 1 1" for n in names[:20]))
    (root / "annotations" / "test.txt").write_text("\n".join(f"{n} 1 1 1" for n in names[20:]))
    splits = build_splits(_config("oxford-pet", root))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 10)


def test_pet_unknown_mode_lists_the_modes(tmp_path):
    with pytest.raises(DataError, match="modes: binary, trimap"):
        build_contents(_config("oxford-pet", _make_pet(tmp_path), mode="semantic"))


def test_pet_missing_parts_are_named(tmp_path):
    root = _make_pet(tmp_path)
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt does not exist.*annotations/trimaps"):
        build_contents(_config("oxford-pet", root))
    (root / "annotations" / "test.txt").write_text("Bengal_99 1 1 1\n")
    with pytest.raises(DataError, match=r"test\.txt lists 1 sample.*Bengal_99"):
        build_contents(_config("oxford-pet", root))
    only_images = tmp_path / "only_images"
    (only_images / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"annotations/trimaps does not exist.*trainval\.txt"):
        build_contents(_config("oxford-pet", only_images))


# --- ISBI 2012 ---------------------------------------------------------------------------------

EM_SIZE = (8, 6)


def _em_slice(page: int) -> np.ndarray:
    return np.full(EM_SIZE, 10 * (page + 1), dtype=np.uint8)


def _em_labels(page: int) -> np.ndarray:
    labels = np.full(EM_SIZE, 255, dtype=np.uint8)
    labels[page, :] = 0  # one membrane row, at a different place on every slice
    return labels


def _save_stack(path: Path, pages: list[np.ndarray]) -> None:
    first, *rest = [Image.fromarray(page) for page in pages]
    first.save(path, save_all=True, append_images=rest)


def _make_isbi_tiff(root: Path, pages: int = 3, label_pages: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _save_stack(root / "train-volume.tif", [_em_slice(p) for p in range(pages)])
    labels = [_em_labels(p) for p in range(label_pages or pages)]
    _save_stack(root / "train-labels.tif", labels)
    return root


def _make_isbi_png(root: Path, count: int = 5) -> Path:
    for page in range(count):
        _save(root / "train" / "image" / f"{page}.png", _em_slice(page))
        _save(root / "train" / "label" / f"{page}.png", _em_labels(page))
    return root


def _membrane(page: int) -> np.ndarray:
    return (_em_labels(page) == 0).astype(np.uint8)


def test_isbi_tiff_pages_are_samples_with_membrane_foreground(tmp_path):
    cfg = _config("isbi2012", _make_isbi_tiff(tmp_path), in_channels=1)
    contents = build_contents(cfg)
    assert contents.class_names == ["cell_interior", "membrane"]
    assert contents.source.names == ["0", "1", "2"]
    image, mask = contents.source.subset(["2"]).load(0)
    assert image.shape == (*EM_SIZE, 1)
    np.testing.assert_array_equal(image[..., 0], _em_slice(2))
    np.testing.assert_array_equal(mask, _membrane(2))
    splits = build_splits(cfg)
    assert sorted(splits.train.names + splits.val.names + splits.test.names) == ["0", "1", "2"]
    assert min(len(splits.train), len(splits.val), len(splits.test)) == 1


def test_isbi_replicates_grey_for_three_channels(tmp_path):
    source = build_contents(_config("isbi2012", _make_isbi_tiff(tmp_path))).source
    image, _ = source.load(1)
    assert image.shape == (*EM_SIZE, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], _em_slice(1))


def test_isbi_png_folders(tmp_path):
    cfg = _config("isbi2012", _make_isbi_png(tmp_path), in_channels=1)
    splits = build_splits(cfg)
    assert splits.class_names == ["cell_interior", "membrane"]
    assert sorted(splits.train.names + splits.val.names + splits.test.names) == list("01234")
    image, mask = splits.train.load(0)
    page = int(splits.train.names[0])
    assert image.shape == (*EM_SIZE, 1)
    np.testing.assert_array_equal(mask, _membrane(page))


def test_isbi_prefers_the_tiff_stacks(tmp_path):
    root = _make_isbi_png(_make_isbi_tiff(tmp_path, pages=2), count=5)
    assert build_contents(_config("isbi2012", root)).source.names == ["0", "1"]


def test_isbi_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"slices but .* has 2"):
        build_contents(_config("isbi2012", _make_isbi_tiff(tmp_path / "a", 3, label_pages=2)))
    lone = tmp_path / "b"
    lone.mkdir()
    _save_stack(lone / "train-volume.tif", [_em_slice(0)])
    with pytest.raises(DataError, match=r"train-labels\.tif does not exist"):
        build_contents(_config("isbi2012", lone))
    empty = tmp_path / "c"
    empty.mkdir()
    with pytest.raises(DataError, match=r"train/image does not exist.*train-volume\.tif"):
        build_contents(_config("isbi2012", empty))
    with pytest.raises(DataError, match="not a mode of isbi2012; modes: binary"):
        build_contents(_config("isbi2012", _make_isbi_tiff(tmp_path / "d"), mode="trimap"))


# --- CCAgT -------------------------------------------------------------------------------------

CELL_SIZE = (40, 50)  # H, W: with 16-pixel tiles, origins y 0/16/24 and x 0/16/32/34
CELL_SLIDES = {"A": ["A_1", "A_2", "A_3", "A_4"], "B": ["B_1", "B_2", "B_3"], "C": ["C_1", "C_2"]}
CELL_NAMES = sorted(n for names in CELL_SLIDES.values() for n in names) + ["D_1"]


def _cell_mask(i: int) -> np.ndarray:
    return _stripes([0, (i % 7) + 1, 0, 7], CELL_SIZE)


def _make_ccagt(root: Path, metadata: bool = True) -> Path:
    """Slide sub-folders, semantic masks next to RGB panoptic ones (same stems), metadata json."""
    slides = {**CELL_SLIDES, "": ["D_1"]}  # D_1 directly in images/ and masks/semantic...
    for slide, names in slides.items():
        for name in names:
            i = CELL_NAMES.index(name)
            _save(root / "images" / slide / f"{name}.jpg", _rgb(i, CELL_SIZE), quality=95)
            _save(root / "masks" / "semantic_segmentation" / slide / f"{name}.png", _cell_mask(i))
            _save(
                root / "masks" / "panoptic_segmentation" / slide / f"{name}.png", _rgb(i, CELL_SIZE)
            )
    if metadata:
        categories = [{"id": i, "name": f"cell_type_{i}", "color": [i, i, i]} for i in range(1, 8)]
        (root / "CCAgT_dataset_metadata.json").write_text(json.dumps({"categories": categories}))
    return root


def test_ccagt_pairs_semantic_masks_in_sub_folders(tmp_path):
    contents = build_contents(_config("ccagt", _make_ccagt(tmp_path)))
    assert contents.class_names == ["background"] + [f"cell_type_{i}" for i in range(1, 8)]
    assert contents.source.names == CELL_NAMES
    assert contents.problems == []  # panoptic masks with the same names are not duplicates
    for name in ("A_3", "D_1"):
        image, mask = contents.source.subset([name]).load(0)
        assert image.shape == (*CELL_SIZE, 3)
        np.testing.assert_array_equal(mask, _cell_mask(CELL_NAMES.index(name)))


def test_ccagt_class_names_without_metadata(tmp_path):
    contents = build_contents(_config("ccagt", _make_ccagt(tmp_path, metadata=False)))
    assert contents.class_names == CCAGT_CLASS_NAMES and len(CCAGT_CLASS_NAMES) == 8


def test_ccagt_bad_metadata_is_named(tmp_path):
    root = _make_ccagt(tmp_path)
    categories = [{"id": 1, "name": "Nucleus"}, {"id": 3, "name": "Satellite"}]
    (root / "CCAgT_dataset_metadata.json").write_text(json.dumps({"categories": categories}))
    with pytest.raises(DataError, match=r"metadata\.json: category ids \[0, 1, 3\]"):
        build_contents(_config("ccagt", root))


def test_ccagt_whole_images_split_by_ratios(tmp_path):
    splits = build_splits(_config("ccagt", _make_ccagt(tmp_path)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 1, 2)
    assert sorted(splits.train.names + splits.val.names + splits.test.names) == CELL_NAMES


def test_ccagt_tiles_are_grouped_by_image_and_test_is_whole(tmp_path):
    root = _make_ccagt(tmp_path)
    whole = build_splits(_config("ccagt", root))
    tiled = build_splits(_config("ccagt", root, tile_size=16))
    images_of = {
        split: {image_name_of(n) for n in source.names} for split, source in tiled.named().items()
    }
    assert images_of["train"] == set(whole.train.names)
    assert images_of["val"] == set(whole.val.names)
    assert tiled.test.names == whole.test.names  # whole images, the same ones
    assert len(tiled.train) == 12 * len(whole.train) and len(tiled.val) == 12 * len(whole.val)
    assert all("@" in name for name in tiled.train.names + tiled.val.names)
    first = whole.train.names[0]
    image, mask = tiled.train.subset([f"{first}@24,34"]).load(0)  # bottom-right, on the border
    assert image.shape == (16, 16, 3)
    np.testing.assert_array_equal(mask, _cell_mask(CELL_NAMES.index(first))[24:40, 34:50])


def test_ccagt_missing_folders_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks does not exist.*masks/\*\*/<name>\.png"):
        build_contents(_config("ccagt", tmp_path))


# --- tiles -------------------------------------------------------------------------------------


def test_tile_origins_cover_the_side_with_the_last_tile_on_the_border():
    assert tile_origins(1200, 512) == [0, 512, 688]
    assert tile_origins(1600, 512) == [0, 512, 1024, 1088]
    assert tile_origins(1024, 512) == [0, 512]
    assert tile_origins(300, 512) == [0]
    assert len(tile_grid(1200, 1600, 512)) == 12
    with pytest.raises(DataError, match="tile_size"):
        tile_origins(100, 0)


def test_tiled_source_crops_and_fingerprints_each_tile(tmp_path):
    base = build_contents(_config("ccagt", _make_ccagt(tmp_path))).source.subset(["B_1", "C_2"])
    tiled = TiledSource.covering(base, 32, [CELL_SIZE, CELL_SIZE], include_whole=False)
    assert tiled.names == ["B_1@0,0", "B_1@0,18", "B_1@8,0", "B_1@8,18"] + [
        "C_2@0,0",
        "C_2@0,18",
        "C_2@8,0",
        "C_2@8,18",
    ]
    whole_image, whole_mask = base.load(0)
    image, mask = tiled.load(3)
    np.testing.assert_array_equal(image, whole_image[8:40, 18:50])
    np.testing.assert_array_equal(mask, whole_mask[8:40, 18:50])
    assert len({tiled.fingerprint(i) for i in range(len(tiled))}) == len(tiled)
    copy = pickle.loads(pickle.dumps(tiled))
    assert copy._last is None and copy.names == tiled.names


# --- the real copies ---------------------------------------------------------------------------


def _real(name: str) -> Path:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is not available")
    return root


def test_real_oxford_pet_subset():
    root = _real("oxford_pet_subset")
    for mode, values in (("binary", {0, 1}), ("trimap", {0, 1, 2})):
        splits = build_splits(_config("oxford-pet", root, mode=mode))
        assert (len(splits.train), len(splits.val), len(splits.test)) == (270, 30, 298)
        _, mask = splits.test.subset(["Abyssinian_201"]).load(0)
        assert set(np.unique(mask).tolist()) == values
    source = build_contents(_config("oxford-pet", root)).source
    for odd in ("Abyssinian_5", "Abyssinian_34"):  # an RGBA PNG and a palette GIF, named .jpg
        image, _ = source.subset([odd]).load(0)
        assert image.ndim == 3 and image.shape[2] == 3


def test_real_isbi2012_membrane():
    splits = build_splits(_config("isbi2012", _real("isbi2012_membrane"), in_channels=1))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30
    image, mask = splits.train.load(0)
    assert image.shape == (512, 512, 1)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert 0.1 < mask.mean() < 0.4  # membranes are the thin minority (about 22 % of pixels)


def test_real_ccagt_samples():
    root = _real("ccagt_samples")
    splits = build_splits(_config("ccagt", root))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 7
    assert splits.class_names[0] == "background" and len(splits.class_names) == 8
    assert splits.class_names[7] == "Leukocyte_Nucleus"
    image, mask = splits.test.load(0)
    assert image.shape == (1200, 1600, 3)
    assert mask.max() <= 7 and len(np.unique(mask)) > 2
