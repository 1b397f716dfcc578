"""Run exported models (:mod:`unetkit.inference.export`) through the ordinary Segmenter.

:class:`OnnxModel` makes an ONNX Runtime session look like the PyTorch model the Segmenter
expects (``.to``, ``.eval``, called on an NCHW float32 tensor, returns logits), so resizing,
sliding windows, TTA and post-processing are the very code PyTorch predictions go through, and
both backends give the same masks. The loaders rebuild the task, class names and preprocessing
from the metadata inside the file, and run as its recorded inference config unless told
otherwise (see :mod:`unetkit.inference.options`); a file without metadata is refused, since
guessing the normalisation or the class count would give wrong masks silently.

Devices: ``cpu`` runs ONNX Runtime's CPU provider; ``cuda[:N]`` its CUDA provider, which needs
the ``onnxruntime-gpu`` package (asking for it without that package is an error). ``auto`` in the
loaders picks CUDA only where both PyTorch and ONNX Runtime can use it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from unetkit.checkpoint import Preprocessing, preprocessing_from_dict
from unetkit.inference.export import (
    METADATA_FORMAT,
    METADATA_KEY,
    METADATA_VERSION,
    quiet_tracing,
)
from unetkit.inference.options import recorded_options
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.sliding_window import DEFAULT_BATCH_SIZE
from unetkit.tasks import Task

MAX_METADATA_CHARS = 1_000_000  # an export writes a few kB: classes, preprocessing, task

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxModel:
    """An ONNX model callable like a PyTorch segmentation model: logits for NCHW float32 images.

    The logits come back on the device of the input tensor.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.session = _session(self.path, ort_providers(self.device))
        self.metadata = _metadata_of(self.path, self.session)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.in_channels = model_input.shape[1] if isinstance(model_input.shape[1], int) else None
        self.size_multiple = (self.metadata or {}).get("size_multiple")

    def to(self, device: str | torch.device) -> OnnxModel:
        """Run on ``device`` from now on (a new session when the provider changes)."""
        device = torch.device(device)
        if ort_providers(device) != ort_providers(self.device):
            self.session = _session(self.path, ort_providers(device))
        self.device = device
        return self

    def eval(self) -> OnnxModel:
        """Nothing to switch: an exported graph is always in inference mode."""
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` of images ``(N, in_channels, H, W)``."""
        self._check_input(images)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).to(images.device)

    def _check_input(self, images: torch.Tensor) -> None:
        channels = "C" if self.in_channels is None else self.in_channels
        if images.ndim != 4 or self.in_channels not in (None, images.shape[1]):
            raise ValueError(
                f"{self.path.name} expects images shaped (N, {channels}, H, W); got "
                f"{tuple(images.shape)}"
            )
        multiple = self.size_multiple
        for side in images.shape[-2:]:
            if multiple and not reflectable(side, multiple):
                raise ValueError(
                    f"{self.path.name} pads images by reflection to a multiple of {multiple}, "
                    f"which a side of {side} pixels is too short for (every side above "
                    f"{multiple // 2} works); got {images.shape[-2]}x{images.shape[-1]}. Enlarge "
                    f"the image first, or predict with the PyTorch checkpoint"
                )


def reflectable(side: int, multiple: int) -> bool:
    """Whether padding ``side`` pixels to a multiple of ``multiple`` can reflect (as in PyTorch)."""
    padding = -side % multiple
    return padding - padding // 2 < side


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The unetkit metadata of an exported ONNX or TorchScript file, or an error saying why not."""
    path = Path(path)
    if _is_torchscript(path):
        return _torchscript_metadata(path, _load_torchscript(path)[1])
    return _require_metadata(path, _metadata_of(path, _session(path, [CPU_PROVIDER])))


def load_onnx_segmenter(
    path: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    **options: Any,
) -> Segmenter:
    """A :class:`Segmenter` running an exported ONNX file with ONNX Runtime.

    ``options`` are the Segmenter's keyword options (``mode``, ``tta``, ``postprocess``, ...);
    those not given are the file's recorded inference config.
    """
    device = onnx_device(device)
    model = OnnxModel(path, device=device)
    metadata = _require_metadata(model.path, model.metadata)
    task, class_names, preprocessing = segmenter_recipe(metadata, model.path)
    options = recorded_options(metadata, str(model.path), **options)
    return Segmenter(
        model, task, class_names, preprocessing, device=device, batch_size=batch_size, **options
    )


def load_torchscript_segmenter(
    path: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    **options: Any,
) -> Segmenter:
    """A :class:`Segmenter` running an exported TorchScript file with PyTorch (options as for
    :func:`load_onnx_segmenter`)."""
    path = Path(path)
    module, text = _load_torchscript(path)
    metadata = _torchscript_metadata(path, text)
    task, class_names, preprocessing = segmenter_recipe(metadata, path)
    options = recorded_options(metadata, str(path), **options)
    return Segmenter(
        module, task, class_names, preprocessing, device=device, batch_size=batch_size, **options
    )


def segmenter_recipe(
    metadata: dict[str, Any], path: str | Path = "the model"
) -> tuple[Task, list[str], Preprocessing]:
    """The task, class names and preprocessing described by an exported file's metadata, read
    as data: a field of the wrong kind is an error naming the file, never an internal one."""
    try:
        task = Task.from_dict(metadata["task"])
        preprocessing = preprocessing_from_dict(metadata["preprocessing"])
        class_names = [str(name) for name in metadata["class_names"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} has malformed unetkit metadata ({type(error).__name__}: {error}); export "
            f"the checkpoint again with 'unetkit export'"
        ) from error
    return task, class_names, preprocessing


def onnx_device(device: str | torch.device) -> str | torch.device:
    """``auto`` made concrete: CUDA only if both PyTorch and ONNX Runtime can use it."""
    if device != "auto":
        return device
    available = onnxruntime_module().get_available_providers()
    cuda = torch.cuda.is_available() and CUDA_PROVIDER in available
    return "cuda" if cuda else "cpu"


def ort_providers(device: torch.device) -> list[Any]:
    """ONNX Runtime providers for ``device``, or an error naming the package that is missing."""
    if device.type == "cpu":
        return [CPU_PROVIDER]
    available = onnxruntime_module().get_available_providers()
    if device.type == "cuda" and CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, {"device_id": device.index or 0}), CPU_PROVIDER]
    raise ValueError(
        f"device {str(device)!r} has no ONNX Runtime provider here (available: "
        f"{', '.join(available)}); for CUDA install onnxruntime-gpu, or use device 'cpu'"
    )


def _session(path: Path, providers: list[Any]) -> Any:
    """An ONNX Runtime session on ``path``, with errors that say what the file is not."""
    ort = onnxruntime_module()
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # ORT raises its own exception types for unreadable files
        raise ValueError(
            f"{path} could not be loaded as an ONNX model ({error}); pass a file written by "
            f"'unetkit export --format onnx'"
        ) from error


def _metadata_of(path: Path, session: Any) -> dict[str, Any] | None:
    """The decoded unetkit metadata of a session's model; None when the model has none."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return None if text is None else _decoded(path, text)


def _decoded(path: Path, text: str) -> dict[str, Any]:
    """The metadata parsed as JSON data (never evaluated), bounded in size."""
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(
            f"{path} has a {METADATA_KEY!r} metadata entry of {len(text):,} characters, more "
            f"than the {MAX_METADATA_CHARS:,} a unetkit export writes; export the checkpoint again"
        )
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} has a {METADATA_KEY!r} metadata entry that is not valid JSON ({error}); "
            f"export the checkpoint again"
        ) from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} has a {METADATA_KEY!r} metadata entry that is not a JSON object")
    return metadata


def _require_metadata(path: Path, metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None or metadata.get("format") != METADATA_FORMAT:
        raise ValueError(
            f"{path} holds no unetkit metadata (no {METADATA_KEY!r} entry), so its classes and "
            f"preprocessing are unknown; export the checkpoint with 'unetkit export --checkpoint "
            f"CKPT --format onnx --out FILE', or predict with the checkpoint itself"
        )
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > METADATA_VERSION:
        raise ValueError(
            f"{path} was exported in metadata version {version!r}, newer than this unetkit "
            f"reads ({METADATA_VERSION}); upgrade unetkit"
        )
    return metadata


def _is_torchscript(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def _load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, str | None]:
    """The module of a TorchScript file and its metadata text (None when it has none)."""
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript model {path} does not exist")
    extra = {METADATA_KEY: ""}
    try:
        with quiet_tracing():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as error:
        raise ValueError(
            f"{path} could not be loaded as a TorchScript model ({error}); pass a file written "
            f"by 'unetkit export --format torchscript'"
        ) from error
    text = extra[METADATA_KEY]
    text = text.decode() if isinstance(text, bytes) else text
    return module.eval(), text or None


def _torchscript_metadata(path: Path, text: str | None) -> dict[str, Any]:
    return _require_metadata(path, None if text is None else _decoded(path, text))


def onnxruntime_module() -> Any:
    """The onnxruntime package, or an ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "running ONNX models needs onnxruntime: pip install onnxruntime "
            "(onnxruntime-gpu for CUDA)"
        ) from error
    return onnxruntime
