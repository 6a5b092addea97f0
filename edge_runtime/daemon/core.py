"""The camera daemon: streams -> batched embedding -> few-shot scores -> smoothing -> events.

Threads: one reader per camera (`streams.CameraStream`), one inference loop, one worker per
sink, the HTTP server (uvicorn) and a supervisor that notices stalls and pings systemd's
watchdog while the inference loop is alive. The inference loop owns its own gallery
connection; every other user (HTTP routes, the model reload) opens its own, since SQLite
connections stay on their thread, and the classifier notices their changes.

Hot reload: a new bundle is loaded and checked beside the running one, then, with the
inference paused, the gallery is re-embedded from its stored crops and the models are
swapped; the streams keep running throughout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.bundle.manifest import Bundle, load_bundle
from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.metrics import Metrics
from edgessl.edge_runtime.daemon.sinks import Event, Sink, SinkRunner, first_sink, iso, start_sinks
from edgessl.edge_runtime.daemon.sinks.mqtt import MqttSink
from edgessl.edge_runtime.daemon.smoothing import Smoother
from edgessl.edge_runtime.daemon.streams import CameraStream, CapturedFrame, Opener, State, open_capture
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.fewshot.gallery import Gallery, validate_label
from edgessl.edge_runtime.fewshot.quality import check_shot, class_quality
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 3.5  # SIGTERM to exit, with room under 5 s for the interpreter's exit


class DaemonError(EdgesslError):
    """A request the daemon cannot carry out; `detail` is returned to the HTTP client."""

    status = 400

    def __init__(self, message: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = dict(detail or {})


class NotFound(DaemonError):
    status = 404


class Conflict(DaemonError):
    status = 409


class Rejected(DaemonError):
    status = 422


# -- systemd ----------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send a notification to systemd (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...) when it
    started us with NOTIFY_SOCKET; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("=")[0], exc)
        return False


def watchdog_interval() -> float | None:
    """Half of systemd's watchdog timeout for this process, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


# -- the model in use -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    extractor: FeatureExtractor
    generation: int

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"name": m.model.name, "version": m.model.version, "backbone": m.model.backbone,
                "fingerprint": self.extractor.fingerprint, "bundle": str(self.bundle.root),
                "embedding_dim": m.embedding_dim, "generation": self.generation}

    @property
    def tag(self) -> str:
        return f"{self.bundle.manifest.model.name}:{self.bundle.manifest.model.version}"


class ModelHolder:
    """The current model; `use()` while embedding, `swap()` waits for users to finish."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._users = 0
        self._swapping = False
        self._cond = threading.Condition()

    @property
    def current(self) -> LoadedModel:
        return self._model

    @contextmanager
    def use(self) -> Iterator[LoadedModel]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._users += 1
            model = self._model
        try:
            yield model
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def swap(self, new: LoadedModel, prepare: Callable[[LoadedModel], None]) -> LoadedModel:
        """With no user left, run prepare(new) and make `new` current; return the old model."""
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._swapping = True
            while self._users:
                self._cond.wait()
        try:
            prepare(new)
            old, self._model = self._model, new
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()
        return old

    def close(self) -> None:
        self._model.extractor.close()


# -- server-sent events -----------------------------------------------------------------------


class EventHub:
    """Fan-out of messages to the asyncio queues of the /v1/events clients."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: dict[asyncio.Queue[dict[str, Any] | None], asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self.closed = False

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._maxsize)
        with self._lock:
            self._subs[q] = asyncio.get_running_loop()
            if self.closed:
                q.put_nowait(None)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        with self._lock:
            self._subs.pop(q, None)

    @staticmethod
    def _put(q: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
        if q.full():
            q.get_nowait()  # a slow client loses the oldest
        q.put_nowait(item)

    def publish(self, item: dict[str, Any] | None) -> None:
        with self._lock:
            subs = list(self._subs.items())
        for q, loop in subs:
            try:
                loop.call_soon_threadsafe(self._put, q, item)
            except RuntimeError:  # that client's loop is closed
                self.unsubscribe(q)

    def close(self) -> None:
        self.closed = True
        self.publish(None)


# -- regions ----------------------------------------------------------------------------------


@dataclass
class RegionState:
    camera: str
    region: str
    label: str | None = None
    score: float = 0.0
    since: float | None = None  # wall clock of the last change
    proposal: str | None = None
    capture_time: float | None = None
    decision_time: float | None = None
    frame: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"camera": self.camera, "region": self.region, "label": self.label, "score": round(self.score, 4),
                "since": iso(self.since) if self.since else None, "proposal": self.proposal,
                "capture_time": iso(self.capture_time) if self.capture_time else None,
                "decision_time": iso(self.decision_time) if self.decision_time else None,
                "latency_ms": None if self.capture_time is None or self.decision_time is None
                else round((self.decision_time - self.capture_time) * 1000, 1),
                "frame": self.frame}


