"""A trained model as an HTTP service: FastAPI app, upload page and uvicorn entry point.

``run_server(checkpoint)`` serves a checkpoint; ``create_app(segmenter)`` builds the app of any
Segmenter, for embedding in another ASGI server. The endpoints are listed in
:mod:`unetkit.serve.app`.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401
    import uvicorn  # noqa: F401
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"serving a model needs the package {error.name!r}; install fastapi, uvicorn and "
        f"python-multipart (pip install fastapi uvicorn python-multipart)"
    ) from error

from unetkit.serve.app import create_app
from unetkit.serve.server import app_from_checkpoint, build_server, run_server

__all__ = ["app_from_checkpoint", "build_server", "create_app", "run_server"]
