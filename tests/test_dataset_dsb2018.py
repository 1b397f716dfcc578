"""DSB 2018 nuclei: a tiny replica of the stage1_train layout built here (union mask, instance
map, both root forms, every error), then the real subset under /work/shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import data_config as _config
from dataset_helpers import random_rgb as _rgb
from dataset_helpers import save_image as _save
from PIL import Image

from unetkit.data.checks import check_splits
from unetkit.data.datasets.dsb2018 import NucleiSource
from unetkit.data.registry import build_contents, build_splits, list_datasets
from unetkit.data.sources import DataError, UnreadableFileError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZE = (12, 10)  # H, W
# Per mask file (named so that sorted order differs from the order written): rows, columns.
NUCLEI = {
    "c_first.png": (slice(0, 4), slice(0, 4)),
    "d_second.png": (slice(6, 10), slice(5, 9)),
    "e_third.png": (slice(2, 6), slice(2, 6)),  # overlaps the first at rows 2-3, columns 2-3
}
IDS = ["id_a", "id_b", "id_c", "id_d", "id_e"]


def _nucleus(where: tuple[slice, slice], size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[where] = 255
    return mask


def _make_sample(folder: Path, seed: int) -> Path:
    """``folder/images/<id>.png`` (RGBA) and one 0/255 mask per nucleus in ``folder/masks/``."""
    rgba = np.dstack([_rgb(seed, SIZE), np.full(SIZE, 255, np.uint8)])
    _save(folder / "images" / f"{folder.name}.png", rgba)
    for file_name, where in reversed(NUCLEI.items()):
        _save(folder / "masks" / file_name, _nucleus(where))
    return folder


def _make_dsb(root: Path) -> Path:
    """``root/stage1_train/<id>/...`` for every id of IDS, plus a stray README and hidden folder."""
    for seed, name in enumerate(IDS):
        _make_sample(root / "stage1_train" / name, seed)
    (root / "stage1_train" / ".ipynb_checkpoints").mkdir()
    (root / "README.md").write_text("not a sample")
    return root


def _source(root: Path, **data) -> NucleiSource:
    source = build_contents(_config("dsb2018", root, **data)).source
    assert isinstance(source, NucleiSource)
    return source


def _expected_union() -> np.ndarray:
    union = np.zeros(SIZE, dtype=np.uint8)
    for where in NUCLEI.values():
        union[where] = 1
    return union


def test_dsb2018_is_registered_and_listed(capsys):
    from unetkit.cli.commands import list_things

    assert "dsb2018" in list_datasets()
    list_things(None)
    assert "dsb2018" in capsys.readouterr().out


def test_mask_is_the_union_and_the_image_drops_alpha(tmp_path):
    root = _make_dsb(tmp_path)
    contents = build_contents(_config("dsb2018", root))
    assert contents.class_names == ["background", "nucleus"]
    assert contents.source.names == IDS
    image, mask = contents.source.load(1)
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, _rgb(1, SIZE))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, _expected_union())
    grey, _ = _source(root, in_channels=1).load(1)
    assert grey.shape == (*SIZE, 1)


def test_instances_number_the_masks_in_file_order_and_overlaps_keep_the_first(tmp_path):
    source = _source(_make_dsb(tmp_path))
    labels = source.instances(0)
    assert labels.dtype == np.int32 and labels.shape == SIZE
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    first, second, third = NUCLEI.values()
    assert (labels[first] == 1).all()  # the overlap (rows 2-3, columns 2-3) stays object 1
    assert (labels[second] == 2).all()
    assert labels[4:6, 2:6].tolist() == [[3] * 4] * 2 and labels[2, 5] == 3
    np.testing.assert_array_equal(labels > 0, source.load(0)[1] == 1)
    assert source.files(0)[1:] == [source.samples[0].image.parents[1] / "masks" / n for n in NUCLEI]


def test_root_may_be_the_stage1_train_folder_itself(tmp_path):
    root = _make_dsb(tmp_path)
    direct = _source(root / "stage1_train")
    assert direct.names == _source(root).names == IDS
    np.testing.assert_array_equal(direct.load(2)[1], _expected_union())


def test_split_is_by_seeded_ratios_over_the_ids(tmp_path):
    cfg = _config("dsb2018", _make_dsb(tmp_path), split_seed=3)
    splits = build_splits(cfg)
    names = splits.train.names + splits.val.names + splits.test.names
    assert sorted(names) == IDS and min(len(s) for s in splits.named().values()) == 1
    assert build_splits(cfg).split_record == splits.split_record


def test_fingerprint_changes_when_any_mask_changes(tmp_path):
    source = _source(_make_dsb(tmp_path))
    before = source.fingerprint(0)
    mask = source.files(0)[-1]
    _save(mask, _nucleus((slice(0, 1), slice(0, 1))))
    os.utime(mask, ns=(1, 1))  # a new mtime even on a coarse-clock file system
    assert source.fingerprint(0) != before


def test_id_folder_without_images_is_named(tmp_path):
    root = _make_dsb(tmp_path)
    (root / "stage1_train" / "id_x" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match=r"id_x has no images/ folder \(it holds \['masks'\]\)"):
        build_contents(_config("dsb2018", root))


@pytest.mark.parametrize("masks_folder", [True, False])
def test_id_folder_without_masks_is_named(tmp_path, masks_folder):
    root = _make_dsb(tmp_path)
    folder = root / "stage1_train" / "id_x"
    _save(folder / "images" / "id_x.png", _rgb(0, SIZE))
    if masks_folder:
        (folder / "masks").mkdir()
    with pytest.raises(DataError, match="id_x has no nucleus mask") as error:
        build_contents(_config("dsb2018", root))
    assert "stage1_test" in str(error.value)  # the fix says why such folders exist


def test_images_folder_with_two_images_and_no_id_png_is_named(tmp_path):
    root = _make_dsb(tmp_path)
    images = root / "stage1_train" / "id_a" / "images"
    (images / "id_a.png").rename(images / "one.png")
    _save(images / "two.png", _rgb(0, SIZE))
    with pytest.raises(DataError, match=r"holds 2 images .* and no id_a\.png"):
        build_contents(_config("dsb2018", root))
    (images / "two.png").unlink()
    assert _source(root).samples[0].image == images / "one.png"  # its one image is used


def test_mask_of_another_size_is_named_with_both_sizes(tmp_path):
    root = _make_dsb(tmp_path)
    odd = _save(root / "stage1_train" / "id_b" / "masks" / "z.png", np.zeros((8, 10), np.uint8))
    source = _source(root)
    message = rf"{odd} is 8 x 10 \(H x W\) but its image .*id_b\.png is 12 x 10"
    for read in (source.load, source.instances):
        with pytest.raises(DataError, match=message):
            read(1)
    problems = check_splits(build_splits(_config("dsb2018", root)))
    assert [p.message for p in problems if str(odd) in p.message]  # the data check lists it


def test_mask_that_is_not_binary_is_named(tmp_path):
    root = _make_dsb(tmp_path)
    _save(
        root / "stage1_train" / "id_c" / "masks" / "z.png",
        _nucleus(NUCLEI["c_first.png"]) // 255 * 7,
    )
    with pytest.raises(DataError, match=r"z\.png holds the values \[0, 7\]"):
        _source(root).load(2)


@pytest.mark.parametrize("which", ["image", "mask"])
def test_unreadable_files_are_named(tmp_path, which):
    root = _make_dsb(tmp_path)
    source = _source(root)
    broken = source.files(3)[0 if which == "image" else 2]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UnreadableFileError, match=str(broken)):
        source.load(3)


def test_empty_root_and_modes_are_errors(tmp_path):
    with pytest.raises(DataError, match="holds no id folder; expected layout"):
        build_contents(_config("dsb2018", tmp_path))
    with pytest.raises(DataError, match="not a mode of dsb2018"):
        build_contents(_config("dsb2018", _make_dsb(tmp_path / "d"), mode="instances"))


# --- the real copy -----------------------------------------------------------------------------


def test_real_dsb2018_subset():
    root = SHARED_DATA / "dsb2018_nuclei_subset"
    if not root.is_dir():
        pytest.skip(f"{root} is not available")
    splits = build_splits(_config("dsb2018", root))
    assert splits.class_names == ["background", "nucleus"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 111
    source = splits.test
    assert isinstance(source, NucleiSource)
    image, mask = source.load(0)
    union = np.zeros(mask.shape, dtype=bool)
    for path in source.files(0)[1:]:
        with Image.open(path) as nucleus:
            union |= np.asarray(nucleus.convert("L")) > 0
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[:2] == mask.shape
    np.testing.assert_array_equal(mask, union.astype(np.uint8))
    labels = source.instances(0)
    assert labels.max() == len(source.files(0)) - 1  # every nucleus keeps some pixels
    np.testing.assert_array_equal(labels > 0, union)


def test_tile_size_tiles_train_and_val_of_dsb2018(tmp_path):
    cfg = _config("dsb2018", _make_dsb(tmp_path), tile_size=8)  # 12 x 10: tiles at y 0/4, x 0/2
    splits = build_splits(cfg)
    assert all(n.rsplit("@", 1)[1] in {"0,0", "0,2", "4,0", "4,2"} for n in splits.train.names)
    assert splits.test.names == build_splits(_config("dsb2018", cfg.data.root)).test.names
    image, mask = splits.train.load(3)  # the bottom-right tile of the first training image
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(mask, _expected_union()[4:12, 2:10])


def test_evaluation_scores_the_labelled_nuclei_not_the_touching_components(tmp_path):
    """The first and third nucleus overlap: one connected component of the union, two objects."""
    from test_inference import segmenter

    from unetkit.config import EvalConfig
    from unetkit.evaluation.evaluate import evaluate_source

    source = _source(_make_dsb(tmp_path))
    options = EvalConfig(boundary=False, report=False)
    instance = evaluate_source(segmenter(2), source, options=options, progress=False).metrics[
        "instance"
    ]
    assert instance["ground_truth"] == "labelled objects"
    assert instance["per_class"][0]["gt_instances"] == len(IDS) * len(NUCLEI)  # 3 each, not 2