@dataclass(frozen=True)
class BatchStats:
    """One pass of the inference loop, for observers (benchmarks, tests)."""

    cameras: list[str]  # the camera of each frame in the batch
    latencies: list[float]  # capture -> decision of each frame (seconds)
    crops: int  # regions embedded
    inference_s: float  # embedding + scoring time


def crop(image: np.ndarray, region: RegionConfig) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = region.box(w, h)
    return image[y0:y1, x0:x1]


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy of dataclasses, named tuples, plain objects, enums and paths."""
    if isinstance(value, Enum):
        value = value.value
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif isinstance(value, PurePath):
        return str(value)
    elif hasattr(value, "_asdict"):  # a named tuple
        value = value._asdict()
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        value = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    """`Daemon(config).run_forever()` for the command; `start()`/`stop()` (or `with`) in tests."""

    def __init__(self, config: DaemonConfig, *, extra_sinks: Mapping[str, Sink] | None = None,
                 opener: Opener = open_capture, observer: Callable[[BatchStats], None] | None = None) -> None:
        self.config = config
        self.device = config.device
        self.gallery_path = config.gallery_path
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._extra_sinks = dict(extra_sinks or {})
        self._observer = observer
        cams = [c for c in config.cameras if c.enabled]
        self.streams: dict[str, CameraStream] = {
            c.id: CameraStream(c, on_frame=self._wake.set, opener=opener) for c in cams}
        self.metrics = Metrics(lambda: [s.status() for s in self.streams.values()])
        self.hub = EventHub()
        self._regions_lock = threading.Lock()
        self._regions: dict[tuple[str, str], RegionState] = {
            (c.id, r.name): RegionState(c.id, r.name) for c in cams for r in c.region_list}
        sm = config.smoothing
        self._smoothers = {key: Smoother(config.classifier.threshold, sm.alpha, sm.hysteresis, sm.consecutive)
                           for key in self._regions}
        self._sinks: list[SinkRunner] = []
        self._threads: list[threading.Thread] = []
        self._models: ModelHolder | None = None
        self._generation = 0
        self._install_lock = threading.Lock()
        self._heartbeat = time.monotonic()
        self._started_at = time.time()
        self._last_batch: dict[str, Any] = {}
        self.loop_errors = 0
        self.last_loop_error: str | None = None
        self.api_url: str | None = None
        self.api_token: str | None = None
        self._server: Any = None
        self._started = False
        self._ready = threading.Event()  # READY=1 sent: watchdog pings may follow

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model, open the gallery, start sinks, streams, the inference loop and the API."""
        if self._started:
            raise RuntimeError("daemon already started")
        self._started = True
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        bundle_dir = self._initial_bundle()
        model = self._load(bundle_dir)
        with Gallery(self.gallery_path) as gallery:
            if gallery.stale(model.extractor.fingerprint):
                gallery.reembed(model.extractor)
            self._count_gallery(gallery)
        self._models = ModelHolder(model)
        self._start_sinks()
        for stream in self.streams.values():
            stream.start()
        self._spawn("inference", self._inference_loop)
        self._spawn("supervisor", self._supervise)
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
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(left(1.5 if thread.name == "api" else 0.5))
            if thread.is_alive() and thread.name == "api" and self._server is not None:
                self._server.force_exit = True
                thread.join(left(0.3))
        sinks_until = time.monotonic() + left(1.0)
        for runner in self._sinks:
            runner.close(timeout=max(0.05, sinks_until - time.monotonic()))
        readers_until = time.monotonic() + left(0.5)
        for stream in self.streams.values():
            if not stream.join(readers_until - time.monotonic()):
                log.info("camera %s: reader still blocked in FFmpeg; left behind", stream.id)
        if self._models is not None and not any(t.is_alive() for t in self._threads if t.name == "inference"):
            self._models.close()
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

    # -- model ------------------------------------------------------------------------------

    def _initial_bundle(self) -> Path:
        m = self.config.model
        if m.root is not None:
            from edgessl.edge_runtime.device.installer import active_bundle  # the A/B installer

            return Path(active_bundle(m.root))
        assert m.bundle is not None
        return m.bundle

    def _load(self, bundle_dir: Path) -> LoadedModel:
        m = self.config.model
        bundle = load_bundle(bundle_dir)
        extractor = FeatureExtractor.from_bundle(bundle, m.backend, threads=m.threads, precision=m.precision)
        self._generation += 1
        model = LoadedModel(bundle, extractor, self._generation)
        mi = bundle.manifest.model
        self.metrics.set_model(mi.name, mi.version, extractor.fingerprint)
        return model

    @property
    def model(self) -> LoadedModel:
        if self._models is None:
            raise RuntimeError("the daemon is not started")
        return self._models.current

    def reload_model(self, bundle_dir: Path) -> dict[str, Any]:
        """Load `bundle_dir` (checksums verified), re-embed the gallery with it and switch to it,
        without touching the streams. The running model stays when anything fails."""
        if self._models is None:
            raise RuntimeError("the daemon is not started")
        old_info = self.model.info()
        new = self._load(Path(bundle_dir))

        def prepare(model: LoadedModel) -> None:
            with Gallery(self.gallery_path) as gallery:
                n = gallery.reembed(model.extractor)
                self._count_gallery(gallery)
            log.info("re-embedded %d exemplars with %s", n, model.tag)

        try:
            old = self._models.swap(new, prepare)
        except BaseException:
            new.extractor.close()
            mi = self.model.bundle.manifest.model
            self.metrics.set_model(mi.name, mi.version, self.model.extractor.fingerprint)
            raise
        old.extractor.close()
        self.metrics.model_reloads.inc()
        info = new.info()
        log.info("model switched: %s v%s -> %s v%s", old_info["name"], old_info["version"], info["name"], info["version"])
        self.hub.publish({"type": "model", "model": info})
        return info

    def install_bundle(self, archive: Path, *, allow_downgrade: bool = False) -> dict[str, Any]:
        """Install an uploaded bundle archive (.tar): through the A/B installer with model.root,
        else unpacked into state_dir/bundles, verified and hot-reloaded."""
        if not self._install_lock.acquire(blocking=False):
            raise Conflict("another model upload is being installed; try again when it is done")
        try:
            root = self.config.model.root
            if root is not None:
                from edgessl.edge_runtime.device.installer import active_bundle, install

                result = install(root, archive, allow_downgrade=allow_downgrade, on_switch=self.reload_model)
                active = Path(active_bundle(root))
                if active.resolve() != Path(self.model.bundle.root).resolve():
                    self.reload_model(active)  # the installer switched without calling us back
                return {"model": self.model.info(), "install": jsonable(result)}
            return {"model": self._install_unpacked(archive, allow_downgrade)}
        finally:
            self._install_lock.release()

    def _install_unpacked(self, archive: Path, allow_downgrade: bool) -> dict[str, Any]:
        from edgessl.edge_runtime.bundle.safe_extract import safe_extract

        bundles = self.config.state_dir / "bundles"
        bundles.mkdir(parents=True, exist_ok=True)
        dest = bundles / f".upload-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            safe_extract(archive, dest, max_total_bytes=max(self.config.api.max_bundle_bytes,
                                                           4 * archive.stat().st_size))
            root = dest
            if not (root / "manifest.json").exists():
                inner = [p for p in dest.iterdir() if p.is_dir()]
                if len(inner) == 1 and (inner[0] / "manifest.json").exists():
                    root = inner[0]
            bundle = load_bundle(root)
            current = self.model.bundle.manifest.model
            new = bundle.manifest.model
            if new.version <= current.version and not allow_downgrade:
                raise Conflict(f"bundle {new.name} v{new.version} is not newer than the running "
                               f"{current.name} v{current.version}; pass allow_downgrade=true to install it anyway")
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", new.name)[:40]  # the name comes from the upload
            final = bundles / f"{safe}-v{new.version}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            os.replace(dest, final)
            root = final / root.relative_to(dest)
            dest = final
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        previous = Path(self.model.bundle.root).resolve()
        try:
            info = self.reload_model(root)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        # Keep the new and the previous upload; older ones only take disk space.
        for old in bundles.iterdir():
            keep = {dest.resolve()} | {p for p in (previous, previous.parent) if p.parent == bundles.resolve()}
            if old.is_dir() and old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return info

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

    def _emit(self, event: Event) -> None:
        for runner in self._sinks:
            runner.submit(event)
        self.metrics.events.labels(event.camera).inc()
        self.hub.publish({"type": "event", **event.as_dict()})

    # -- the inference loop -----------------------------------------------------------------

    def _collect(self) -> list[CapturedFrame]:
        streams = list(self.streams.values())
        per_camera = max(1, self.config.inference.max_batch // max(1, sum(
            len(s.config.region_list) for s in streams)))
        frames: list[CapturedFrame] = []
        for stream in streams:
            frames += stream.take(per_camera)
        return frames

    def _inference_loop(self) -> None:
        gallery = Gallery(self.gallery_path)
        classifier: FewShotClassifier | None = None
        generation = -1
        revision = gallery.revision
        try:
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                if not self._wake.wait(0.5):
                    continue
                self._wake.clear()
                if self._stop.is_set():
                    break
                frames = self._collect()
                if not frames:
                    continue
                try:
                    assert self._models is not None
                    with self._models.use() as model:
                        if model.generation != generation:
                            classifier = FewShotClassifier(model.extractor, gallery, self.config.classifier.threshold)
                            generation = model.generation
                            for smoother in self._smoothers.values():
                                smoother.reset()
                        assert classifier is not None
                        self._process(frames, classifier, model)
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

    def _process(self, frames: list[CapturedFrame], classifier: FewShotClassifier, model: LoadedModel) -> None:
        crops: list[np.ndarray] = []
        owners: list[tuple[CapturedFrame, RegionConfig]] = []
        for frame in frames:
            for region in self.streams[frame.camera].config.region_list:
                crops.append(crop(frame.image, region))
                owners.append((frame, region))
        max_batch = self.config.inference.max_batch
        t0 = time.perf_counter()
        labels: list[str] = []
        rows: list[np.ndarray] = []
        for start in range(0, len(crops), max_batch):
            part = classifier.scores(crops[start:start + max_batch])
            labels = part.labels
            rows.append(part.scores)
        scores = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        took = time.perf_counter() - t0
        self.metrics.inference_seconds.observe(took)
        self.metrics.batch_size.observe(len(crops))
        self._last_batch = {"crops": len(crops), "seconds": round(took, 4), "at": iso(time.time())}
        decided_at, decided_mono = time.time(), time.monotonic()
        for (frame, region), row in zip(owners, scores, strict=True):
            key = (frame.camera, region.name)
            decision = self._smoothers[key].update(dict(zip(labels, row.tolist(), strict=True)))
            self.metrics.capture_to_decision.labels(frame.camera).observe(decided_mono - frame.captured_mono)
            with self._regions_lock:
                state = self._regions[key]
                state.label, state.score, state.proposal = decision.label, decision.score, decision.proposal
                state.capture_time, state.decision_time, state.frame = frame.captured_at, decided_at, frame.seq
                if decision.changed:
                    state.since = decided_at
            if decision.changed and decision.label is not None:
                self._emit(Event(self.device, frame.camera, region.name, decision.label, decision.previous,
                                 decision.score, frame.captured_at, decided_at, frame.seq, model.tag))
        if self._observer is not None:
            self._observer(BatchStats([f.camera for f in frames], [decided_mono - f.captured_mono for f in frames],
                                      len(crops), took))

    def _count_gallery(self, gallery: Gallery) -> None:
        classes = gallery.classes()
        self.metrics.gallery_classes.set(len(classes))
        self.metrics.gallery_exemplars.set(sum(c.exemplars + c.negatives for c in classes))

    # -- supervisor -------------------------------------------------------------------------

    def _supervise(self) -> None:
        interval = watchdog_interval()
        last_ping = 0.0
        while not self._stop.wait(0.25):
            now = time.monotonic()
            for stream in self.streams.values():
                stream.check_stall(now)
            if (interval is not None and self._ready.is_set() and now - last_ping >= interval
                    and self.inference_alive()):
                sd_notify("WATCHDOG=1")
                last_ping = now

    def inference_alive(self) -> bool:
        """The inference loop has come round recently (a hung loop stops the watchdog pings)."""
        threads = [t for t in self._threads if t.name == "inference"]
        return bool(threads) and threads[0].is_alive() and time.monotonic() - self._heartbeat < 30.0

    # -- what the API shows -----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        cameras = {cid: s.status().as_dict() for cid, s in self.streams.items()}
        alive = self.inference_alive()
        streaming = all(c["state"] == State.STREAMING for c in cameras.values())
        return {
            "status": "ok" if alive and streaming else ("degraded" if alive else "failed"),
            "device": self.device,
            "uptime_s": round(time.time() - self._started_at, 1),
            "model": self.model.info() if self._models is not None else None,
            "cameras": cameras,
            "inference": {"alive": alive, "last_batch": self._last_batch, "errors": self.loop_errors,
                          "last_error": self.last_loop_error},
            "sinks": self.sink_status(),
        }

    def states(self) -> list[dict[str, Any]]:
        with self._regions_lock:
            return [s.as_dict() for s in self._regions.values()]

    def cameras(self) -> list[dict[str, Any]]:
        out = []
        for cid, stream in self.streams.items():
            status = stream.status()
            out.append({"id": cid, "kind": stream.config.kind, "state": str(status.state),
                        "frame_size": status.frame_size,
                        "regions": [r.model_dump() for r in stream.config.region_list]})
        return out

    def _stream(self, camera_id: str) -> CameraStream:
        try:
            return self.streams[camera_id]
        except KeyError:
            raise NotFound(f"no camera {camera_id!r}; cameras: {', '.join(self.streams) or '(none)'}") from None

    def _region(self, stream: CameraStream, name: str | None) -> RegionConfig:
        regions = stream.config.region_list
        if name is None:
            return regions[0]
        for r in regions:
            if r.name == name:
                return r
        raise NotFound(f"camera {stream.id} has no region {name!r}; regions: {', '.join(r.name for r in regions)}")

    def snapshot(self, camera_id: str, *, annotate: bool = True, quality: int = 80) -> bytes:
        """The newest frame as JPEG, with each region's box and label drawn on it."""
        stream = self._stream(camera_id)
        frame = stream.latest()
        if frame is None:
            raise Conflict(f"camera {camera_id} has no frame yet (state {stream.state})")
        image = frame.image
        if annotate:
            image = image.copy()
            h, w = image.shape[:2]
            with self._regions_lock:
                states = {r.name: self._regions[(camera_id, r.name)] for r in stream.config.region_list}
            for region in stream.config.region_list:
                x0, y0, x1, y1 = region.box(w, h)
                st = states[region.name]
                text = f"{region.name}: {st.label or '...'} {st.score:.2f}"
                color = (60, 200, 60) if st.label not in (None, "unknown") else (0, 170, 255)
                cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, 2)
                scale = max(0.4, min(1.0, w / 640))
                (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                ty = max(th + 4, y0 + th + 4)
                cv2.rectangle(image, (x0, ty - th - 4), (x0 + tw + 4, ty + 2), (0, 0, 0), -1)
                cv2.putText(image, text, (x0 + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DaemonError(f"cannot JPEG-encode the frame of camera {camera_id}")
        return buf.tobytes()

    # -- enrollment -------------------------------------------------------------------------

    def enroll_images(self, label: str, images: list[np.ndarray], *, negative: bool = False) -> dict[str, Any]:
        validate_label(label)
        if not images:
            raise DaemonError(f"no images to enroll as {label!r}; give at least one")
        assert self._models is not None
        with self._models.use() as model, Gallery(self.gallery_path) as gallery:
            added = gallery.add(label, images, model.extractor.embed(images), model.extractor.fingerprint,
                                negative=negative)
        return {"label": label, "added": added, "negative": negative, "quality": self.class_report(label)}

    def enroll_live(self, camera_id: str, label: str, *, region: str | None = None, frames: int | None = None,
                    negative: bool = False, interval_s: float | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """Capture shots of a region from the live camera, keep those that pass the quality
        gates, enroll them; the answer lists what was kept and why the others were not."""
        validate_label(label)
        stream = self._stream(camera_id)
        reg = self._region(stream, region)
        cfg = self.config.enrollment
        wanted = frames or cfg.frames
        interval = cfg.interval_s if interval_s is None else interval_s
        deadline = time.monotonic() + (timeout_s or cfg.timeout_s)
        newest = stream.latest()
        if newest is None or stream.state != State.STREAMING:
            raise Conflict(f"camera {camera_id} is not streaming (state {stream.state}); enroll when it is")
        kept: list[np.ndarray] = []
        thumbs: list[np.ndarray] = []
        rejected: list[dict[str, Any]] = []
        seq, last_shot = newest.seq - 1, -1e9
        while len(kept) < wanted and not self._stop.is_set():
            wait = last_shot + interval - time.monotonic()
            if wait > 0 and self._stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            frame = stream.wait_newer(seq, left)
            if frame is None:
                break
            seq, last_shot = frame.seq, time.monotonic()
            shot = np.ascontiguousarray(crop(frame.image, reg))
            check = check_shot(shot, cfg, thumbs)
            if check.ok:
                kept.append(shot)
                thumbs.append(check.thumbnail)
            else:
                rejected.append({"frame": frame.seq, **check.as_dict()})
        reasons = Tally((r["reason"] or "").split(":")[0] for r in rejected)
        report: dict[str, Any] = {"camera": camera_id, "region": reg.name, "label": label, "negative": negative,
                                  "wanted": wanted, "kept": len(kept), "rejected": len(rejected),
                                  "reasons": dict(reasons), "rejections": rejected[:20]}
        if not kept:
            raise Rejected(f"no shot of {camera_id}/{reg.name} passed the quality gates; nothing enrolled "
                           f"({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'no frames'})", report)
        result = self.enroll_images(label, kept, negative=negative)
        report.update(added=result["added"], complete=len(kept) >= wanted, quality=result["quality"])
        return report

    def forget(self, label: str) -> int:
        with Gallery(self.gallery_path) as gallery:
            if label not in {c.label for c in gallery.classes()}:
                raise NotFound(f"no class {label!r} in the gallery")
            return gallery.forget(label)

    def class_report(self, label: str | None = None) -> list[dict[str, Any]]:
        """Per class: exemplars, negatives, leave-one-out accuracy, nearest confusable class,
        advice, and the ids of the exemplars (for thumbnails)."""
        model = self.model
        with Gallery(self.gallery_path) as gallery:
            counts = {c.label: (c.exemplars, c.negatives) for c in gallery.classes()}
            labels, emb = gallery.embeddings(model.extractor.fingerprint)
            exemplars = gallery.exemplars(label)
        report = class_quality(labels, emb, model.extractor.center, counts)
        out = []
        for q in report:
            if label is not None and q.label != label:
                continue
            item = q.as_dict()
            item["exemplar_ids"] = [e.id for e in exemplars if e.label == q.label and not e.negative]
            item["negative_ids"] = [e.id for e in exemplars if e.label == q.label and e.negative]
            out.append(item)
        return out

    def crop_jpeg(self, exemplar_id: int) -> bytes:
        with Gallery(self.gallery_path) as gallery:
            try:
                return gallery.crop(exemplar_id)
            except EdgesslError as exc:
                raise NotFound(str(exc)) from None

    def remove_exemplar(self, exemplar_id: int) -> None:
        with Gallery(self.gallery_path) as gallery:
            try:
                gallery.remove_exemplar(exemplar_id)
            except EdgesslError as exc:
                raise NotFound(str(exc)) from None

    # -- HTTP -------------------------------------------------------------------------------

    def _resolve_token(self) -> str:
        api = self.config.api
        if api.token_file is not None:
            try:
                token = api.token_file.read_text().strip()
            except OSError as exc:
                raise DaemonError(f"{api.token_file}: cannot read the API token: {exc.strerror or exc}") from exc
            if len(token) < 16:
                raise DaemonError(f"{api.token_file}: the API token must have at least 16 characters")
            return token
        if os.environ.get("EDGESSL_API_TOKEN"):
            return os.environ["EDGESSL_API_TOKEN"].strip()
        path = self.config.state_dir / "api-token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
            log.info("generated an API token in %s", path)
        return path.read_text().strip()

    def _start_api(self) -> None:
        import uvicorn

        from edgessl.edge_runtime.daemon.http.app import create_app

        self.api_token = self._resolve_token()
        api = self.config.api
        config = uvicorn.Config(create_app(self, self.api_token), host=api.host, port=api.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._spawn("api", self._server.run)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._threads[-1].is_alive() or time.monotonic() > deadline:
                raise DaemonError(f"the HTTP API could not listen on {api.host}:{api.port} (port in use?)")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        host = api.host if api.host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.api_url = f"http://{host}:{port}"
        log.info("API listening on %s (token: %s)", self.api_url,
                 api.token_file or ("$EDGESSL_API_TOKEN" if os.environ.get("EDGESSL_API_TOKEN")
                                    else self.config.state_dir / "api-token"))
