"""``--resume auto``: find the checkpoint a run folder should continue from."""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"
# Newest first: last.pt is rewritten after every epoch, best.pt only on improvement, so last.pt
# is the newest whenever it exists. ema.pt holds averaged weights, not a training state.
RESUMABLE = ("last.pt", "best.pt")


def resolve_resume(resume: str | None, out: str | None) -> Path | None:
    """The checkpoint to resume from: ``resume`` itself, or for ``"auto"`` the newest one in
    ``out/checkpoints`` (``last.pt``, else ``best.pt``); None when not resuming."""
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
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"--resume auto found no last.pt or best.pt in {folder}; check --out, or drop "
        f"--resume to start a new run"
    )
