"""Static int8 quantisation of an exported model, refused unless it keeps the fp32 model's masks.

Static, not dynamic: dynamic quantisation measures the activations' range at run time, on every
call, and on convolutions that overhead often makes the int8 model slower than the fp32 one.
Static quantisation fixes each activation's scale beforehand from **calibration** images, so the
graph runs int8 convolutions end to end. ONNX files go through ONNX Runtime's quantiser
(``quantize_static``, QDQ format: QuantizeLinear / DequantizeLinear pairs around each quantised
operator, unsigned 8-bit activations, signed 8-bit per-channel weights, min-max calibration);
OpenVINO IRs through NNCF (``nncf.quantize``, its default symmetric preset), the quantiser
OpenVINO's runtime is tuned for.

Data. Calibration images come from the **training split** of the data the checkpoint was trained
on (its recorded config, rebuilt; ``root`` overrides the recorded ``data.root`` when the data has
moved), each resized and normalised as training fed it, at most ``calibration_images`` of them
spread evenly over the split. The guard runs on the **validation split** (at most
``guard_images``), images the quantiser never saw.

Guard. On every held-out image the int8 model and the fp32 PyTorch model run through the same
Segmenter path (the file's recorded inference config, fp32 for PyTorch) and:

- the **mask agreement**, the share of pixels whose class the two agree on, must be at least
  :data:`MIN_AGREEMENT` (99%);
- the **headline metric** against the ground truth (the checkpoint's monitored metric when it is
  one, else foreground IoU for a binary task and mean IoU otherwise; computed by
  :mod:`unetkit.metrics`, pooled over the split) may drop by at most :data:`MAX_DROP_POINTS`
  (0.5 points, i.e. 0.005).

Both numbers are reported either way; when either fails :class:`QuantizationGuardError` is
raised and the export leaves no file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.checkpoint import LoadedModel
from unetkit.config import config_from_dict
from unetkit.data import build_splits
from unetkit.data.preprocess import resize_image, to_tensor
from unetkit.data.sources import SampleSource
from unetkit.inference.export import METADATA_KEY
from unetkit.inference.options import recorded_options
from unetkit.inference.segmenter import InferenceModel, Segmenter
from unetkit.metrics import ConfusionMatrix, summarise
from unetkit.metrics.split import ranking_key

QUANTIZATIONS = ("int8",)
QUANTIZATION_KEY = "quantization"  # the record in an int8 export's metadata
ONNX_METHOD = (
    "static QDQ (ONNX Runtime quantize_static): uint8 activations, int8 per-channel weights, "
    "min-max calibration"
)
OPENVINO_METHOD = "static (NNCF quantize, default preset)"
MIN_AGREEMENT = 0.99
MAX_DROP_POINTS = 0.5
DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_GUARD_IMAGES = 200
GUARD_BATCH_SIZE = 4


class QuantizationGuardError(ValueError):
    """The int8 model's masks or headline metric moved too far from the fp32 model's."""


@dataclass(frozen=True)
class CalibrationData:
    """Model inputs for the quantiser and held-out labelled images for the guard."""

    inputs: list[np.ndarray]  # each (1, C, H, W) float32, as training fed the model
    held_out: SampleSource
    description: str  # where they came from, for reports and messages


@dataclass(frozen=True)
class GuardReport:
    """How closely the int8 model follows the fp32 one on the held-out images."""

    images: int
    agreement: float  # share of pixels with the same class in both masks
    metric: str
    fp32: float | None
    int8: float | None
    drop_points: float | None  # (fp32 - int8) x 100; None when the metric is undefined
    min_agreement: float
    max_drop_points: float

    @property
    def passed(self) -> bool:
        drop_ok = self.drop_points is None or self.drop_points <= self.max_drop_points
        return self.agreement >= self.min_agreement and drop_ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        """One line with both numbers and their limits."""
        fp32, int8 = _points(self.fp32), _points(self.int8)
        drop = "undefined" if self.drop_points is None else f"{self.drop_points:.2f}"
        return (
            f"int8 guard on {self.images} held-out images: mask agreement with fp32 "
            f"{100 * self.agreement:.2f}% (at least {100 * self.min_agreement:g}%), {self.metric} "
            f"{fp32} -> {int8}, a drop of {drop} points (at most {self.max_drop_points:g})"
        )


def check_quantization(quantize: str | None, format: str, calibration: str | None) -> None:
    """Refuse combinations that cannot work, before anything is exported."""
    if quantize is None:
        if calibration is not None:
            raise ValueError("--calibration applies with --quantize int8; add it or drop it")
        return
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}")
    if format not in ("onnx", "openvino"):
        raise ValueError(
            f"int8 quantisation applies to the onnx and openvino formats; got format {format!r}"
        )


# --- data ---------------------------------------------------------------------------------------


def calibration_data(
    loaded: LoadedModel,
    root: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    guard_images: int = DEFAULT_GUARD_IMAGES,
    split_record: dict[str, Any] | None = None,
) -> CalibrationData:
    """Calibration inputs from the checkpoint's training split, and its validation split.

    ``root`` replaces the recorded ``data.root`` (None or ``"recorded"``: keep it);
    ``split_record`` is the run's saved split, to use exactly its images.
    """
    cfg = _data_config(loaded.checkpoint, root)
    splits = build_splits(cfg, split_record=split_record)
    train, val = splits.train, splits.val
    where = f"{cfg.data.dataset} data at {cfg.data.root or '(generated)'}"
    for name, source in (("training", train), ("validation", val)):
        if len(source) == 0:
            raise ValueError(
                f"the {name} split of the {where} is empty, so int8 calibration has no images; "
                f"point --calibration at the data the model was trained on"
            )
    prep = loaded.preprocessing
    picked = _spread(len(train), calibration_images)
    inputs = [
        to_tensor(resize_image(train.load(i)[0], prep.img_size), prep.mean, prep.std)[None].numpy()
        for i in picked
    ]
    held_out = val.subset([val.names[i] for i in _spread(len(val), guard_images)])
    description = (
        f"{len(inputs)} training images and {len(held_out)} validation images of the {where}"
    )
    return CalibrationData(inputs, held_out, description)


def run_split_record(checkpoint_path: str | Path, root: str | None) -> dict[str, Any] | None:
    """The training run's own split (``RUN/splits.json`` beside ``RUN/checkpoints/``) when
    calibrating on the recorded data, so the guard's images are exactly its validation split."""
    path = Path(checkpoint_path).resolve().parent.parent / "splits.json"
    if root not in (None, "recorded") or not path.is_file():
        return None
    return json.loads(path.read_text())


