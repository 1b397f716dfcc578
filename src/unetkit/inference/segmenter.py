"""The Segmenter: from an image (NumPy array or PIL image) to a mask, by a checkpoint's recipe.

It is what a deployed model carries: it resizes and normalises exactly as training did, runs the
model in batches, and returns probabilities or class ids at each input's own size. Evaluation uses
it too, so the metrics describe the very path that ``predict`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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

    def predict_proba(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> np.ndarray | list[np.ndarray]:
        """Class probabilities ``(num_classes, H, W)`` float32 at each image's own size."""
        single = _is_single(images)
        batch = [images] if single else list(images)
        probs = [p.cpu().numpy() for p in self._probabilities(batch)]
        return probs[0] if single else probs

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """Class-id masks ``(H, W)`` uint8 at each image's own size."""
        single = _is_single(images)
        batch = [images] if single else list(images)
        masks = [self._labels(p) for p in self._probabilities(batch)]
        return masks[0] if single else masks

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
        channels = self.preprocessing.in_channels
        if isinstance(image, Image.Image):
            image = np.array(image.convert("L" if channels == 1 else "RGB"))
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(f"expected an image of shape HxW or HxWxC, got shape {array.shape}")
        if array.shape[2] == 4 and channels == 3:
            array = array[..., :3]
        if array.shape[2] == 1 and channels == 3:
            array = np.repeat(array, 3, axis=2)
        if array.shape[2] == 3 and channels == 1:
            array = np.asarray(Image.fromarray(array).convert("L"))[..., None]
        if array.shape[2] != channels:
            raise ValueError(
                f"the model expects {channels}-channel images; got {array.shape[2]} channels"
            )
        if array.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 pixel values 0..255, got {array.dtype}; convert first, e.g. "
                f"(img / img.max() * 255).astype(np.uint8)"
            )
        return np.ascontiguousarray(array)


def _is_single(images: object) -> bool:
    return isinstance(images, (Image.Image, np.ndarray))
