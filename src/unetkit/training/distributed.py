"""Data-parallel training over several processes: ``torchrun`` or ``unetkit train --nproc N``.

torchrun starts one process per device and tells each its place through the ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` environment variables. Each process then holds a replica of
the model, trains on its own shard of every epoch and averages gradients with the others
(PyTorch's DistributedDataParallel): gloo between CPU processes, NCCL between GPUs.

What the loop relies on:

* ``train.batch_size`` is per process: a step sees ``batch_size x processes x accum_steps``
  images. The learning rate is not rescaled for you.
* Validation images are dealt out without repeats (:class:`ShardSampler`) and the confusion
  matrices and losses are summed over processes, so validation numbers equal a single-process
  evaluation of the same weights.
* Decisions that end training (a signal, the time budget) are taken together: any process that
  wants to stop stops them all at the same step, so no process waits forever in a collective.
* Only rank 0 writes: logs, checkpoints, history, plots and the final test.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from unetkit.devices import resolve_device


@dataclass
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over processes (in place; a copy travels when it is elsewhere)."""
        if not self.enabled:
            return tensor
        travelling = tensor.to(self.device)
        dist.all_reduce(travelling, op=dist.ReduceOp.SUM)
        if travelling is not tensor:
            tensor.copy_(travelling)
        return tensor

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true in any process: one decision for all of them."""
        if not self.enabled:
            return tuple(bool(flag) for flag in flags)
        votes = torch.tensor([int(bool(flag)) for flag in flags], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return tuple(bool(vote) for vote in votes.tolist())

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), in every process."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, in every process."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def copy_buffers_from_main(self, model: nn.Module) -> None:
        """Give every replica rank 0's buffers (BatchNorm running statistics).

        Each replica updates its running statistics on its own batches, so after training they
        differ slightly; rank 0's are the ones checkpoints hold, so validation uses those.
        """
        if not self.enabled:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def start_processes(device: str) -> Processes:
    """Join the process group torchrun set up (if any) and pick this process's device.

    Under torchrun, ``auto`` and ``cuda`` mean the GPU numbered ``LOCAL_RANK``; the backend is
    NCCL on GPUs and gloo on CPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process with LOCAL_RANK {local_rank} has no GPU of its own "
                f"({torch.cuda.device_count()} visible); start at most that many per node"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Processes(chosen, rank, world_size)


def stop_processes(processes: Processes) -> None:
    """Leave the process group (a no-op for one process)."""
    if processes.enabled and dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: nn.Module, processes: Processes) -> DistributedDataParallel:
    """``model`` wrapped so that backward passes average gradients over the processes."""
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def synchronise_batchnorm(model: nn.Module, processes: Processes) -> nn.Module:
    """``model`` with SyncBatchNorm (batch statistics over all processes) where it can work.

    PyTorch implements SyncBatchNorm for CUDA only, and one process has nothing to synchronise
    with; in both cases ``model`` comes back unchanged, with a warning from rank 0.
    """
    reason = None
    if not processes.enabled:
        reason = "training runs in one process"
    elif processes.device.type != "cuda":
        reason = "PyTorch's SyncBatchNorm works on CUDA devices only"
    if reason is None:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if processes.is_main:
        warnings.warn(f"train.sync_bn ignored: {reason}", stacklevel=2)
    return model


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, rank + 2 world, ...``: each item in exactly one process.

    PyTorch's DistributedSampler repeats items so every process gets as many; a repeated
    validation image would count twice in the summed metrics.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
