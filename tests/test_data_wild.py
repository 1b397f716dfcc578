"""Data from the wild: every odd image or mask a user's folder may hold either works as they would
expect or is refused with our error, naming the file and the fix, through the loader and through
``unetkit data check`` alike. Each case is generated here, tiny (24 x 32)."""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import data_config
from dataset_helpers import save_image as _save
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unetkit.cli.main import main
from unetkit.config import Config
from unetkit.data.datasets.folder import build_folder
from unetkit.data.image_files import header_size, read_image
from unetkit.data.mask_files import MaskEncoding, read_mask, read_stored_mask
from unetkit.data.registry import build_splits
from unetkit.data.sources import DataError, UnreadableFileError
from unetkit.inference.image_input import as_image_array

H, W = 24, 32
COUNT = 10  # enough samples for non-empty train, val and test splits at 0.7 / 0.1 / 0.2


# --- building folders --------------------------------------------------------------------------


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _binary(seed: int) -> np.ndarray:
    """A 0/1 mask: a block whose place depends on ``seed``, so every sample differs."""
    mask = np.zeros((H, W), np.uint8)
    mask[4 + seed % 5 : 16 + seed % 5, 6 + seed : 20 + seed] = 1
    return mask


def _class_ids(seed: int) -> np.ndarray:
    mask = _binary(seed)
    mask[:3] = 2
    return mask


def _folder(root: Path, mask_file, count: int = COUNT) -> Path:
    """``count`` PNG images with masks written by ``mask_file(masks_dir, index)``."""
    for index in range(count):
        _save(root / "images" / f"s{index}.png", _image(index))
        mask_file(root / "masks", index)
    return root


def _config(root: Path, **task) -> Config:
    cfg = data_config("folder", root)
    for key, value in task.items():
        setattr(cfg.task, key, value)
    return cfg


def _load_all(root: Path, **task) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names and every sample's mask, through the loader (no split)."""
    contents = build_folder(_config(root, **task))
    source = contents.source
    return contents.class_names, {name: source.load(i)[1] for i, name in enumerate(source.names)}


def _check(root: Path, capsys, *overrides: str) -> tuple[int, str]:
    """Exit status and printed report of ``unetkit data check`` on ``root``."""
    args = ["data", "check", "--dataset", "folder", "--data-root", str(root), "--no-progress"]
    status = main([*args, *overrides])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out + captured.err


def _problem_line(report: str, file: Path) -> str:
    found = [line for line in report.splitlines() if "[" in line and str(file) in line]
    assert found, report
    return found[0]


def _assert_refused(report: str, status: int, file: Path, *words: str) -> None:
    """The data check failed, naming ``file``, with ``words`` on its problem and fix lines."""
    assert status == 1, report
    lines = report.splitlines()
    at = lines.index(_problem_line(report, file))
    text = lines[at] + "\n" + lines[at + 1]
    assert lines[at + 1].strip().startswith("fix:"), text
    for word in words:
        assert word in text, (word, text)


# --- masks ---------------------------------------------------------------------------------------


def test_16_bit_binary_masks_are_read_as_binary(tmp_path, capsys):
    # the report of issue 12: {0, 65535} masks made the check stop with a broadcasting error
    _folder(tmp_path, lambda d, i: _save(d / f"s{i}.png", _binary(i).astype(np.uint16) * 65535))
    assert Image.open(tmp_path / "masks" / "s0.png").mode.startswith("I")
    names, masks = _load_all(tmp_path)
    assert names == ["background", "foreground"]
    for index in range(COUNT):
        np.testing.assert_array_equal(masks[f"s{index}"], _binary(index))
    status, report = _check(tmp_path, capsys)
    assert status == 0, report
    assert "broadcast" not in report and "no data problems found" in report


