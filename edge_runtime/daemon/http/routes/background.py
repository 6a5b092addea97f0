"""Background frames of camera regions: what a region shows with nothing enrolled in it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query

from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import BackgroundCleared, BackgroundSampled
from edgessl.edge_runtime.daemon.http.schemas import BackgroundRequest, errors, json_safe

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["background"], dependencies=[Depends(auth.require)])

    @r.post("/v1/cameras/{camera_id}/background", response_model=BackgroundSampled,
            responses=errors(400, 401, 404, 409, 422, 429, 503, 507),
            summary="sample what a camera region sees when nothing enrolled is there",
            description="Stored in state_dir/background (survives restarts, re-embedded when the model changes) "
            "and used by the thresholds' calibration: /v1/classes then shows thresholds whose reason mentions "
            "the background. Replaces the region's earlier background.")
    async def sample(camera_id: str, body: BackgroundRequest) -> Any:
        daemon.enrollment.find_stream(camera_id)  # 404 at once
        return json_safe(await daemon.live.run(
            camera_id, daemon.enrollment.capture_background, camera_id, region=body.region,
            frames=body.frames, interval_s=body.interval_s, timeout_s=body.timeout_s))

    @r.delete("/v1/cameras/{camera_id}/background", response_model=BackgroundCleared,
              responses=errors(401, 404, 422, 503, 507),
              summary="forget a camera's background frames (one region, or all of its regions)")
    def clear(camera_id: str, region: str | None = Query(None, max_length=200)) -> Any:
        return json_safe(daemon.enrollment.clear_background(camera_id, region))

    return r
