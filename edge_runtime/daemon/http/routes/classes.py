"""Classes: enroll from uploaded images, list with quality figures, delete and restore, exemplars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response

from edgessl.edge_runtime.daemon.enrollment import checked_label
from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import (
    ClassReport,
    Deleted,
    Enrolled,
    ExemplarRemoved,
    Restored,
)
from edgessl.edge_runtime.daemon.http.schemas import LABEL_SCHEMA, errors, json_safe
from edgessl.edge_runtime.daemon.http.uploads import decode_scaled, image_size
from edgessl.edge_runtime.fewshot.labels import MAX_LABEL_CHARS

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

MAX_ID = 2**63 - 1  # SQLite's largest integer
JPEG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["classes"], dependencies=[Depends(auth.require)])
    api = daemon.config.api

    @r.get("/v1/classes", response_model=list[ClassReport], responses=errors(401, 503, 507),
           summary="enrolled classes with their quality figures, thresholds and the next step for each")
    def classes() -> Any:
        return json_safe(daemon.enrollment.class_report())

    @r.post("/v1/classes", status_code=201, response_model=Enrolled, responses=errors(400, 401, 413, 415, 422, 503, 507),
            summary="enroll a class from uploaded images",
            description=f"Limits: {api.max_image_upload_bytes} bytes in all, {api.max_image_pixels} decoded pixels "
            f"per image and {api.max_request_pixels} per request (read from the image headers before decoding; "
            "413 past them). Images are decoded one at a time in a worker and stored scaled down (longest side: "
            "enrollment.max_crop_side, default 4x the model input).",
            openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["label", "images"], "properties": {
                    "label": LABEL_SCHEMA,
                    "negative": {"type": "boolean", "description": "negative examples: 'this is not <label>'"},
                    "images": {"type": "array", "minItems": 1, "maxItems": 200,
                               "items": {"type": "string", "format": "binary"}}}}}}}})
    async def add_class(request: Request) -> Any:
        label, negative, blobs = await _read_images(request, daemon)

        def decode_and_enroll() -> dict[str, Any]:  # in a worker thread, one image decoded at a time
            side = daemon.enrollment.crop_side()
            images = []
            while blobs:
                name, data, size = blobs.pop(0)
                with daemon.work.pixels(size[0] * size[1]):
                    images.append(decode_scaled(data, name, size, side))
                del data
            return daemon.enrollment.enroll_images(label, images, negative=negative)

        return json_safe(await daemon.work.run(decode_and_enroll))

    @r.delete("/v1/classes/{label:path}", response_model=Deleted, responses=errors(401, 404, 422, 503, 507),
              summary="forget a class and all its exemplars",
              description="`label` names the class exactly, or up to case and spacing. Works on a full disk.")
    def delete_class(label: str = Path(min_length=1, max_length=4 * MAX_LABEL_CHARS)) -> Any:
        stored, removed = daemon.enrollment.forget(label)
        undo_s = daemon.config.enrollment.undo_s
        return json_safe({"label": stored, "removed": removed, "undo_s": undo_s,
                          "restore": f"/v1/classes/{quote(stored, safe='')}/restore" if undo_s > 0 else None})

    @r.post("/v1/classes/{label:path}/restore", response_model=Restored, responses=errors(401, 404, 422, 503, 507),
            summary="undo the deletion of a class",
            description="Within enrollment.undo_s seconds of its deletion; the crops are embedded again.")
    def restore_class(label: str = Path(min_length=1, max_length=4 * MAX_LABEL_CHARS)) -> Any:
        return json_safe(daemon.enrollment.restore(label))

    @r.get("/v1/exemplars/{exemplar_id:int}.jpg", response_class=Response,
           responses={**JPEG, **errors(401, 404, 405, 422, 503)}, summary="the stored crop of an exemplar")
    def exemplar(exemplar_id: int = Path(ge=0, le=MAX_ID)) -> Response:
        return Response(daemon.enrollment.crop_jpeg(exemplar_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    @r.delete("/v1/exemplars/{exemplar_id:int}", response_model=ExemplarRemoved,
              responses=errors(401, 404, 422, 503, 507), summary="remove one exemplar")
    def delete_exemplar(exemplar_id: int = Path(ge=0, le=MAX_ID)) -> Any:
        daemon.enrollment.remove_exemplar(exemplar_id)
        return {"removed": exemplar_id}

    return r


async def _read_images(request: Request, daemon: Daemon) -> tuple[str, bool, list[tuple[str, bytes, tuple[int, int]]]]:
    """The form's label, negative flag and images, each checked from its header (nothing decoded)."""
    api = daemon.config.api
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
                raise HTTPException(400, f"{name}: the image data is damaged or truncated (its header says "
                                    f"{size[0]}x{size[1]} pixels)")
            if size[0] * size[1] > api.max_image_pixels:
                raise HTTPException(413, f"{name}: {size[0]}x{size[1]} pixels; the limit is {api.max_image_pixels} "
                                    "pixels per image (api.max_image_pixels)")
            total += size[0] * size[1]
            if total > api.max_request_pixels:
                raise HTTPException(413, f"the images of this upload hold more than {api.max_request_pixels} decoded "
                                    "pixels (api.max_request_pixels); send fewer or smaller images")
            blobs.append((name, data, size))
    finally:
        await form.close()
    return label, negative, blobs
