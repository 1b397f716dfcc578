"""What a dataset builder hands to the registry: all labelled samples, class names, problems seen.

Builders (one per dataset layout) return :class:`DatasetContents`; the registry then cuts it into
train/val/test. :func:`resolve_class_names` is the one rule for how many classes there are and
what they are called, shared by every builder so the config always wins and contradictions fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from unetkit.config import Config, TaskConfig
from unetkit.data.sources import DataError, DataProblem, SampleSource


@dataclass
class DatasetContents:
    """Every labelled sample of a dataset, before splitting.

    ``predefined_split`` holds a dataset's official name lists (keys ``train``, and optionally
    ``val`` and ``test``); they are used when the config gives no list files. Names must exist in
    ``source``.
    """

    source: SampleSource
    class_names: list[str]
    problems: list[DataProblem] = field(default_factory=list)
    predefined_split: dict[str, list[str]] | None = None


def default_class_names(num_classes: int) -> list[str]:
    """``background, foreground`` for a binary task, else ``background, class_1, class_2 ...``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def resolve_class_names(
    task: TaskConfig,
    *,
    dataset_names: list[str] | None = None,
    dataset_names_from: str = "the dataset",
    detected_num_classes: int | None = None,
    default_names: Callable[[int], list[str]] = default_class_names,
) -> list[str]:
    """The class names of a run; their count is ``num_classes``.

    The count comes from ``task.num_classes``, else ``task.class_names``, else the dataset's own
    names (e.g. ``classes.txt``, described by ``dataset_names_from``), else
    ``detected_num_classes`` (e.g. from the masks). The names come from the config, else the
    dataset, else ``default_names``. Any two sources that disagree on the count raise ``DataError``.
    """
    given = [
        ("task.num_classes", task.num_classes),
        ("task.class_names", len(task.class_names) if task.class_names is not None else None),
        (dataset_names_from, len(dataset_names) if dataset_names is not None else None),
    ]
    stated = [(label, count) for label, count in given if count is not None]
    for label, count in stated[1:]:
        first_label, first_count = stated[0]
        if count != first_count:
            raise DataError(
                f"{first_label} says {first_count} classes but {label} says {count}; make them "
                f"agree (num_classes counts the background), or drop one of them"
            )
    num_classes = stated[0][1] if stated else detected_num_classes
    if num_classes is None:
        raise DataError("cannot tell how many classes there are; set task.num_classes")
    if num_classes < 2:
        raise DataError(
            f"num_classes must be at least 2 (background + one class); got {num_classes}"
        )
    return list(task.class_names or dataset_names or default_names(num_classes))


DatasetBuilder = Callable[[Config], "DatasetContents"]
"""What a dataset module registers under its name: ``Config -> DatasetContents``."""
