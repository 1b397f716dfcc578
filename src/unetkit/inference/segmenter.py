"""The Segmenter: from an image (NumPy array or PIL image) to a mask, by a checkpoint's recipe.

It is what a deployed model carries: it resizes and normalises exactly as training did, runs the
model in batches, and returns probabilities or class ids at each input's own size. Evaluation uses
it too, so the metrics describe the very path that ``predict`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unetkit.checkpoint import LoadedModel, Preprocessing, model_from_checkpoint
from unetkit.data.preprocess import resize_image, to_tensor
from unetkit.devices import resolve_device
from unetkit.tasks import Task

ImageLike = np.ndarray | Image.Image


class Segmenter:
    """Runs a trained model on images of any size; see :meth:`from_checkpoint`."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        device: str | torch.device = "auto",
        batch_size: int = 8,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 8
    ) -> Segmenter:
        """Load ``best.pt``/``last.pt`` (or any unetkit checkpoint); no other settings needed."""
        loaded: LoadedModel = model_from_checkpoint(path)
        return cls(
            loaded.model,
            loaded.task,
            loaded.class_names,
            loaded.preprocessing,
            device=device,
            batch_size=batch_size,
        )

    @overload
    def predict_proba(self, images: ImageLike) -> np.ndarray: ...
    @overload
    def predict_proba(self, images: Sequence[ImageLike]) -> list[np.ndarray]: ...

    def predict_proba(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> np.ndarray | list[np.ndarray]:
        """Class probabilities ``(num_classes, H, W)`` float32 at each image's own size.

        One image gives one array; a list (or tuple) of images gives a list, in the same order.
        """
        single = _is_single(images)
        batch = [images] if single else list(images)
        probs = [p.cpu().numpy() for p in self._probabilities(batch)]
        return probs[0] if single else probs

    @overload
    def predict(self, images: ImageLike) -> np.ndarray: ...
    @overload
    def predict(self, images: Sequence[ImageLike]) -> list[np.ndarray]: ...

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """Class-id masks ``(H, W)`` uint8 at each image's own size.

        They are the labels of :meth:`predict_proba`: its argmax, or for a binary task its
        foreground probability above the task's threshold.
        """
        single = _is_single(images)
        batch = [images] if single else list(images)
        masks = [self._labels(p) for p in self._probabilities(batch)]
        return masks[0] if single else masks

    def predict_with_proba(
        self, images: Sequence[ImageLike]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(probabilities, mask)`` per image in one pass: what evaluation needs of each image."""
        return [(p.cpu().numpy(), self._labels(p)) for p in self._probabilities(list(images))]

    def _labels(self, probs: torch.Tensor) -> np.ndarray:
        return self.task.labels_from_probabilities(probs[None])[0].to(torch.uint8).cpu().numpy()

    @torch.inference_mode()
    def _probabilities(self, images: list[ImageLike]) -> list[torch.Tensor]:
        arrays = [self._as_array(image) for image in images]
        results: list[torch.Tensor] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            inputs = torch.stack([self._model_input(a) for a in chunk]).to(self.device)
            probs = self.task.probabilities(self.model(inputs))
            for array, prob in zip(chunk, probs, strict=True):
                size = array.shape[:2]
                if tuple(prob.shape[-2:]) != size:
                    prob = F.interpolate(
                        prob[None], size=size, mode="bilinear", align_corners=False
                    )[0]
                results.append(prob)
        return results

    def _model_input(self, image: np.ndarray) -> torch.Tensor:
        resized = resize_image(image, self.preprocessing.img_size)
        return to_tensor(resized, self.preprocessing.mean, self.preprocessing.std)

    def _as_array(self, image: ImageLike) -> np.ndarray:
        """An HxWxC uint8 array with the channel count the model was trained on."""
        if isinstance(image, (str, Path)):
            raise TypeError(
                f"Segmenter takes images (NumPy arrays or PIL images), not paths like {image!r}; "
                f"read the file first (unetkit.data.folder.read_image) or use predict_files"
            )
        channels = self.preprocessing.in_channels
        array = _pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 pixel values 0..255, got {array.dtype}; convert first, e.g. "
                f"(img / img.max() * 255).astype(np.uint8)"
            )
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or min(array.shape[:2]) < 1:
            raise ValueError(
                f"expected one image of shape HxW or HxWxC, got shape {array.shape}; "
                f"pass several images as a list"
            )
        return np.ascontiguousarray(_match_channels(array, channels))


_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Grey or RGB uint8 pixels of a PIL image, as ``unetkit.data.folder.read_image`` sees them.

    High-bit-depth images keep their dtype, so they fail the uint8 check instead of being clipped.
    """
    if image.mode in ("L", "RGB") or image.mode in _HIGH_BIT_DEPTH_MODES:
        return np.asarray(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """``array`` (HxWxC) with alpha dropped and grey/RGB converted to ``channels`` channels."""
    if array.shape[2] in (2, 4):  # grey + alpha, RGBA
        array = array[..., :-1]
    if array.shape[2] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] == 3 and channels == 1:
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[..., None]
    if array.shape[2] != channels:
        raise ValueError(
            f"the model expects {channels}-channel images (1 = grey, 3 = RGB, with an optional "
            f"alpha channel); got {array.shape[2]} channels"
        )
    return array


def _is_single(images: object) -> bool:
    return isinstance(images, (Image.Image, np.ndarray, str, Path))
