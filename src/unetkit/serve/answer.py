"""What the service answers: mask and overlay PNGs, class areas, and the description of the model.

Class areas list every class of the model, in class-id order, those absent from the mask too (0
pixels). ``fraction`` is ``pixels / (width * height)``; an image has at least one pixel, so it is
always defined. A value that does not apply is ``null``: the threshold of a multi-class model (its
labels are the argmax), ``label_thresholds`` of any but a multi-label model (its cut per label,
tuned on validation or all ``threshold``) and the package version when unetkit runs without being
installed.

A multi-label model answers per label: ``classes`` lists the labels with the pixels where each is
present, ``labels`` adds each label's own mask (0 / 255 PNG), and the PNG answer (``mask``)
shows the labels by the blend of their colours, as ``predict`` draws them.
"""

from __future__ import annotations

import base64
import io
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from PIL import Image

from unetkit.inference.segmenter import Segmenter
from unetkit.palette import blend_labels, class_palette, label_overlay, overlay


def png_bytes(picture: np.ndarray) -> bytes:
    """``picture`` (an ``H x W`` mask of class ids or an ``H x W x 3`` RGB image) as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """What a PNG answer shows of a mask: class ids as they are, multi-label maps ``(L, H, W)``
    as the blend of the colours of the labels present."""
    return blend_labels(mask) if mask.ndim == 3 else mask


def overlay_picture(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``image`` tinted by its classes, or by the blend of its labels' colours (multi-label)."""
    return label_overlay(image, mask) if mask.ndim == 3 else overlay(image, mask, num_classes)


def class_areas(mask: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Pixels and fraction of the image per class: ``[{id, name, pixels, fraction}, ...]``;
    of a multi-label mask, the pixels where each label is present."""
    if mask.ndim == 3:
        counts = (mask == 1).sum(axis=(1, 2))
    else:
        counts = np.bincount(mask.ravel(), minlength=len(class_names))
    total = mask.shape[-2] * mask.shape[-1]
    return [
        {"id": i, "name": name, "pixels": int(counts[i]), "fraction": int(counts[i]) / total}
        for i, name in enumerate(class_names)
    ]


def prediction_json(
    mask: np.ndarray, class_names: list[str], overlay: np.ndarray | None = None
) -> dict[str, Any]:
    """The JSON answer of ``POST /predict?format=json`` (with the overlay when one is given)."""
    height, width = mask.shape[-2:]
    answer: dict[str, Any] = {
        "width": width,
        "height": height,
        "classes": class_areas(mask, class_names),
        "mask_png_base64": _base64(png_bytes(mask_picture(mask))),
    }
    if mask.ndim == 3:
        answer["labels"] = [
            {
                "id": i,
                "name": name,
                "mask_png_base64": _base64(png_bytes((label == 1) * np.uint8(255))),
            }
            for i, (name, label) in enumerate(zip(class_names, mask, strict=True))
        ]
    if overlay is not None:
        answer["overlay_png_base64"] = _base64(png_bytes(overlay))
    return answer


def model_info(segmenter: Segmenter, model_name: str | None) -> dict[str, Any]:
    """The answer of ``GET /model``: what the model predicts and what input it takes.

    ``input_size`` is the checkpoint's model input ``[H, W]``; uploads may have any size.
    """
    task = segmenter.task
    # a multi-label task has no background: label l has the colour of class l + 1
    palette = (
        class_palette(task.num_classes + 1)[1:]
        if task.multilabel
        else class_palette(task.num_classes)
    )
    return {
        "model": model_name,
        "task": task.kind,
        "threshold": task.threshold if task.is_binary or task.multilabel else None,
        "label_thresholds": task.cuts,  # a multi-label task's cut per label, else null
        "classes": [
            {"id": i, "name": name, "colour": [int(c) for c in palette[i]]}
            for i, name in enumerate(segmenter.class_names)
        ],
        "input_size": list(segmenter.preprocessing.img_size),
        "in_channels": segmenter.preprocessing.in_channels,
        "unetkit_version": _installed_version(),
    }


def _installed_version() -> str | None:
    try:
        return version("unetkit")
    except PackageNotFoundError:
        return None


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
