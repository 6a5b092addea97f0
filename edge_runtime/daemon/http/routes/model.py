"""The model: what runs, and a new signed bundle installed through the device root's A/B installer.

An upload is refused from its headers when it can be: a daemon without a device root (403) or
with an install running (409) answers before any of the body is read or stored.
"""

from __future__ import annotations

import tempfile
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import InstallAnswer, ModelInfo
from edgessl.edge_runtime.daemon.http.schemas import errors, json_safe
from edgessl.edge_runtime.daemon.http.uploads import receive_upload

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

YES = ("1", "true", "yes", "on")


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["model"], dependencies=[Depends(auth.require)])

    @r.get("/v1/model", response_model=ModelInfo, responses=errors(401), summary="the running model")
    async def model() -> Any:
        return daemon.model.info()

    @r.post("/v1/model", response_model=InstallAnswer, responses=errors(400, 401, 403, 409, 413, 422, 503, 507),
            summary="upload a signed bundle (.tar) and switch to it without a restart",
            description="The bundle is the request body (Content-Type: application/x-tar), or the file field "
            "`bundle` of a multipart form (with optional `allow_downgrade` and `allow_model_change` fields). It is "
            "written to state_dir/incoming as it arrives, never held in memory; the device root's A/B installer "
            "checks its signature, that it was built for this device's profile and is the model this device runs "
            "(`allow_model_change` to replace one model by another), its files, and runs the health check.",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
                "multipart/form-data": {"schema": {"type": "object", "required": ["bundle"], "properties": {
                    "bundle": {"type": "string", "format": "binary", "minLength": 1},
                    "allow_downgrade": {"type": "boolean"}, "allow_model_change": {"type": "boolean"}}}}}}})
    async def upload(request: Request,
                     allow_downgrade: bool = Query(False, description="install even if not newer"),
                     allow_model_change: bool = Query(False, description="replace the model by another one")) -> Any:
        daemon.models.check_can_install()  # 403 / 409 from the headers: nothing read, nothing stored
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
                raise HTTPException(400, "empty upload: send the bundle .tar as the request body or as the "
                                    "multipart file field 'bundle'")
            answer = await daemon.work.run(
                daemon.models.install, path,
                allow_downgrade=allow_downgrade or fields.get("allow_downgrade", "").lower() in YES,
                allow_model_change=allow_model_change or fields.get("allow_model_change", "").lower() in YES)
            return json_safe({"ok": True, **answer})
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    return r
