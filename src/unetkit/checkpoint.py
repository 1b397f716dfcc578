"""Checkpoint files: written atomically, and complete enough to rebuild the model without flags.

A checkpoint is a dict saved with :func:`torch.save`. Besides the weights (``model``) it carries
the model's registry name and options (``architecture``), the task (classes, threshold) and the
preprocessing (input size, normalisation), so ``evaluate`` and ``predict`` need nothing but the
file. Training state (optimiser, schedule, scaler, RNG) rides along so a run can resume exactly.

A checkpoint can never run code. A pickle can name any callable to rebuild an object, so every
read goes through ``torch.load(weights_only=True)``, whose unpickler builds nothing but tensors
and plain containers and refuses every other name before calling it. That keeps one file per
checkpoint, with the optimiser's nested state as it is, and needs no new dependency (safetensors
would hold the tensors but not the nested optimiser state or the record without a second file).
The payload is plain data to match: the RNG states are tensors and lists, the config a dict. The
only names allowed beyond torch's own are NumPy's array and dtype constructors, which build data
and call nothing: checkpoints written before this rule hold NumPy's RNG state as an array, and
keep loading.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetkit.config import Config, config_from_dict
from unetkit.data.preprocess import size_hw
from unetkit.models import build_model
from unetkit.tasks import Task

FORMAT = "unetkit-checkpoint"
FORMAT_VERSION = 1
TEMPORARY = ".tmp"  # suffix of a checkpoint being written


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous file at its path is untouched."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input: resized to ``img_size`` [H, W], then normalised.

    ``tile_size`` is set when the model was trained on ``tile_size`` x ``tile_size`` tiles cut from
    images at their native resolution (``data.tile_size``), each resized to ``img_size``: the model
    then expects images scaled by ``img_size / tile_size``. None: it was trained on whole images,
    each resized to ``img_size`` (checkpoints written before this field existed are read so too).
    """

    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    tile_size: int | None = None

    def __post_init__(self) -> None:  # a config's img_size may be one number: a square
        object.__setattr__(self, "img_size", size_hw(self.img_size))


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint with everything needed to feed it and read its output."""

    model: nn.Module
    task: Task
    class_names: list[str]
    preprocessing: Preprocessing
    checkpoint: dict[str, Any]


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` via a temporary file, flushed to disk, and a rename: ``path`` is the old
    file or the new one, never a half-written one, whatever stops the process. A failed write
    (a full disk) leaves the old file as it was and says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    _require_plain(payload, "checkpoint")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _sync_folder(path.parent)
    except OSError as error:
        Path(tmp_name).unlink(missing_ok=True)
        kept = "the previous one is intact" if path.exists() else "no earlier one existed"
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({error.strerror or error}); {kept}. Free "
            f"space or fix the folder's permissions, then continue with --resume auto"
        ) from error
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Flush a rename to disk (POSIX; a no-op where folders cannot be opened, as on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed process left while writing a checkpoint in
    ``folder``; they are never read, only clutter. Returns what was deleted."""
    stale = sorted(folder.glob(f".*.pt.*{TEMPORARY}")) if folder.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def is_intact(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint archive: every member's checksum verified, so
    a truncated or damaged file is never resumed from."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a unetkit checkpoint, with an error that says what is wrong and what to pass instead."""
    path = Path(path)
    if path.is_dir():
        options = (path / "checkpoints" / "best.pt", path / "best.pt")
        candidates = [p for p in options if p.is_file()]
        hint = f"; did you mean {candidates[0]}?" if candidates else ""
        raise FileNotFoundError(
            f"{path} is a folder; pass a checkpoint file such as RUN/checkpoints/best.pt "
            f"or RUN/checkpoints/last.pt{hint}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = _load_plain_data(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a unetkit checkpoint (no '{FORMAT}' marker); pass a file written by "
            f"'unetkit train', e.g. RUN/checkpoints/best.pt"
        )
    return payload


def trained_config(path: str | Path) -> Config:
    """The config the checkpoint at ``path`` was trained with (its ``config`` entry)."""
    return config_from_dict(load_checkpoint(path)["config"])


_PLAIN = (str, int, float, bool, type(None))  # exact types: NumPy's float64 is a float, too


def _require_plain(value: Any, where: str) -> None:
    """Refuse, at write time, a payload that :func:`load_checkpoint` would refuse to read."""
    if isinstance(value, dict):
        for key, item in value.items():
            _require_plain(key, where)
            _require_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _require_plain(item, f"{where}[{index}]")
    elif type(value) not in _PLAIN and not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint "
            f"holds tensors and plain types only (convert it, e.g. with float() or .tolist())"
        )