def _data_config(checkpoint: dict[str, Any], root: str | None) -> Any:
    if "config" not in checkpoint:
        raise ValueError(
            "the checkpoint records no training config, so its training data is unknown and int8 "
            "calibration has no images; quantise a checkpoint written by 'unetkit train'"
        )
    tree = copy.deepcopy(checkpoint["config"])
    if root not in (None, "recorded"):
        tree["data"]["root"] = str(root)
    return config_from_dict(tree)


def _spread(total: int, count: int) -> list[int]:
    """At most ``count`` indices spread evenly over ``range(total)``, in order."""
    if count < 1:
        raise ValueError(f"the image count must be at least 1; got {count!r}")
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


# --- quantisers ---------------------------------------------------------------------------------


def quantize_onnx(fp32: Path, out: Path, inputs: Sequence[np.ndarray]) -> None:
    """Write the static QDQ int8 version of the ONNX file ``fp32`` to ``out``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[np.ndarray] = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            array = next(self.feeds, None)
            return None if array is None else {_onnx_input_name(fp32): array}

    quantize_static(
        fp32,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def _onnx_input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def quantize_openvino(graph: Any, inputs: Sequence[np.ndarray]) -> Any:
    """The NNCF-quantised int8 version of an in-memory OpenVINO model."""
    import nncf

    return nncf.quantize(graph, nncf.Dataset(list(inputs)), subset_size=len(inputs))


def quantize_in_place(
    format: str,
    temporary: Path,
    loaded: LoadedModel,
    metadata: dict[str, Any],
    data: CalibrationData,
    checkpoint: str | Path,
) -> dict[str, Any]:
    """Replace the checked fp32 export at ``temporary`` with its int8 version, once the guard
    passes (else :class:`QuantizationGuardError`, ``temporary`` untouched); returns the record
    stored in the file's metadata under ``quantization``."""

    def accept(candidate: InferenceModel, method: str) -> dict[str, Any]:
        """Guard ``candidate``; its metadata with the quantisation record when it passes."""
        report = guard(loaded, candidate, metadata, data.held_out)
        require_guard(report, format, checkpoint)
        record = {
            "precision": "int8",
            "method": method,
            "calibration": data.description,
            "guard": report.to_dict(),
            "summary": report.summary(),
        }
        return {**metadata, QUANTIZATION_KEY: record}

    quantize_file = _quantize_onnx_file if format == "onnx" else _quantize_openvino_file
    return quantize_file(temporary, data.inputs, accept)[QUANTIZATION_KEY]


Accept = Callable[[InferenceModel, str], dict[str, Any]]


def _quantize_onnx_file(temporary: Path, inputs: Sequence[np.ndarray], accept: Accept) -> dict:
    """Quantise with ONNX Runtime; the int8 file replaces ``temporary`` once accepted."""
    import onnx

    from unetkit.inference.onnx_backend import OnnxModel

    trial = temporary.with_name(f"{temporary.name}.int8")
    try:
        quantize_onnx(temporary, trial, inputs)
        metadata = accept(OnnxModel(trial), ONNX_METHOD)
        proto = onnx.load(str(trial))
        set_onnx_metadata(proto, metadata)
        onnx.save_model(proto, str(temporary))  # ONNX Runtime read the file whole: safe to replace
    finally:
        trial.unlink(missing_ok=True)
    return metadata


