"""``unetkit train --nproc N``: start N training processes on this machine through torchrun.

A shortcut for ``torchrun --standalone --nproc-per-node N -m unetkit train ...`` (the same
arguments, less ``--nproc``). Several machines need torchrun itself, with its rendezvous flags
(see the README).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from unetkit.training.distributed import under_torchrun


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N``: what each started process is given."""
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--nproc":
            skip_next = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def launch(nproc: int, train_argv: Sequence[str]) -> int:
    """Run ``unetkit <train_argv>`` in ``nproc`` processes; 0 when all of them succeed.

    CPU threads are shared out between the processes (``OMP_NUM_THREADS``, unless set), so N
    processes on a CPU do not fight over the cores.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ValueError(f"--nproc is a number of processes >= 1; got {nproc}")
    if under_torchrun():
        raise RuntimeError(
            "--nproc was given to a process that torchrun started; use one or the other"
        )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    torchrun_args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "unetkit"]
    try:
        run(get_args_parser().parse_args([*torchrun_args, *train_argv]))
    except ChildFailedError as error:
        print(f"unetkit train: {nproc} processes, one failed:\n{error}", file=sys.stderr)
        return 1
    return 0
