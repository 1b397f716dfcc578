"""Datasets by name, and the one entry point that turns a config into train/val/test sources.

``DATASETS`` (built in :mod:`unetkit.data.datasets`, one table per dataset module) maps
``data.dataset`` to a builder ``Config -> DatasetContents``. :func:`build_splits` picks the split
(a saved record, list files, the dataset's official lists, or seeded ratios, in that order) and
applies it.

``data.tile_size`` works for every dataset: when the builder did not tile the samples itself
(CCAgT and DRIVE do, their own way), :func:`build_splits` draws the split over the whole-image
names exactly as without tiles, then replaces train and val by the tiles of their images; test
stays whole images (see :mod:`unetkit.data.tiles`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unetkit.config import Config, DataConfig
from unetkit.data.contents import DatasetContents
from unetkit.data.datasets import DATASETS
from unetkit.data.sources import DataError, DataProblem, SampleSource
from unetkit.data.splits import (
    SplitRecord,
    apply_split_record,
    split_by_ratios,
    split_from_list_files,
    split_from_name_lists,
    validate_split_record,
)
from unetkit.data.tiles import TiledSource, expand_split, tile_every_image

__all__ = ["DATASETS", "DatasetSplits", "build_contents", "build_splits", "list_datasets"]


@dataclass
class DatasetSplits:
    """The three sources of a run, the class names, and the record that reproduces the split.

    ``problems`` are those found while discovering the files (orphans, duplicate names);
    :func:`unetkit.data.checks.check_splits` adds the per-sample ones.
    """

    train: SampleSource
    val: SampleSource
    test: SampleSource
    class_names: list[str]
    split_record: SplitRecord
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    def named(self) -> dict[str, SampleSource]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_contents(cfg: Config) -> DatasetContents:
    """All samples of ``cfg.data.dataset``, unsplit."""
    builder = DATASETS.get(cfg.data.dataset)
    if builder is None:
        raise DataError(
            f"unknown dataset {cfg.data.dataset!r}; known datasets: {', '.join(list_datasets())}"
        )
    return builder(cfg)


def build_splits(cfg: Config, split_record: SplitRecord | None = None) -> DatasetSplits:
    """Train/val/test sources for ``cfg``; pass a saved ``split_record`` to reuse a split.

    With ``data.tile_size`` train and val hold tiles and test whole images (module docstring).
    """
    contents = build_contents(cfg)
    source, record = _source_and_record(cfg.data, contents, split_record)
    sources = apply_split_record(source, record)
    return DatasetSplits(
        sources["train"],
        sources["val"],
        sources["test"],
        contents.class_names,
        record,
        list(contents.problems),
    )


def _source_and_record(
    data: DataConfig, contents: DatasetContents, split_record: SplitRecord | None
) -> tuple[SampleSource, SplitRecord]:
    """The source to split and the split; with ``data.tile_size``, tiles for train and val.

    The split is chosen on whole-image names first, so the same images land in the same split
    with and without tiles. A saved ``split_record`` (of a tiled run: tile names in train/val)
    applies to the tiled source as it is. A builder that returns a :class:`TiledSource` has
    tiled its samples already, and its split is used unchanged.
    """
    if data.tile_size is None or isinstance(contents.source, TiledSource):
        return contents.source, choose_split_record(data, contents, split_record)
    tiled = tile_every_image(contents.source, data.tile_size)
    if split_record is not None:
        return tiled, validate_split_record(split_record)
    return tiled, expand_split(tiled, choose_split_record(data, contents))


def choose_split_record(
    data: DataConfig, contents: DatasetContents, split_record: SplitRecord | None = None
) -> SplitRecord:
    """The split to use: ``split_record``, else list files, else official lists, else ratios."""
    names = contents.source.names
    if split_record is not None:
        return validate_split_record(split_record)
    if data.train_list or data.val_list or data.test_list:
        if not data.train_list:
            raise DataError(
                "data.val_list/test_list are set but data.train_list is not; give a train list "
                "(val is drawn from it when no val list is given, test is every unlisted sample)"
            )
        return split_from_list_files(
            names,
            _find_list(data.train_list, data.root),
            _find_list(data.val_list, data.root),
            _find_list(data.test_list, data.root),
            data.split_ratios,
            data.split_seed,
        )
    if contents.predefined_split is not None:
        official = contents.predefined_split
        return split_from_name_lists(
            names,
            official["train"],
            official.get("val"),
            official.get("test"),
            data.split_ratios,
            data.split_seed,
            where=f"official split of {data.dataset}",
        )
    return split_by_ratios(names, data.split_ratios, data.split_seed)


def _find_list(path: str | None, root: str | None) -> Path | None:
    """A list file as given, or relative to ``data.root`` when it is not found as given."""
    if not path:
        return None
    given = Path(path).expanduser()
    if not given.is_file() and root and (Path(root) / given).is_file():
        return Path(root) / given
    return given
