"""The data checker reports every kind of problem, each with its file, in one call."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.config import Config
from unetkit.data.checks import check_splits, format_problems
from unetkit.data.registry import build_splits


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(array))


def _broken_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (20, 16), dtype=np.uint8)
    colour = rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)
    good_mask = np.zeros((20, 16), np.uint8)
    good_mask[5:10] = 2
    for stem in ("good1", "good2", "good3"):
        _write(root / "images" / f"{stem}.png", grey)
        _write(root / "masks" / f"{stem}.png", good_mask)
    _write(root / "masks" / "truncated.png", good_mask)
    (root / "images" / "truncated.png").write_bytes(_png_bytes(grey)[:120])
    _write(root / "images" / "nine.png", grey)
    bad_values = good_mask.copy()
    bad_values[0, 0] = 9
    _write(root / "masks" / "nine.png", bad_values)
    _write(root / "images" / "mismatch.png", grey)
    _write(root / "masks" / "mismatch.png", np.zeros((18, 16), np.uint8))
    _write(root / "images" / "colour.png", colour)
    _write(root / "masks" / "colour.png", good_mask)
    _write(root / "images" / "orphan.png", grey)
    _write(root / "masks" / "nomatch.png", good_mask)
    (root / "classes.txt").write_text("background\nnucleus\ncytoplasm\n")
    return root


def test_every_problem_is_reported_with_its_file_in_one_call(tmp_path):
    cfg = Config()
    cfg.data.dataset = "folder"
    cfg.data.root = str(_broken_folder(tmp_path))
    cfg.data.in_channels = 1
    names = ["good1", "good2", "truncated", "nine", "mismatch", "colour"]
    record = {"train": names, "val": [], "test": ["good3"]}
    splits = build_splits(cfg, split_record=record)
    assert splits.num_classes == 3

    problems = check_splits(splits)

    def about(name: str) -> list[str]:
        return [p.message for p in problems if name in p.where]

    assert any("truncated.png" in m and "cannot be read" in m for m in about("truncated.png"))
    assert any("[9]" in m and "0..2" in m for m in about("nine.png"))
    assert any("20x16" in m and "18x16" in m for m in about("mismatch.png"))
    assert any("in_channels=1" in m for m in about("colour.png"))
    assert any("without a mask" in m for m in about("orphan.png"))
    assert any("without an image" in m for m in about("nomatch.png"))
    assert any("empty" in m for m in about("val split"))
    assert not any("good" in p.where for p in problems)
    assert len(problems) == 7
    assert sum(p.is_error for p in problems) == 5  # orphans are warnings

    report = format_problems(problems)
    assert report.startswith("7 data problem(s): 5 error(s), 2 warning(s)")
    assert report.count("fix:") == 7


def test_clean_synthetic_data_has_no_problems():
    cfg = Config()
    cfg.data.synthetic_count = 12
    splits = build_splits(cfg)
    assert check_splits(splits, progress=False) == []
    assert format_problems([]) == "no data problems found"
    # A smaller class count than the masks hold is caught.
    problems = check_splits(splits, num_classes=2, progress=False)
    assert problems and all("outside the class ids 0..1" in p.message for p in problems)
