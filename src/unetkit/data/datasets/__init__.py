"""Every dataset, one module each; ``DATASETS`` maps ``data.dataset`` names to their builders.

Each module exposes a plain ``DATASETS = {NAME: build}`` table; this package merges them (as
segmentation_models_pytorch builds its encoder table), and :mod:`unetkit.data.registry` imports the
result. No module imports the registry, so there is no import cycle. Add a dataset by adding its
module and one entry to ``_MODULES``; shared helpers (the root and mode checks, contents from
paired files) are in :mod:`unetkit.data.datasets.common`.
"""

from __future__ import annotations

from unetkit.data.contents import DatasetBuilder
from unetkit.data.datasets import (
    camvid,
    ccagt,
    drive,
    dsb2018,
    folder,
    isbi2012,
    oxford_pet,
    synthetic,
)

_MODULES = (synthetic, folder, camvid, ccagt, drive, dsb2018, isbi2012, oxford_pet)

DATASETS: dict[str, DatasetBuilder] = {}
for _module in _MODULES:
    DATASETS.update(_module.DATASETS)
