"""The daemon's HTTP API (FastAPI) and web page. OpenAPI: /openapi.json, /docs.

Reading routes are open; mutating routes (POST, DELETE) need `Authorization: Bearer TOKEN`.
Request bodies are capped per route by `BodyLimit`: a declared Content-Length over the cap
is answered 413 before any of the body is read, and a body that grows past it (chunked) is
cut off with 413, so an upload never fills memory or disk.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edgessl.edge_runtime.daemon.http.uploads import BodyLimit, decode_image, receive_upload
from edgessl.edge_runtime.daemon.metrics import CONTENT_TYPE
from edgessl.errors import EdgesslError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
JSON_BODY_LIMIT = 1 << 20


# -- requests -----------------------------------------------------------------------------------


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="the class to enroll the shots as")
    region: str | None = Field(None, description="region of the camera (default: its first region)")
    frames: int | None = Field(None, ge=1, le=100, description="shots to keep (default: enrollment.frames)")
    negative: bool = Field(False, description="enroll the shots as negative examples: 'this is not <label>'")
    interval_s: float | None = Field(None, ge=0, le=60, description="least time between shots")
    timeout_s: float | None = Field(None, gt=0, le=600, description="give up collecting after this long")


def create_app(daemon: Daemon, token: str) -> Any:
    """The ASGI app: FastAPI routes wrapped in the body-size limits."""
    api_cfg = daemon.config.api
    app = FastAPI(title="edgessl daemon", version="1",
                  description="Camera inference daemon: health, metrics, cameras, live labels, "
                  "enrollment, model upload. Mutating routes need `Authorization: Bearer <token>`.")

    def require_token(request: Request) -> None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "this route needs the daemon's API token: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]

    @app.exception_handler(EdgesslError)
    async def _edgessl_error(request: Request, exc: EdgesslError) -> JSONResponse:
        status = getattr(exc, "status", 400)
        body: dict[str, Any] = {"ok": False, "detail": str(exc), **getattr(exc, "detail", {})}
        if getattr(exc, "result", None) is not None:  # the installer's InstallResult: its steps
            body["install"] = exc.result.to_dict()  # type: ignore[attr-defined]
        return JSONResponse(body, status_code=status)

    # -- page and status --------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB), name="web")

    @app.get("/health", summary="daemon, model, cameras and sinks")
    @app.get("/v1/health", include_in_schema=False)
    def health() -> JSONResponse:
        report = daemon.health()
        return JSONResponse(report, status_code=200 if report["status"] != "failed" else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(daemon.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/cameras", summary="cameras, their state and regions")
    def cameras() -> list[dict[str, Any]]:
        return daemon.cameras()

    @app.get("/v1/state", summary="the current label of every camera region")
    def state() -> list[dict[str, Any]]:
        return daemon.pipeline.states()

    @app.get("/v1/cameras/{camera_id}/snapshot.jpg", summary="newest frame, with regions and labels drawn",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def snapshot(camera_id: str, annotate: bool = True) -> Response:
        return Response(daemon.snapshot(camera_id, annotate=annotate), media_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})

    @app.get("/v1/events", summary="server-sent events: label changes and model switches",
             response_class=StreamingResponse)
    async def events() -> StreamingResponse:
        q = daemon.hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(q.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    yield f"event: {item.get('type', 'message')}\ndata: {json.dumps(item)}\n\n"
            finally:
                daemon.hub.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- classes ----------------------------------------------------------------------------

    @app.get("/v1/classes", summary="enrolled classes with their quality figures")
    def classes() -> list[dict[str, Any]]:
        return daemon.enrollment.class_report()

    @app.post("/v1/classes", status_code=201, dependencies=auth, summary="enroll a class from uploaded images",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["label", "images"], "properties": {
                      "label": {"type": "string"},
                      "negative": {"type": "boolean", "description": "negative examples: 'this is not <label>'"},
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def add_class(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with a 'label' field and one or more 'images' files")
        try:
            form = await request.form(max_files=200, max_fields=10)
        except HTTPException:
            raise
        except Exception as exc:
            raise HTTPException(400, f"cannot parse the form: {exc}") from exc
        label = form.get("label")
        if not isinstance(label, str):
            raise HTTPException(400, "the form needs a 'label' text field")
        negative = str(form.get("negative", "false")).lower() in ("1", "true", "yes", "on")
        uploads = [f for f in form.getlist("images") if not isinstance(f, str)]
        if not uploads:
            raise HTTPException(400, "the form needs one or more 'images' files")
        images = []
        for upload in uploads:
            data = await upload.read()
            images.append(decode_image(data, upload.filename or "image", api_cfg.max_image_pixels))
        await form.close()
        return await run_in_threadpool(daemon.enrollment.enroll_images, label, images, negative=negative)

    @app.delete("/v1/classes/{label}", dependencies=auth, summary="forget a class and all its exemplars")
    def delete_class(label: str) -> dict[str, Any]:
        return {"label": label, "removed": daemon.enrollment.forget(label)}

    @app.get("/v1/exemplars/{exemplar_id}.jpg", summary="the stored crop of an exemplar",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def exemplar(exemplar_id: int) -> Response:
        return Response(daemon.enrollment.crop_jpeg(exemplar_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400, immutable"})

    @app.delete("/v1/exemplars/{exemplar_id}", dependencies=auth, summary="remove one exemplar")
    def delete_exemplar(exemplar_id: int) -> dict[str, Any]:
        daemon.enrollment.remove_exemplar(exemplar_id)
        return {"removed": exemplar_id}

    @app.post("/v1/cameras/{camera_id}/enroll", dependencies=auth,
              summary="capture shots of a region from the live camera, check their quality, enroll them")
    def enroll_live(camera_id: str, body: EnrollRequest) -> dict[str, Any]:
        return daemon.enrollment.enroll_live(camera_id, body.label, region=body.region, frames=body.frames,
                                  negative=body.negative, interval_s=body.interval_s, timeout_s=body.timeout_s)

    # -- model ------------------------------------------------------------------------------

    @app.get("/v1/model", summary="the running model")
    def model() -> dict[str, Any]:
        return daemon.model.info()

    @app.post("/v1/model", dependencies=auth, summary="upload a bundle (.tar) and switch to it without a restart",
              description="The bundle is the request body (Content-Type: application/x-tar), or the file "
              "field `bundle` of a multipart form (with an optional `allow_downgrade` field). It is written "
              "to state_dir/incoming as it arrives, never held in memory.",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["bundle"], "properties": {
                      "bundle": {"type": "string", "format": "binary"},
                      "allow_downgrade": {"type": "boolean"}}}}}}})
    async def upload_model(request: Request,
                           allow_downgrade: bool = Query(False, description="install even if not newer")
                           ) -> dict[str, Any]:
        incoming = daemon.config.state_dir / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, suffix=".tar")
        path = Path(name)
        try:
            with open(fd, "wb") as out:
                size, fields = await receive_upload(request, out, "bundle")
            if size == 0:
                raise HTTPException(400, "empty upload: send the bundle .tar as the request body "
                                    "or as the multipart file field 'bundle'")
            downgrade = allow_downgrade or fields.get("allow_downgrade", "").lower() in ("1", "true", "yes", "on")
            answer = await run_in_threadpool(daemon.models.install, path, allow_downgrade=downgrade)
            return {"ok": True, **answer}
        finally:
            path.unlink(missing_ok=True)

    # -- limits -----------------------------------------------------------------------------

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path == "/v1/classes":
            return api_cfg.max_image_upload_bytes
        if method == "POST" and path == "/v1/model":
            return api_cfg.max_bundle_bytes
        return JSON_BODY_LIMIT

    app.add_middleware(BodyLimit, limit_for=limit_for)
    return app