def test_16_bit_class_ids_and_8_bit_ones_mixed_are_class_ids(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        dtype = np.uint16 if index % 2 else np.uint8
        _save(folder / f"s{index}.png", _class_ids(index).astype(dtype))

    _folder(tmp_path, write)
    names, masks = _load_all(tmp_path)
    assert len(names) == 3
    for index in range(COUNT):
        np.testing.assert_array_equal(masks[f"s{index}"], _class_ids(index))
    assert _check(tmp_path, capsys)[0] == 0


def test_16_bit_values_beyond_class_ids_are_refused_with_the_file(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        mask = _binary(index).astype(np.uint16)
        if index == 3:
            mask[0, :4] = 300  # an instance id, say
        _save(folder / f"s{index}.png", mask)

    _folder(tmp_path, write)
    bad = tmp_path / "masks" / "s3.png"
    with pytest.raises(DataError, match=r"s3\.png.*\[300\]"):
        read_mask(bad, MaskEncoding())
    status, report = _check(tmp_path, capsys)
    _assert_refused(report, status, bad, "[300]", "class ids", "task.ignore_index")
    assert "1 error(s)" in report


def test_binary_masks_mixed_8_and_16_bit_0_1_0_255_and_1_bit(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        mask = _binary(index)
        kinds = [mask * 255, mask.astype(np.uint16) * 65535, mask, mask.astype(bool)]
        picture = Image.fromarray(kinds[index % 4])
        if index % 4 == 3:
            picture = picture.convert("1")
        _save(folder / f"s{index}.png", picture)

    _folder(tmp_path, write)
    modes = {Image.open(tmp_path / "masks" / f"s{i}.png").mode for i in range(4)}
    assert "1" in modes and "L" in modes and any(m.startswith("I") for m in modes)
    names, masks = _load_all(tmp_path)
    assert names == ["background", "foreground"]
    for index in range(COUNT):
        np.testing.assert_array_equal(masks[f"s{index}"], _binary(index))
    assert _check(tmp_path, capsys)[0] == 0


def test_palette_masks_are_read_as_indices_not_colours(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        picture = Image.fromarray(_class_ids(index), mode="L").convert("P")
        picture.putpalette([0, 0, 0, 250, 10, 10, 10, 250, 10] + [0] * 759)
        _save(folder / f"s{index}.png", picture)

    _folder(tmp_path, write)
    assert Image.open(tmp_path / "masks" / "s0.png").mode == "P"
    names, masks = _load_all(tmp_path)
    assert len(names) == 3
    np.testing.assert_array_equal(masks["s5"], _class_ids(5))
    assert _check(tmp_path, capsys)[0] == 0


def test_jpeg_binary_masks_are_snapped_with_a_warning_counting_pixels(tmp_path, capsys):
    _folder(tmp_path, lambda d, i: _save(d / f"s{i}.jpg", _binary(i) * 255, quality=75))
    noisy = np.asarray(Image.open(tmp_path / "masks" / "s0.jpg"))
    assert ((noisy != 0) & (noisy != 255)).sum() > 20  # the noise is there
    names, masks = _load_all(tmp_path)
    assert names == ["background", "foreground"]
    for index in range(COUNT):
        np.testing.assert_array_equal(masks[f"s{index}"], _binary(index))
    changed = sum(
        read_stored_mask(tmp_path / "masks" / f"s{i}.jpg").snapped_pixels for i in range(COUNT)
    )
    assert changed > 200
    status, report = _check(tmp_path, capsys)
    assert status == 0, report
    line = _problem_line(report, tmp_path / "masks")
    assert "[warning]" in line and f"{changed} pixels" in line and "9 more JPEG masks" in line


def test_jpeg_class_id_masks_are_refused_save_as_png(tmp_path, capsys):
    _folder(tmp_path, lambda d, i: _save(d / f"s{i}.jpg", _class_ids(i), quality=90))
    with pytest.raises(DataError, match=r"s0\.jpg: JPEG mask .*not black and white.*PNG"):
        read_stored_mask(tmp_path / "masks" / "s0.jpg")
    status, report = _check(tmp_path, capsys, "task.num_classes=3")
    _assert_refused(report, status, tmp_path / "masks" / "s0.jpg", "JPEG", "save masks as PNG")
    assert f"{COUNT} error(s)" in report


def test_jpeg_black_and_white_masks_in_a_multi_class_dataset_are_refused(tmp_path, capsys):
    _folder(tmp_path, lambda d, i: _save(d / f"s{i}.jpg", _binary(i) * 255, quality=95))
    with pytest.raises(DataError, match="not binary.*save masks as PNG"):
        _load_all(tmp_path, num_classes=3)
    status, report = _check(tmp_path, capsys, "task.num_classes=3")
    _assert_refused(report, status, tmp_path / "masks" / "s1.jpg", "not binary", "PNG")


def test_rgb_masks_need_a_colour_map_unless_grey(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        grey = np.repeat(_class_ids(index)[..., None], 3, axis=2)
        if index == 2:
            grey[_class_ids(index) == 1] = (200, 0, 0)
            grey[_class_ids(index) == 2] = (0, 0, 200)
        _save(folder / f"s{index}.png", grey)

    _folder(tmp_path, write)
    bad = tmp_path / "masks" / "s2.png"
    with pytest.raises(DataError, match=r"s2\.png: colour-coded mask \(3 distinct colours"):
        read_mask(bad)
    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "s1.png"), _class_ids(1))
    status, report = _check(tmp_path, capsys)
    _assert_refused(report, status, bad, "3 distinct colours", "data.colour_map")
    assert "1 error(s)" in report


def test_a_mask_of_another_size_is_refused_naming_both_sizes(tmp_path, capsys):
    def write(folder: Path, index: int) -> None:
        mask = _binary(index) * 255
        _save(folder / f"s{index}.png", mask.T if index == 4 else mask[:20] if index == 6 else mask)

    _folder(tmp_path, write)
    source = build_folder(_config(tmp_path)).source
    with pytest.raises(DataError, match=r"image is 24x32 \(HxW\) but its mask is 32x24.*swapped"):
        source.load(source.names.index("s4"))
    status, report = _check(tmp_path, capsys)
    _assert_refused(report, status, tmp_path / "masks" / "s6.png", "24x32", "20x32", "re-export")
    _assert_refused(report, status, tmp_path / "masks" / "s4.png", "32x24", "EXIF")
    assert "2 error(s)" in report


# --- images --------------------------------------------------------------------------------------


def _image_folder(root: Path, write_image, suffix: str = ".png") -> Path:
    """Binary 0/255 PNG masks, images written by ``write_image(path, index)``."""
    for index in range(COUNT):
        write_image(root / "images" / f"s{index}{suffix}", index)
        _save(root / "masks" / f"s{index}.png", _binary(index) * 255)
    return root


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            "L",
            lambda rgb: np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, 2),
        ),
        ("RGBA", lambda rgb: rgb),
        ("P", lambda rgb: np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))),
    ],
)
def test_grey_rgba_and_palette_images_become_rgb(tmp_path, capsys, mode, expected):
    _image_folder(tmp_path, lambda p, i: _save(p, Image.fromarray(_image(i)).convert(mode)))
    image = read_image(tmp_path / "images" / "s3.png")
    np.testing.assert_array_equal(image, expected(_image(3)))
    assert _check(tmp_path, capsys)[0] == 0


