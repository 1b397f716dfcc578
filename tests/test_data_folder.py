"""The folder dataset: reading images and masks, pairing by stem, mask encodings, class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.config import Config
from unetkit.data.datasets.common import folder_contents
from unetkit.data.datasets.paired_files import pair_by_stem
from unetkit.data.image_files import read_image
from unetkit.data.mask_files import MaskEncoding, read_mask, read_raw_mask
from unetkit.data.registry import build_splits
from unetkit.data.sources import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _image(seed: int = 0, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)


def _mask(values: list[int], size: tuple[int, int] = (12, 10)) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    for i, value in enumerate(values):
        mask[i, :] = value
    return mask


def _folder_config(root: Path, **task) -> Config:
    cfg = Config()
    cfg.data.dataset = "folder"
    cfg.data.root = str(root)
    for key, value in task.items():
        setattr(cfg.task, key, value)
    return cfg


def _make_folder(root: Path, masks: dict[str, np.ndarray]) -> Path:
    for i, (stem, mask) in enumerate(masks.items()):
        _save(root / "images" / f"{stem}.png", _image(i))
        _save(root / "masks" / f"{stem}.png", mask)
    return root


# --- reading files ---------------------------------------------------------------------------


def test_read_image_converts_modes(tmp_path):
    rgb = _image()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    assert read_image(_save(tmp_path / "a.png", rgba), 3).shape == (12, 10, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", 3), rgb)
    grey = rgb[..., 0]
    as_rgb = read_image(_save(tmp_path / "g.png", grey), 3)
    assert as_rgb.shape == (12, 10, 3) and np.array_equal(as_rgb[..., 2], grey)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", 1).shape == (12, 10, 1)


def test_read_image_stretches_16_bit(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png", 1)
    assert image.dtype == np.uint8
    assert image[..., 0].tolist() == [[0, 64], [128, 255]]


def test_read_image_refuses_colour_for_one_channel_when_strict(tmp_path):
    path = _save(tmp_path / "c.png", _image())
    assert read_image(path, 1).shape == (12, 10, 1)  # inference: converted to grey
    with pytest.raises(DataError, match="in_channels=3"):
        read_image(path, 1, allow_colour=False)
    grey_rgb = np.repeat(_image()[..., :1], 3, axis=2)
    assert read_image(_save(tmp_path / "g.png", grey_rgb), 1, allow_colour=False).shape[2] == 1


def test_palette_masks_are_read_as_indices(tmp_path):
    indices = _mask([0, 1, 2, 2])
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    mask.save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as stored:
        assert stored.mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), indices)


def test_colour_coded_mask_is_rejected_with_the_file_name(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"rgb\.png.*class-index"):
        read_raw_mask(_save(tmp_path / "rgb.png", colour))


def test_mask_encoding_maps_binary_ignore_and_values():
    raw = np.array([[0, 255, 7], [1, 3, 255]])
    binary = MaskEncoding(binary_255=True).decode(np.array([[0, 255]]))
    assert binary.tolist() == [[0, 1]] and binary.dtype == np.uint8
    assert MaskEncoding(ignore_index=7).decode(raw).tolist() == [[0, 255, 255], [1, 3, 255]]
    assert MaskEncoding(value_map={1: 0, 3: 1}).decode(raw).tolist() == [[0, 255, 7], [0, 1, 255]]
    with pytest.raises(DataError, match="1000"):
        MaskEncoding().decode(np.array([[0, 1000]]))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize(
    "encoding",
    [
        MaskEncoding(),
        MaskEncoding(binary_255=True),
        MaskEncoding(ignore_index=3),
        MaskEncoding(value_map={0: 2, 40000: 1, 5: 0}, ignore_index=9),
    ],
)
def test_mask_decoding_equals_the_value_by_value_rule(dtype, encoding):
    # the lookup-table path (values < 2**16) and the general path (negatives, huge values) must
    # both give decode_value of every pixel
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    values = [0, 1, 3, 5, 9, 255] + ([40000] if np.iinfo(dtype).max >= 40000 else [])
    raw = rng.choice(values, size=(13, 17)).astype(dtype)
    expected = np.vectorize(encoding.decode_value)(raw)
    if ((expected < 0) | (expected > 255)).any():
        with pytest.raises(DataError, match="cannot be class ids"):
            encoding.decode(raw)
        return
    decoded = encoding.decode(raw)
    assert decoded.dtype == np.uint8 and decoded.shape == raw.shape
    np.testing.assert_array_equal(decoded, expected)


def test_mask_decoding_beyond_the_lookup_range_and_below_zero():
    encoding = MaskEncoding(value_map={-4: 1, 2**20: 2})
    raw = np.array([[-4, 2**20, 0], [0, -4, 2**20]], dtype=np.int64)
    assert encoding.decode(raw).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert MaskEncoding().decode(np.zeros((0, 4), dtype=np.uint8)).shape == (0, 4)


# --- pairing and the folder dataset -----------------------------------------------------------


def test_pairing_by_stem_ignores_strays_and_records_orphans(tmp_path):
    _save(tmp_path / "images" / "a.png", _image(0))
    _save(tmp_path / "images" / "b.JPG", _image(1))
    _save(tmp_path / "images" / "c.tif", _image(2))
    _save(tmp_path / "images" / "lonely.bmp", _image(3))
    (tmp_path / "images" / "a.mat").write_bytes(b"MATLAB")
    (tmp_path / "images" / "notes.txt").write_text("hello")
    (tmp_path / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata
    for stem in ("a", "b", "c", "ghost"):
        _save(tmp_path / "masks" / f"{stem}.png", _mask([1]))
    scan = pair_by_stem(tmp_path / "images", tmp_path / "masks")
    assert [p.name for p in scan.pairs] == ["a", "b", "c"]
    assert scan.pairs[1].image.name == "b.JPG"
    orphans = {Path(p.where).name: p for p in scan.problems}
    assert set(orphans) == {"lonely.bmp", "ghost.png"}
    assert "without a mask" in orphans["lonely.bmp"].message
    assert "without an image" in orphans["ghost.png"].message
    assert all(p.severity == "warning" for p in scan.problems)


def test_binary_0_255_masks_become_two_classes(tmp_path):
    root = _make_folder(tmp_path, {f"s{i}": _mask([0, 255, 255]) for i in range(3)})
    splits = build_splits(_folder_config(root))
    assert splits.class_names == ["background", "foreground"]
    mask = splits.train.load(0)[1]
    assert set(np.unique(mask).tolist()) == {0, 1}
    splits = build_splits(_folder_config(root, num_classes=2))
    assert set(np.unique(splits.val.load(0)[1]).tolist()) == {0, 1}
    # With three classes declared, 255 keeps its meaning: ignore.
    splits = build_splits(_folder_config(root, num_classes=3))
    assert set(np.unique(splits.test.load(0)[1]).tolist()) == {0, 255}


def test_zero_one_masks_with_255_void_stay_ignore(tmp_path):
    # "b" alone looks like a 0/255 binary mask; the dataset as a whole says 255 is void.
    masks = {"a": _mask([0, 1, 255]), "b": _mask([0, 255]), "c": _mask([1])}
    root = _make_folder(tmp_path, masks)
    for num_classes in (None, 2):
        contents = folder_contents(
            root / "images", root / "masks", _folder_config(root, num_classes=num_classes)
        )
        assert contents.class_names == ["background", "foreground"]
        mask_b = contents.source.subset(["b"]).load(0)[1]
        assert set(np.unique(mask_b).tolist()) == {0, 255}


def test_num_classes_from_masks_and_ignore_index(tmp_path):
    masks = {"a": _mask([0, 1, 4]), "b": _mask([0, 2, 11]), "c": _mask([3])}
    root = _make_folder(tmp_path, masks)
    contents = folder_contents(root / "images", root / "masks", _folder_config(root))
    assert len(contents.class_names) == 12  # 11 is a class id unless declared void
    cfg = _folder_config(root, ignore_index=11)
    contents = folder_contents(root / "images", root / "masks", cfg)
    assert contents.class_names == ["background", "class_1", "class_2", "class_3", "class_4"]
    mask_b = contents.source.subset(["b"]).load(0)[1]
    assert set(np.unique(mask_b).tolist()) == {0, 2, 255}


def test_classes_txt_names_the_classes_and_contradictions_fail(tmp_path):
    root = _make_folder(tmp_path, {n: _mask([0, 1, 2]) for n in "abc"})
    (root / "classes.txt").write_text("background\ncell\n\nmembrane\n")
    splits = build_splits(_folder_config(root))
    assert splits.class_names == ["background", "cell", "membrane"]
    with pytest.raises(DataError, match="classes.txt"):
        build_splits(_folder_config(root, num_classes=5))


def test_missing_root_and_folders_name_the_path_and_layout(tmp_path):
    with pytest.raises(DataError, match="nowhere.*images/"):
        build_splits(_folder_config(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks does not exist.*expected layout"):
        build_splits(_folder_config(tmp_path))
    cfg = _folder_config(tmp_path)
    cfg.data.root = None
    with pytest.raises(DataError, match="data.root is not set"):
        build_splits(cfg)


def test_list_files_relative_to_root_select_the_split(tmp_path):
    root = _make_folder(tmp_path, {f"s{i}": _mask([0, 1]) for i in range(6)})
    (root / "train.txt").write_text("s0\ns1\ns2\ns3\n")
    (root / "test.txt").write_text("s5 extra-column\n")
    cfg = _folder_config(root)
    cfg.data.train_list, cfg.data.test_list = "train.txt", "test.txt"
    splits = build_splits(cfg)
    assert splits.test.names == ["s5"]
    assert len(splits.val) == 1 and set(splits.train.names + splits.val.names) == {
        "s0",
        "s1",
        "s2",
        "s3",
    }
    (root / "test.txt").write_text("s5\nmissing_one\n")
    with pytest.raises(DataError, match="missing_one"):
        build_splits(cfg)


def test_isbi2012_membranes_read_through_the_folder_machinery():
    base = SHARED_DATA / "isbi2012_membrane" / "train"
    if not (base / "image").is_dir() or not (base / "label").is_dir():
        pytest.skip(f"shared ISBI 2012 data not found at {base}")
    cfg = Config()
    cfg.data.in_channels = 1
    contents = folder_contents(base / "image", base / "label", cfg)
    assert len(contents.source) == 30 and not contents.problems
    assert contents.class_names == ["background", "foreground"]
    image, mask = contents.source.subset(["0"]).load(0)
    assert image.shape == (512, 512, 1) and mask.shape == (512, 512)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert 0.6 < mask.mean() < 0.9  # cell interior (255 -> 1) is about 78% of the pixels
