"""The Segmenter: from an image (NumPy array or PIL image) to a mask, by a checkpoint's recipe.

It is what a deployed model carries: it scales and normalises exactly as training did, runs the
model in batches, and returns probabilities or class ids at each input's own size. Evaluation uses
it too, so the metrics describe the very path that ``predict`` takes.

How an image reaches the model (``mode``: resized whole, or scaled to the training tiles' scale
and cut into sliding windows) is decided by :mod:`unetkit.inference.modes`.

``precision`` and ``channels_last`` say how the model runs (see :mod:`unetkit.precision`):
``"auto"`` times a few batches of the model at its input size in each safe option and keeps the
fastest; the choice is in :attr:`Segmenter.execution_choice`. Models that are not torch modules
(ONNX Runtime, say) run as they are, in fp32.

With ``tta`` each model input is also predicted flipped (:mod:`unetkit.inference.tta`); with
``postprocess`` the labels are cleaned (:mod:`unetkit.inference.postprocess`). Probabilities are
never post-processed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, overload

import numpy as np
import torch
import torch.nn.functional as F

from unetkit.checkpoint import LoadedModel, Preprocessing
from unetkit.data.preprocess import resize_image, to_tensor
from unetkit.devices import resolve_device
from unetkit.inference.calibrated import load_model
from unetkit.inference.image_input import ImageLike, as_image_array, is_single_image
from unetkit.inference.modes import check_mode, training_scale_size, uses_sliding
from unetkit.inference.options import InferenceConfig, recorded_options
from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.sliding_window import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    check_overlap,
    checked_window_size,
    sliding_window_probabilities,
)
from unetkit.inference.tta import FLIPS, checked_flips, flip_averaged
from unetkit.precision import ExecutionChoice, choose_execution, detect_capabilities
from unetkit.precision_probe import inference_timer
from unetkit.tasks import Task

__all__ = ["ImageLike", "InferenceModel", "Segmenter"]


class InferenceModel(Protocol):
    """What the Segmenter runs: a torch module, or any wrapper (e.g. ONNX Runtime) that acts so."""

    def to(self, device: torch.device) -> InferenceModel: ...
    def eval(self) -> InferenceModel: ...
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...  # NCHW float32 -> logits


class Segmenter:
    """Runs a trained model on images of any size; see :meth:`from_checkpoint`.

    ``batch_size`` counts images per forward pass when resizing, windows when sliding. ``mode``
    is ``auto``, ``resize`` or ``sliding`` (see :mod:`unetkit.inference.modes`); ``window_size``
    (default ``img_size``, the model's input) and ``overlap`` shape the sliding windows; ``tta``
    averages the flips ``tta_flips`` (all four unless the checkpoint records the ones its
    training used); ``postprocess`` cleans the labels of :meth:`predict` and
    :meth:`predict_with_proba`.
    """

    def __init__(
        self,
        model: InferenceModel,
        task: Task,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        mode: str = "auto",
        window_size: int | Sequence[int] | None = None,
        overlap: float = DEFAULT_OVERLAP,
        tta: bool = False,
        tta_flips: Sequence[Sequence[int]] = FLIPS,
        postprocess: PostProcessing | None = None,
        precision: str = "fp32",
        channels_last: bool | str = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if postprocess is not None:
            postprocess.check_classes(task.num_classes)
        self.mode = check_mode(mode)
        self.window_size = checked_window_size(
            preprocessing.img_size if window_size is None else window_size
        )
        self.overlap = check_overlap(overlap)
        self.tta = tta
        self.tta_flips = checked_flips(tta_flips)
        self.postprocess = postprocess
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.asked_execution = (precision, channels_last)  # as asked: ``auto`` stays ``auto``
        self.execution_choice = self._choose_execution(precision, channels_last)
        self.execution = self.execution_choice.execution
        if isinstance(self.model, torch.nn.Module):
            self.execution.prepare(self.model)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Sequence[str | Path],
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        threshold: float | None = None,
        **options: object,
    ) -> Segmenter:
        """Load ``best.pt``/``last.pt`` (or any unetkit checkpoint); no other settings needed.

        Several paths (or a ``unetkit cv`` folder) are one ensemble; each checkpoint's stored
        calibration is applied and ``threshold`` overrides the stored one
        (:func:`unetkit.inference.calibrated.load_model`). ``options`` are the keyword options of
        the constructor (``mode``, ``tta``, ...); those not given are the checkpoint's recorded
        inference config (see :mod:`.options`).
        """
        loaded = load_model(path, threshold)
        return cls.from_loaded(loaded, device, batch_size, **options)

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        **options: object,
    ) -> Segmenter:
        """The Segmenter of a model already rebuilt by ``model_from_checkpoint``, run as its
        checkpoint records unless ``options`` say otherwise."""
        return cls(
            loaded.model,
            loaded.task,
            loaded.class_names,
            loaded.preprocessing,
            device=device,
            batch_size=batch_size,
            **recorded_options(loaded.checkpoint, "the checkpoint", **options),
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
        single = is_single_image(images)
        batch = [images] if single else list(images)
        probs = [p.cpu().numpy() for p in self._probabilities(batch)]
        return probs[0] if single else probs

    @overload
    def predict(self, images: ImageLike) -> np.ndarray: ...
    @overload
    def predict(self, images: Sequence[ImageLike]) -> list[np.ndarray]: ...

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray | list[np.ndarray]:
        """Class-id masks ``(H, W)`` uint8 at each image's own size (multi-label: ``(L, H, W)``
        of 0/1).

        They are the labels of :meth:`predict_proba` (its argmax, or for a binary task its
        foreground probability above the task's threshold), then ``postprocess``-ed if set.
        """
        single = is_single_image(images)
        batch = [images] if single else list(images)
        masks = [self._labels(p) for p in self._probabilities(batch)]
        return masks[0] if single else masks

    def predict_with_proba(
        self, images: Sequence[ImageLike]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(probabilities, mask)`` per image in one pass: what evaluation needs of each image."""
        return [(p.cpu().numpy(), self._labels(p)) for p in self._probabilities(list(images))]

    def predict_members(
        self, images: Sequence[ImageLike]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(member probabilities (M, C, H, W), mean probabilities, mask)`` per image of a
        PyTorch ensemble: each member through the very path (resize or windows, TTA) the
        ensemble takes, whose mean is the ensemble's probabilities (every step is linear; an
        ensemble calibrated as a whole maps the mean once it is resized or blended)."""
        members = getattr(self.model, "members", None)
        if members is None:
            raise ValueError(
                "member probabilities need a PyTorch ensemble (several --checkpoint files); "
                "an exported ensemble is one graph whose members cannot be run apart"
            )
        whole, per_member = self.model, []
        try:
            for member in members:
                self.model = member
                per_member.append(self._probabilities(list(images)))
        finally:
            self.model = whole
        results = []
        for stacked in (torch.stack(probs) for probs in zip(*per_member, strict=True)):
            mean = whole.mean_probabilities(stacked)
            results.append((stacked.cpu().numpy(), mean.cpu().numpy(), self._labels(mean)))
        return results

    def inference_config(self) -> InferenceConfig:
        """How this Segmenter runs, with the window it uses and the execution as asked (what
        ``auto`` chose is :attr:`execution_choice`): the record that reproduces its results."""
        precision, channels_last = self.asked_execution
        return InferenceConfig(
            self.mode,
            self.window_size,
            self.overlap,
            self.tta,
            self.tta_flips,
            self.postprocess,
            precision,
            channels_last,
        )

    def slides_over(self, height: int, width: int) -> bool:
        """Whether an image of this size is predicted by sliding windows (see ``modes``)."""
        return uses_sliding(self.mode, self.preprocessing, self.window_size, height, width)

    def _labels(self, probs: torch.Tensor) -> np.ndarray:
        """Class ids ``(H, W)``, or a multi-label task's 0/1 maps ``(L, H, W)`` (each label
        post-processed on its own map, as the foreground of a binary mask)."""
        labels = self.task.labels_from_probabilities(probs[None])[0].to(torch.uint8).cpu().numpy()
        if self.postprocess is None:
            return labels
        if self.task.multilabel:
            return np.stack([self.postprocess.apply(label) for label in labels])
        return self.postprocess.apply(labels)

    @torch.inference_mode()
    def _probabilities(self, images: list[ImageLike]) -> list[torch.Tensor]:
        channels = self.preprocessing.in_channels
        arrays = [as_image_array(image, channels) for image in images]
        results: list[torch.Tensor] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            sliding = [self.slides_over(*array.shape[:2]) for array in chunk]
            resized = [array for array, slides in zip(chunk, sliding, strict=True) if not slides]
            whole = iter(self._resized_probabilities(resized))
            for array, slides in zip(chunk, sliding, strict=True):
                results.append(self._sliding_probabilities(array) if slides else next(whole))
        return results

    def _resized_probabilities(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Each image resized whole to ``img_size``, all in one batch."""
        if not arrays:
            return []
        prep = self.preprocessing
        inputs = [to_tensor(resize_image(a, prep.img_size), prep.mean, prep.std) for a in arrays]
        probs = self._predict(torch.stack(inputs).to(self.device))
        return [_resized(p, a.shape[:2]) for a, p in zip(arrays, probs, strict=True)]

    def _sliding_probabilities(self, array: np.ndarray) -> torch.Tensor:
        """The image at the training scale, predicted window by window."""
        prep = self.preprocessing
        scaled = resize_image(array, training_scale_size(prep, *array.shape[:2]))
        image = to_tensor(scaled, prep.mean, prep.std).to(self.device)
        probs = sliding_window_probabilities(
            image, self._predict, self.window_size, self.overlap, self.batch_size
        )
        return _resized(probs, array.shape[:2])

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of model inputs, averaged over flips with ``tta``."""
        if self.tta:
            return flip_averaged(self._model_probabilities, self.tta_flips)(images)
        return self._model_probabilities(images)

    def _model_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.execution.memory_format)
        with self.execution.autocast(self.device.type):
            logits = self.model(images)
        return self.task.probabilities(logits.float())

    def _choose_execution(self, precision: str, channels_last: bool | str) -> ExecutionChoice:
        """The asked execution; ``auto`` parts timed on a batch of model inputs."""
        capabilities = detect_capabilities(self.device)
        runs_as_is = not isinstance(self.model, torch.nn.Module) or isinstance(
            self.model, torch.jit.ScriptModule
        )
        if runs_as_is:  # ONNX Runtime, TorchScript: the exported graph decides
            precision, channels_last = "fp32", False
        shape = (self.batch_size, self.preprocessing.in_channels, *self.window_size)
        timer = inference_timer(self.model, shape, self.device)  # type: ignore[arg-type]
        return choose_execution(precision, channels_last, capabilities, timer)


def _resized(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Probabilities ``(K, h, w)`` bilinearly resized to ``size`` (unchanged if already so)."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
