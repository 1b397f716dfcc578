"""``--resume auto``: find the checkpoint a run folder should continue from."""

from __future__ import annotations

import sys
from pathlib import Path

from unetkit.checkpoint import is_intact

AUTO = "auto"
# Newest first: last.pt is rewritten after every epoch, best.pt only on improvement, so last.pt
# is the newest whenever it exists. ema.pt holds averaged weights, not a training state.
RESUMABLE = ("last.pt", "best.pt")
# Written by a run whose epochs ended (budget, epochs or patience, not a signal) once best.pt is
# calibrated, before the test evaluation: what `unetkit cv` takes as a fold's training done.
TRAINED_FILE = "trained.json"


def resolve_resume(resume: str | None, out: str | None) -> Path | None:
    """The checkpoint to resume from: ``resume`` itself, or for ``"auto"`` the newest intact one
    in ``out/checkpoints`` (``last.pt``, else ``best.pt``; a file that fails its checksums is
    passed over, saying so); None when not resuming."""
    if not resume:
        return None
    if resume != AUTO:
        return Path(resume)
    if not out:
        raise ValueError(
            "--resume auto needs the run folder: pass --out RUN (the folder holding checkpoints/)"
        )
    folder = Path(out) / "checkpoints"
    for name in RESUMABLE:
        path = folder / name
        if not path.is_file():
            continue
        if is_intact(path):
            return path
        print(f"--resume auto: {path} is damaged (its checksums fail); passing it over",
              file=sys.stderr)  # fmt: skip
    raise FileNotFoundError(
        f"--resume auto found no intact last.pt or best.pt in {folder}; check --out, or drop "
        f"--resume to start a new run"
    )
