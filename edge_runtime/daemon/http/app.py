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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edgessl.edge_runtime.daemon.metrics import CONTENT_TYPE
from edgessl.errors import EdgesslError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
JSON_BODY_LIMIT = 1 << 20
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- body size limits ---------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: cap the request body per (method, path); answer 413 past the cap."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body too large: the limit of this route is {limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False
            if too_large:
                await self._reject(send, limit)  # without reading any of the body
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to the cut-off body is replaced by the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(send, limit)


# -- images -------------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, WebP or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    return None


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """BGR image from uploaded bytes; 400 when it is not a JPEG/PNG/WebP/BMP image, 413 when too large."""
    size = image_size(data)
    if size is None:
        raise HTTPException(400, f"{name}: not a JPEG, PNG, WebP or BMP image")
    if size[0] * size[1] > max_pixels:
        raise HTTPException(413, f"{name}: {size[0]}x{size[1]} pixels; the limit is {max_pixels} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HTTPException(400, f"{name}: the image data is damaged or truncated (cannot decode it)")
    return image


# -- streamed uploads ---------------------------------------------------------------------------


def _multipart() -> tuple[Any, Any]:
    try:  # python-multipart >= 0.0.13
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # older releases
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]
    return MultipartParser, parse_options_header


async def receive_upload(request: Request, out: Any, file_field: str) -> tuple[int, dict[str, str]]:
    """Write an upload to the open binary file `out` as it arrives: the whole body, or the
    file field `file_field` of a multipart form. Returns (bytes written, the form's small text
    fields). The body's size is capped by BodyLimit."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        size = 0
        async for chunk in request.stream():
            out.write(chunk)
            size += len(chunk)
        return size, {}
    parser_class, parse_options_header = _multipart()
    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary")
    part: dict[str, Any] = {}
    fields: dict[str, bytearray] = {}
    written = 0

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", name=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal written
        if part["name"] == file_field:
            out.write(data[start:end])
            written += end - start
            return
        value = fields.setdefault(part["name"], bytearray())
        if len(value) + end - start > 4096:
            raise HTTPException(400, f"form field {part['name']!r} is too long (text fields: 4096 bytes)")
        value += data[start:end]

    parser = parser_class(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except HTTPException:
            raise
        except Exception as exc:  # python-multipart's own errors
            raise HTTPException(400, f"malformed multipart upload: {exc}") from exc
    parser.finalize()
    return written, {k: v.decode("utf-8", "replace") for k, v in fields.items()}


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
        from edgessl.edge_runtime.daemon.core import jsonable

        status = getattr(exc, "status", 400)
        body: dict[str, Any] = {"ok": False, "detail": str(exc), **getattr(exc, "detail", {})}
        if getattr(exc, "result", None) is not None:  # the installer's InstallResult: its steps
            body["install"] = jsonable(exc.result)  # type: ignore[attr-defined]
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
        return daemon.states()

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
        return daemon.class_report()

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
        return await run_in_threadpool(daemon.enroll_images, label, images, negative=negative)

    @app.delete("/v1/classes/{label}", dependencies=auth, summary="forget a class and all its exemplars")
    def delete_class(label: str) -> dict[str, Any]:
        return {"label": label, "removed": daemon.forget(label)}

    @app.get("/v1/exemplars/{exemplar_id}.jpg", summary="the stored crop of an exemplar",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def exemplar(exemplar_id: int) -> Response:
        return Response(daemon.crop_jpeg(exemplar_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400, immutable"})

    @app.delete("/v1/exemplars/{exemplar_id}", dependencies=auth, summary="remove one exemplar")
    def delete_exemplar(exemplar_id: int) -> dict[str, Any]:
        daemon.remove_exemplar(exemplar_id)
        return {"removed": exemplar_id}

    @app.post("/v1/cameras/{camera_id}/enroll", dependencies=auth,
              summary="capture shots of a region from the live camera, check their quality, enroll them")
    def enroll_live(camera_id: str, body: EnrollRequest) -> dict[str, Any]:
        return daemon.enroll_live(camera_id, body.label, region=body.region, frames=body.frames,
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
            answer = await run_in_threadpool(daemon.install_bundle, path, allow_downgrade=downgrade)
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

