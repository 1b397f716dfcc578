"""The route path of an ASGI request, as the router matches it."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """``scope["path"]`` without the ``root_path`` a proxy mounted the app under (the rule
    Starlette's router applies, kept here rather than imported from its private helpers)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    return rest if rest.startswith("/") or not rest else path
