"""Train/val/test splits as plain lists of sample names, so a split can be saved and re-applied.

A *split record* is ``{"train": [...], "val": [...], "test": [...]}``. Training saves it next to the
checkpoint and evaluation loads it, so the test images are the same ones the model never saw.
Splits come, in order of precedence, from a saved record, from list files, from a dataset's
official lists, or from seeded ratios.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetkit.data.image_files import IMAGE_EXTENSIONS
from unetkit.data.sources import DataError, SampleSource
from unetkit.data.text_files import read_text

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.7, 0.1, 0.2)
SplitRecord = dict[str, list[str]]


def split_by_ratios(
    names: Sequence[str], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> SplitRecord:
    """Shuffle the sorted ``names`` with ``seed`` and cut them by ``ratios`` (train, val, test).

    Ratios are normalised by their sum. Every split gets at least one sample, so at least three
    samples are needed. Each split's names are returned sorted.
    """
    weights = _check_ratios(ratios)
    ordered = sorted(names)
    if len(ordered) < len(SPLIT_NAMES):
        raise DataError(
            f"splitting into train/val/test needs at least 3 samples; the dataset has "
            f"{len(ordered)}. Add samples, or give data.train_list/val_list/test_list files"
        )
    counts = _split_counts(len(ordered), weights)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    record: SplitRecord = {}
    start = 0
    for split, count in zip(SPLIT_NAMES, counts, strict=True):
        record[split] = sorted(shuffled[start : start + count])
        start += count
    return record


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    weights = np.asarray(ratios, dtype=np.float64)
    if weights.shape != (3,) or not np.all(weights > 0):
        raise DataError(
            f"data.split_ratios must be three positive numbers (train, val, test), "
            f"e.g. [0.7, 0.1, 0.2]; got {list(ratios)}"
        )
    return weights / weights.sum()


def _split_counts(total: int, weights: np.ndarray) -> list[int]:
    """Largest-remainder rounding of ``total * weights``, then at least one per split."""
    exact = total * weights
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):
        while counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts.tolist()


def read_name_list(path: str | Path) -> list[str]:
    """Sample names from a list file: the first token of each line, any image extension dropped.

    Blank lines and lines starting with ``#`` are skipped, so lists with extra columns (such as the
    Oxford-IIIT Pet ``trainval.txt``) work as they are. A line that is a whole file name with its
    extension may hold spaces (``my scan 1.png``).
    """
    list_path = Path(path)
    if not list_path.is_file():
        raise DataError(f"split list {list_path} does not exist; give a text file of sample names")
    names = []
    for line in read_text(list_path, "split list").splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        whole = Path(line.strip())  # a file name with spaces: "my scan 1.png"
        if whole.suffix.lower() in IMAGE_EXTENSIONS:
            names.append(whole.stem)
            continue
        name = Path(tokens[0])
        names.append(name.stem if name.suffix.lower() in IMAGE_EXTENSIONS else tokens[0])
    return names


def split_from_name_lists(
    all_names: Sequence[str],
    train: Sequence[str],
    val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    where: str = "split lists",
) -> SplitRecord:
    """A record from given name lists; missing ones are derived.

    Without ``val``, a validation share of ``ratios[1] / (ratios[0] + ratios[1])`` is drawn from
    ``train`` (seeded). Without ``test``, the test split is every sample named in no list.
    """
    weights = _check_ratios(ratios)
    train = list(train)
    if val is None:
        train, val = hold_out(train, weights[1] / (weights[0] + weights[1]), seed, where)
    if test is None:
        listed = set(train) | set(val)
        test = [name for name in all_names if name not in listed]
    record = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    return validate_split_record(record, where)


def hold_out(
    names: Sequence[str], share: float, seed: int, where: str = "names"
) -> tuple[list[str], list[str]]:
    """``(kept, held_out)``: a seeded ``share`` of ``names`` held out, the rest kept.

    The held-out count is ``round(share * len(names))``, at least one and never all; both lists
    keep the order of ``names``. Used wherever a split is drawn from another (validation from
    train, a missing test split from train): the same names and seed always give the same cut.
    """
    if not 0 < share < 1:
        raise DataError(f"{where}: the share to hold out must be between 0 and 1; got {share}")
    if len(names) < 2:
        raise DataError(
            f"{where}: cannot hold out a share of {len(names)} sample(s); at least 2 are needed "
            f"(one kept, one held out)",
            fix="add samples, or give the split as a list (data.val_list / data.test_list)",
        )
    count = min(len(names) - 1, max(1, round(share * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    chosen = {names[i] for i in order[:count]}
    return [n for n in names if n not in chosen], [n for n in names if n in chosen]


def pool_share(kept: float, held: float) -> float:
    """``held / (kept + held)``, computed as the ratio check normalises it (``data.split_ratios``
    checked), so a cut drawn with it matches one drawn by :func:`split_from_name_lists`."""
    weights = _check_ratios((kept, held, held))
    return float(weights[1] / (weights[0] + weights[1]))


def split_from_list_files(
    all_names: Sequence[str],
    train_list: str | Path,
    val_list: str | Path | None = None,
    test_list: str | Path | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> SplitRecord:
    """A record from list files (see :func:`read_name_list` and :func:`split_from_name_lists`)."""
    return split_from_name_lists(
        all_names,
        read_name_list(train_list),
        read_name_list(val_list) if val_list else None,
        read_name_list(test_list) if test_list else None,
        ratios,
        seed,
        where=f"split lists ({train_list}, {val_list}, {test_list})",
    )


def validate_split_record(record: dict, where: str = "split record") -> SplitRecord:
    """``record`` checked: exactly train/val/test lists of names, no name in two splits."""
    if not isinstance(record, dict) or set(record) != set(SPLIT_NAMES):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: expected the keys train, val and test; got {keys}")
    clean: SplitRecord = {}
    for split in SPLIT_NAMES:
        names = record[split]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{where}: {split!r} must be a list of sample names")
        if len(set(names)) != len(names):
            raise DataError(f"{where}: {split!r} names a sample more than once")
        clean[split] = list(names)
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(clean[first]) & set(clean[second]))
        if shared:
            raise DataError(
                f"{where}: {len(shared)} sample(s) are in both {first} and {second}, e.g. "
                f"{shared[:3]}; a sample must be in one split only"
            )
    return clean


def save_split_record(record: SplitRecord, path: str | Path) -> None:
    """Write ``record`` as JSON (one list per split)."""
    Path(path).write_text(json.dumps(validate_split_record(record), indent=1) + "\n")


def load_split_record(path: str | Path) -> SplitRecord:
    """Read a record written by :func:`save_split_record`."""
    record_path = Path(path)
    if not record_path.is_file():
        raise DataError(f"split record {record_path} does not exist")
    try:
        record = json.loads(read_text(record_path, "split record"))
    except json.JSONDecodeError as error:
        raise DataError(f"split record {record_path} is not valid JSON: {error}") from error
    return validate_split_record(record, where=str(record_path))


def apply_split_record(source: SampleSource, record: SplitRecord) -> dict[str, SampleSource]:
    """The sources of each split named in ``record``; unknown names raise ``DataError``."""
    record = validate_split_record(record)
    return {split: source.subset(record[split]) for split in SPLIT_NAMES}
