"""Numeric precision and memory layout, chosen by measuring the machine at hand.

Whether bf16 autocast or channels-last pays off depends on the processor, not on the model: on a
CPU with bf16 matrix units (AMX) or bf16 vector instructions (AVX512-BF16) a U-Net training step
runs 2.5-5x faster in bf16 + channels-last than in fp32; on an AVX2-only CPU bf16 is 5-60x
*slower*. So nothing here is hard-coded. ``auto`` lists the options the device can run safely
(:func:`candidates`), times a few steps of the real model and batch with each
(:func:`choose_execution`, fed by a timer from :mod:`unetkit.precision_probe`) and keeps the
fastest; an explicit ``fp32`` / ``bf16`` / ``fp16`` and ``channels_last`` true / false are taken
as asked.

Numerically safe means: weights, optimiser state and the loss stay in fp32 (autocast casts only
the layers' compute), fp16 always runs with a gradient scaler, and an option whose probe produced a
non-finite value is never chosen. fp16 is a CUDA option only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYOUTS = ("auto", True, False)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# An option other than plain fp32 must beat it by this fraction to be chosen: within the noise
# of a few probe steps, the exact path wins.
MARGIN = 0.05
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Capabilities:
    """What a device can run fast: the facts the ``auto`` choice starts from."""

    device_type: str  # cpu | cuda | ...
    bf16: bool  # bf16 units: CUDA compute capability >= 8, or a CPU with AMX / AVX512-BF16
    fp16: bool  # fp16 tensor cores (CUDA)
    detail: str  # what was found, for logs

    def to_dict(self) -> dict[str, Any]:
        return {"device_type": self.device_type, "bf16": self.bf16, "fp16": self.fp16}


@dataclass(frozen=True)
class Execution:
    """How a model runs: autocast precision and memory format."""

    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def label(self) -> str:
        """``fp32``, ``bf16+channels-last`` ...: the key of probe timings."""
        return self.precision + ("+channels-last" if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device_type: str) -> AbstractContextManager:
        """Autocast to this precision on ``device_type``; nothing for fp32."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this memory format (in place; weights stay fp32)."""
        return model.to(memory_format=self.memory_format)


@dataclass
class ExecutionChoice:
    """The execution a run uses, why, and what the probe measured (seconds per step)."""

    execution: Execution
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    capabilities: Capabilities | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.execution.precision,
            "channels_last": self.execution.channels_last,
            "reason": self.reason,
            "seconds_per_step": {k: round(v, 5) for k, v in self.seconds.items()},
            "capabilities": self.capabilities.to_dict() if self.capabilities else None,
        }

    def describe(self) -> str:
        """One line for the log: the choice, and each probed option's time."""
        return describe_execution(self.to_dict())


def describe_execution(record: dict[str, Any]) -> str:
    """One line from an :meth:`ExecutionChoice.to_dict` record (as config.yaml keeps it)."""
    label = Execution(record["precision"], bool(record["channels_last"])).label
    line = f"precision {label} ({record.get('reason', 'as asked')})"
    seconds = record.get("seconds_per_step") or {}
    if seconds:
        times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items())
        line += f"; probe per step: {times}"
    return line


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def check_layout(channels_last: bool | str) -> bool | str:
    """``True``, ``False`` or ``"auto"``; the strings ``"true"`` / ``"false"`` are accepted."""
    if isinstance(channels_last, str) and channels_last.lower() in ("true", "false"):
        return channels_last.lower() == "true"
    if channels_last not in LAYOUTS or (isinstance(channels_last, str) and channels_last != "auto"):
        raise ValueError(f"channels_last must be auto, true or false; got {channels_last!r}")
    return channels_last


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no bf16 claim
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def detect_capabilities(device: torch.device) -> Capabilities:
    """The fast low-precision units of ``device`` (a CPU's from its /proc/cpuinfo flags)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        bf16 = torch.cuda.is_bf16_supported()
        return Capabilities("cuda", bf16, True, f"CUDA compute capability {major}.{minor}")
    if device.type == "cpu":
        found = sorted(_cpu_flags() & set(CPU_BF16_FLAGS))
        detail = f"CPU bf16 units: {', '.join(found)}" if found else "CPU without bf16 units"
        return Capabilities("cpu", bool(found), False, detail)
    return Capabilities(device.type, False, False, f"{device.type}: fp32 only")


def candidates(
    precision: str, channels_last: bool | str, capabilities: Capabilities
) -> list[Execution]:
    """The executions worth trying for the request, safest (plain fp32 if present) first."""
    precision, layout = check_precision(precision), check_layout(channels_last)
    if precision == "auto":
        precisions = _auto_precisions(capabilities)
    else:
        _check_supported(precision, capabilities)
        precisions = [precision]
    layouts = [False, True] if layout == "auto" else [layout]
    return [Execution(p, cl) for p in precisions for cl in layouts]


def _auto_precisions(capabilities: Capabilities) -> list[str]:
    """CUDA: bf16 where supported, else fp16 (with a scaler). CPU: fp32, plus bf16 to be
    probed where the CPU has bf16 units. Anything else: fp32."""
    if capabilities.device_type == "cuda":
        return ["bf16"] if capabilities.bf16 else ["fp16"]
    if capabilities.device_type == "cpu" and capabilities.bf16:
        return ["fp32", "bf16"]
    return ["fp32"]


def _check_supported(precision: str, capabilities: Capabilities) -> None:
    if precision == "fp16" and capabilities.device_type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA GPU (this run is on {capabilities.device_type}); "
            f"use auto, bf16 or fp32"
        )
    if precision == "bf16" and not capabilities.bf16:
        warnings.warn(
            f"precision bf16 was asked for but this device has no bf16 units "
            f"({capabilities.detail}): it will likely run slower than fp32",
            stacklevel=3,
        )


def choose_execution(
    precision: str,
    channels_last: bool | str,
    capabilities: Capabilities,
    measure: Callable[[Execution], float],
    margin: float = MARGIN,
) -> ExecutionChoice:
    """The fastest safe execution for the request; ``measure`` times one (seconds per step,
    ``nan`` or ``inf`` when the option produced non-finite numbers). A single candidate is not
    measured."""
    options = candidates(precision, channels_last, capabilities)
    if len(options) == 1:
        reason = "as asked"
        if precision == "auto":
            reason = f"the only safe fast precision here ({capabilities.detail})"
        return ExecutionChoice(options[0], reason, capabilities=capabilities)
    seconds = {option.label: measure(option) for option in options}
    finite = [o for o in options if math.isfinite(seconds[o.label])]
    if not finite:
        raise RuntimeError(
            f"every precision option failed its probe ({seconds}); the model produces "
            f"non-finite values: lower the learning rate or check the inputs"
        )
    best = min(finite, key=lambda o: seconds[o.label])
    safest = finite[0]
    if best != safest and seconds[best.label] > (1 - margin) * seconds[safest.label]:
        best = safest
    reason = f"fastest of {len(options)} measured on this {capabilities.device_type}"
    if best == safest and len(finite) > 1:
        reason = f"no other option was {margin:.0%} faster on this {capabilities.device_type}"
    return ExecutionChoice(best, reason, seconds, capabilities)


def execution_from_config(precision: str, channels_last: bool | str) -> Execution | None:
    """The execution a config fixes, or None when either setting is still ``auto``."""
    layout = check_layout(channels_last)
    if check_precision(precision) == "auto" or layout == "auto":
        return None
    return Execution(precision, bool(layout))