def _quantize_openvino_file(temporary: Path, inputs: Sequence[np.ndarray], accept: Accept) -> dict:
    """Quantise with NNCF; the int8 IR replaces ``temporary`` once accepted."""
    from unetkit.inference import openvino_backend as ov

    graph = quantize_openvino(ov.read_ir(temporary), inputs)
    # OpenVINO maps weight files into memory: each write gets a new name, moved by renaming
    with ov.temporary_ir(temporary) as trial, ov.temporary_ir(temporary) as final:
        ov.save_ir(graph, trial)
        metadata = accept(ov.OpenVinoModel(trial), OPENVINO_METHOD)
        ov.set_metadata(graph, metadata)
        ov.save_ir(graph, final)
        ov.publish_ir(final, temporary)
    return metadata


def set_onnx_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as the ONNX model's unetkit entry, replacing any earlier one."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)


# --- guard -------------------------------------------------------------------------------------


def headline_metric(loaded: LoadedModel) -> str:
    """The checkpoint's monitored metric when it is a pixel metric, else the ranking default."""
    monitor = str(loaded.checkpoint.get("config", {}).get("train", {}).get("monitor", ""))
    name = monitor.removeprefix("val_ema_").removeprefix("val_")
    known = ("mean_iou", "mean_dice", "pixel_accuracy", "foreground_iou", "foreground_dice")
    return name if name in known else ranking_key(loaded.task.is_binary)


def guard(
    loaded: LoadedModel,
    candidate: InferenceModel,
    metadata: dict[str, Any],
    held_out: SampleSource,
    min_agreement: float | None = None,
    max_drop_points: float | None = None,
) -> GuardReport:
    """Compare the int8 ``candidate`` with the fp32 PyTorch model on ``held_out``; the limits
    default to :data:`MIN_AGREEMENT` and :data:`MAX_DROP_POINTS`."""
    options = recorded_options(metadata, "the export", precision="fp32", channels_last=False)
    reference = _segmenter(loaded, loaded.model, options)
    quantised = _segmenter(loaded, candidate, options)
    classes = loaded.task.num_classes
    matrices = {"fp32": ConfusionMatrix(classes), "int8": ConfusionMatrix(classes)}
    same = total = 0
    for images, masks in _batches(held_out, GUARD_BATCH_SIZE):
        for fp32, int8, mask in zip(
            reference.predict(images), quantised.predict(images), masks, strict=True
        ):
            same += int((fp32 == int8).sum())
            total += fp32.size
            matrices["fp32"].update(fp32, mask)
            matrices["int8"].update(int8, mask)
    metric = headline_metric(loaded)
    values = {name: _metric(m, loaded, metric) for name, m in matrices.items()}
    defined = None not in values.values()
    drop = 100 * (values["fp32"] - values["int8"]) if defined else None  # type: ignore[operator]
    return GuardReport(
        len(held_out),
        same / max(total, 1),
        metric,
        values["fp32"],
        values["int8"],
        drop,
        MIN_AGREEMENT if min_agreement is None else min_agreement,
        MAX_DROP_POINTS if max_drop_points is None else max_drop_points,
    )


def require_guard(report: GuardReport, format: str, checkpoint: str | Path) -> None:
    """Raise :class:`QuantizationGuardError` naming both numbers and the fix when it failed."""
    if report.passed:
        return
    raise QuantizationGuardError(
        f"the int8 {format} export of {checkpoint} was refused and not written: "
        f"{report.summary()}. Export it in fp32 (drop --quantize), or calibrate on more or more "
        f"representative training images (--calibration-images, --calibration DATA)"
    )


def _segmenter(loaded: LoadedModel, model: InferenceModel, options: dict[str, Any]) -> Segmenter:
    return Segmenter(
        model,
        loaded.task,
        loaded.class_names,
        loaded.preprocessing,
        device="cpu",
        batch_size=GUARD_BATCH_SIZE,
        **options,
    )


def _batches(
    source: SampleSource, size: int
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    for start in range(0, len(source), size):
        pairs = [source.load(i) for i in range(start, min(start + size, len(source)))]
        yield [image for image, _ in pairs], [mask for _, mask in pairs]


def _metric(matrix: ConfusionMatrix, loaded: LoadedModel, name: str) -> float | None:
    summary = summarise(matrix.matrix, loaded.class_names, binary=loaded.task.is_binary)
    value = summary.get(name)
    return None if value is None else float(value)


def _points(value: float | None) -> str:
    return "undefined" if value is None else f"{100 * value:.2f}"
