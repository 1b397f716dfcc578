"""The report's panels reuse the evaluation pass's predicted masks (unetkit.evaluation.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetkit.checkpoint import Preprocessing
from unetkit.config import EvalConfig
from unetkit.data.sources import SampleSource
from unetkit.evaluation import evaluate
from unetkit.inference.segmenter import Segmenter
from unetkit.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")


class _Squares(SampleSource):
    def __init__(self, count: int) -> None:
        generator = np.random.default_rng(0)
        self.images = [generator.integers(0, 256, (20, 20, 3), np.uint8) for _ in range(count)]

    @property
    def names(self) -> list[str]:
        return [f"s{index}" for index in range(len(self.images))]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.images[index]
        return image, (image[..., 0] > 128).astype(np.uint8)

    def describe(self, index: int) -> str:
        return f"square {index}"

    def _select(self, positions: list[int]) -> _Squares:
        raise NotImplementedError


class _Counting(Segmenter):
    calls = 0

    def predict(self, images):  # type: ignore[override]
        type(self).calls += 1
        return super().predict(images)


def _segmenter() -> _Counting:
    torch.manual_seed(0)
    prep = Preprocessing((20, 20), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
    model = nn.Conv2d(3, 1, 3, padding=1)
    return _Counting(model, Task(2), ["background", "thing"], prep, "cpu", 4, tta=True)


@pytest.mark.parametrize("limit", [evaluate.KEPT_MASK_BYTES, 0])
def test_panels_show_the_pass_predictions_without_predicting_again(monkeypatch, limit):
    monkeypatch.setattr(evaluate, "KEPT_MASK_BYTES", limit)
    segmenter, source = _segmenter(), _Squares(7)
    _Counting.calls = 0
    options = EvalConfig(panels=2)
    result = evaluate.evaluate_source(segmenter, source, options=options, progress=False)
    panels = result.best + result.worst + result.uncertain
    assert len(result.best) == len(result.worst) == 2 and panels
    # kept masks: no image predicted a second time; none kept (limit 0): each panel's again,
    # a best-or-worst image once, an uncertain one once more
    extremes = {panel.name for panel in result.best + result.worst}
    assert _Counting.calls == (0 if limit else len(extremes) + len(result.uncertain))
    for panel in panels:
        index = source.names.index(panel.name)
        np.testing.assert_array_equal(panel.prediction, segmenter.predict(source.load(index)[0]))