def test_16_bit_images_are_stretched_by_their_range(tmp_path, capsys):
    ramp = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + 1000).astype(np.uint16)
    _image_folder(tmp_path, lambda p, i: _save(p, Image.fromarray(ramp)))
    image = read_image(tmp_path / "images" / "s0.png")
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255 and np.all(np.diff(image[..., 0].ravel()) >= 0)
    assert _check(tmp_path, capsys)[0] == 0


def test_cmyk_jpegs_become_their_rgb(tmp_path, capsys):
    def write(path: Path, index: int) -> None:
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[:, : W // 2] = (200, 30, 30)
        rgb[:, W // 2 :] = (20, 20, 220)
        _save(path, Image.fromarray(rgb).convert("CMYK"), quality=95)

    _image_folder(tmp_path, write, ".jpg")
    assert Image.open(tmp_path / "images" / "s0.jpg").mode == "CMYK"
    image = read_image(tmp_path / "images" / "s0.jpg").astype(int)
    assert np.abs(image[H // 2, 2] - (200, 30, 30)).max() < 12
    assert np.abs(image[H // 2, -3] - (20, 20, 220)).max() < 12
    assert _check(tmp_path, capsys)[0] == 0


def test_exif_rotated_photos_are_read_upright_everywhere(tmp_path, capsys):
    # the camera stored the picture 32 x 24 and says "rotate 90 clockwise to view" (orientation 6)
    upright = np.zeros((H, W, 3), np.uint8)
    upright[: H // 2, : W // 3] = 255  # a white block at the top left of what the user sees
    stored = np.rot90(upright, k=1)  # undoing orientation 6 is a clockwise quarter turn
    exif = _exif(6)

    def write(path: Path, index: int) -> None:
        _save(path, stored, exif=exif, quality=95)

    _image_folder(tmp_path, write, ".jpg")
    photo = tmp_path / "images" / "s0.jpg"
    assert Image.open(photo).size == (H, W)  # stored sideways
    seen = read_image(photo)
    assert seen.shape == (H, W, 3) and np.abs(seen.astype(int) - upright).max() < 40
    assert header_size(photo) == (H, W)
    np.testing.assert_array_equal(as_image_array(Image.open(photo), 3), seen)  # predict, Segmenter

    from unetkit.serve.decode import decode_image

    np.testing.assert_array_equal(decode_image(photo.read_bytes(), 3, 10**6), seen)  # serve
    source = build_folder(_config(tmp_path)).source
    image, mask = source.load(0)  # training and evaluation
    assert image.shape[:2] == mask.shape == (H, W)
    assert _check(tmp_path, capsys)[0] == 0
    # a JPEG mask with the same EXIF turn is turned too, and still known to be JPEG (snapped)
    turned_mask = _save(tmp_path / "mask.jpg", np.rot90(upright[..., 0]), exif=exif, quality=75)
    stored = read_stored_mask(turned_mask)
    assert stored.lossy and stored.values.shape == (H, W)
    np.testing.assert_array_equal(stored.values, upright[..., 0])


def test_multi_page_tiffs_give_their_first_page(tmp_path, capsys):
    def write(path: Path, index: int) -> None:
        pages = [Image.fromarray(_image(index + k)) for k in range(3)]
        _save(path, pages[0], save_all=True, append_images=pages[1:])

    _image_folder(tmp_path, write, ".tif")
    assert Image.open(tmp_path / "images" / "s2.tif").n_frames == 3
    np.testing.assert_array_equal(read_image(tmp_path / "images" / "s2.tif"), _image(2))
    assert _check(tmp_path, capsys)[0] == 0


def test_empty_and_non_image_files_are_refused_or_left_out(tmp_path, capsys):
    _image_folder(tmp_path, lambda p, i: _save(p, _image(i)))
    empty = tmp_path / "images" / "s1.png"
    empty.write_bytes(b"")
    fake = tmp_path / "masks" / "s2.png"
    fake.write_text("not a picture")
    (tmp_path / "images" / "notes.txt").write_text("left out: not an image by its extension")
    (tmp_path / "masks" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.raises(UnreadableFileError, match=r"s1\.png: the file is empty \(0 bytes\)"):
        read_image(empty)
    with pytest.raises(UnreadableFileError, match=r"s2\.png: cannot be read as an image"):
        read_mask(fake)
    status, report = _check(tmp_path, capsys)
    _assert_refused(report, status, empty, "empty (0 bytes)", "re-export")
    _assert_refused(report, status, fake, "cannot be read as an image", "re-export")
    assert "2 data problem(s): 2 error(s)" in report  # the other files are simply not samples


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc + end


@pytest.mark.parametrize("side", [10_000, 40_000])  # PIL warns at the first, raises at the second
def test_a_gigantic_header_is_refused_naming_the_file_and_the_limit(tmp_path, capsys, side):
    _image_folder(tmp_path, lambda p, i: _save(p, _image(i)))
    bomb = tmp_path / "images" / "s5.png"
    bomb.write_bytes(_png_header(side, side))
    limit = str(Image.MAX_IMAGE_PIXELS)
    for read in (read_image, read_mask, header_size):
        with pytest.raises(UnreadableFileError, match=rf"s5\.png: refused .*{limit}"):
            read(bomb)
    status, report = _check(tmp_path, capsys)
    _assert_refused(report, status, bomb, "MAX_IMAGE_PIXELS", limit, "tiles")


def test_names_with_spaces_and_non_ascii_characters_pair(tmp_path, capsys):
    names = ["a b", "über café", "日本 1", "x"]
    for index, name in enumerate(names * 3):
        stem = f"{name} {index}"
        _save(tmp_path / "images" / f"{stem}.png", _image(index))
        # the mask's name in decomposed form, as macOS writes it: it must still pair
        _save(tmp_path / "masks" / f"{unicodedata.normalize('NFD', stem)}.png", _binary(index))
    _, masks = _load_all(tmp_path)
    assert len(masks) == 12 and "über café 1" in masks
    np.testing.assert_array_equal(masks["über café 1"], _binary(1))
    status, report = _check(tmp_path, capsys)
    assert status == 0, report


def test_a_split_list_may_name_files_with_spaces(tmp_path):
    for index in range(COUNT):
        _save(tmp_path / "images" / f"my scan {index}.png", _image(index))
        _save(tmp_path / "masks" / f"my scan {index}.png", _binary(index))
    (tmp_path / "train.txt").write_text("".join(f"my scan {i}.png\n" for i in range(8)))
    (tmp_path / "test.txt").write_text("my scan 8.png\nmy scan 9.png\n")
    cfg = _config(tmp_path)
    cfg.data.train_list = str(tmp_path / "train.txt")
    cfg.data.test_list = str(tmp_path / "test.txt")
    splits = build_splits(cfg)
    assert splits.test.names == ["my scan 8", "my scan 9"]
    assert sorted(splits.train.names + splits.val.names) == [f"my scan {i}" for i in range(8)]


def test_text_files_not_in_utf8_are_refused_naming_the_file(tmp_path, capsys):
    _folder(tmp_path, lambda d, i: _save(d / f"s{i}.png", _binary(i)))
    classes = tmp_path / "classes.txt"
    classes.write_bytes("arrière-plan\nnoyau\n".encode("latin-1"))
    status, report = _check(tmp_path, capsys)
    assert status == 2  # refused before any sample is read, with our message
    assert (
        f"class names file {classes} is not UTF-8 text" in report and "save it as UTF-8" in report
    )


def test_symlinked_folders_are_followed(tmp_path, capsys):
    elsewhere = _folder(tmp_path / "elsewhere", lambda d, i: _save(d / f"s{i}.png", _binary(i)))
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(elsewhere / "images", target_is_directory=True)
    (root / "masks").symlink_to(elsewhere / "masks", target_is_directory=True)
    (elsewhere / "masks" / "s0.png").unlink()
    (elsewhere / "masks" / "s0.png").symlink_to(tmp_path / "gone.png")  # a dangling link
    _, masks = _load_all(root)
    assert sorted(masks) == [f"s{i}" for i in range(1, COUNT)]
    status, report = _check(root, capsys)
    assert status == 0, report
    assert "[warning]" in _problem_line(report, root / "images" / "s0.png")  # no mask: left out


# --- generated bytes ---------------------------------------------------------------------------


def _encoded(mode: str, file_format: str, **options) -> bytes:
    if mode == "I;16":
        picture = Image.fromarray(_binary(1).astype(np.uint16) * 65535)
    else:
        array = _binary(1) * 255 if mode in ("L", "1", "P") else _image(1)
        picture = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


SEEDS = [
    _encoded("L", "PNG"),
    _encoded("P", "PNG"),
    _encoded("1", "PNG"),
    _encoded("I;16", "PNG"),  # the mask of issue 12's report
    _encoded("RGB", "JPEG"),
    _encoded("L", "JPEG", exif=_exif(6)),
    _encoded("CMYK", "JPEG"),
    _encoded("RGBA", "TIFF", save_all=True, append_images=[Image.new("L", (W, H))]),
    _encoded("L", "TIFF"),
    _encoded("RGB", "BMP"),
    _encoded("P", "GIF"),
    Image.fromarray(np.arange(H * W, dtype=np.uint16).reshape(H, W)).tobytes(),
    _png_header(50_000, 50_000),
]


@st.composite
def _file_bytes(draw) -> bytes:
    """Random bytes, or a valid small image truncated and with some bytes overwritten."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on the corrupt files
@FUZZ
@given(data=_file_bytes(), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif", ".bmp"]))
def test_decoders_raise_only_data_errors_whatever_the_bytes(tmp_path, data, suffix):
    path = tmp_path / f"file{suffix}"
    path.write_bytes(data)
    readers = [
        lambda: read_image(path),
        lambda: read_image(path, 1, allow_colour=False),
        lambda: read_mask(path),
        lambda: read_mask(path, MaskEncoding(binary_255=True)),
        lambda: header_size(path),
        lambda: read_image(io.BytesIO(data)),
    ]
    for read in readers:
        try:
            read()
        except DataError as error:
            assert str(path) in str(error) or "in-memory" in str(error)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image=_file_bytes(), mask=_file_bytes())
def test_data_check_reports_whatever_the_bytes(tmp_path, capsys, image, mask):
    root = tmp_path / "fuzz"
    if not root.is_dir():
        _folder(root, lambda d, i: _save(d / f"s{i}.png", _binary(i) * 255))
    (root / "images" / "s3.png").write_bytes(image)
    (root / "masks" / "s3.png").write_bytes(mask)
    status, report = _check(root, capsys)
    assert status in (0, 1), report  # 2 would be an error that stopped the check
    assert "data check passed" in report or "data check failed" in report
