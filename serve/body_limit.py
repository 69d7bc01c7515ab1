"""ASGI middleware that bounds request bodies per route before anything parses or spools them.

A body over its route's bound answers 413, from ``Content-Length`` when the client sends one, else as soon as
the streamed body passes the bound (the HTTPException raised from ``receive`` reaches FastAPI's handler,
which answers it; FastAPI passes HTTPExceptions from a body read through). The bounds live in this module,
not in the app's: Serve freezes (pickles) the ingress app, and a replica sets them from its settings.
"""

from __future__ import annotations

import orjson
from fastapi import HTTPException, Response

from hitmodels.config import ServeSettings

def _limits(settings: ServeSettings) -> dict[str, int]:
    """Route (without the Serve route prefix) -> bound in bytes; routes not listed are not bounded here."""
    return {"/predict": int(settings.max_body_mb * 2**20), "/predict/audio": int(settings.max_upload_mb * 2**20)}


_LIMITS: dict[str, int] = _limits(ServeSettings())  # the defaults until a replica sets its own


def set_body_limits(settings: ServeSettings) -> None:
    """This process's bounds, from the replica's settings (``max_body_mb``, ``max_upload_mb``)."""
    _LIMITS.clear()
    _LIMITS.update(_limits(settings))


def too_large(limit: int, path: str) -> HTTPException:
    """The 413 of a body over ``limit`` bytes for ``path``, in FastAPI's error shape."""
    loc = ["body", "file"] if path.endswith("/audio") else ["body"]
    return HTTPException(413, detail=[{"loc": loc, "msg": f"request body larger than {limit} bytes "
                                                          f"({limit / 2**20:g} MiB) for {path}"}])


class BodyLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        root = scope.get("root_path", "")  # Serve's route prefix, which the path carries too
        if root and path.startswith(root):
            path = path[len(root):]
        path = path.rstrip("/")
        limit = _LIMITS.get(path)
        if limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response = Response(orjson.dumps({"detail": too_large(limit, path).detail}), status_code=413,
                                media_type="application/json")
            return await response(scope, receive, send)
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit, path)
            return message

        await self.app(scope, bounded_receive, send)
