"""unetkit's ``resnet34-unet`` against smp's ``Unet("resnet34")``, side by side.

    pip install -e ".[bench]"
    python benchmarks/compare_smp.py --batch-size 8 --size 256 --threads 2 --repeats 5

Both models run in this one process on the same batch, image size and thread count, with random
weights (``encoder_weights=None``: nothing is downloaded; speed does not depend on the weights).
Measured per model, in fp32 eager (what smp's users run) and in the execution unetkit's
``--precision auto`` picks on this machine (its training probe on our model; e.g. ``bf16+channels-
last``): a training step (forward, BCE-with-logits loss on one class in fp32, backward, AdamW step)
and an inference batch (eval mode, ``torch.inference_mode``). Targets: ours under ``auto`` at least
3x smp in fp32, and no slower than smp in the same execution.

The timings are interleaved (A, B, then B, A on the next repeat, so neither model always runs
second) because the CPU may be shared: the ratio ours / smp is given both as the ratio of the
medians and as the median of the per-repeat ratios, which cancels slow phases that hit both models
of one repeat.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add counts 2 FLOPs;
convolutions and matrix products only, so the elementwise work of BatchNorm, ReLU and AdamW is not
counted): per image for a forward pass, and per step for a real training step (forward and
backward). The fraction of the machine's GEMM throughput
(``unetkit.speed.bench.gemm_gflops_per_s``: a 4096 x 4096 matrix product at the execution's
precision) is training GFLOPs per step / median
seconds per step / that. The fraction of peak FP32 throughput is training GFLOPs per step / median
seconds per step, over ``threads x clock x FP32 FLOPs per cycle per core``; see
:func:`cpu_peak_gflops` for where each number comes from. A figure this script cannot establish (the
FLOPs per cycle of an unknown CPU) is None, never a guess."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unetkit.models import build_model
from unetkit.precision import Execution, choose_execution, detect_capabilities
from unetkit.precision_probe import training_step_timer
from unetkit.speed.bench import gemm_gflops_per_s
from unetkit.tasks import Task

try:
    import segmentation_models_pytorch as smp
except ImportError as error:  # a benchmark-only optional dependency
    raise SystemExit(
        f"segmentation_models_pytorch is not installed ({error}); install the benchmark extra: "
        f'pip install -e ".[bench]"'
    ) from error


def build_models() -> dict[str, nn.Module]:
    """Both ResNet-34 U-Nets for RGB input and one output channel, seeded alike."""
    torch.manual_seed(0)
    ours = build_model("resnet34-unet", 3, 1)
    torch.manual_seed(0)
    theirs = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    return {"unetkit": ours, "smp": theirs}


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images, targets, execution: Execution
) -> None:
    """One forward (autocast as ``execution`` says), fp32 BCE-with-logits, backward, AdamW."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with execution.autocast("cpu"):
        logits = model(images)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    optimizer.step()


def inference(model: nn.Module, images: torch.Tensor, execution: Execution) -> None:
    """One eval-mode forward pass without autograd bookkeeping."""
    model.eval()
    with torch.inference_mode(), execution.autocast("cpu"):
        model(images)


def make_runners(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, executions: list[Execution]
) -> dict[str, Callable[[], None]]:
    """A zero-argument callable per measure and execution, each on its own copy of the model."""
    runners = {}
    for execution in executions:
        copy_ = execution.prepare(copy.deepcopy(model))
        batch = images.contiguous(memory_format=execution.memory_format)
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=1e-3)
        runners[f"train step {execution.label}"] = (
            lambda m=copy_, o=optimizer, b=batch, e=execution: training_step(m, o, b, targets, e)
        )
        runners[f"eval {execution.label}"] = lambda m=copy_, b=batch, e=execution: inference(
            m, b, e
        )
    return runners


def auto_execution(model: nn.Module, images: torch.Tensor) -> Execution:
    """What unetkit's ``--precision auto --channels-last auto`` picks for training ``model``."""

    def loss(logits, masks):
        return nn.functional.binary_cross_entropy_with_logits(logits, masks[:, None].float())

    timer = training_step_timer(model, loss, tuple(images.shape), Task(2), torch.device("cpu"))
    choice = choose_execution("auto", "auto", detect_capabilities(torch.device("cpu")), timer)
    print(choice.describe(), flush=True)
    return choice.execution


