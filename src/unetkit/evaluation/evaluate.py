"""Evaluate a Segmenter on a split, at each mask's original resolution."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from unetkit.data.sources import SampleSource
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics import ConfusionMatrix, summarize


def evaluate_source(
    segmenter: Segmenter,
    source: SampleSource,
    split: str = "test",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of ``segmenter`` on every sample of ``source``, pooled over the split.

    Predictions are resized back to each mask's own size before they are compared, so the numbers
    do not depend on the size the model was trained at.
    """
    if len(source) == 0:
        raise ValueError(f"the {split} split is empty: there is nothing to evaluate")
    confusion = ConfusionMatrix(segmenter.task.num_classes)
    bar = tqdm(total=len(source), desc=f"evaluate {split}", unit="img", disable=not progress)
    for images, masks in _batches(source, segmenter.batch_size):
        for prediction, mask in zip(segmenter.predict(images), masks, strict=True):
            confusion.update(torch.from_numpy(prediction), torch.from_numpy(mask))
        bar.update(len(images))
    bar.close()
    summary = summarize(confusion.matrix, segmenter.class_names, binary=segmenter.task.is_binary)
    return {**summary, "num_images": len(source), "split": split}


def _batches(
    source: SampleSource, batch_size: int
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for index in range(len(source)):
        image, mask = source.load(index)
        images.append(image)
        masks.append(mask)
        if len(images) == batch_size:
            yield images, masks
            images, masks = [], []
    if images:
        yield images, masks
