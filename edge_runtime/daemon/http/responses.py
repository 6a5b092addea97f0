"""What the API's routes answer, one typed model each (as Frigate's `api/defs/response`): the
OpenAPI document is built from these, responses are checked against them, and clients (the
fleet push in `devices/flash.py`, the page, the tests) parse the same types."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- status -------------------------------------------------------------------------------------


class CameraStatus(Answer):
    camera: str
    state: Literal["connecting", "streaming", "stalled", "backing_off", "failed", "ended", "stopped"]
    state_since: float = Field(description="wall clock (seconds since the epoch)")
    captured: int
    dropped: int
    processed: int
    reconnects: int
    connect_failures: int
    stalls: int
    fps: float
    last_frame_age_s: float | None
    last_error: str | None = Field(description="what went wrong last, URLs without their secrets")
    frame_size: list[int] | None
    history: list[list[Any]] = Field(description="the last state changes: [wall clock, state]")
    reason: str | None = Field(description="why it is not streaming, in words (null while streaming)")


class ModelInfo(Answer):
    name: str
    version: int
    backbone: str
    fingerprint: str
    bundle: str
    embedding_dim: int
    generation: int
    backend: str
    artifact: str
    precision: str
    threads: int | None
    why: str = Field(description="why this backend and artifact run")
    cohort: int = Field(description="unlabelled images calibrated decisions are normalised by (0: plain cosines)")


class SinkCounts(Answer):
    delivered: int
    errors: int
    dropped: int


class PublicHealth(Answer):
    """What /health says without the token: is it up, not what it sees."""

    status: Literal["ok", "degraded", "failed"]
    device: str
    uptime_s: float
    cameras: dict[str, str] = Field(description="camera id -> its state")
    full: Literal[False] = Field(False, description="send the API token for the whole report")


class Health(Answer):
    """/health with the token: every part of the daemon."""

    status: Literal["ok", "degraded", "failed"]
    device: str
    uptime_s: float
    model: ModelInfo | None
    cameras: dict[str, CameraStatus]
    inference: dict[str, Any] = Field(description="alive, last_batch, errors, last_error")
    api: dict[str, Any] = Field(description="alive (answered its own probe), connections and event streams")
    sinks: dict[str, SinkCounts]
    storage: dict[str, Any] = Field(description="ok, problems (read-only or full filesystems), free bytes, reserve")
    gallery: dict[str, Any]
    background: list[dict[str, Any]]
    tracks: dict[str, Any] | None = Field(description="the store of recent object tracks (null: no camera tracks)")
    samples: dict[str, Any] | None = Field(None, description="collection: enabled (a camera samples), error, "
                                           "store (stored, bytes, quota_bytes, oldest, newest, newest_id), kept "
                                           "per camera, drift per camera")
    work: dict[str, Any]
    full: Literal[True] = True


# -- cameras ------------------------------------------------------------------------------------


class Region(Answer):
    name: str
    x: float
    y: float
    width: float
    height: float


class CameraInfo(Answer):
    id: str
    kind: Literal["rtsp", "http", "v4l2", "file"]
    state: str
    reason: str | None
    frame_size: list[int] | None
    regions: list[Region]
    objects: bool = Field(description="the camera tracks objects (GET /v1/cameras/{id}/objects)")


class RegionState(Answer):
    camera: str
    region: str
    label: str | None
    score: float
    nearest: str | None
    since: str | None
    proposal: str | None
    capture_time: str | None
    decision_time: str | None
    latency_ms: float | None
    frame: int


# -- classes ------------------------------------------------------------------------------------


class ClassReport(Answer):
    label: str
    exemplars: int
    negatives: int
    loo_accuracy: float | None
    nearest_class: str | None
    nearest_similarity: float | None
    advice: str
    margin: float | None
    threshold: float | None
    threshold_calibrated: bool | None
    threshold_reason: str | None
    recommendation: str
    exemplar_ids: list[int]
    negative_ids: list[int]


class Enrolled(Answer):
    label: str
    added: int
    negative: bool
    quality: list[ClassReport]


class TrackEnrolled(Enrolled):
    track: int
    crops: int = Field(description="crops of the track enrolled")


class LiveEnrolled(Answer):
    camera: str
    region: str
    label: str
    negative: bool
    until: Literal["count", "stable"]
    wanted: int
    kept: int
    rejected: int
    reasons: dict[str, int]
    rejections: list[dict[str, Any]]
    stopped: str
    stop_reason: str
    progress: list[dict[str, Any]] | None = None
    added: int
    complete: bool
    quality: list[ClassReport]


class Deleted(Answer):
    label: str
    removed: int
    undo_s: float
    restore: str | None = Field(description="POST here within undo_s to undo the deletion")


class Restored(Answer):
    label: str
    restored: int
    quality: list[ClassReport]


class ExemplarRemoved(Answer):
    removed: int


class BackgroundSampled(Answer):
    camera: str
    region: str
    frames: int
    complete: bool
    background: list[dict[str, Any]]
    classes: list[ClassReport]


class BackgroundCleared(Answer):
    camera: str
    region: str | None
    removed: int
    background: list[dict[str, Any]]


# -- model --------------------------------------------------------------------------------------


class InstallSteps(Answer):
    """The A/B installer's account of one install."""

    ok: bool
    version: int | None = Field(description="the version installed (or refused)")
    slot: str | None = Field(description="the slot active now")
    previous_version: int | None
    reason: str
    steps: list[str]


