"""How well does the planner's step probe predict the step time that training then sustains?

    python benchmarks/step_probe.py                       # unet 16 at 128 px, 1 channel, batch 8
    python benchmarks/step_probe.py --width 32 --side 192 --channels 3 --rounds 8

Each round times one probe call as the planner makes it (a fresh copy of the model, one untimed
warm-up step, then ``--steps`` timed forward + backward steps on a random batch) and then trains
the same model for ``--sustain`` seconds with AdamW, as the training loop does minus data
loading. From the probe's step times it derives two estimators: the median of the first three
(the planner before this benchmark) and the fastest of all of them. Each round's readings are
compared with the step time sustained right after it, so a slow spell of the shared machine hits
both sides of one comparison. The medians over rounds are printed with their ratio to the
sustained time and their spread (min-max over rounds).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from unetkit.losses import build_loss
from unetkit.models import build_model
from unetkit.precision_probe import _random_batch
from unetkit.tasks import Task


def probe_times(model: torch.nn.Module, criterion, batch, steps: int) -> list[float]:
    """Seconds of each of ``steps`` forward + backward steps of a fresh copy, after a warm-up."""
    images, masks = batch
    probe = copy.deepcopy(model).train()
    times = []
    for index in range(steps + 1):
        started = time.perf_counter()
        criterion(probe(images).float(), masks).backward()
        probe.zero_grad(set_to_none=True)
        if index:  # the first call selects kernels and allocates: the warm-up
            times.append(time.perf_counter() - started)
    return times


def sustained_seconds(model: torch.nn.Module, criterion, batch, seconds: float) -> float:
    """Mean seconds per optimiser step over ``seconds`` of training (after one warm-up step)."""
    images, masks = batch
    trained = copy.deepcopy(model).train()
    optimiser = torch.optim.AdamW(trained.parameters(), lr=1e-3)

    def step() -> None:
        criterion(trained(images).float(), masks).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step()
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16, help="unet base width")
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed probe steps per call")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sustain", type=float, default=20.0, help="seconds of training a round")
    args = parser.parse_args()
    task = Task(2)
    torch.manual_seed(0)
    model = build_model("unet", args.channels, task.out_channels, base_width=args.width)
    criterion = build_loss("ce:0.5,dice:0.5", task)
    shape = (args.batch, args.channels, args.side, args.side)
    batch = _random_batch(shape, task, torch.device("cpu"))
    rows = []
    for round_index in range(args.rounds):
        times = probe_times(model, criterion, batch, args.steps)
        sustained = sustained_seconds(model, criterion, batch, args.sustain)
        row = {"median of 3": statistics.median(times[:3]), f"fastest of {args.steps}": min(times)}
        rows.append((row, sustained))
        cells = " ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in row.items())
        print(f"round {round_index}: {cells}; sustained {sustained * 1e3:.0f} ms", flush=True)
    print(f"\nunet {args.width} at {args.side} px, {args.channels} channel(s), batch "
          f"{args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds")  # fmt: skip
    print("| estimator | median ms | min-max ms | median ratio to sustained | min-max ratio |")
    print("|---|---|---|---|---|")
    sustained = [s for _, s in rows]
    for name in rows[0][0]:
        values = [row[name] for row, _ in rows]
        ratios = [row[name] / s for row, s in rows]
        print(f"| {name} | {statistics.median(values) * 1e3:.0f} | {min(values) * 1e3:.0f}-"
              f"{max(values) * 1e3:.0f} | {statistics.median(ratios):.2f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} |")  # fmt: skip
    print(f"| sustained (AdamW) | {statistics.median(sustained) * 1e3:.0f} | "
          f"{min(sustained) * 1e3:.0f}-{max(sustained) * 1e3:.0f} | 1 | |")  # fmt: skip


if __name__ == "__main__":
    main()
