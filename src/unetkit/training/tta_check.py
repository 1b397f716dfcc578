"""Whether test-time augmentation earns its passes on this model, measured on validation at the
end of training rather than assumed.

The planner turns TTA on where its passes fit the budget
(:func:`unetkit.planning.decisions.choose_tta`); whether the flips help is a property of the model
and the data, which no budget knows. The calibration already holds every trained flip's logits at
the same validation pixels (:class:`~unetkit.inference.view_calibration.ViewSample`), so the
check costs no extra model pass: the mean of the calibrated views, with its own tuned threshold,
against the image alone, with its own calibration and threshold, on the monitored metric. TTA
stays on only where the mean scores higher; a tie goes to the single pass, which is ``V`` times
cheaper. Where it goes off, the one-view calibration is the one stored and the checkpoint's
inference record says ``tta: false``, so the final test, ``evaluate``, ``predict``, ``serve`` and
``export`` all run one pass. ``eval.tta_check=false`` keeps TTA as planned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from unetkit.inference.calibration import Calibration
from unetkit.inference.options import RECORD_KEY
from unetkit.inference.tta import FLIPS
from unetkit.inference.view_calibration import ViewSample, averaged_logits
from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.summary import headline_arrays

MULTICLASS_DEFAULT = "mean_dice"  # a multi-class run monitored on a loss is checked on this


def planned_tta(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the run asked for TTA (``eval.tta`` over more than one trained flip), whatever an
    earlier check then chose, so that fitting again can decide again. A file without a saved
    config is taken as its inference record says."""
    record = checkpoint.get(RECORD_KEY) or {}
    asked = (checkpoint.get("config") or {}).get("eval", {}).get("tta", record.get("tta", False))
    return bool(asked) and len(record.get("tta_flips", FLIPS)) > 1


def choose_views(
    sample: ViewSample, fit: Callable[[ViewSample], dict[str, Any]], monitor: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The calibration record to store, and the check's own record (None with one view).

    ``fit(sample) -> record`` is the calibration fit
    (:func:`~unetkit.training.calibrate.fit_sample`); it runs on every view and on the first
    (the image as it is) alone, and the record of the one that scores higher is returned."""
    averaged = fit(sample)
    views = averaged["views"]
    if views == 1:
        return averaged, None
    alone_sample = sample.one_view(0)
    alone = fit(alone_sample)
    name, with_tta = monitored_score(averaged, sample, monitor)
    _, without = monitored_score(alone, alone_sample, monitor)
    kept = with_tta is not None and (without is None or with_tta > without)
    check = {"views": views, "metric": name, "with": with_tta, "without": without, "kept": kept}
    return (averaged if kept else alone), check


def monitored_score(
    record: Mapping[str, Any], sample: ViewSample, monitor: str
) -> tuple[str, float | None]:
    """The val metric of a calibration record on its sample: a binary or multi-label task's
    tuned metric as the fit measured it; a multi-class task's monitored headline metric (the
    mean Dice where the monitor is none) of the calibrated mean's labels."""
    if "metric" in record:
        return record["metric"]["name"], record["metric"]["after"]
    name = monitor.removeprefix("val_").removeprefix("ema_")
    name = name if name in headline_arrays(np.ones((2, 2))) else MULTICLASS_DEFAULT
    calibration = Calibration.from_dict(record["calibration"])
    labels = averaged_logits(sample.logits, sample.task, calibration).argmax(dim=-1)
    confusion = ConfusionMatrix(sample.task.num_classes)
    confusion.update(labels, sample.targets)
    value = headline_arrays(confusion.matrix.numpy())[name]
    return name, None if np.isnan(value) else float(value)


__all__ = ["choose_views", "monitored_score", "planned_tta"]