class InstallAnswer(Answer):
    """POST /v1/model: the model running now and how it got there (what `edgessl flash --to URL`
    and `--fleet` read the version and slot from)."""

    ok: Literal[True] = True
    model: ModelInfo
    install: InstallSteps


# -- objects ------------------------------------------------------------------------------------


class ObjectView(Answer):
    """An object a camera sees now (a confirmed track, found in the last frame)."""

    id: int = Field(description="the track id (GET /v1/tracks/{id})")
    label: str | None = Field(description="its class, 'unknown', or null until enough crops were seen")
    score: float = Field(description="the weighted median score of `nearest` over its crops")
    nearest: str | None = Field(description="the best class, also while unknown")
    state: Literal["moving", "still", "stationary"] = Field(description="stationary: stopped, and kept by "
                                                           "appearance after background subtraction absorbed it")
    zones: list[str] = Field(description="zones holding the bottom centre of its box")
    box: list[int] = Field(description="x0, y0, x1, y1 in the frame's pixels", min_length=4, max_length=4)
    crops: int = Field(description="crops embedded so far")
    first_seen: str
    duration_s: float
    frame: int = Field(description="the camera frame these figures are from")
    capture_time: str
    latency_ms: float = Field(description="from that frame's capture to these figures")


class CameraObjects(Answer):
    camera: str
    frame_size: list[int] | None = Field(description="width, height")
    zones: list[dict[str, Any]]
    objects: list[ObjectView]
    frames: int = Field(description="frames processed by the objects path")


class TrackSummary(BaseModel):
    """A recent track: live, or one that left (from the track store)."""

    model_config = ConfigDict(extra="allow")

    id: int
    camera: str
    label: str | None
    score: float
    nearest: str | None
    state: str = Field(description="moving, still, stationary; 'ended' once it left")
    zones: list[str]
    box: list[int]
    crops: int
    first_seen: str
    duration_s: float
    live: bool


class TrackDetail(TrackSummary):
    crop_urls: list[str] = Field(description="its kept crops, sharpest first")


# -- samples (the closed loop: a server harvests what the device collected) ----------------------


class SampleInfo(Answer):
    """A sample kept for the server (its JPEG: GET /v1/samples/{id}.jpg, or in the archive)."""

    id: int = Field(description="ascending; never reused")
    camera: str
    source: Literal["region", "track"]
    ref: str = Field(description="the region's name, or the track's id")
    time: str = Field(description="capture time, ISO 8601 UTC")
    model: str = Field(description="the tag (name:version) of the model that embedded it")
    reason: Literal["novel", "low_margin", "unknown"] = Field(description="why it was kept")
    label: str | None = Field(description="the decision (null: unknown, or not decided yet)")
    nearest: str | None = Field(description="the best-scoring class")
    score: float | None = Field(description="its score")
    margin: float | None = Field(description="to the second-best class's score")
    novelty: float | None = Field(description="1 - the highest cosine to the gallery and to the samples kept before")
    bytes: int = Field(description="of the JPEG")
    sha256: str = Field(description="hex, of the JPEG bytes: what POST /v1/samples/ack must give back")


class SamplePage(Answer):
    samples: list[SampleInfo] = Field(description="ascending id")
    next_after: int = Field(description="the `after` of the next page (the last id here, or the `after` given)")
    stored: int = Field(description="samples on the device")
    bytes: int = Field(description="their JPEG bytes")
    quota_bytes: int = Field(description="most JPEG bytes kept; the oldest are evicted to make room")


class SamplesAcked(Answer):
    deleted: int = Field(description="samples deleted: their sha256 matched")
    mismatched: list[int] = Field(description="ids stored with another sha256: kept")
    missing: list[int] = Field(description="ids not stored (evicted, deleted before, or never there)")
