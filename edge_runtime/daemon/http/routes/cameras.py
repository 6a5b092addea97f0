"""Cameras: what they are, what each region shows now, the annotated picture, live enrollment."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import CameraInfo, LiveEnrolled, RegionState
from edgessl.edge_runtime.daemon.http.schemas import EnrollRequest, errors, json_safe

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

JPEG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["cameras"], dependencies=[Depends(auth.require)])
    live = daemon.config.enrollment

    @r.get("/v1/cameras", response_model=list[CameraInfo], responses=errors(401),
           summary="cameras, their state (and why they are not streaming) and regions")
    async def cameras() -> Any:
        return json_safe(daemon.cameras())

    @r.get("/v1/state", response_model=list[RegionState], responses=errors(401),
           summary="the current label of every camera region")
    async def state() -> Any:
        return json_safe(daemon.pipeline.states())

    @r.get("/v1/cameras/{camera_id}/snapshot.jpg", response_class=Response, responses={**JPEG, **errors(401, 404, 409, 422)},
           summary="newest frame, with regions, objects and labels drawn",
           description="X-Region-States and X-Objects (JSON) carry the region states and the objects drawn, so "
           "the text beside the picture is the decision on it.")
    def snapshot(camera_id: str, annotate: bool = True) -> Response:
        shot = daemon.snapshot(camera_id, annotate=annotate)
        return Response(shot.jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store",
                                 "X-Region-States": json.dumps(json_safe(shot.states), ensure_ascii=True),
                                 "X-Objects": json.dumps(json_safe(shot.objects), ensure_ascii=True)})

    @r.post("/v1/cameras/{camera_id}/enroll", response_model=LiveEnrolled,
            responses=errors(400, 401, 404, 409, 413, 422, 429, 503, 507),
            summary="capture shots of a region from the live camera, check their quality, enroll them",
            description=f"At most {live.max_live_per_camera} at once per camera and {live.max_live_total} on the "
            "device; past that 429 with Retry-After.")
    async def enroll_live(camera_id: str, body: EnrollRequest) -> Any:
        daemon.enrollment.find_stream(camera_id)  # 404 at once
        return json_safe(await daemon.live.run(
            camera_id, daemon.enrollment.enroll_live, camera_id, body.label, region=body.region,
            frames=body.frames, negative=body.negative, interval_s=body.interval_s, timeout_s=body.timeout_s,
            until=body.until, max_frames=body.max_frames))

    return r