def seconds(run: Callable[[], None]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def interleaved_timings(
    runners: dict[str, dict[str, Callable[[], None]]], warmup: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per measure and model; the two models alternate within every repeat."""
    names = list(runners)
    measures = list(runners[names[0]])
    times = {measure: {name: [] for name in names} for measure in measures}
    for repeat in range(warmup + repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for measure in measures:
            for name in order:
                elapsed = seconds(runners[name][measure])
                if repeat >= warmup:
                    times[measure][name].append(elapsed)
        print(f"repeat {repeat + 1}/{warmup + repeats} done", flush=True)
    return times


def count_flops(run: Callable[[], None]) -> FlopCounterMode:
    """FLOPs (multiply-add = 2) of one call, per module."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter


def module_gflops(counter: FlopCounterMode, parts: tuple[str, ...]) -> dict[str, float]:
    """GFLOPs of the named top-level submodules of the counted model.

    A ModuleList is never called itself, so FlopCounterMode has no entry for it: its FLOPs are
    the sum over its direct children ("Model.decoder.0", "Model.decoder.1", ...).
    """
    counts = {tuple(name.split(".")[1:]): sum(ops.values())
              for name, ops in counter.get_flop_counts().items()}  # fmt: skip
    result = {}
    for part in parts:
        if (part,) in counts:
            result[part] = counts[(part,)] / 1e9
        else:
            children = [f for path, f in counts.items() if len(path) == 2 and path[0] == part]
            result[part] = sum(children) / 1e9
    return result


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    fields = {}
    for line in path.read_text().split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def fp32_flops_per_cycle(flags: set[str], vendor: str, family: int) -> int | None:
    """FP32 FLOPs per cycle per core: FMA units x SIMD lanes x 2 (an FMA is 2 FLOPs).

    AMD Zen 2/3/4 (families 0x17, 0x19; AMD's Software Optimization Guides): two 256-bit FMA
    pipes, 2 x 8 x 2 = 32, with or without AVX-512 (Zen 4 runs 512-bit ops double-pumped).
    Intel with AVX-512 is assumed to have two 512-bit FMA units (server parts; some have one):
    64; Intel with AVX2 + FMA (Haswell onwards): two 256-bit FMA units, 32. Otherwise None.
    """
    if vendor == "AuthenticAMD" and family in (0x17, 0x19) and {"avx2", "fma"} <= flags:
        return 32
    if vendor == "GenuineIntel" and "avx512f" in flags:
        return 64
    if vendor == "GenuineIntel" and {"avx2", "fma"} <= flags:
        return 32
    return None


def cpu_peak_gflops(threads: int, clock_mhz: float | None) -> dict[str, object]:
    """Peak FP32 GFLOP/s of ``threads`` cores: threads x clock x FP32 FLOPs per cycle.

    The clock is ``clock_mhz`` if given, else /proc/cpuinfo's "cpu MHz" (under a hypervisor this
    is the nominal/TSC clock; a boost clock above it would make the true peak higher and the
    fraction lower). One thread per physical core is assumed (the guest here shows 1 per core).
    """
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0"))
    per_cycle = fp32_flops_per_cycle(flags, info.get("vendor_id", ""), family)
    clock = clock_mhz if clock_mhz is not None else float(info.get("cpu MHz", "nan"))
    clock = None if clock != clock else clock  # NaN: cpuinfo has no clock
    peak = None if per_cycle is None or clock is None else threads * clock / 1e3 * per_cycle
    return {
        "model": info.get("model name"),
        "family": family,
        "model_number": info.get("model"),
        "clock_mhz": clock,
        "fp32_flops_per_cycle": per_cycle,
        "cores": threads,
        "peak_gflops": peak,
    }


def ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs, None when theirs is 0."""
    return ours / theirs if theirs else None


def print_timings(times: dict[str, dict[str, list[float]]]) -> None:
    """Every timing, then medians and bests (minima) of both models and their ratios ours / smp.

    "paired" is the median over repeats of (ours / smp) within one repeat; on a shared CPU the
    best times are the least disturbed estimate of each model's own speed.
    """
    ours, theirs = "unetkit", "smp"
    for measure in times:
        for name, values in times[measure].items():
            print(f"{measure} {name} s: " + " ".join(f"{v:.3f}" for v in values))
    print(f"\n{'seconds':<19} {'median ' + ours:>15} {'median ' + theirs:>11} {'ratio':>6} "
          f"{'paired':>7} {'best ' + ours:>13} {'best ' + theirs:>9} {'ratio':>6}")  # fmt: skip
    for measure in times:
        a, b = times[measure][ours], times[measure][theirs]
        paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
        ma, mb, fa, fb = statistics.median(a), statistics.median(b), min(a), min(b)
        print(f"{measure:<19} {ma:>15.3f} {mb:>11.3f} {ratio(ma, mb):>6.3f} {paired:>7.3f} "
              f"{fa:>13.3f} {fb:>9.3f} {ratio(fa, fb):>6.3f}")  # fmt: skip


def print_sizes(params, flops, train_flops, parts) -> None:
    """Parameters, GFLOPs per image and per training step, and forward GFLOPs by model part."""
    ours, theirs = "unetkit", "smp"
    print(f"\n{'':<19} {ours:>10} {theirs:>10} {'ratio':>7}")
    for label, values, digits in (("parameters (M)", params, 3), ("GFLOP/image fwd", flops, 3),
                                  ("GFLOP/train step", train_flops, 2)):  # fmt: skip
        a, b = values[ours], values[theirs]
        print(f"{label:<19} {a:>10.{digits}f} {b:>10.{digits}f} {ratio(a, b):>7.4f}")
    print("forward GFLOP per image by part:")
    for name, by_part in parts.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in by_part.items()))


def print_targets(times: dict[str, dict[str, list[float]]], auto: Execution) -> None:
    """The two speed targets: ours in auto vs smp in fp32 eager, and vs smp in auto."""
    fp32, chosen = f"train step {Execution().label}", f"train step {auto.label}"
    ours_auto = statistics.median(times[chosen]["unetkit"])
    smp_fp32 = statistics.median(times[fp32]["smp"])
    smp_auto = statistics.median(times[chosen]["smp"])
    print(f"\ntraining step: unetkit {auto.label} {ours_auto:.3f} s vs smp fp32 {smp_fp32:.3f} s"
          f" = {smp_fp32 / ours_auto:.2f}x (target >= 3x); vs smp {auto.label} {smp_auto:.3f} s"
          f" = {smp_auto / ours_auto:.2f}x (target >= 1x)")  # fmt: skip


def print_gemm_fraction(times, train_flops, auto: Execution) -> None:
    """Training GFLOP/s of each execution against the machine's GEMM at that precision."""
    for execution in {Execution(), auto}:
        gemm = gemm_gflops_per_s(execution.dtype, torch.device("cpu"))
        steps = times[f"train step {execution.label}"]["unetkit"]
        achieved = train_flops["unetkit"] / statistics.median(steps)
        print(f"unetkit {execution.label}: {achieved:.1f} GFLOP/s = {achieved / gemm:.1%} of the "
              f"{execution.precision} GEMM ({gemm:.1f} GFLOP/s)")  # fmt: skip


def print_peak_fraction(times, train_flops, peak) -> None:
    """Training GFLOP/s (median and best step) and its fraction of the CPU's peak FP32."""
    print(f"\nCPU: {peak}")
    for name, steps in times[f"train step {Execution().label}"].items():
        for label, step in (("median", statistics.median(steps)), ("best", min(steps))):
            achieved = train_flops[name] / step
            fraction = None if peak["peak_gflops"] is None else achieved / peak["peak_gflops"]
            shown = "None" if fraction is None else f"{fraction:.1%}"
            print(f"{name} {label} step {step:.3f} s: {achieved:.1f} GFLOP/s = {shown} of peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock-mhz", type=float, default=None, help="override cpuinfo's clock")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
    targets = torch.rand(args.batch_size, 1, args.size, args.size, generator=generator) > 0.5
    targets = targets.float()
    models = build_models()
    auto = auto_execution(models["unetkit"], images)
    executions = list(dict.fromkeys([Execution(), auto]))
    runners = {name: make_runners(model, images, targets, executions)
               for name, model in models.items()}  # fmt: skip
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    forward = {name: count_flops(run["eval fp32"]) for name, run in runners.items()}
    flops = {name: c.get_total_flops() / 1e9 / args.batch_size for name, c in forward.items()}
    parts = {
        "unetkit": module_gflops(forward["unetkit"], ("encoder", "decoder", "head")),
        "smp": module_gflops(forward["smp"], ("encoder", "decoder", "segmentation_head")),
    }
    parts = {n: {k: v / args.batch_size for k, v in p.items()} for n, p in parts.items()}
    train = {name: count_flops(run["train step fp32"]).get_total_flops() / 1e9
             for name, run in runners.items()}  # fmt: skip
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.size}x{args.size}, "
          f"{args.warmup} warm-ups, medians of {args.repeats}, torch {torch.__version__}, "
          f"smp {smp.__version__}", flush=True)  # fmt: skip
    times = interleaved_timings(runners, args.warmup, args.repeats)
    peak = cpu_peak_gflops(args.threads, args.clock_mhz)
    print_timings(times)
    print_sizes(params, flops, train, parts)
    print_peak_fraction(times, train, peak)
    print_targets(times, auto)
    print_gemm_fraction(times, train, auto)


if __name__ == "__main__":
    main()
