"""The daemon's HTTP API (FastAPI) and web page. OpenAPI: /openapi.json, /docs.

Reading routes are open; mutating routes (POST, DELETE) need `Authorization: Bearer TOKEN`.
Request bodies are capped per route by `BodyLimit`: a declared Content-Length over the cap
is answered 413 before any of the body is read, and a body that grows past it (chunked) is
cut off with 413, so an upload never fills memory or disk. Enrollment images are limited in
decoded pixels (per image, per request, and being decoded at once over all requests),
checked from their headers before anything is decoded; decoding and embedding run in the
daemon's bounded worker pool (503 + Retry-After when it is full) and live enrollments in
their own capped slots (429 + Retry-After), so /health and /v1/state keep answering.

Every error is JSON `{"detail": ...}` (ErrorBody) with the status codes each route lists in
the OpenAPI document: storage faults are 507 (a full filesystem: what is full and how to free
it) and 503 (read-only storage).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgessl.edge_runtime.daemon.enrollment import checked_label
from edgessl.edge_runtime.daemon.http.schemas import (
    LABEL_SCHEMA,
    BackgroundRequest,
    EnrollRequest,
    errors,
    json_safe,
)
from edgessl.edge_runtime.daemon.http.tracks import router as tracks_router
from edgessl.edge_runtime.daemon.http.uploads import BodyLimit, decode_scaled, image_size, receive_upload
from edgessl.edge_runtime.daemon.metrics import CONTENT_TYPE
from edgessl.edge_runtime.fewshot.labels import MAX_LABEL_CHARS
from edgessl.errors import EdgesslError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

log = logging.getLogger(__name__)

WEB = FsPath(__file__).resolve().parent / "web"
JSON_BODY_LIMIT = 1 << 20
MAX_ID = 2**63 - 1  # SQLite's largest integer


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
        return JSONResponse(json_safe(body), status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Without the offending input: it may be NaN, Infinity or a lone surrogate, none of
        # which a JSON answer can hold (FastAPI's own handler would fail with a 500).
        found = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                 for e in exc.errors()]
        return JSONResponse(json_safe({"ok": False, "detail": found}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(json_safe({"ok": False, "detail": exc.detail}), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        typed = daemon.storage.translate(exc, f"{request.method} {request.url.path} failed")
        if typed is None:
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return JSONResponse(json_safe({"ok": False, "detail": f"internal error: {exc}"}), status_code=500)
        return await _edgessl_error(request, typed)

    # -- page and status --------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB), name="web")

    @app.get("/health", summary="daemon, model, cameras, sinks, storage and work queues",
             description="`storage.problems` lists a read-only or unwritable state_dir or gallery (found at "
             "start); `gallery.reembedding` the progress of a background re-embedding. 503 when the "
             "inference loop is not alive.",
             responses={503: {"description": "the inference loop is not alive (status: failed)"}})
    @app.get("/v1/health", include_in_schema=False)
    async def health() -> JSONResponse:  # on the event loop: never waits for a thread
        report = daemon.health()
        return JSONResponse(json_safe(report), status_code=200 if report["status"] != "failed" else 503)

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(daemon.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/cameras", summary="cameras, their state and regions")
    async def cameras() -> list[dict[str, Any]]:
        return daemon.cameras()

    @app.get("/v1/state", summary="the current label of every camera region")
    async def state() -> list[dict[str, Any]]:
        return json_safe(daemon.pipeline.states())

    @app.get("/v1/cameras/{camera_id}/snapshot.jpg", summary="newest frame, with regions and labels drawn",
             description="X-Region-States and X-Objects (JSON) carry the region states and the objects drawn.",
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                        **errors(404, 409, 422)})
    def snapshot(camera_id: str, annotate: bool = True) -> Response:
        # X-Region-States: the region states drawn on this picture (JSON, ASCII), so that the page
        # shows the same decision under the picture as on it.
        jpeg, states, objects = daemon.snapshot_with_states(camera_id, annotate=annotate)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store",
                                 "X-Region-States": json.dumps(json_safe(states), ensure_ascii=True),
                                 "X-Objects": json.dumps(json_safe(objects), ensure_ascii=True)})

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

    @app.get("/v1/classes", summary="enrolled classes with their quality figures", responses=errors(503, 507))
    def classes() -> list[dict[str, Any]]:
        return json_safe(daemon.enrollment.class_report())

    @app.post("/v1/classes", status_code=201, dependencies=auth, summary="enroll a class from uploaded images",
              description=f"Limits: {api_cfg.max_image_upload_bytes} bytes in all, {api_cfg.max_image_pixels} "
              f"decoded pixels per image and {api_cfg.max_request_pixels} per request (read from the image "
              "headers before decoding; 413 past them). Images are decoded one at a time in a worker and "
              "stored scaled down (longest side: enrollment.max_crop_side, default 4x the model input).",
              responses=errors(400, 401, 413, 415, 422, 503, 507),
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["label", "images"], "properties": {
                      "label": LABEL_SCHEMA,
                      "negative": {"type": "boolean", "description": "negative examples: 'this is not <label>'"},
                      "images": {"type": "array", "minItems": 1, "maxItems": 200,
                                 "items": {"type": "string", "format": "binary"}}}}}}}})
    async def add_class(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with a 'label' field and one or more 'images' files")
        try:
            form = await request.form(max_files=200, max_fields=10)
        except HTTPException:
            raise
        except Exception as exc:
            raise HTTPException(400, f"cannot parse the form: {exc}") from exc
        try:
            label = form.get("label")
            if not isinstance(label, str):
                raise HTTPException(400, "the form needs a 'label' text field")
            label = checked_label(label)  # 422 before any image is decoded
            negative = str(form.get("negative", "false")).lower() in ("1", "true", "yes", "on")
            uploads = [f for f in form.getlist("images") if not isinstance(f, str)]
            if not uploads:
                raise HTTPException(400, "the form needs one or more 'images' files")
            blobs: list[tuple[str, bytes, tuple[int, int]]] = []
            total = 0
            for upload in uploads:
                name = upload.filename or "image"
                data = await upload.read()
                size = image_size(data)  # from the header: nothing is decoded yet
                if size is None:
                    raise HTTPException(400, f"{name}: not a JPEG, PNG, WebP or BMP image")
                if size[0] < 1 or size[1] < 1:
                    raise HTTPException(400, f"{name}: the image data is damaged or truncated (its header "
                                        f"says {size[0]}x{size[1]} pixels)")
                if size[0] * size[1] > api_cfg.max_image_pixels:
                    raise HTTPException(413, f"{name}: {size[0]}x{size[1]} pixels; the limit is "
                                        f"{api_cfg.max_image_pixels} pixels per image (api.max_image_pixels)")
                total += size[0] * size[1]
                if total > api_cfg.max_request_pixels:
                    raise HTTPException(413, f"the images of this upload hold more than {api_cfg.max_request_pixels} "
                                        f"decoded pixels (api.max_request_pixels); send fewer or smaller images")
                blobs.append((name, data, size))
        finally:
            await form.close()

        def decode_and_enroll() -> dict[str, Any]:  # in a worker thread, one image decoded at a time
            side = daemon.enrollment.crop_side()
            images = []
            while blobs:
                name, data, size = blobs.pop(0)
                with daemon.work.pixels(size[0] * size[1]):
                    images.append(decode_scaled(data, name, size, side))
                del data
            return daemon.enrollment.enroll_images(label, images, negative=negative)

        return await daemon.work.run(decode_and_enroll)

    @app.delete("/v1/classes/{label:path}", dependencies=auth, summary="forget a class and all its exemplars",
                description="`label` names the class exactly, or up to case and spacing. Works on a full disk.",
                responses=errors(401, 404, 422, 503, 507))
    def delete_class(label: str = Path(min_length=1, max_length=4 * MAX_LABEL_CHARS)) -> dict[str, Any]:
        stored, removed = daemon.enrollment.forget(label)
        undo_s = daemon.config.enrollment.undo_s
        return {"label": stored, "removed": removed, "undo_s": undo_s,
                "restore": f"/v1/classes/{quote(stored, safe='')}/restore" if undo_s > 0 else None}

    @app.post("/v1/classes/{label:path}/restore", dependencies=auth, summary="undo the deletion of a class",
              description="Within enrollment.undo_s seconds of its deletion; the crops are embedded again.",
              responses=errors(401, 404, 422, 503, 507))
    def restore_class(label: str = Path(min_length=1, max_length=4 * MAX_LABEL_CHARS)) -> dict[str, Any]:
        return json_safe(daemon.enrollment.restore(label))

    @app.get("/v1/exemplars/{exemplar_id:int}.jpg", summary="the stored crop of an exemplar",
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                        **errors(404, 405, 422, 503)})
    def exemplar(exemplar_id: int = Path(ge=0, le=MAX_ID)) -> Response:
        return Response(daemon.enrollment.crop_jpeg(exemplar_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400, immutable"})

    @app.delete("/v1/exemplars/{exemplar_id:int}", dependencies=auth, summary="remove one exemplar",
                responses=errors(401, 404, 422, 503, 507))
    def delete_exemplar(exemplar_id: int = Path(ge=0, le=MAX_ID)) -> dict[str, Any]:
        daemon.enrollment.remove_exemplar(exemplar_id)
        return {"removed": exemplar_id}

    @app.post("/v1/cameras/{camera_id}/enroll", dependencies=auth,
              summary="capture shots of a region from the live camera, check their quality, enroll them",
              description=f"At most {daemon.config.enrollment.max_live_per_camera} at once per camera and "
              f"{daemon.config.enrollment.max_live_total} on the device; past that 429 with Retry-After.",
              responses=errors(400, 401, 404, 409, 413, 422, 429, 503, 507))
    async def enroll_live(camera_id: str, body: EnrollRequest) -> dict[str, Any]:
        daemon.enrollment._find_stream(camera_id)  # 404 at once
        return json_safe(await daemon.live.run(
            camera_id, daemon.enrollment.enroll_live, camera_id, body.label, region=body.region,
            frames=body.frames, negative=body.negative, interval_s=body.interval_s, timeout_s=body.timeout_s,
            until=body.until, max_frames=body.max_frames))

    @app.post("/v1/cameras/{camera_id}/background", dependencies=auth,
              summary="sample what a camera region sees when nothing enrolled is there",
              description="Stored in state_dir/background (survives restarts, re-embedded when the model "
              "changes) and used by the thresholds' calibration: /v1/classes then shows thresholds whose "
              "reason mentions the background. Replaces the region's earlier background.",
              responses=errors(400, 401, 404, 409, 422, 429, 503, 507))
    async def background(camera_id: str, body: BackgroundRequest) -> dict[str, Any]:
        daemon.enrollment._find_stream(camera_id)  # 404 at once
        return json_safe(await daemon.live.run(
            camera_id, daemon.enrollment.capture_background, camera_id, region=body.region,
            frames=body.frames, interval_s=body.interval_s, timeout_s=body.timeout_s))

    @app.delete("/v1/cameras/{camera_id}/background", dependencies=auth,
                summary="forget a camera's background frames (one region, or all of its regions)",
                responses=errors(401, 404, 422, 503, 507))
    def clear_background(camera_id: str, region: str | None = Query(None, max_length=200)) -> dict[str, Any]:
        return daemon.enrollment.clear_background(camera_id, region)

    # -- model ------------------------------------------------------------------------------

    @app.get("/v1/model", summary="the running model")
    async def model() -> dict[str, Any]:
        return daemon.model.info()

    @app.post("/v1/model", dependencies=auth, summary="upload a bundle (.tar) and switch to it without a restart",
              description="The bundle is the request body (Content-Type: application/x-tar), or the file "
              "field `bundle` of a multipart form (with an optional `allow_downgrade` field). It is written "
              "to state_dir/incoming as it arrives, never held in memory.",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["bundle"], "properties": {
                      "bundle": {"type": "string", "format": "binary", "minLength": 1},
                      "allow_downgrade": {"type": "boolean"}}}}}}},
              responses=errors(400, 401, 403, 409, 413, 422, 503, 507))
    async def upload_model(request: Request,
                           allow_downgrade: bool = Query(False, description="install even if not newer")
                           ) -> dict[str, Any]:
        incoming = daemon.config.state_dir / "incoming"  # leftovers of a crash are removed at start
        path: FsPath | None = None
        try:
            try:
                incoming.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=incoming, suffix=".tar")
                path = FsPath(name)
                with open(fd, "wb") as out:
                    size, fields = await receive_upload(request, out, "bundle")
            except OSError as exc:
                raise daemon.storage.translate(exc, "cannot store the uploaded bundle", incoming) or exc from exc
            if size == 0:
                raise HTTPException(400, "empty upload: send the bundle .tar as the request body "
                                    "or as the multipart file field 'bundle'")
            downgrade = allow_downgrade or fields.get("allow_downgrade", "").lower() in ("1", "true", "yes", "on")
            answer = await daemon.work.run(daemon.models.install, path, allow_downgrade=downgrade)
            return {"ok": True, **answer}
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    app.include_router(tracks_router(daemon, require_token))

    # -- limits -----------------------------------------------------------------------------

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path == "/v1/classes":
            return api_cfg.max_image_upload_bytes
        if method == "POST" and path == "/v1/model":
            return api_cfg.max_bundle_bytes
        return JSON_BODY_LIMIT

    app.add_middleware(BodyLimit, limit_for=limit_for)
    return app

