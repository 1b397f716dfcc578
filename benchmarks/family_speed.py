"""Every U-Net of the registry beside segmentation_models_pytorch's nearest equivalent.

    pip install -e ".[bench]"
    python benchmarks/family_speed.py --batch-size 4 --size 256 --threads 2 --repeats 3

For each architecture (its default options, one output channel, random weights): parameters,
forward GFLOPs per image at ``--size``, and the median seconds of a training step (forward, fp32
BCE-with-logits, backward, AdamW) and of an inference batch, in the execution unetkit's
``--precision auto`` picks for that model on this machine (its training probe). smp's model of a
pair runs in the same execution, interleaved with ours (A B, then B A), so a change in the
machine's load touches both. Pairs:

- ``resnet34-unet`` and ``smp.Unet("resnet34")``: the same encoder;
- ``timm-unet`` (``mobilenetv3_large_100``) and ``smp.Unet("tu-mobilenetv3_large_100")``: the same
  timm encoder;
- ``unet-plus-plus`` and ``smp.UnetPlusPlus("resnet34")``: smp's U-Net++ needs a pretrained-style
  encoder, so the two differ in size; GFLOP/s achieved compares how well each uses the CPU.

``unet``, ``attention-unet`` and ``resenc-unet`` have no smp counterpart (smp has no plain-encoder
U-Net, no attention gates and no residual-encoder preset) and are timed alone. Prints one JSON
line per model and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from compare_smp import auto_execution, count_flops, interleaved_timings, make_runners, smp
from torch import nn

from unetkit.models import build_model

OURS: dict[str, dict] = {
    "unet": {},
    "attention-unet": {},
    "unet-plus-plus": {},
    "resenc-unet": {"size": "cpu"},
    "resnet34-unet": {},
    "timm-unet": {"encoder": "mobilenetv3_large_100"},
}
SMP_PAIRS = {
    "resnet34-unet": ("Unet", "resnet34"),
    "timm-unet": ("Unet", "tu-mobilenetv3_large_100"),
    "unet-plus-plus": ("UnetPlusPlus", "resnet34"),
}


def models_for(name: str) -> dict[str, nn.Module]:
    """Ours (and smp's counterpart, if any), seeded alike, RGB in, one logit channel out."""
    torch.manual_seed(0)
    models = {"unetkit": build_model(name, 3, 1, **OURS[name])}
    if name in SMP_PAIRS:
        architecture, encoder = SMP_PAIRS[name]
        torch.manual_seed(0)
        models["smp"] = getattr(smp, architecture)(
            encoder, encoder_weights=None, in_channels=3, classes=1
        )
    return models


def measure(name: str, images: torch.Tensor, targets: torch.Tensor, warmup: int, repeats: int):
    """Sizes and timings of one architecture (and its smp pair) in the execution auto picks."""
    models = models_for(name)
    execution = auto_execution(models["unetkit"], images)
    runners = {key: make_runners(model, images, targets, [execution])
               for key, model in models.items()}  # fmt: skip
    times = interleaved_timings(runners, warmup, repeats)
    rows = []
    for key, model in models.items():
        gflops = count_flops(_fp32_eval(model, images))
        row = {
            "architecture": name,
            "implementation": key
            if key == "unetkit"
            else f"smp {SMP_PAIRS[name][0]}({SMP_PAIRS[name][1]})",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_per_image": gflops.get_total_flops() / 1e9 / images.shape[0],
            "execution": execution.label,
        }
        for measure_name, values in times.items():
            kind = "train_step_s" if measure_name.startswith("train") else "inference_batch_s"
            row[kind] = statistics.median(values[key])
        row["inference_images_per_s"] = images.shape[0] / row["inference_batch_s"]
        row["inference_gflop_per_s"] = row["gflops_per_image"] * row["inference_images_per_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _fp32_eval(model: nn.Module, images: torch.Tensor):
    """A zero-argument fp32 eval forward of ``model`` (for counting FLOPs)."""

    def run() -> None:
        model.eval()
        with torch.inference_mode():
            model(images)

    return run


def print_table(rows: list[dict]) -> None:
    """One markdown row per model; smp rows give ours / smp for both timings."""
    print("\narchitecture | implementation | params M | GFLOPs/img | execution | train step s "
          "| inference batch s | inference GFLOP/s | smp / ours (train, inference)")  # fmt: skip
    print(" | ".join(["---"] * 9))
    ours = {}
    for row in rows:
        speedup = ""
        if row["implementation"] == "unetkit":
            ours[row["architecture"]] = row
        else:
            mine = ours[row["architecture"]]
            speedup = (f"{row['train_step_s'] / mine['train_step_s']:.2f}, "
                       f"{row['inference_batch_s'] / mine['inference_batch_s']:.2f}")  # fmt: skip
        cells = [
            row["architecture"],
            row["implementation"],
            f"{row['params_m']:.2f}",
            f"{row['gflops_per_image']:.2f}",
            row["execution"],
            f"{row['train_step_s']:.3f}",
            f"{row['inference_batch_s']:.3f}",
            f"{row['inference_gflop_per_s']:.1f}",
            speedup,
        ]
        print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(OURS), choices=list(OURS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
    targets = torch.rand(args.batch_size, 1, args.size, args.size, generator=generator) > 0.5
    print(f"threads {args.threads}, batch {args.batch_size}, {args.size}x{args.size}, "
          f"{args.warmup} warm-up, medians of {args.repeats}, torch {torch.__version__}, "
          f"smp {smp.__version__}", flush=True)  # fmt: skip
    rows = []
    for name in args.models:
        rows += measure(name, images, targets.float(), args.warmup, args.repeats)
    print_table(rows)


if __name__ == "__main__":
    main()
