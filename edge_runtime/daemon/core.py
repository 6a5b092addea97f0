"""The camera daemon: streams -> batched embedding -> few-shot scores -> smoothing -> events.

This module wires the parts together and runs them; each part lives in its own module:
`streams` (one reader per camera), `pipeline` (the frame path, one `Batch` per pass), `model`
(what runs, hot swaps, installs), `enrollment`, `tracks`, `sinks/` (where events go), `events`
(the server-sent events hub), `health` (the report /health gives), `snapshot` (the annotated
picture), `watchdog` (stalls, systemd), `collection` (samples for the server, drift), `http/`
(the API's routers and its server).

Threads: one reader per camera, one inference loop, one worker per sink, the HTTP server
(uvicorn, http/server.py) and the supervisor (watchdog.py), which notices stalls and pings
systemd's watchdog while the inference loop comes round and the API answers its own probe.
The inference loop owns its own gallery connection; every other user (HTTP routes, the model
reload) opens its own, since SQLite connections stay on their thread, and the classifier
notices their changes. The routers use what this class offers publicly (the attributes set in
`__init__` and the methods below), nothing private.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgessl.edge_runtime.daemon.background import BackgroundStore
from edgessl.edge_runtime.daemon.capture import Opener, open_capture
from edgessl.edge_runtime.daemon.collection import Collection
from edgessl.edge_runtime.daemon.config import DaemonConfig
from edgessl.edge_runtime.daemon.enrollment import Enrollment
from edgessl.edge_runtime.daemon.events import EventHub
from edgessl.edge_runtime.daemon.health import health_report
from edgessl.edge_runtime.daemon.http.routes.events import StreamSlots
from edgessl.edge_runtime.daemon.http.server import ApiServer
from edgessl.edge_runtime.daemon.metrics import Metrics
from edgessl.edge_runtime.daemon.model import LoadedModel, ModelService
from edgessl.edge_runtime.daemon.pipeline import Batch, Pipeline, Prepared
from edgessl.edge_runtime.daemon.prefetch import Prefetcher
from edgessl.edge_runtime.daemon.sinks import Sink, SinkEvent, SinkRunner, first_sink, start_sinks
from edgessl.edge_runtime.daemon.sinks.mqtt import MqttSink
from edgessl.edge_runtime.daemon.snapshot import Snapshot, take
from edgessl.edge_runtime.daemon.storage import Storage
from edgessl.edge_runtime.daemon.streams import CameraStream, CapturedFrame
from edgessl.edge_runtime.daemon.systemd import sd_notify
from edgessl.edge_runtime.daemon.tracks import TrackService
from edgessl.edge_runtime.daemon.watchdog import Supervisor
from edgessl.edge_runtime.daemon.work import Slots, WorkPool
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.objects.events import ObjectEvent
from edgessl.edge_runtime.objects.store import TrackStore

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 3.5  # SIGTERM to exit, with room under 5 s for the interpreter's exit


class Daemon:
    """`Daemon(config).run_forever()` for the command; `start()`/`stop()` (or `with`) in tests."""

    def __init__(self, config: DaemonConfig, *, extra_sinks: Mapping[str, Sink] | None = None,
                 opener: Opener = open_capture, observer: Callable[[Batch], None] | None = None) -> None:
        self.config = config
        self.device = config.device
        self.gallery_path = config.gallery_path
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._prefetch: Prefetcher | None = None  # set at start when inference.pipelined
        self._resize_ahead = True  # whether the next pass's region crops will be embedded
        self._extra_sinks = dict(extra_sinks or {})
        self._observer = observer
        cams = [c for c in config.cameras if c.enabled]
        self.streams: dict[str, CameraStream] = {
            c.id: CameraStream(c, on_frame=self._wake.set, opener=opener) for c in cams}
        self.metrics = Metrics(lambda: [s.status() for s in self.streams.values()])
        self.hub = EventHub()
        self.models = ModelService(config, self.metrics, self.hub)
        self.track_store = TrackStore(config.state_dir / "tracks", config.tracks.keep, config.tracks.max_bytes) \
            if any(c.objects is not None for c in cams) else None
        self.collection = Collection(config, self.metrics, self.hub.publish)  # samples for the server, drift
        self.pipeline = Pipeline(config, self.streams, self.metrics, self._emit, self.hub.publish, self.track_store,
                                 self.collection)
        self.storage = Storage(config.state_dir, config.gallery_path, config.storage_reserve_bytes)
        self.background = BackgroundStore(config.state_dir / "background")
        self.enrollment = Enrollment(config, self.models, self.streams, self._stop, storage=self.storage,
                                     background=self.background)
        self.tracks = TrackService(self.pipeline, self.track_store, self.enrollment, self.streams)
        # Decoding and embedding of uploads, and live enrollments, run off the API's event loop
        # and thread pool, bounded (see work.py).
        self.work = WorkPool(config.api.workers, config.api.max_queued, config.api.max_pixels_in_flight)
        self.live = Slots(config.enrollment.max_live_per_camera, config.enrollment.max_live_total,
                          "live enrollment")
        self.event_streams = StreamSlots(config.api.max_event_streams, config.api.max_event_streams_per_client)
        self._sinks: list[SinkRunner] = []
        self._threads: list[threading.Thread] = []
        self._heartbeat = time.monotonic()
        self.started_at = time.time()
        self.loop_errors = 0
        self.last_loop_error: str | None = None
        self.api_url: str | None = None
        self.api_token: str | None = None
        self.server: ApiServer | None = None
        self._started = False
        self._ready = threading.Event()  # READY=1 sent: watchdog pings may follow
        self.supervisor = Supervisor(self.streams.values(), self.inference_alive, self._stop, self._ready)

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model, open the gallery, start sinks, streams, the inference loop and the API."""
        if self._started:
            raise RuntimeError("daemon already started")
        self._started = True
        cfg = self.config
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create state_dir %s: %s", cfg.state_dir, exc)
        # One daemon per state folder; then storage: a read-only state_dir or gallery is reported
        # (log, /health), not fatal; a full one gives up its reserve; leftovers of uploads
        # interrupted by a crash are removed.
        self.storage.lock()
        try:
            self._start()
        except BaseException:
            self.storage.unlock()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.storage.check()
        if self.storage.state_writable:
            self.storage.clean_incoming()
            self.storage.make_reserve()
        if cfg.api.enabled:  # before anything runs: a missing or short token stops the start
            from edgessl.edge_runtime.daemon.http.token import resolve_token

            self.api_token = resolve_token(cfg)
        model = self.models.start()
        self.collection.open(self.enrollment.crop_side())
        with Gallery(self.gallery_path) as gallery:
            self._count_gallery(gallery)
        self._start_sinks()
        for stream in self.streams.values():
            stream.start()
        if cfg.inference.pipelined:
            self._prefetch = Prefetcher(self.pipeline.collect, self._prepare_ahead, self._wake, self._stop)
            self._spawn("prefetch", self._prefetch.run)
        self._spawn("inference", self._inference_loop)
        self._spawn("supervisor", self.supervisor.run)
        if cfg.api.enabled:
            self._start_api()
        log.info("daemon %s: %d cameras, model %s, gallery %s%s", self.device, len(self.streams), model.tag,
                 self.gallery_path, f", API {self.api_url}" if self.api_url else "")
        sd_notify(f"READY=1\nSTATUS=running {len(self.streams)} cameras, model {model.tag}")
        self._ready.set()

    def stop(self) -> None:
        """Stop everything within SHUTDOWN_BUDGET_S; readers blocked in FFmpeg are left behind
        (they are daemon threads: they do not hold up the exit)."""
        if self._stop.is_set():
            return
        start = time.monotonic()

        def left(budget: float) -> float:  # at most `budget` s, and never past the overall budget
            return max(0.0, min(budget, start + SHUTDOWN_BUDGET_S - time.monotonic()))

        sd_notify("STOPPING=1")
        self._stop.set()
        self._wake.set()
        for stream in self.streams.values():
            stream.stop()
        self.hub.close()
        if self.server is not None:
            self.server.stop(left(1.8))
        for thread in self._threads:
            thread.join(left(0.5))
        sinks_until = time.monotonic() + left(1.0)
        for runner in self._sinks:
            runner.close(timeout=max(0.05, sinks_until - time.monotonic()))
        readers_until = time.monotonic() + left(0.5)
        for stream in self.streams.values():
            if not stream.join(readers_until - time.monotonic()):
                log.info("camera %s: reader still blocked in FFmpeg; left behind", stream.id)
        self.work.close()
        self.live.close()
        if not any(t.is_alive() for t in self._threads if t.name == "inference"):
            self.models.close()
            self.collection.close()
        self.storage.unlock()
        log.info("daemon %s stopped in %.1f s", self.device, time.monotonic() - start)

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_forever(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        stop_requested = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            stop_requested.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop_requested.wait(0.5):
                if self._stop.is_set():
                    break
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def model(self) -> LoadedModel:
        return self.models.current

    # -- sinks ------------------------------------------------------------------------------

    def _start_sinks(self) -> None:
        self._sinks = start_sinks(self.config.sinks, self.device, self._stop, extra=self._extra_sinks,
                                  on_error=lambda n: self.metrics.sink_errors.labels(n).inc(),
                                  on_drop=lambda n: self.metrics.sink_dropped.labels(n).inc())

    @property
    def mqtt(self) -> MqttSink | None:
        return first_sink(self._sinks, MqttSink)

    def sink_status(self) -> dict[str, dict[str, int]]:
        return {r.name: {"delivered": r.delivered, "errors": r.errors, "dropped": r.dropped} for r in self._sinks}

    def _emit(self, event: SinkEvent) -> None:
        for runner in self._sinks:
            runner.submit(event)
        if isinstance(event, ObjectEvent):
            self.metrics.object_events.labels(event.camera, event.event).inc()
            if event.event == "left":
                self.metrics.object_labels.labels(event.camera, event.label or "none").inc()
            self.hub.publish({"type": "object", **event.as_dict()})
        else:
            self.metrics.events.labels(event.camera).inc()
            self.hub.publish({"type": "event", **event.as_dict()})

    # -- the inference loop -----------------------------------------------------------------

    def _inference_loop(self) -> None:
        gallery = Gallery(self.gallery_path)
        classifier: FewShotClassifier | None = None
        generation = -1
        revision = gallery.revision
        background = self.background.revision
        try:
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                frames, prepared = self._next_pass()
                if self._stop.is_set():
                    break
                if not frames:
                    continue
                try:
                    with self.models.use() as model:
                        if model.generation != generation:
                            classifier = self.classifier(model, gallery)
                            generation = model.generation
                            background = self.background.revision
                            self.pipeline.reset()
                        elif self.background.revision != background and self.config.classifier.calibrate:
                            background = self.background.revision
                            assert classifier is not None
                            classifier.set_background(self.background.embeddings(model.extractor))
                        assert classifier is not None
                        batch = self.pipeline.step(frames, classifier, model.tag, prepared)
                        self._resize_ahead = self.pipeline.embeds(classifier)
                    if self._observer is not None:
                        self._observer(batch)
                    if gallery.revision != revision:
                        revision = gallery.revision
                        self._count_gallery(gallery)
                except Exception as exc:
                    self.loop_errors += 1
                    self.last_loop_error = f"{type(exc).__name__}: {exc}"
                    log.exception("inference failed on a batch of %d frames", len(frames))
                    self._stop.wait(0.5)  # do not spin on a persistent error
        finally:
            gallery.close()

    def _next_pass(self) -> tuple[list[CapturedFrame], Prepared | None]:
        """The frames of the next pass (waiting up to 0.5 s), resized ahead when pipelined."""
        if self._prefetch is not None:
            prepared = self._prefetch.take(0.5)
            return (prepared.frames, prepared) if prepared is not None else ([], None)
        if not self._wake.wait(0.5):
            return [], None
        self._wake.clear()
        frames = self.pipeline.collect()
        if frames:
            # A camera in mode `every` may have queued more frames than one pass takes (a camera
            # with objects gives one per pass); look again rather than wait for a frame that may
            # never come (the file ended).
            self._wake.set()
        return frames, None

    def _prepare_ahead(self, frames: list[CapturedFrame], resize: bool) -> Prepared:
        """For the prefetch thread: crops of `frames`, resized for the current model when anything
        will embed them (a class enrolled, or an objects stage)."""
        extractor = self.models.current.extractor if resize and self._resize_ahead else None
        return self.pipeline.prepare(frames, extractor)

    def classifier(self, model: LoadedModel, gallery: Gallery) -> FewShotClassifier:
        """The classifier the daemon decides with (also what /v1/classes reports thresholds of)."""
        c = self.config.classifier
        # Background frames of the cameras (stored per region, re-embedded for this model) are
        # impostors in the calibration: thresholds sit above what the cameras see when nothing
        # enrolled is there.
        background = self.background.embeddings(model.extractor) if c.calibrate else None
        return FewShotClassifier(model.extractor, gallery, c.threshold, calibrated=c.calibrate,
                                 background=background, reembed=False)  # ModelService re-embeds in batches

    def _count_gallery(self, gallery: Gallery) -> None:
        classes = gallery.classes()
        self.metrics.gallery_classes.set(len(classes))
        self.metrics.gallery_exemplars.set(sum(c.exemplars + c.negatives for c in classes))

    # -- liveness ---------------------------------------------------------------------------

    def inference_alive(self) -> bool:
        """The inference loop has come round recently (a hung loop stops the watchdog pings)."""
        threads = [t for t in self._threads if t.name == "inference"]
        return bool(threads) and threads[0].is_alive() and time.monotonic() - self._heartbeat < 30.0

    # -- what the API shows -----------------------------------------------------------------

    def health(self, full: bool = True) -> dict[str, Any]:
        """The daemon's report (health.py); `full=False`: only whether it is up."""
        return health_report(self, full)

    def cameras(self) -> list[dict[str, Any]]:
        out = []
        for cid, stream in self.streams.items():
            status = stream.status()
            out.append({"id": cid, "kind": stream.config.kind, "state": str(status.state),
                        "reason": status.reason, "frame_size": status.frame_size,
                        "regions": [r.model_dump() for r in stream.config.region_list],
                        "objects": stream.config.objects is not None})
        return out

    def snapshot(self, camera_id: str, *, annotate: bool = True, quality: int = 80) -> Snapshot:
        """The newest frame as JPEG with each region's and object's box and label drawn on it, and
        the decisions drawn (one decision for the picture and the text beside it)."""
        stream = self.enrollment.find_stream(camera_id)
        return take(stream, self.pipeline, annotate=annotate, quality=quality)

    # -- HTTP -------------------------------------------------------------------------------

    def _start_api(self) -> None:
        from edgessl.edge_runtime.daemon.http.app import create_app
        from edgessl.edge_runtime.daemon.http.auth import Auth

        assert self.api_token is not None
        api = self.config.api
        self.server = ApiServer(create_app(self, Auth(self.api_token)), api)
        self.api_url = self.server.start()
        self.supervisor.server = self.server
        log.info("API listening on %s (token: %s)", self.api_url,
                 api.token_file or ("$EDGESSL_API_TOKEN" if os.environ.get("EDGESSL_API_TOKEN")
                                    else self.config.state_dir / "api-token"))
