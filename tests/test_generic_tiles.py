"""``data.tile_size`` for every dataset: the registry splits whole images, then tiles train/val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import data_config
from dataset_helpers import random_rgb as _rgb
from dataset_helpers import save_image as _save

import unetkit.data.registry as registry
from unetkit.config import Config
from unetkit.data.datasets.synthetic import SyntheticSource
from unetkit.data.registry import DatasetSplits, build_splits
from unetkit.data.sources import DataError
from unetkit.data.splits import load_split_record, save_split_record
from unetkit.data.tiles import (
    TiledSource,
    expand_split,
    image_name_of,
    sample_size,
    tile_every_image,
)

SYNTHETIC_SIZE = [48, 40]  # H, W: 16-pixel tiles at y 0/16/32 and x 0/16/24, 9 per image
FOLDER_SIZE = (40, 50)  # H, W: 16-pixel tiles at y 0/16/24 and x 0/16/32/34, 12 per image


def _synthetic(tile_size: int | None = None) -> Config:
    cfg = Config()
    cfg.data.img_size = list(SYNTHETIC_SIZE)
    cfg.data.synthetic_count = 10
    cfg.data.tile_size = tile_size
    return cfg


def _images_by_split(splits: DatasetSplits) -> dict[str, list[str]]:
    """The images each split draws on, in order of first appearance."""
    return {
        split: list(dict.fromkeys(image_name_of(n) for n in source.names))
        for split, source in splits.named().items()
    }


def _assert_tiled_like(tiled: DatasetSplits, whole: DatasetSplits, tiles_per_image: int) -> None:
    """Same images per split; train/val all tiles (``tiles_per_image`` each), test whole images."""
    assert _images_by_split(tiled) == whole.split_record
    for split in ("train", "val"):
        names = tiled.named()[split].names
        assert all("@" in name for name in names)
        assert len(names) == tiles_per_image * len(whole.named()[split])
    assert tiled.test.names == whole.test.names
    assert tiled.split_record["test"] == whole.split_record["test"]


def test_synthetic_train_and_val_become_tiles_and_test_stays_whole():
    whole, tiled = build_splits(_synthetic()), build_splits(_synthetic(tile_size=16))
    _assert_tiled_like(tiled, whole, tiles_per_image=9)
    first = whole.train.names[0]
    image, mask = tiled.train.subset([f"{first}@32,24"]).load(0)  # bottom-right, on the border
    full_image, full_mask = whole.train.load(0)
    np.testing.assert_array_equal(image, full_image[32:48, 24:40])
    np.testing.assert_array_equal(mask, full_mask[32:48, 24:40])
    assert tiled.test.load(0)[0].shape == (*SYNTHETIC_SIZE, 3)


def _make_folder(root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        _save(root / "images" / f"{name}.png", _rgb(i, FOLDER_SIZE))
        mask = np.zeros(FOLDER_SIZE, dtype=np.uint8)
        mask[i % 10 :: 7] = 1
        _save(root / "masks" / f"{name}.png", mask)
    return root


def test_folder_dataset_tiles_train_and_val_with_the_untiled_image_split(tmp_path):
    root = _make_folder(tmp_path, [f"img_{i}" for i in range(8)])
    whole = build_splits(data_config("folder", root, split_seed=5))
    tiled = build_splits(data_config("folder", root, split_seed=5, tile_size=16))
    _assert_tiled_like(tiled, whole, tiles_per_image=12)
    assert tiled.train.load(0)[0].shape == (16, 16, 3)


def test_official_split_folders_are_expanded_the_same_way(tmp_path):
    official = {"train": ["a", "b", "c"], "val": ["d"], "test": ["e", "f"]}
    for split, names in official.items():
        _make_folder(tmp_path / "tmp" / split, names)
        for kind in ("images", "masks"):
            (tmp_path / "data" / kind).mkdir(parents=True, exist_ok=True)
            (tmp_path / "tmp" / split / kind).rename(tmp_path / "data" / kind / split)
    whole = build_splits(data_config("folder", tmp_path / "data"))
    tiled = build_splits(data_config("folder", tmp_path / "data", tile_size=16))
    assert whole.split_record == official
    _assert_tiled_like(tiled, whole, tiles_per_image=12)


def test_a_saved_tiled_split_record_re_applies_unchanged(tmp_path):
    cfg = _synthetic(tile_size=16)
    first = build_splits(cfg)
    save_split_record(first.split_record, tmp_path / "splits.json")
    record = load_split_record(tmp_path / "splits.json")
    assert any("@" in name for name in record["train"])
    cfg.data.split_seed = 99  # a saved record wins over the seed
    again = build_splits(cfg, split_record=record)
    assert again.split_record == first.split_record
    assert {s: src.names for s, src in again.named().items()} == {
        s: src.names for s, src in first.named().items()
    }
    with pytest.raises(DataError, match="not found in the dataset"):
        build_splits(_synthetic(), split_record=record)  # tile names need data.tile_size


def test_sizes_come_from_file_headers_or_from_loading(tmp_path, monkeypatch):
    root = _make_folder(tmp_path, ["a", "b", "c"])
    folder = registry.build_contents(data_config("folder", root)).source
    monkeypatch.setattr(type(folder), "load", lambda *_: pytest.fail("decoded an image"))
    assert sample_size(folder, 0) == FOLDER_SIZE
    assert sample_size(SyntheticSource(2, size=(20, 30)), 1) == (20, 30)


def test_tiles_larger_than_the_image_give_one_tile_per_image():
    tiled = tile_every_image(SyntheticSource(3, size=(20, 30)), tile_size=64)
    split = expand_split(tiled, {"train": ["synthetic_00000"], "val": [], "test": ["x"]})
    assert split == {"train": ["synthetic_00000@0,0"], "val": [], "test": ["x"]}
    assert tiled.subset(["synthetic_00000@0,0"]).load(0)[0].shape == (20, 30, 3)


def test_datasets_that_tile_themselves_are_left_alone(tmp_path, monkeypatch):
    for i, name in enumerate(["c1", "c2", "c3", "c4"]):  # a minimal CCAgT layout
        _save(tmp_path / "images" / f"{name}.jpg", _rgb(i, FOLDER_SIZE))
        _save(tmp_path / "masks" / f"{name}.png", np.full(FOLDER_SIZE, i, np.uint8))
    monkeypatch.setattr(registry, "tile_every_image", lambda *_: pytest.fail("tiled twice"))
    splits = build_splits(data_config("ccagt", tmp_path, tile_size=16))
    assert isinstance(splits.train, TiledSource)
    assert all("@" in name for name in splits.train.names)
    assert all("@" not in name for name in splits.test.names)
