"""Crashes that lose nothing: a run killed with SIGKILL at any moment, even halfway through writing
a checkpoint, resumes with ``--resume auto`` to the same weights and metrics as a run that was
never interrupted, losing at most the epoch it was in; a full disk leaves the last checkpoint
intact and ends with an error that says so."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import unetkit.checkpoint as checkpoint_module
from unetkit.checkpoint import load_checkpoint
from unetkit.cli.main import main

# fp32 and contiguous: runs are compared bit for bit, so no probe may choose differently
ARGS = ["--img-size", "32", "40", "--batch-size", "4", "--no-progress", "--seed", "5",
        "--precision", "fp32", "--no-channels-last", "--epochs", "3", "--ema", "0.9",
        "--monitor", "val_loss", "--augment", "light",
        "data.synthetic_count=16", "model.options.base_width=4", "model.options.depth=2",
        "eval.boundary=false", "eval.report=false"]  # fmt: skip

# Runs `unetkit train` and SIGKILLs itself at the moment named by argv[1] (no handler can run).
KILLED_RUN = """
import io, os, signal, sys
import torch
import unetkit.training.loop as loop
import unetkit.training.saving as saving
import unetkit.training.steps as steps
from unetkit.cli.main import main

point, real_save, real_torch_save = sys.argv.pop(1), saving.save_checkpoint, torch.save
def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def half_written(payload, handle):  # half of the archive reaches the disk, then the process dies
    buffer = io.BytesIO()
    real_torch_save(payload, buffer)
    handle.write(buffer.getvalue()[: buffer.tell() // 2])
    handle.flush()
    kill()

def save(payload, path):
    if point == "writing-last" and path.name == "last.pt" and payload["epoch"] == 2:
        torch.save = half_written
    real_save(payload, path)
    if point == "between-files" and payload["epoch"] == 3:
        kill()  # the first file of the last epoch written, the others not

ended, real_end, real_step = [], loop._end_of_epoch, steps.optimizer_step
def end_of_epoch(parts, state, row):
    real_end(parts, state, row)
    ended.append(row["epoch"])

def step(parts):
    real_step(parts)
    if point == "mid-epoch" and ended == [1]:  # epoch 2's first optimiser step
        kill()

saving.save_checkpoint, steps.optimizer_step, loop._end_of_epoch = save, step, end_of_epoch
if point == "before-test":
    loop._final_test = lambda parts, history: kill()
sys.exit(main(sys.argv[1:]))
"""

# kill point -> the epoch that last.pt holds after the kill (what a resume continues from)
KILL_POINTS = {"mid-epoch": 1, "writing-last": 1, "between-files": 2, "before-test": 3}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert main(["train", "--out", str(out), *ARGS]) == 0
    return out


def _same_weights(a: dict, b: dict) -> None:
    for key, tensor in a.items():
        torch.testing.assert_close(b[key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_auto_ends_as_the_uninterrupted_run(whole, tmp_path, point):
    broken = tmp_path / "broken"
    command = [sys.executable, "-c", textwrap.dedent(KILLED_RUN), point,
               "train", "--out", str(broken), *ARGS]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    checkpoints = broken / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == KILL_POINTS[point]
    leftovers = list(checkpoints.glob(".*.tmp"))
    assert bool(leftovers) == (point == "writing-last")  # the half-written temporary

    assert main(["train", "--out", str(broken), *ARGS, "train.resume=auto"]) == 0
    assert not list(checkpoints.glob(".*.tmp"))
    for name in ("last.pt", "best.pt", "ema.pt"):
        expected, resumed = (
            load_checkpoint(whole / "checkpoints" / name),
            load_checkpoint(checkpoints / name),
        )
        assert resumed["epoch"] == expected["epoch"], name
        _same_weights(expected["model"], resumed["model"])
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (whole, broken)]
    assert metrics[1]["dataset"] == metrics[0]["dataset"]


def test_resume_auto_passes_over_a_damaged_last_checkpoint(whole, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (run / "checkpoints" / name).write_bytes((whole / "checkpoints" / name).read_bytes())
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: the CRC catches it
    last.write_bytes(bytes(data))
    from unetkit.training.resume import resolve_resume

    assert resolve_resume("auto", str(run)) == run / "checkpoints" / "best.pt"
    assert f"{last} is damaged" in capsys.readouterr().err


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def disk_fills_at_epoch_2(payload, handle):
        if payload.get("epoch") == 2:
            handle.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(payload, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_at_epoch_2)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *ARGS]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "the previous one is intact" in error
    assert "--resume auto" in error
    checkpoints = out / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1
    assert not list(checkpoints.glob(".*.tmp"))
