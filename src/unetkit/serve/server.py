"""Serve a checkpoint over HTTP with uvicorn: what ``unetkit serve`` runs.

It listens on 127.0.0.1 (this machine only) unless another ``host`` is given, e.g. ``0.0.0.0`` for
every network interface. Without ``api_key`` anyone who reaches the port may use it; with one,
every route but ``/`` and ``/health`` needs it (see :mod:`unetkit.serve.auth`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from unetkit.checkpoint import load_checkpoint
from unetkit.inference.backends import load_segmenter, member_count_of
from unetkit.inference.calibrated import Sources, as_sources
from unetkit.inference.ensemble import checkpoint_paths
from unetkit.inference.sliding_window import DEFAULT_BATCH_SIZE
from unetkit.serve.admission import DEFAULT_MAX_QUEUE, DEFAULT_TIMEOUT_S
from unetkit.serve.app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app

DEFAULT_MAX_UPLOAD_MB = DEFAULT_MAX_UPLOAD_BYTES / 2**20
DEFAULT_MAX_MEGAPIXELS = DEFAULT_MAX_PIXELS / 1e6


def app_from_checkpoint(
    checkpoint: Sources | None,
    *,
    backend: str = "torch",
    exported: str | Path | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_TIMEOUT_S,
    **segmenter_options: Any,
) -> FastAPI:
    """The service of a checkpoint file; 1 MB is 2**20 bytes, a megapixel 10**6 pixels.

    ``api_key``, ``max_queue`` and ``request_timeout_s`` are :func:`create_app`'s;
    ``segmenter_options`` are the Segmenter's keyword options (e.g. ``tta=True``) and
    ``threshold``, the binary cut over the stored one. ``backend`` and ``exported`` pick the
    runtime (:func:`unetkit.inference.backends.load_segmenter`; ``auto`` the fastest installed);
    the path chosen is logged and kept in ``app.state.backend``. Several checkpoints (or a
    ``unetkit cv`` folder) are served as one ensemble, each calibrated as stored.
    """
    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be a positive number of MB; got {max_upload_mb}")
    if not max_megapixels > 0:
        raise ValueError(f"max_megapixels must be positive; got {max_megapixels}")
    segmenter, choice = load_segmenter(
        backend, checkpoint, exported, device, batch_size, **segmenter_options
    )
    logging.getLogger("uvicorn.error").info("unetkit serve: %s", choice.describe())
    members = member_count_of(segmenter)
    if members > 1:
        logging.getLogger("uvicorn.error").info("unetkit serve: ensemble of %d members", members)
    metadata = getattr(segmenter.model, "metadata", None)
    if metadata is None:
        metadata = load_checkpoint(checkpoint_paths(as_sources(checkpoint))[0])
    name = metadata["architecture"]["name"]
    app = create_app(
        segmenter,
        model_name=name if members == 1 else f"ensemble of {members} {name}",
        max_upload_bytes=max(1, int(max_upload_mb * 2**20)),
        max_pixels=max(1, int(max_megapixels * 1e6)),
        api_key=api_key,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
    )
    app.state.backend = choice.to_dict()
    return app


def build_server(
    checkpoint: Sources,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    log_level: str = "info",
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_TIMEOUT_S,
    **segmenter_options: Any,
) -> uvicorn.Server:
    """A uvicorn server of the checkpoint's service, not yet started; ``port=0`` picks a free one.

    Call ``.run()`` to serve until interrupted, or run it on a thread and set ``.should_exit``.
    """
    app = app_from_checkpoint(
        checkpoint,
        max_upload_mb=max_upload_mb,
        max_megapixels=max_megapixels,
        device=device,
        batch_size=batch_size,
        api_key=api_key,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
        **segmenter_options,
    )
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))


def run_server(checkpoint: Sources, **options: Any) -> None:
    """Serve ``checkpoint`` at ``http://host:port/`` until interrupted (Ctrl-C); ``options`` are
    :func:`build_server`'s (host, port, limits, key, device, batch size, Segmenter options)."""
    server = build_server(checkpoint, **options)
    access = (
        "every route but / and /health needs the API key"
        if options.get("api_key") is not None
        else "no API key: anyone who reaches the port may use it"
    )
    logging.getLogger("uvicorn.error").info("unetkit serve: %s", access)  # never the key itself
    server.run()
