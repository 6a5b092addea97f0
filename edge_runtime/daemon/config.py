"""The camera daemon's configuration (`edge.yaml`), validated by pydantic.

Every model forbids unknown keys and describes every field, so `edgessl config schema`
prints a complete JSON schema and a typo is an error instead of a silently ignored key.
`load_config` reports errors with the line and column of the offending key in the file.
Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgessl.edge_runtime.daemon.sinks import SINKS, SinkOptionsUnion
from edgessl.edge_runtime.objects.config import ObjectsConfig, TracksConfig
from edgessl.edge_runtime.samples.config import DriftConfig, SampleStoreConfig, SamplingConfig
from edgessl.edge_runtime.schema import NAME_PATTERN, ConfigPath, StrictModel, resolve_config_path
from edgessl.errors import EdgesslError

_V4L2 = re.compile(r"^/dev/video\d+$")
SinkName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]



def _unique(names: list[str], rule: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{rule}; repeated: {', '.join(repeated)}")

class ConfigError(EdgesslError):
    """The daemon's configuration file is missing, not YAML, or not valid."""


class RegionConfig(StrictModel):
    """A named rectangle of a camera's frame, classified on its own."""

    name: str = Field(pattern=NAME_PATTERN, description="region name (letters, digits, '_' and '-'; "
                      "at most 32 characters); used in MQTT topics and events")
    x: float = Field(default=0.0, ge=0, lt=1, description="left edge, as a fraction of the frame width (0..1)")
    y: float = Field(default=0.0, ge=0, lt=1, description="top edge, as a fraction of the frame height (0..1)")
    width: float = Field(default=1.0, gt=0, le=1, description="width, as a fraction of the frame width")
    height: float = Field(default=1.0, gt=0, le=1, description="height, as a fraction of the frame height")

    @model_validator(mode="after")
    def _inside(self) -> RegionConfig:
        if self.x + self.width > 1 + 1e-9 or self.y + self.height > 1 + 1e-9:
            raise ValueError(f"region {self.name!r} reaches outside the frame: x + width = {self.x + self.width:g} "
                             f"and y + height = {self.y + self.height:g} must both be <= 1")
        return self

    def box(self, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, at least one pixel wide and high."""
        x0 = min(frame_width - 1, int(round(self.x * frame_width)))
        y0 = min(frame_height - 1, int(round(self.y * frame_height)))
        x1 = max(x0 + 1, min(frame_width, int(round((self.x + self.width) * frame_width))))
        y1 = max(y0 + 1, min(frame_height, int(round((self.y + self.height) * frame_height))))
        return x0, y0, x1, y1


FULL_FRAME = RegionConfig(name="full")


class BackoffConfig(StrictModel):
    """Reconnection delays: initial_s, then multiplied by `factor` per failed attempt, up to max_s."""

    initial_s: float = Field(default=0.5, gt=0, le=3600, description="delay before the first reconnection attempt (seconds)")
    max_s: float = Field(default=30.0, gt=0, le=3600, description="longest delay between attempts (seconds)")
    factor: float = Field(default=2.0, ge=1, le=10, description="the delay is multiplied by this after each failed attempt")
    jitter: float = Field(default=0.2, ge=0, lt=1, description="each delay is scaled by a random factor in "
                          "[1 - jitter, 1 + jitter], so cameras that failed together do not retry together")

    def delay(self, attempt: int, rand: float) -> float:
        """Delay before attempt number `attempt` (1 = first retry); `rand` is uniform in [0, 1)."""
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))


class CameraConfig(StrictModel):
    """One video source: a file, an RTSP or HTTP (MJPEG) stream, or a V4L2 device."""

    id: str = Field(pattern=NAME_PATTERN, description="camera name (letters, digits, '_' and '-'; at most 32 "
                    "characters); used in URLs, MQTT topics and metrics")
    url: str = Field(description="rtsp://..., rtsps://..., http(s)://... (MJPEG or anything FFmpeg reads), "
                     "/dev/videoN (V4L2), or a video file path (relative to the config file)")
    enabled: bool = Field(default=True, description="false: keep the camera in the file but do not open it")
    transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTSP transport (RTSP only)")
    mode: Literal["latest", "every"] = Field(default=
        "latest", description="latest: keep only the newest frame (bounded latency; older frames are dropped "
        "and counted); every: process every frame in order (for files; the reader waits for the inference)")
    loop: bool = Field(default=False, description="files: start again at the end instead of stopping")
    realtime: bool | None = Field(default=None, description="files: deliver frames at the file's frame rate like a live "
                                  "camera (default: true in latest mode, false in every mode)")
    fps: float | None = Field(default=None, gt=0, le=1000, description="files in real time: frame rate to play at "
                              "(default: the file's own frame rate, or 25 if it has none)")
    decoder_threads: int = Field(default=1, ge=0, le=64, description="FFmpeg decoding threads for this camera (0: "
                                 "FFmpeg's choice, one per core; cameras decode in parallel with each other anyway)")
    max_fps: float | None = Field(default=None, gt=0, le=1000, description="most frames per second the daemon "
                                  "processes from this camera (default: as many as it can); frames in between are "
                                  "skipped, so one busy camera cannot take the passes of the others")
    regions: list[RegionConfig] = Field(default_factory=list, description="regions classified on their own; "
                                        "empty: the whole frame, as one region named 'full' (none when the camera "
                                        "tracks objects)")
    objects: ObjectsConfig | None = Field(default=None, description="find what moves, track it and name each "
                                          "object from the gallery (with regions, or instead of them); {} for the "
                                          "defaults")
    sampling: SamplingConfig | None = Field(default=None, description="keep crops worth learning from (unknown, "
                                            "hesitant or novel ones) for a server to harvest over the API "
                                            "(GET /v1/samples/archive); off unless given, {} for the defaults")
    open_timeout_s: float = Field(default=10.0, gt=0, le=300, description="give up opening the stream after this long")
    stall_timeout_s: float = Field(default=5.0, gt=0, le=3600, description="no new frame for this long: the camera is "
                                   "'stalled', and the stream is reopened (the read gives up after this long)")
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="delays between reconnections")
    max_attempts: int | None = Field(default=None, ge=1, description="consecutive failed connections after which the "
                                     "camera is 'failed' and left alone; null: retry forever")
    queue_size: int = Field(default=8, ge=1, le=1024, description="every mode: frames buffered between reader and inference")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("url is empty; give rtsp://..., http(s)://..., /dev/videoN or a video file path")
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in ("rtsp", "rtsps", "http", "https", "file"):
                raise ValueError(f"unsupported URL scheme {scheme!r}; valid: rtsp, rtsps, http, https, file, "
                                 "or a plain path")
            if scheme == "file":
                value = value.split("://", 1)[1]
            else:
                return value
        if _V4L2.match(value):
            return value
        return str(resolve_config_path(Path(value), info))

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, value: list[RegionConfig]) -> list[RegionConfig]:
        _unique([r.name for r in value], "region names must be unique within a camera")
        return value

    @property
    def kind(self) -> Literal["rtsp", "http", "v4l2", "file"]:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme in ("rtsp", "rtsps"):
            return "rtsp"
        if scheme in ("http", "https"):
            return "http"
        return "v4l2" if _V4L2.match(self.url) else "file"

    @property
    def plays_realtime(self) -> bool:
        return self.kind == "file" and (self.realtime if self.realtime is not None else self.mode == "latest")

    @property
    def region_list(self) -> list[RegionConfig]:
        """The regions classified on their own: the configured ones; with none, the whole frame,
        unless the camera tracks objects instead."""
        return self.regions or ([] if self.objects is not None else [FULL_FRAME])


class ModelConfig(StrictModel):
    """Where the model comes from: a bundle folder, or a device root managed by the A/B installer."""

    bundle: ConfigPath | None = Field(default=None, description="a bundle folder (with manifest.json); uploaded models "
                                      "are unpacked into state_dir/bundles and last until a restart")
    root: ConfigPath | None = Field(default=None, description="a device root provisioned with `edgessl device`: the "
                                    "active slot's bundle is loaded and uploads go through the A/B installer")
    backend: str | None = Field(default=None, description="inference backend (onnxruntime, openvino, tensorrt); "
                                "default: with model.root what the device's health check verified, else onnxruntime")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(default=None, description=(
        "which of the bundle's artifacts to run; default: with model.root what the health check verified, else fp32"))
    threads: int | None = Field(default=None, ge=1, le=256, description="inference threads (null: the device "
                                "profile's, else cores - 1: one core left to decoding and the frame path)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.bundle is None) == (self.root is None):
            raise ValueError("give exactly one of model.bundle (a bundle folder) or model.root (a device root)")
        return self


class ClassifierConfig(StrictModel):
    threshold: float = Field(default=0.5, ge=-1, le=1, description="lowest (smoothed) centred cosine similarity to a "
                             "class prototype that names the class; below it the label is 'unknown'. With "
                             "calibrate, the fallback for classes with too few exemplars to calibrate")
    calibrate: bool = Field(default=True, description="derive each class's threshold from its own exemplars "
                            "(leave-one-out similarity, distance to the nearest other class; shown in /v1/classes) "
                            "and read scores against the bundle's cohort when it has one (cohort.npy)")


class SmoothingConfig(StrictModel):
    """How per-frame scores become a stable label (per camera region)."""

    alpha: float = Field(default=0.5, gt=0, le=1, description="EMA weight of the newest frame's scores (1: no smoothing)")
    hysteresis: float = Field(default=0.05, ge=0, lt=1, description="the current label is kept until its smoothed score "
                              "drops below threshold - hysteresis, or another class beats it by more than this")
    consecutive: int = Field(default=3, ge=1, le=1000, description="a new label must be proposed this many processed "
                             "frames in a row before it replaces the current one")


class InferenceConfig(StrictModel):
    max_batch: int = Field(default=16, ge=1, le=1024, description="most crops (frames x regions) embedded in one batch")
    pipelined: bool = Field(default=False, description="crop and resize the next pass's regions while the backend "
                            "runs this one (one pass prepared at most; see daemon/prefetch.py). Off by default: on 2 "
                            "cores with one backend thread it gained nothing measurable and a saturated daemon's "
                            "latency grew by a pass; worth it where resizing is a large share of a pass")


class ApiConfig(StrictModel):
    enabled: bool = Field(default=True, description="serve the HTTP API and the web page")
    host: str = Field(default="127.0.0.1", description="listen address; 0.0.0.0 to serve the network")
    port: int = Field(default=8080, ge=0, le=65535, description="listen port (0: any free port, logged at start-up)")
    token_file: ConfigPath | None = Field(default=None, description="file holding the bearer token of mutating routes; "
                                          "default: $EDGESSL_API_TOKEN, else state_dir/api-token (created)")
    max_image_upload_bytes: int = Field(default=20 * 2**20, ge=1024, description="largest enrollment upload (all images)")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="largest image accepted, in pixels")
    max_bundle_bytes: int = Field(default=1 << 30, ge=1024, description="largest model bundle upload (.tar)")
    # Decoded pixels, not compressed bytes, are what costs memory and time: a 133 KB PNG can
    # hold 40 M pixels (120 MB decoded). Image headers are read before anything is decoded.
    max_request_pixels: int = Field(default=500_000_000, ge=1, description="most decoded pixels of all images of "
                                    "one enrollment upload (decoded one at a time and scaled down at once)")
    max_pixels_in_flight: int = Field(default=48_000_000, ge=1, description="most pixels being decoded at once, over "
                                      "all requests (bounds the memory of decoding; at least max_image_pixels)")
    workers: int = Field(default=2, ge=1, le=32, description="worker threads that decode and embed uploads (off the "
                         "event loop, so health and state answer while they work)")
    max_queued: int = Field(default=8, ge=1, le=1000, description="uploads waiting for or in a worker; past it a "
                            "request is answered 503 with Retry-After")
    max_connections: int = Field(default=128, ge=4, le=10_000, description="connections or requests at once; past "
                                 "it 503 at once (keep it well below the process's file limit, LimitNOFILE)")
    max_connections_per_client: int = Field(default=32, ge=1, le=10_000, description="connections at once from one "
                                            "client address; past it 503 and the connection is closed (one "
                                            "client cannot take every connection from the others)")
    header_timeout_s: float = Field(default=10.0, gt=0, le=300, description="seconds a client has to send a "
                                    "request's headers (after connecting or after the previous answer); a "
                                    "connection that trickles them is closed")
    max_event_streams: int = Field(default=16, ge=1, le=1000, description="server-sent event streams (/v1/events) "
                                   "open at once; past it 429")
    max_event_streams_per_client: int = Field(default=4, ge=1, le=1000, description="event streams open at once "
                                              "from one client address; past it 429")
    allowed_hosts: list[str] = Field(default_factory=list, description="host names the API answers to besides IP "
                                     "addresses, localhost, the device's name and the machine's (a request naming "
                                     "another Host is refused with 421: DNS rebinding)")

    @model_validator(mode="after")
    def _budget_fits_an_image(self) -> ApiConfig:
        if self.max_pixels_in_flight < self.max_image_pixels:
            raise ValueError(f"api.max_pixels_in_flight ({self.max_pixels_in_flight}) is below api.max_image_pixels "
                             f"({self.max_image_pixels}): the largest accepted image could never be decoded")
        return self


class EnrollmentConfig(StrictModel):
    """Quality gates of live enrollment: each captured shot is checked before it is kept."""

    min_sharpness: float = Field(default=20.0, ge=0, description="lowest variance of the Laplacian of the grey crop "
                                 "(scaled to 256 pixels on its longer side): below it the shot is blurry")
    min_brightness: float = Field(default=35.0, ge=0, le=255, description="lowest mean grey level (0-255): darker is too dark")
    max_brightness: float = Field(default=235.0, ge=0, le=255, description="highest mean grey level: brighter is washed out")
    min_difference: float = Field(default=2.0, ge=0, le=255, description="lowest mean absolute difference (grey levels, "
                                  "on 32x32 thumbnails) to every shot kept so far: below it the shot is a "
                                  "near-duplicate")
    frames: int = Field(default=5, ge=1, le=100, description="shots to keep per live enrollment (default of the request)")
    interval_s: float = Field(default=0.3, ge=0, le=60, description="least time between two shots")
    timeout_s: float = Field(default=20.0, gt=0, le=600, description="give up collecting shots after this long")
    max_frames: int = Field(default=20, ge=1, le=100, description="with until='stable': most shots one live "
                            "enrollment keeps (default of the request's max_frames)")
    stable_min_exemplars: int = Field(default=5, ge=2, le=100, description="with until='stable': the class has at "
                                      "least this many exemplars before a live enrollment may stop")
    stable_margin: float = Field(default=0.1, ge=0, le=2, description="with until='stable': stop once leave-one-out "
                                 "accuracy is 100% and the mean leave-one-out margin to the nearest other class "
                                 "is at least this (centred cosine)")
    stable_patience: int = Field(default=3, ge=1, le=50, description="with until='stable': stop when the "
                                 "leave-one-out figures did not improve over this many kept shots")
    background_frames: int = Field(default=10, ge=1, le=100, description="frames a background capture samples "
                                   "(default of the request)")
    undo_s: float = Field(default=15.0, ge=0, le=3600, description="a deleted class can be restored for this long "
                          "(its crops are kept in memory); 0: deletions are final at once")
    max_live_per_camera: int = Field(default=2, ge=1, le=100, description="live enrollments running at once on one "
                                     "camera; past it a request is answered 429 with Retry-After")
    max_live_total: int = Field(default=4, ge=1, le=100, description="live enrollments running at once on all cameras")
    max_crop_side: int | None = Field(default=None, ge=16, description="longest side of a stored exemplar crop, in "
                                      "pixels (larger ones are scaled down); default: 4x the model's input size")
    reembed_batch: int = Field(default=16, ge=1, le=1024, description="exemplars re-embedded per transaction after a "
                               "model change (a crash loses at most one batch)")
    reembed_pause_s: float = Field(default=0.0, ge=0, le=10, description="pause between two re-embedding batches in "
                                   "the background, leaving the CPU to inference on a small device")


class DaemonConfig(StrictModel):
    """`edgessl run --config edge.yaml`."""

    device: str = Field(default_factory=lambda: _default_device(), pattern=NAME_PATTERN,
                        description="this device's name (MQTT topics, events); default: the host name")
    state_dir: ConfigPath = Field(default=Path("/var/lib/edgessl"), description="where the daemon keeps its files: "
                                  "the gallery (by default), the generated API token, uploaded bundles")
    gallery: ConfigPath | None = Field(default=None, description="gallery database (SQLite); default: state_dir/gallery.db")
    model: ModelConfig = Field(description="the model to run")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="few-shot classification")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig, description="smoothing over time")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="the inference loop")
    cameras: list[CameraConfig] = Field(min_length=1, description="the video sources")
    sinks: dict[SinkName, SinkOptionsUnion] = Field(
        default_factory=dict, description="where events go: sink name (in metrics and /health) -> its options; "
        "`type` picks the kind of sink: " + ", ".join(sorted(SINKS)))
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API and web page")
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig, description="live enrollment")
    tracks: TracksConfig = Field(default_factory=TracksConfig, description="recent object tracks kept on disk "
                                 "(state_dir/tracks), to enroll from after they left")
    samples: SampleStoreConfig = Field(default_factory=SampleStoreConfig, description="where the samples of the "
                                       "cameras with `sampling` wait to be harvested, and how many bytes they may take")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="a drift event when a camera no longer "
                               "looks like it did when the model was installed")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="logging level")
    storage_reserve_bytes: int = Field(default=2 << 20, ge=0, description="space kept in state_dir/.reserve and "
                                       "given up when the disk is full, so that classes can still be deleted")

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, value: list[CameraConfig]) -> list[CameraConfig]:
        _unique([c.id for c in value], "camera ids must be unique")
        return value

    @model_validator(mode="after")
    def _state_apart_from_root(self) -> DaemonConfig:
        root = self.model.root
        if root is not None and Path(self.state_dir).resolve() == Path(root).resolve():
            raise ValueError(f"state_dir and model.root are both {root}: the device root belongs to the A/B "
                             f"installer; keep the daemon's state beside it, e.g. state_dir: {Path(root) / 'state'}")
        return self

    @property
    def gallery_path(self) -> Path:
        return self.gallery if self.gallery is not None else self.state_dir / "gallery.db"

    @property
    def samples_path(self) -> Path:
        return self.samples.path if self.samples.path is not None else self.state_dir / "samples.db"

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(camera_id)


def _default_device() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:32].strip("-_")
    return name or "edge"


def json_schema() -> dict[str, Any]:
    return DaemonConfig.model_json_schema()
