"""The daemon's HTTP API (FastAPI) and web page: one router per topic (`routes/`), typed answers
(`responses.py`), around the daemon's public surface. OpenAPI: /openapi.json.

What wraps every route, outermost first: `HostCheck` (421 for a `Host` this device does not
answer to: DNS rebinding), `BodyLimit` (a declared Content-Length over the route's cap is 413
before any of the body is read; a body that grows past it is cut off with 413), then the
routes, whose token check is a dependency (auth.py: every route but the page, /health's short
form and the OpenAPI document needs it).

Every error is JSON `{"detail": ...}` (ErrorBody) with the status codes each route lists in the
OpenAPI document; storage faults are 507 (a full filesystem: what is full and how to free it) and
503 (read-only storage). Error texts never carry a URL's secrets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgessl.edge_runtime.daemon.http.auth import Auth, HostCheck, SecurityHeaders, default_hosts
from edgessl.edge_runtime.daemon.http.routes import (
    background,
    cameras,
    classes,
    events,
    model,
    samples,
    status,
    tracks,
)
from edgessl.edge_runtime.daemon.http.schemas import json_safe
from edgessl.edge_runtime.daemon.http.uploads import BodyLimit
from edgessl.edge_runtime.redact import redact_text
from edgessl.errors import EdgesslError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1 << 20
ACK_BODY_LIMIT = 2 << 20  # POST /v1/samples/ack: 10000 ids with their sha256 take about 1 MiB
ROUTERS = (status, cameras, classes, background, model, tracks, samples, events)


# Refused requests give their connection back at once instead of holding it for the keep-alive
# timeout: a client that retries without the token, or past a stream cap, cannot fill
# `api.max_connections` with idle connections that the server itself kept open.
_CLOSE_AFTER = {401, 429}


def _answer(body: dict[str, Any], status: int, headers: Any = None) -> JSONResponse:
    if isinstance(body.get("detail"), str):
        body["detail"] = redact_text(body["detail"])
    if status in _CLOSE_AFTER:
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse(json_safe(body), status_code=status, headers=headers)


def create_app(daemon: Daemon, auth: Auth) -> Any:
    """The ASGI app: the routers, wrapped in the body limits and the Host check."""
    api = daemon.config.api
    # No /docs or /redoc: their pages load scripts from a CDN into the device's origin, where the
    # page keeps its token. /openapi.json opens in any OpenAPI viewer.
    app = FastAPI(title="edgessl daemon", version="2", docs_url=None, redoc_url=None,
                  description="Camera inference daemon: health, metrics, cameras, live labels, objects and tracks, "
                  "enrollment, model upload, the harvest of collected samples. Every route but the page's shell, "
                  "/health (short form) and this document needs `Authorization: Bearer <token>`.")

    @app.exception_handler(EdgesslError)
    async def _edgessl_error(request: Request, exc: EdgesslError) -> JSONResponse:
        body: dict[str, Any] = {"ok": False, "detail": str(exc), **getattr(exc, "detail", {})}
        if getattr(exc, "result", None) is not None:  # the installer's InstallResult: its steps
            body["install"] = exc.result.to_dict()  # type: ignore[attr-defined]
        return _answer(body, getattr(exc, "status", 400), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Without the offending input: it may be NaN, Infinity or a lone surrogate, none of
        # which a JSON answer can hold (FastAPI's own handler would fail with a 500).
        found = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                 for e in exc.errors()]
        return _answer({"ok": False, "detail": found}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _answer({"ok": False, "detail": exc.detail}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        typed = daemon.storage.translate(exc, f"{request.method} {request.url.path} failed")
        if typed is None:
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return _answer({"ok": False, "detail": f"internal error: {exc}"}, 500)
        return await _edgessl_error(request, typed)

    app.mount("/web", StaticFiles(directory=status.WEB), name="web")
    for topic in ROUTERS:
        app.include_router(topic.router(daemon, auth))

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path == "/v1/classes":
            return api.max_image_upload_bytes
        if method == "POST" and path == "/v1/model":
            return api.max_bundle_bytes
        if method == "POST" and path == "/v1/samples/ack":
            return ACK_BODY_LIMIT
        return JSON_BODY_LIMIT

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(HostCheck, names=default_hosts(daemon.device, api.allowed_hosts))
    app.add_middleware(SecurityHeaders)  # outermost: the 421s carry the headers too
    return app
