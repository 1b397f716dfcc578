"""The dataset fingerprint: exact counts and shares, structure widths, subsampling and caching."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from unetkit.data.datasets.synthetic import SyntheticSource
from unetkit.data.sources import SampleSource
from unetkit.planning.fingerprint import (
    ClassProfile,
    DatasetFingerprint,
    SizeStats,
    fingerprint_source,
    profiled_indices,
    structure_shape,
)

NAMES = ["background", "thing"]


class ArraySource(SampleSource):
    """Hand-made masks (images are blank), counting how often a sample is loaded."""

    def __init__(self, masks: list[np.ndarray], channels: int = 3) -> None:
        self.masks = masks
        self.in_channels = channels
        self.loads = 0

    @property
    def names(self) -> list[str]:
        return [f"s{i}" for i in range(len(self.masks))]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.loads += 1
        mask = self.masks[index]
        return np.zeros((*mask.shape, self.in_channels), np.uint8), mask

    def describe(self, index: int) -> str:
        return f"array {index}"

    def fingerprint(self, index: int) -> str:
        return hashlib.sha1(self.masks[index].tobytes()).hexdigest()

    def _select(self, positions: list[int]) -> ArraySource:
        return ArraySource([self.masks[p] for p in positions], self.in_channels)


def _profile(masks, tmp_path, names=NAMES, **kwargs) -> DatasetFingerprint:
    return fingerprint_source(ArraySource(masks), names, cache_dir=tmp_path, **kwargs)


def _disc(diameter: int, size: int = 100) -> np.ndarray:
    """A disc ``diameter`` pixels across, centred between pixels."""
    y, x = np.mgrid[:size, :size] - size / 2 + 0.5
    return (np.hypot(x, y) < diameter / 2).astype(np.uint8)


def _line(width: int, size: int = 120) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[50 : 50 + width, 10:110] = 1
    return mask


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
def test_line_width_is_w_for_even_and_w_plus_one_for_odd_widths(width, tmp_path):
    profile = _profile([_line(width)], tmp_path).classes[1]
    expected = width + width % 2
    assert profile.thickness_px == pytest.approx(expected)
    assert profile.thin_px == pytest.approx(expected)


def test_line_of_width_4_and_disc_of_diameter_40(tmp_path):
    line = _profile([_line(4)], tmp_path).classes[1]
    disc = _profile([_disc(40)], tmp_path).classes[1]
    assert line.thickness_px == pytest.approx(4, rel=0.15)
    assert disc.thickness_px == pytest.approx(40, rel=0.15)
    assert disc.thickness_px == pytest.approx(40 - 1, abs=0.5)  # documented: about d - 1
    assert disc.object_area_px == _disc(40).sum()


def test_slanted_line_width_stays_within_one_pixel(tmp_path):
    y, x = np.mgrid[:200, :200] - 100.0
    angle = np.deg2rad(30)
    mask = (np.abs(x * np.sin(angle) - y * np.cos(angle)) < 2) & (np.hypot(x, y) < 80)
    profile = _profile([mask.astype(np.uint8)], tmp_path).classes[1]
    assert 4 <= profile.thickness_px <= 5


def test_edt_matches_scipy():
    rng = np.random.default_rng(0)
    region = ndimage.binary_opening(rng.random((60, 80)) < 0.7)
    widths, _ = structure_shape(region)
    distance = ndimage.distance_transform_edt(np.pad(region, 1))
    ridge = np.pad(region, 1) & (distance >= ndimage.maximum_filter(distance, size=3))
    np.testing.assert_allclose(np.sort(widths), np.sort(2 * distance[ridge]), atol=1e-4)


def test_rectangles_give_exact_areas_counts_and_shares(tmp_path):
    first = np.zeros((50, 60), np.uint8)
    first[2:7, 3:13] = 1  # 50 px
    first[20:30, 20:30] = 1  # 100 px
    first[40:42, 40:60] = 2  # 40 px, touching the border
    second = np.zeros((50, 60), np.uint8)
    second[10:13, 10:13] = 1  # 9 px
    third = np.zeros((50, 60), np.uint8)
    fp = _profile([first, second, third], tmp_path, names=["bg", "box", "bar"])
    box, bar = fp.classes[1], fp.classes[2]
    assert box.object_area_px == 50  # median of 50, 100, 9
    assert box.objects_per_image == 1.5  # median of 2 (first) and 1 (second)
    assert bar.object_area_px == 40 and bar.objects_per_image == 1
    total = 3 * 50 * 60
    assert box.pixel_share == pytest.approx(159 / total)
    assert bar.pixel_share == pytest.approx(40 / total)
    assert fp.classes[0].pixel_share == pytest.approx((total - 199) / total)
    assert box.image_share == pytest.approx(2 / 3) and bar.image_share == pytest.approx(1 / 3)
    assert fp.classes[0].thickness_px is None and fp.classes[0].object_area_px is None
    assert fp.foreground_share == SizeStats(0.0, 9 / 3000, 190 / 3000)


def test_diagonal_neighbours_are_one_object(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = 1
    profile = _profile([mask], tmp_path).classes[1]
    assert profile.objects_per_image == 1 and profile.object_area_px == 3


def test_ignore_pixels_are_never_counted(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :10] = 255
    mask[0:5, 10:20] = 1  # 50 of the 200 counted pixels
    fp = _profile([mask], tmp_path)
    assert fp.classes[1].pixel_share == pytest.approx(0.25)
    assert fp.classes[0].pixel_share == pytest.approx(0.75)
    assert fp.foreground_share.median == pytest.approx(0.25)
    assert fp.classes[1].object_area_px == 50  # ignore pixels are not part of the object


def test_all_ignore_and_absent_class(tmp_path):
    fp = _profile([np.full((8, 8), 255, np.uint8)], tmp_path, names=["bg", "a", "b"])
    assert [c.pixel_share for c in fp.classes] == [0.0, 0.0, 0.0]
    assert fp.classes[2] == ClassProfile("b", 0.0, 0.0)
    assert fp.smallest_structure_px is None
    assert any("none" in line for line in fp.summary_lines())


def test_sizes_of_mixed_images_and_channels(tmp_path):
    masks = [np.zeros(shape, np.uint8) for shape in [(30, 40), (50, 20), (100, 90)]]
    source = ArraySource(masks, channels=1)
    fp = fingerprint_source(source, NAMES, cache_dir=tmp_path)
    assert fp.height == SizeStats(30, 50, 100)
    assert fp.width == SizeStats(20, 40, 90)
    assert fp.channels == 1 and fp.images == fp.total_images == 3


def test_subsampling_is_evenly_spaced(tmp_path):
    assert profiled_indices(10, 4) == [0, 2, 5, 7]
    assert profiled_indices(3, 4) == [0, 1, 2]
    masks = [np.full((4 + i, 4), i % 2, np.uint8) for i in range(10)]
    source = ArraySource(masks)
    fp = fingerprint_source(source, NAMES, max_images=4, cache_dir=tmp_path)
    assert (fp.images, fp.total_images, source.loads) == (4, 10, 4)
    assert fp.height == SizeStats(4, 7.5, 11)
    assert fp.classes[1].image_share == pytest.approx(0.5)  # samples 5 and 7
    assert "evenly spaced" in fp.summary_lines()[0]


def test_cache_hit_miss_and_corrupt_file(tmp_path):
    source = ArraySource([_disc(20), _line(4)])
    first = fingerprint_source(source, NAMES, cache_dir=tmp_path)
    assert source.loads == 2
    files = list((tmp_path / "fingerprints").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "fingerprints").glob("*.tmp"))
    assert fingerprint_source(source, NAMES, cache_dir=tmp_path) == first
    assert source.loads == 2  # read from the cache
    fingerprint_source(source, ["bg", "other"], cache_dir=tmp_path)
    assert source.loads == 4  # other class names, other key

    files[0].write_text('{"images": 2, "trunc')
    assert fingerprint_source(source, NAMES, cache_dir=tmp_path) == first
    assert source.loads == 6
    assert json.loads(files[0].read_text()) == first.to_dict()  # rewritten
    files[0].write_text('{"images": "x"}')
    assert fingerprint_source(source, NAMES, cache_dir=tmp_path) == first


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path))
    fingerprint_source(ArraySource([_line(3)]), NAMES)
    assert len(list((tmp_path / "fingerprints").glob("*.json"))) == 1


def test_edited_sample_changes_the_key(tmp_path):
    masks = [_line(4)]
    source = ArraySource(masks)
    fingerprint_source(source, NAMES, cache_dir=tmp_path)
    masks[0] = _line(6)
    assert fingerprint_source(source, NAMES, cache_dir=tmp_path).classes[1].thickness_px == 6


def test_round_trip_and_summary_on_synthetic_data(tmp_path):
    source = SyntheticSource(6, size=(64, 80), num_classes=4)
    fp = fingerprint_source(source, source.class_names, cache_dir=tmp_path, progress=True)
    again = DatasetFingerprint.from_dict(json.loads(json.dumps(fp.to_dict())))
    assert again == fp
    assert fp.channels == 3 and fp.height == SizeStats(64, 64, 64)
    assert sum(c.pixel_share for c in fp.classes) == pytest.approx(1.0)
    lines = fp.summary_lines()
    assert any(
        "height 64 / 64 / 64 px" in line and "width 80 / 80 / 80 px" in line for line in lines
    )
    thinnest = min(fp.classes[1:], key=lambda c: c.thin_px or np.inf)
    assert fp.smallest_structure_px == thinnest.thin_px
    assert lines[-1].startswith(f"thinnest structure: {thinnest.name}")
    assert all(name in "\n".join(lines) for name in source.class_names)


def test_smallest_structure_is_the_thin_end_of_the_thinnest_class(tmp_path):
    mask = np.zeros((120, 120), np.uint8)
    mask[10:12, 10:110] = 1  # 2 px line
    mask[40:100, 40:100] = 2  # 60 px square
    fp = _profile([mask], tmp_path, names=["bg", "line", "square"])
    assert fp.classes[2].thickness_px == pytest.approx(60)
    assert fp.smallest_structure_px == pytest.approx(2)
    assert "line" in fp.summary_lines()[-1]


def _rotated_square(side: float, degrees: float, size: int = 120) -> np.ndarray:
    angle = np.deg2rad(degrees)
    y, x = np.mgrid[:size, :size] - size / 2
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return ((np.abs(u) < side / 2) & (np.abs(v) < side / 2)).astype(np.uint8)


@pytest.mark.parametrize("degrees", [10, 30])
def test_corner_tips_of_a_rotated_square_are_not_thin_structures(degrees, tmp_path):
    profile = _profile([_rotated_square(44, degrees)], tmp_path).classes[1]
    assert profile.thin_px == pytest.approx(44, rel=0.1)
    assert profile.thickness_px == pytest.approx(44, rel=0.1)
