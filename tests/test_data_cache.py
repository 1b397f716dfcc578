"""The sample cache: same pixels as decoding afresh, reused across runs, invalidated by edits."""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from unetkit.config import load_config
from unetkit.data import build_splits
from unetkit.data.cache import CachedSource
from unetkit.data.dataset import build_datasets
from unetkit.data.preprocess import resize_image


def _folder(root, count=4, size=(40, 60)):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "images" / f"s{i}.png"
        )
        mask = rng.integers(0, 3, size, dtype=np.uint8)
        mask[0, :5] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")


def _splits(root):
    cfg = load_config(
        overrides={"data.dataset": "folder", "data.root": str(root), "task.num_classes": 3}
    )
    return build_splits(cfg).train


def test_cached_equals_fresh_decode_and_is_reused(tmp_path):
    _folder(tmp_path / "data")
    source = _splits(tmp_path / "data")
    cached = CachedSource(source, (20, 30), tmp_path / "cache")
    image, mask = source.load(0)
    first = cached.load(0)
    np.testing.assert_array_equal(first[0], resize_image(image, (20, 30)))
    np.testing.assert_array_equal(
        first[1], cv2.resize(mask, (30, 20), interpolation=cv2.INTER_NEAREST)
    )
    assert set(np.unique(first[1])) <= {0, 1, 2, 255}
    entries = list((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 1
    again = CachedSource(source, (20, 30), tmp_path / "cache").load(0)  # a later run
    np.testing.assert_array_equal(again[0], first[0])
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1


def test_editing_a_file_or_the_size_makes_a_new_entry(tmp_path):
    _folder(tmp_path / "data")
    source = _splits(tmp_path / "data")
    cached = CachedSource(source, (20, 30), tmp_path / "cache")
    before = cached.load(0)[0]
    path = source.files(0)[0]
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    after = cached.load(0)[0]
    assert after.max() == 0 and before.max() > 0
    CachedSource(source, (10, 10), tmp_path / "cache").load(0)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3


def test_config_switch_wraps_file_sources_only(tmp_path):
    _folder(tmp_path / "data", count=6)
    cfg = load_config(
        overrides={
            "data.dataset": "folder",
            "data.root": str(tmp_path / "data"),
            "data.cache": True,
            "data.cache_dir": str(tmp_path / "c"),
            "data.img_size": [16, 16],
        }
    )
    datasets = build_datasets(build_splits(cfg), cfg)
    assert isinstance(datasets["train"].source, CachedSource)
    image, mask = datasets["val"][0]
    assert tuple(image.shape) == (3, 16, 16) and tuple(mask.shape) == (16, 16)
    synthetic = load_config(overrides={"data.cache": True, "data.synthetic_count": 6})
    assert not isinstance(
        build_datasets(build_splits(synthetic), synthetic)["train"].source, CachedSource
    )
