"""Synthetic data, splits and the registry: determinism, sizes, classes, split records."""

from __future__ import annotations

import time

import numpy as np
import pytest

from unetkit.config import Config
from unetkit.data.contents import resolve_class_names
from unetkit.data.datasets.common import check_mode
from unetkit.data.datasets.folder import _complete_official_split
from unetkit.data.datasets.synthetic import SyntheticSource, synthetic_class_names
from unetkit.data.registry import build_splits, list_datasets
from unetkit.data.sources import DataError
from unetkit.data.splits import (
    apply_split_record,
    hold_out,
    load_split_record,
    pool_share,
    read_name_list,
    save_split_record,
    split_by_ratios,
    split_from_list_files,
    validate_split_record,
)

# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_index():
    first = SyntheticSource(6, (48, 40), num_classes=4, seed=3)
    again = SyntheticSource(6, (48, 40), num_classes=4, seed=3)
    other_seed = SyntheticSource(6, (48, 40), num_classes=4, seed=4)
    for index in range(6):
        image, mask = first.load(index)
        image_again, mask_again = again.load(index)
        np.testing.assert_array_equal(image, image_again)
        np.testing.assert_array_equal(mask, mask_again)
        assert not np.array_equal(image, other_seed.load(index)[0])
    assert not np.array_equal(first.load(0)[0], first.load(1)[0])
    assert not np.array_equal(first.load(0)[1], first.load(1)[1])


@pytest.mark.parametrize("in_channels", [1, 3])
def test_synthetic_any_size_and_channels(in_channels):
    source = SyntheticSource(3, (37, 53), num_classes=5, in_channels=in_channels)
    image, mask = source.load(2)
    assert image.shape == (37, 53, in_channels)
    assert mask.shape == (37, 53)
    assert image.dtype == np.uint8 and mask.dtype == np.uint8
    assert image.std() > 10  # textured, not flat


def test_synthetic_multiclass_shows_every_class_over_a_few_samples():
    source = SyntheticSource(8, (96, 96), num_classes=6, seed=0)
    seen = set()
    for index in range(len(source)):
        seen |= set(np.unique(source.load(index)[1]).tolist())
    assert seen == set(range(6))


def test_synthetic_binary_masks_are_zero_one_with_both_present():
    source = SyntheticSource(5, (64, 64), num_classes=2, seed=1)
    for index in range(len(source)):
        mask = source.load(index)[1]
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert 0.02 < mask.mean() < 0.7


