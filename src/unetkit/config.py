"""One configuration object for a run: the CLI builds it, the trainer reads it, every run saves it.

A config is a tree of small dataclasses (task, data, model, loss, optim, train, eval). YAML files
and ``section.key=value`` overrides on the command line are merged over the defaults, in that order,
and unknown keys are rejected with the list of known ones, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TaskConfig:
    """What is predicted. ``num_classes`` counts the background; 2 means a binary sigmoid head.

    ``type: multilabel`` predicts labels that may overlap (one sigmoid each): ``num_classes``
    then counts the labels and ``class_names`` names them (no background).
    """

    type: str = "auto"  # auto (binary or multi-class by num_classes) | multilabel | ...
    num_classes: int | None = None  # None: taken from the dataset
    class_names: list[str] | None = None  # None: taken from the dataset, else class_0, class_1 ...
    threshold: float = 0.5  # binary tasks: foreground when p > threshold
    ignore_index: int | None = None  # a dataset mask value to exclude (e.g. CamVid void = 11)


@dataclass
class DataConfig:
    """Where images come from and how they are prepared."""

    dataset: str = "synthetic"
    root: str | None = None
    mode: str | None = None  # dataset-specific task variant, e.g. oxford-pet: binary | trimap
    img_size: list[int] = field(default_factory=lambda: [96, 96])  # [H, W] seen by the model
    in_channels: int = 3
    augment: str = "light"  # none | light | strong
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    split_ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = 0
    train_list: str | None = None  # files of sample names, one per line; override split_ratios
    val_list: str | None = None
    test_list: str | None = None
    num_workers: int = 0
    tile_size: int | None = None  # train on tiles of this size cut from large images (e.g. CCAgT)
    colour_map: str | None = None  # folder: file mapping RGB mask colours to class ids
    cache: bool = False  # keep decoded, resized samples on disk and reuse them across runs
    cache_dir: str | None = None  # default: $UNETKIT_CACHE_DIR or ~/.cache/unetkit
    train_repeats: int = 1  # passes over the training split per epoch (small splits)
    synthetic_count: int = 200  # synthetic only: images in the whole dataset
    synthetic_seed: int = 0


@dataclass
class ModelConfig:
    """Which architecture, by registry name, and its keyword options."""

    name: str = "unet"
    options: dict[str, Any] = field(default_factory=lambda: {"base_width": 16})


@dataclass
class LossConfig:
    """Weighted sum of named losses, e.g. ``ce:0.7,dice:0.3``; ``ce`` is BCE on a binary task."""

    spec: str = "ce:0.5,dice:0.5"
    class_weights: list[float] | None = None
    focal_gamma: float = 2.0


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    scheduler: str = "cosine"  # cosine | plateau | poly | none
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    poly_power: float = 0.9
    plateau_patience: int = 5
    plateau_factor: float = 0.5


@dataclass
class TrainConfig:
    """The loop: length, batching, precision, reproducibility, outputs."""

    epochs: int = 12
    batch_size: int = 8
    accum_steps: int = 1
    # auto | fp32 | bf16 | fp16: auto measures a few steps and keeps the fastest safe option
    # (see unetkit.precision); the run's config.yaml then holds what was chosen.
    precision: str = "auto"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str | None = None  # None: runs/<dataset>-<model>-<timestamp>
    resume: str | None = None  # a checkpoint, or "auto": the newest in train.out's checkpoints/
    monitor: str = "val_mean_iou"  # val_loss or any val_<metric> in history.csv
    grad_clip: float | None = None
    progress: bool = True
    patience: int | None = None  # early stopping: epochs without a better monitor; None = off
    time_budget: str | None = None  # "90s", "20m", "1.5h" or seconds; epochs is then ignored
    final_reserve: float = 0.0  # seconds of the budget kept for the final test evaluation
    # false: the run ends after calibration, without the test evaluation (and keeps no time for
    # it); `unetkit cv` tests its folds itself once their shared calibration is in
    final_test: bool = True
    ema: float | None = None  # decay of a weight moving average (e.g. 0.999); None = off
    channels_last: bool | str = "auto"  # auto | true | false, decided with precision
    execution: dict[str, Any] | None = None  # filled by the run: what auto chose and measured
    compile: bool = False  # opt-in torch.compile of the training model
    sync_bn: bool = False  # SyncBatchNorm across processes (several CUDA processes only)


@dataclass
class EvalConfig:
    """What evaluation measures beyond pixel counts, and what it writes (see unetkit.metrics)."""

    tta: bool = False  # the final test averages the flips the augmentation trains with
    threshold_free: bool = True  # ROC AUC and average precision from binned probabilities
    histogram_bins: int = 1000  # probability bins of the ROC / PR histograms
    instances: bool = True  # connected-component mAP@[.5:.95] and panoptic quality
    min_component_area: int = 0  # predicted components smaller than this (pixels) are dropped
    boundary: bool = True  # HD95, ASSD, boundary IoU and clDice per class and image
    boundary_width: int | None = None  # boundary IoU band in pixels; None = 2% of the diagonal
    cldice: bool = True  # skeleton-based; costs ~ object thickness, cheap on vessels/membranes
    ci: bool = False  # bootstrap confidence intervals over images for the headline metrics
    ci_resamples: int = 1000
    ci_level: float = 0.95
    report: bool = True  # per_image.csv and report.html beside metrics.json
    panels: int = 4  # best and worst images shown in the report, each
    calibrate: bool = True  # end of training: fit T (and a binary threshold) on val into best.pt
    calibration_bias: bool = True  # binary / multi-label: fit a logit bias beside T (Platt)
    tta_check: bool = True  # end of training: TTA stays on only where it scores higher on val


@dataclass
class Config:
    """A whole run. ``Config()`` is the default demo: a small U-Net on synthetic data."""

    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a preset shipped with the package."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(
        f"config {name_or_path!r} is neither a file nor a preset; "
        f"presets: {', '.join(available_presets())}"
    )


def load_config(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    dotted: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults (or ``base``, e.g. a resumed run's config), then the YAML file (path or preset
    name), then ``overrides``, then ``dotted``.

    ``overrides`` maps dotted keys to already-typed values (from CLI flags); ``dotted`` holds raw
    ``section.key=value`` strings whose values are parsed as YAML scalars/lists.
    """
    tree: dict[str, Any] = Config().to_dict()
    if base:
        _merge(tree, upgrade_legacy_keys(base), where="saved config")
    if config_file:
        source = resolve_config_path(config_file)
        loaded = yaml.safe_load(source.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{source}: expected a mapping of sections, got {type(loaded).__name__}"
            )
        _merge(tree, upgrade_legacy_keys(loaded), where=str(source))
    for key, value in (overrides or {}).items():
        if key == "model.name" and value != tree["model"]["name"]:
            tree["model"]["options"] = {}  # options belong to the model they were written for
        _set_dotted(tree, key, value)
    for item in dotted or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        if key.strip() == "model.name" and value != tree["model"]["name"]:
            tree["model"]["options"] = {}  # as for a flag: options of another model are dropped
        _set_dotted(tree, key.strip(), value)
    return config_from_dict(tree)


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Build and type-check a :class:`Config` from a nested mapping (e.g. a saved config.yaml)."""
    return _build(Config, upgrade_legacy_keys(tree), "config")


def upgrade_legacy_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with keys of earlier releases renamed: ``train.amp`` / ``train.amp_dtype``
    became ``train.precision`` (a config saved with amp on reads as its amp dtype, else fp32)."""
    train = tree.get("train")
    if not isinstance(train, dict) or not {"amp", "amp_dtype"} & set(train):
        return tree
    train = dict(train)
    amp, amp_dtype = train.pop("amp", False), train.pop("amp_dtype", "fp16")
    train.setdefault("precision", amp_dtype if amp else "fp32")
    return {**tree, "train": train}


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, base)}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "options":
            _merge(base[key], value, f"{where}:{key}")
        else:
            base[key] = value


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key {dotted_key!r}{_suggest(part, node)}")
        if node[part] is None and parts[depth] == "options":
            node[part] = {}
        node = node[part]
    leaf = parts[-1]
    free_form = len(parts) >= 3 and parts[-2] == "options"
    if not isinstance(node, dict) or (leaf not in node and not free_form):
        raise ConfigError(f"unknown config key {dotted_key!r}{_suggest(leaf, node)}")
    node[leaf] = value


def _suggest(key: str, known: Any) -> str:
    if not isinstance(known, dict):
        return ""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Known keys: {', '.join(known)}"


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _coerce(values[f.name], hints[f.name], f"{where}.{f.name}")
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown key {name!r}{_suggest(name, hints)}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        exact = [a for a in options if type(value) is a]  # e.g. bool | str keeps a bool
        return _coerce(value, (exact or options)[0], where)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(v, args[0], where) for v in items]
    if origin is dict or hint is Any:
        if origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and value is not None and not isinstance(value, (dict, list)):
        return str(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
