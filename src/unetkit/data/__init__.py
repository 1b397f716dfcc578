"""The data layer: sample sources, splits, transforms, the torch dataset, and data checks.

It knows nothing of models, training or the command line. Every mask it returns is canonical:
class ids ``0 .. num_classes - 1`` with ``255`` = ignore.

Names are imported lazily, so ``from unetkit.data.image_files import read_image`` (what inference
needs) does not pull in Albumentations. Every dataset lives in :mod:`unetkit.data.datasets`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "checks": [
        "DataReport",
        "check_splits",
        "dataset_statistics",
        "format_problems",
        "inspect_splits",
    ],
    "contents": ["DatasetContents", "resolve_class_names"],
    "dataset": ["SegmentationDataset", "build_datasets"],
    "download": ["DownloadError", "download_dataset", "safe_extract"],
    "datasets.paired_files": ["FolderSource"],
    "datasets.synthetic": ["SyntheticSource"],
    "image_files": ["read_image"],
    "mask_files": ["MaskEncoding", "read_mask"],
    "preview": ["sample_grid", "save_sample_grid"],
    "preprocess": ["default_mean_std", "resize_image", "resolve_mean_std", "to_tensor"],
    "registry": ["DATASETS", "DatasetSplits", "build_splits", "list_datasets"],
    "sources": ["DataError", "DataProblem", "SampleSource"],
    "statistics": ["DatasetStatistics", "format_statistics"],
    "splits": ["load_split_record", "save_split_record"],
    "transforms": ["AUGMENT_LEVELS", "build_eval_transform", "build_train_transform"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'unetkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unetkit.data.{module}"), name)