def test_synthetic_classes_have_distinct_mean_colours():
    source = SyntheticSource(8, (64, 64), num_classes=4, seed=0)
    pixels = {c: [] for c in range(4)}
    for index in range(len(source)):
        image, mask = source.load(index)
        for c in range(4):
            pixels[c].append(image[mask == c].astype(float))
    means = np.array([np.concatenate(pixels[c]).mean(axis=0) for c in range(4)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=2)
    assert distances[~np.eye(4, dtype=bool)].min() > 40


def test_synthetic_is_fast():
    source = SyntheticSource(20, (128, 128), num_classes=4)
    source.load(0)
    start = time.process_time()  # CPU time: other processes on a busy machine do not count
    for index in range(20):
        source.load(index)
    per_image = (time.process_time() - start) / 20
    assert per_image < 0.02  # about 2-3 ms on an idle core


def test_synthetic_subset_keeps_sample_identity():
    source = SyntheticSource(6, (32, 32), num_classes=3, seed=2)
    picked = source.subset([source.names[4], source.names[1]])
    assert picked.names == [source.names[4], source.names[1]]
    np.testing.assert_array_equal(picked.load(0)[0], source.load(4)[0])
    with pytest.raises(DataError, match="synthetic_00099"):
        source.subset(["synthetic_00099"])


def test_synthetic_class_names_and_bad_arguments():
    assert synthetic_class_names(2) == ["background", "foreground"]
    assert synthetic_class_names(4) == ["background", "ellipse", "box", "triangle"]
    assert synthetic_class_names(10)[8:] == ["ellipse_2", "box_2"]
    with pytest.raises(DataError, match="num_classes"):
        SyntheticSource(3, (32, 32), num_classes=1)
    with pytest.raises(DataError, match="in_channels"):
        SyntheticSource(3, (32, 32), in_channels=2)


# --- splits -------------------------------------------------------------------------------------


def _names(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


def test_split_by_ratios_is_deterministic_disjoint_and_sized():
    names = _names(100)
    record = split_by_ratios(names, (0.7, 0.1, 0.2), seed=5)
    assert record == split_by_ratios(list(reversed(names)), (0.7, 0.1, 0.2), seed=5)
    assert record != split_by_ratios(names, (0.7, 0.1, 0.2), seed=6)
    assert [len(record[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(record["train"] + record["val"] + record["test"]) == names


def test_split_by_ratios_gives_every_split_a_sample_or_fails():
    record = split_by_ratios(_names(3))
    assert [len(record[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    record = split_by_ratios(_names(7), (0.8, 0.1, 0.1))
    assert all(len(record[k]) >= 1 for k in record) and sum(map(len, record.values())) == 7
    with pytest.raises(DataError, match="at least 3 samples"):
        split_by_ratios(_names(2))
    with pytest.raises(DataError, match="three positive numbers"):
        split_by_ratios(_names(10), (0.8, 0.2))


def test_read_name_list_takes_first_token(tmp_path):
    path = tmp_path / "trainval.txt"
    path.write_text("# comment\nAbyssinian_1 1 1 1\n\n  Bengal_2.jpg  2 1 2\nplain\n")
    assert read_name_list(path) == ["Abyssinian_1", "Bengal_2", "plain"]
    with pytest.raises(DataError, match="missing.txt"):
        read_name_list(tmp_path / "missing.txt")


def test_split_from_list_files_carves_val_and_takes_rest_as_test(tmp_path):
    names = _names(20)
    (tmp_path / "train.txt").write_text("\n".join(names[:10]))
    record = split_from_list_files(names, tmp_path / "train.txt", ratios=(0.8, 0.2, 0.2), seed=0)
    assert len(record["val"]) == 2 and len(record["train"]) == 8
    assert set(record["train"] + record["val"]) == set(names[:10])
    assert record["test"] == names[10:]
    (tmp_path / "test.txt").write_text("\n".join(names[15:]))
    (tmp_path / "val.txt").write_text("\n".join(names[10:12]))
    record = split_from_list_files(
        names, tmp_path / "train.txt", tmp_path / "val.txt", tmp_path / "test.txt"
    )
    assert record == {"train": names[:10], "val": names[10:12], "test": names[15:]}


def test_split_record_round_trip_and_reuse(tmp_path):
    source = SyntheticSource(10, (16, 16), num_classes=3)
    record = split_by_ratios(source.names, seed=1)
    save_split_record(record, tmp_path / "split.json")
    loaded = load_split_record(tmp_path / "split.json")
    assert loaded == record
    sources = apply_split_record(source, loaded)
    assert sources["test"].names == record["test"]
    with pytest.raises(DataError, match="both train and test"):
        validate_split_record({"train": ["a", "b"], "val": ["c"], "test": ["b"]})
    with pytest.raises(DataError, match="train, val and test"):
        validate_split_record({"train": ["a"], "test": ["b"]})


# --- registry -----------------------------------------------------------------------------------


def test_build_splits_default_is_synthetic_four_classes():
    cfg = Config()
    cfg.data.synthetic_count = 20
    splits = build_splits(cfg)
    assert splits.class_names == ["background", "ellipse", "box", "triangle"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 2, 4)
    assert splits.split_record["test"] == splits.test.names
    image, mask = splits.train.load(0)
    assert image.shape == (96, 96, 3) and mask.max() <= 3


def test_build_splits_reuses_a_saved_record():
    cfg = Config()
    cfg.data.synthetic_count = 12
    cfg.task.num_classes = 2
    first = build_splits(cfg)
    assert first.class_names == ["background", "foreground"]
    cfg.data.split_seed = 99  # a new seed must not matter when the record is given
    again = build_splits(cfg, split_record=first.split_record)
    assert again.test.names == first.test.names
    assert again.split_record == first.split_record


def test_build_splits_unknown_dataset_lists_known_ones():
    cfg = Config()
    cfg.data.dataset = "imagenet"
    with pytest.raises(DataError, match="synthetic") as info:
        build_splits(cfg)
    assert "imagenet" in str(info.value)
    assert {"folder", "synthetic"} <= set(list_datasets())


def test_resolve_class_names_rules():
    cfg = Config()
    assert resolve_class_names(cfg.task, detected_num_classes=3) == [
        "background",
        "class_1",
        "class_2",
    ]
    assert resolve_class_names(cfg.task, dataset_names=["bg", "cell"]) == ["bg", "cell"]
    cfg.task.num_classes = 5
    with pytest.raises(DataError, match="5 classes but classes.txt says 3"):
        resolve_class_names(
            cfg.task, dataset_names=["a", "b", "c"], dataset_names_from="classes.txt"
        )
    cfg.task.num_classes = None
    cfg.task.class_names = ["sky", "road"]
    assert resolve_class_names(cfg.task, detected_num_classes=7) == ["sky", "road"]
    with pytest.raises(DataError, match="set task.num_classes"):
        resolve_class_names(Config().task)


def test_one_mode_check_names_the_dataset_the_value_and_the_accepted_modes():
    cfg = Config()
    assert check_mode(cfg, "camvid") is None
    assert check_mode(cfg, "drive", ("vessels", "second_observer"), "vessels") == "vessels"
    cfg.data.mode = "second_observer"
    assert check_mode(cfg, "drive", ("vessels", "second_observer"), "vessels") == "second_observer"
    cfg.data.mode = "trimap"
    with pytest.raises(DataError) as no_modes:
        check_mode(cfg, "camvid")
    assert no_modes.value.message == (
        "data.mode 'trimap' is not a mode of camvid; modes: none (it has one task)"
    )
    assert no_modes.value.fix == "leave data.mode unset"
    with pytest.raises(DataError) as wrong:
        check_mode(cfg, "drive", ("vessels", "second_observer"), "vessels")
    assert wrong.value.message == (
        "data.mode 'trimap' is not a mode of drive; modes: vessels, second_observer "
        "(default vessels)"
    )
    assert wrong.value.fix == (
        "set data.mode to one of vessels, second_observer, or leave it unset for vessels"
    )


def test_hold_out_draws_the_same_names_as_before_for_the_same_seed():
    # Pinned outputs of the previous code (a "val" draw of split_from_name_lists relabelled):
    # folder's missing test split, Oxford Pet's 10 % and DRIVE's 15 % validation shares.
    names = [f"t{i:02d}" for i in range(20)]
    data = Config().data
    data.split_ratios, data.split_seed = [0.7, 0.1, 0.2], 3
    split = _complete_official_split({"train": names, "val": ["v0"], "test": []}, data)
    assert split["test"] == ["t08", "t12", "t16", "t18"]
    assert split["val"] == ["v0"] and split["train"] == sorted(set(names) - set(split["test"]))
    _, pet_val = hold_out([f"p{i:02d}" for i in range(30)], 0.1, seed=0)
    assert pet_val == ["p02", "p11", "p26"]
    _, drive_val = hold_out([f"d{i:02d}" for i in range(20)], 0.15, seed=0)
    assert drive_val == ["d04", "d06", "d19"]
    # 0.15 / (0.05 + 0.15) of 10 names: the share as the ratio check normalises it rounds to 8
    # where the naive quotient gives 7; pool_share keeps the old count.
    kept, held = hold_out([f"t{i:02d}" for i in range(10)], pool_share(0.05, 0.15), seed=0)
    assert kept == ["t01", "t08"] and len(held) == 8


def test_hold_out_keeps_one_and_holds_one_out_at_least():
    assert hold_out(["a", "b"], 0.01, seed=0)[1] and hold_out(["a", "b"], 0.99, seed=0)[0]
    with pytest.raises(DataError, match="cannot hold out a share of 1 sample"):
        hold_out(["a"], 0.5, seed=0, where="train folder")
    with pytest.raises(DataError, match="between 0 and 1; got 0"):
        hold_out(["a", "b"], 0, seed=0)