# NumPy arrays as data (older checkpoints' RNG state): constructors that call nothing else
_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # renamed in NumPy 2
_NUMPY_DATA = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _NUMPY_CORE.multiarray._reconstruct]


def _load_plain_data(path: Path, map_location: str | torch.device) -> Any:
    """The unpickled payload of ``path``, built from tensors and plain types only; a file whose
    pickle names anything else is refused before that name is ever called."""
    try:
        with torch.serialization.safe_globals(_NUMPY_DATA):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a safe checkpoint: its pickle asks to build objects other than tensors "
            f"and plain data ({_refused_name(error)}), and unetkit never runs such a payload. Use "
            f"a checkpoint written by 'unetkit train'; if you wrote this file yourself with "
            f"torch.save, save plain dicts, lists, numbers, strings and tensors only"
        ) from error
    except Exception as error:
        raise ValueError(f"{path} could not be read as a checkpoint ({error})") from error


def _refused_name(error: Exception) -> str:
    """What torch's unpickler refused, without its advice on how to turn the check off."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return f"it names {found.group(1)}" if found else " ".join(str(error).split())[:200]


def model_metadata(
    model_name: str,
    model_options: dict[str, Any],
    task: Task,
    class_names: list[str],
    preprocessing: Preprocessing,
) -> dict[str, Any]:
    """The part of a checkpoint that describes the model, independent of training state."""
    return {
        "architecture": {"name": model_name, "options": dict(model_options)},
        "task": task.to_dict(),
        "class_names": list(class_names),
        "preprocessing": {
            "img_size": list(preprocessing.img_size),
            "mean": list(preprocessing.mean),
            "std": list(preprocessing.std),
            "in_channels": preprocessing.in_channels,
            "tile_size": preprocessing.tile_size,
        },
    }


def preprocessing_from_dict(prep: dict[str, Any]) -> Preprocessing:
    """:class:`Preprocessing` from its stored form (checkpoint or exported metadata); files
    written before ``tile_size`` existed read as None."""
    tile_size = prep.get("tile_size")
    return Preprocessing(
        img_size=tuple(prep["img_size"]),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        in_channels=int(prep["in_channels"]),
        tile_size=None if tile_size is None else int(tile_size),
    )


def model_from_checkpoint(
    checkpoint: dict[str, Any] | str | Path, weights: str = "model"
) -> LoadedModel:
    """Rebuild the model of a checkpoint (in eval mode, on the CPU) with its task and preprocessing.

    ``weights`` picks the state dict to load: ``model``, or ``ema`` where a run kept one.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    preprocessing = preprocessing_from_dict(checkpoint["preprocessing"])
    task = Task.from_dict(checkpoint["task"])
    architecture = checkpoint["architecture"]
    options = {k: v for k, v in architecture["options"].items() if k != "pretrained"}
    model = build_model(
        architecture["name"], preprocessing.in_channels, task.out_channels, **options
    )
    if weights not in checkpoint:
        raise KeyError(f"this checkpoint holds no {weights!r} weights; use weights='model'")
    model.load_state_dict(checkpoint[weights])
    model.eval()
    return LoadedModel(model, task, list(checkpoint["class_names"]), preprocessing, checkpoint)
