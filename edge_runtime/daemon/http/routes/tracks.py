"""Routes of the objects path: what each camera sees now, recent tracks, their crops, and
enrollment from a track (`enroll`: "that is Rex"; `reject`: "that is not Rex")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import CameraObjects, TrackDetail, TrackEnrolled, TrackSummary
from edgessl.edge_runtime.daemon.http.schemas import TrackEnrollRequest, TrackRejectRequest, errors, json_safe

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

MAX_TRACK_ID = 2**53  # ids are counters; JSON numbers stay exact below this
JPEG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["objects"], dependencies=[Depends(auth.require)])
    tracks = daemon.tracks

    @r.get("/v1/cameras/{camera_id}/objects", response_model=CameraObjects, responses=errors(401, 404),
           summary="the objects a camera sees now: track id, box, label (or unknown), zones")
    def camera_objects(camera_id: str = Path(max_length=64)) -> Any:
        return json_safe(tracks.objects(camera_id))

    @r.get("/v1/tracks", response_model=list[TrackSummary], responses=errors(401, 404, 422),
           summary="recent tracks, live ones first, then those that left (newest first)")
    def recent(limit: int = Query(50, ge=1, le=1000), camera: str | None = Query(None, max_length=64)) -> Any:
        return json_safe(tracks.recent(limit, camera))

    @r.get("/v1/tracks/{track_id}", response_model=TrackDetail, responses=errors(401, 404, 422),
           summary="one track: its label, evidence, times, zones and kept crops")
    def track(track_id: int = Path(ge=1, le=MAX_TRACK_ID)) -> Any:
        return json_safe(tracks.get(track_id))

    @r.get("/v1/tracks/{track_id}/best.jpg", response_class=Response, responses={**JPEG, **errors(401, 404, 422)},
           summary="the sharpest kept crop of a track")
    def best(track_id: int = Path(ge=1, le=MAX_TRACK_ID)) -> Response:
        return Response(tracks.crop(track_id), media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @r.get("/v1/tracks/{track_id}/crops/{name}", response_class=Response, responses={**JPEG, **errors(401, 404, 422)},
           summary="one kept crop of a track")
    def crop(track_id: int = Path(ge=1, le=MAX_TRACK_ID),
             name: str = Path(max_length=64, pattern=r"^[0-9]+-[0-9]+\.jpg$")) -> Response:
        return Response(tracks.crop(track_id, name), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400, immutable"})

    @r.post("/v1/tracks/{track_id}/enroll", response_model=TrackEnrolled,
            responses=errors(400, 401, 404, 422, 503, 507),
            summary="enroll a track's best diverse crops as a class: 'that is <label>'",
            description="Takes up to `crops` of the track's kept crops (the sharpest, then the least alike), "
            "live or after it left (until it expires: tracks.keep). From then on, tracks like it get the label.")
    async def enroll(body: TrackEnrollRequest, track_id: int = Path(ge=1, le=MAX_TRACK_ID)) -> Any:
        return json_safe(await daemon.work.run(tracks.enroll, track_id, body.label, body.crops))

    @r.post("/v1/tracks/{track_id}/reject", response_model=TrackEnrolled,
            responses=errors(400, 401, 404, 422, 503, 507),
            summary="add a track's crops as negative examples of a class: 'that is not <label>'",
            description="The class's threshold is calibrated against them, and a crop closer to one of them "
            "than to the class is not the class.")
    async def reject(body: TrackRejectRequest, track_id: int = Path(ge=1, le=MAX_TRACK_ID)) -> Any:
        return json_safe(await daemon.work.run(tracks.enroll, track_id, body.label, negative=True))

    return r
