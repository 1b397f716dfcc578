"""Training in several processes: sharding, the launcher, and real 2-process gloo runs on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.main import main
from unetkit.training.distributed import Processes, ShardSampler
from unetkit.training.launch import launch, without_nproc

# 30 synthetic images split 21 / 3 / 6: an odd validation split, so the two processes validate on
# 2 and 1 images (no padding repeats); 21 training images = 11 per process (one repeat), 5 batches
# of 2, accumulated in pairs: optimiser steps after batches 2, 4 and 5 = 3 per epoch.
# fp32 and contiguous: runs compared exactly, so no probe may choose differently between them
TINY = [
    "--img-size",
    "32",
    "40",
    "--batch-size",
    "2",
    "--no-progress",
    "--seed",
    "3",
    "--precision",
    "fp32",
    "--no-channels-last",
]
TINY_KEYS = [
    "data.synthetic_count=30",
    "model.options.base_width=4",
    "model.options.depth=2",
    "eval.boundary=false",
    "eval.instances=false",
]
TWO_CPU_PROCESSES = ["--nproc", "2", "--device", "cpu"]


@pytest.mark.parametrize("length", [0, 1, 2, 5, 8])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_cover_every_item_exactly_once(length, world_size):
    shards = [list(ShardSampler(length, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert [len(ShardSampler(length, r, world_size)) for r in range(world_size)] == [
        len(s) for s in shards
    ]


def test_one_process_collectives_are_identities():
    one = Processes()
    counts = torch.tensor([3, 4])
    assert one.sum(counts) is counts and counts.tolist() == [3, 4]
    assert one.any(True, False) == (True, False)
    assert one.share("x") == "x" and one.gather(7) == [7]
    assert one.is_main and not one.enabled


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--nproc", "2", "--epochs", "3"],
        ["train", "--nproc=2", "--epochs", "3"],
        ["train", "--epochs", "3", "--nproc", "2"],
    ],
)
def test_launcher_hands_on_everything_but_nproc(argv):
    assert without_nproc(argv) == ["train", "--epochs", "3"]


def test_launcher_refuses_inside_torchrun_and_bad_counts(monkeypatch):
    with pytest.raises(ValueError, match="--nproc .* got 0"):
        launch(0, ["train"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="torchrun started"):
        launch(2, ["train"])


def _train_two_processes(out, *extra):
    """``unetkit train --nproc 2`` in a child process (torchrun's workers need a real argv)."""
    command = [sys.executable, "-m", "unetkit", "train", *TWO_CPU_PROCESSES, "--out", str(out)]
    return subprocess.run(
        [*command, *TINY, *extra, *TINY_KEYS], capture_output=True, text=True, timeout=300
    )


def test_two_gloo_processes_train_and_validate_like_one_process_evaluation(tmp_path):
    out = tmp_path / "run"
    done = _train_two_processes(out, "--epochs", "2", "--accum-steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch   2") == 1  # rank 0 alone logs
    assert "2 processes (cpu)" in done.stdout

    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["processes"] == {"world_size": 2, "optimizer_steps_by_rank": [6, 6]}
    assert len(last["rng_by_rank"]) == 2
    assert all(not key.startswith("module.") for key in last["model"])
    model_from_checkpoint(last)  # loads in one process: strict load of a plain model

    evaluated = tmp_path / "evaluated"
    args = ["--checkpoint", str(out / "checkpoints" / "last.pt"), "--split", "val"]
    flags = [
        "--out",
        str(evaluated),
        "--no-progress",
        "--no-report",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--no-channels-last",
    ]
    assert main(["evaluate", *args, *flags, *TINY_KEYS[3:]]) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["num_images"] == 3
    row = last["history"][-1]
    for name in ("pixel_accuracy", "mean_iou", "mean_dice", "fw_iou"):
        assert row[f"val_{name}"] == pytest.approx(metrics["dataset"][name], abs=1e-12), name

    # the 2-process run continues in one process (rank 0's generators, steps counted afresh)
    assert (
        main(["train", "--resume", "auto", "--out", str(out), "--epochs", "3", "--device", "cpu"])
        == 0
    )
    resumed = load_checkpoint(out / "checkpoints" / "last.pt")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    assert resumed["processes"] == {"world_size": 1, "optimizer_steps_by_rank": [5]}


# Rank 1 alone receives SIGTERM in the first step of epoch 2; both processes must stop there.
SIGNAL_ONE_RANK = """
import os, signal, sys
import unetkit.training.steps as steps
from unetkit.cli.main import main
optimizer_step, calls = steps.optimizer_step, []
def step_then_signal(parts):
    optimizer_step(parts)
    calls.append(1)
    if len(calls) == 4 and os.environ["RANK"] == "1":  # 3 steps an epoch: epoch 2's first
        os.kill(os.getpid(), signal.SIGTERM)
steps.optimizer_step = step_then_signal
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    script = tmp_path / "signal_one_rank.py"
    script.write_text(textwrap.dedent(SIGNAL_ONE_RANK))
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc-per-node", "2", str(script), "train", "--device", "cpu"]
    args = ["--out", str(out), "--epochs", "3", "--accum-steps", "2", *TINY, *TINY_KEYS]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped by a signal to another process after epoch 1" in done.stdout
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["processes"]["optimizer_steps_by_rank"] == [3, 3]
    assert not (out / "metrics.json").exists()


def test_a_data_error_in_rank_0_ends_every_process(tmp_path):
    missing = tmp_path / "no-such-folder"
    bad_data = ["--dataset", "folder", "--data-root", str(missing)]
    done = _train_two_processes(tmp_path / "run", *bad_data)
    assert done.returncode == 1
    assert "rank 0 could not prepare the data" in done.stderr
    assert str(missing) in done.stderr
