"""The page, health and metrics. Without the token: the page's shell and /health's short form
(status, uptime, each camera's state), nothing the token protects. The metrics carry label names
and object counts (who is home), so they need the token like everything else (Prometheus:
`authorization: {credentials_file: ...}` in the scrape config)."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import Health, PublicHealth
from edgessl.edge_runtime.daemon.http.schemas import errors, json_safe
from edgessl.edge_runtime.daemon.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

WEB = FsPath(__file__).resolve().parent.parent / "web"


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["status"])

    @r.get("/", include_in_schema=False)
    def index() -> FileResponse:  # the page's shell: no data until the token is given
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @r.get("/health", response_model=Health | PublicHealth,
           summary="is the daemon up (without the token: status, uptime, camera states); with it, every part",
           description="Status `failed` (503): the inference loop is not alive; `degraded`: a camera is not "
           "streaming, storage has a problem, or the API did not answer its own probe. With the token: the "
           "model, each camera's counters and reason, sinks, storage (`problems`: read-only or full "
           "filesystems), the API's connections, the work queues.",
           responses={503: {"model": Health | PublicHealth, "description": "the inference loop is not alive"}})
    @r.get("/v1/health", include_in_schema=False)
    async def health(request: Request) -> JSONResponse:  # on the event loop: never waits for a thread
        report = daemon.health(full=auth.valid(request))
        return JSONResponse(json_safe(report), status_code=200 if report["status"] != "failed" else 503)

    @r.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PlainTextResponse,
           dependencies=[Depends(auth.require)],
           responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(401)})
    async def metrics() -> Response:
        return Response(daemon.metrics.render(), media_type=CONTENT_TYPE)

    return r
