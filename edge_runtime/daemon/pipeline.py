"""The frame path inside the daemon, one pass at a time.

    newest frame of each camera -> region crops                 -> embeddings (one backend batch:
                                -> objects (objects/stage.py:      `inference.max_batch` crops at a
                                   proposals, tracker) -> crops    time) -> score per enrolled class
    regions: smoothed label per region -> an Event for each label that changed
    objects: tracks -> evidence per track -> ObjectEvents (entered, label, changed, left)

`Pipeline.step` returns one `Batch`: every region crop of the pass with its camera, region,
frame, scores and decision, shape-checked like supervision's `Detections`, and the objects of
each camera frame, so observers (the benchmark, tests) get one value instead of parallel lists.
Once a pass's embeddings exist, its region crops and the object tracks that left are handed to
the collection (daemon/collection.py: the sampler that keeps crops for the server, and the drift
monitor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.metrics import Metrics
from edgessl.edge_runtime.daemon.sinks import Event, SinkEvent
from edgessl.edge_runtime.daemon.smoothing import Decision, Smoother
from edgessl.edge_runtime.daemon.streams import CameraStream, CapturedFrame
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.objects.stage import FrameIn, ObjectStage
from edgessl.edge_runtime.objects.store import TrackStore
from edgessl.edge_runtime.timestamps import iso

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.collection import Collection


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
    nearest: str | None = None  # the best-scoring class (smoothed), also while the label is unknown

    def as_dict(self) -> dict[str, Any]:
        return {"camera": self.camera, "region": self.region, "label": self.label, "score": round(self.score, 4),
                "nearest": self.nearest,
                "since": iso(self.since) if self.since else None, "proposal": self.proposal,
                "capture_time": iso(self.capture_time) if self.capture_time else None,
                "decision_time": iso(self.decision_time) if self.decision_time else None,
                "latency_ms": None if self.capture_time is None or self.decision_time is None
                else round((self.decision_time - self.capture_time) * 1000, 1),
                "frame": self.frame}


@dataclass(frozen=True)
class ObjectFrame:
    """The objects of one camera frame after a pass."""

    camera: str
    frame: int
    captured_mono: float
    proposals: int  # proposals that passed the filters
    objects: tuple[dict[str, Any], ...]  # the live tracks (as /v1/cameras/{id}/objects shows them)


@dataclass(frozen=True)
class Batch:
    """One pass of the inference loop over N region crops and C enrolled classes (and the
    objects of the cameras that track them)."""

    cameras: tuple[str, ...]  # (N,) the camera of each crop
    regions: tuple[str, ...]  # (N,) its region
    frames: tuple[int, ...]  # (N,) the frame's sequence number on its camera
    captured_mono: np.ndarray  # (N,) monotonic time the reader got the frame
    labels: tuple[str, ...]  # (C,) the classes, the columns of `scores`
    scores: np.ndarray  # (N, C) score of each crop for each class
    decisions: tuple[Decision, ...]  # (N,) the smoothed decision of each crop's region
    decided_mono: float  # when the decisions were made
    inference_s: float  # embedding + scoring time (of region and object crops)
    objects: tuple[ObjectFrame, ...] = ()
    object_crops: int = 0  # crops embedded for the objects path

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if not (len(self.regions) == len(self.frames) == len(self.decisions) == len(self.captured_mono) == n):
            raise ValueError(f"a batch's per-crop fields must all have {n} entries")
        if self.scores.shape != (n, len(self.labels)):
            raise ValueError(f"scores must be ({n}, {len(self.labels)}), got {self.scores.shape}")

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def crops(self) -> int:
        return len(self)

    @property
    def latencies(self) -> np.ndarray:
        """(N,) seconds from capture to decision."""
        return self.decided_mono - self.captured_mono


@dataclass(frozen=True)
class Prepared:
    """A pass's region crops, ready before its turn (daemon.prefetch): the frames, each crop's
    frame and region, and the crops as the model takes them (None: not resized yet, e.g. no
    class enrolled, or prepared for another model)."""

    frames: list[CapturedFrame]
    owners: list[tuple[CapturedFrame, RegionConfig]]
    crops: list[np.ndarray]
    inputs: np.ndarray | None = None
    packed_by: FeatureExtractor | None = None  # the extractor that resized them (a new model resizes again)


def crop(image: np.ndarray, region: RegionConfig) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = region.box(w, h)
    return image[y0:y1, x0:x1]


class Pipeline:
    """Region states and smoothers of every camera region; `step` runs one pass."""

    def __init__(self, config: DaemonConfig, streams: dict[str, CameraStream], metrics: Metrics,
                 emit: Callable[[SinkEvent], None], publish: Callable[[dict[str, Any]], None] | None = None,
                 tracks: TrackStore | None = None, collection: Collection | None = None) -> None:
        self.config = config
        self.collection = collection  # sampler + drift monitor, fed once a pass's embeddings exist
        self.streams = streams
        self.metrics = metrics
        self._emit = emit
        self._publish = publish  # per-frame messages for the page's live view (server-sent events)
        self.stages: dict[str, ObjectStage] = {
            cid: ObjectStage(cid, s.config.objects, device=config.device, store=tracks)
            for cid, s in streams.items() if s.config.objects is not None}
        self._lock = threading.Lock()
        self._regions: dict[tuple[str, str], RegionState] = {
            (cid, r.name): RegionState(cid, r.name) for cid, s in streams.items() for r in s.config.region_list}
        sm = config.smoothing
        self._smoothers = {key: Smoother(config.classifier.threshold, sm.alpha, sm.hysteresis, sm.consecutive)
                           for key in self._regions}
        self.last_batch: dict[str, Any] = {}
        self._due: dict[str, float] = {}  # camera -> monotonic time its next frame may be taken (max_fps)
        self.resized_ahead = 0  # passes whose region crops the prefetch thread had resized (daemon/prefetch.py)

    def collect(self) -> list[CapturedFrame]:
        """The newest frames, as many per camera as fit one backend batch with all their regions;
        a camera with `max_fps` gives none until its next frame is due (one busy camera cannot
        take every pass from the others)."""
        streams = list(self.streams.values())
        per_camera = max(1, self.config.inference.max_batch // max(1, sum(
            len(s.config.region_list) for s in streams)))
        frames: list[CapturedFrame] = []
        now = time.monotonic()
        for stream in streams:
            cap = stream.config.max_fps
            if cap is not None and now < self._due.get(stream.id, 0.0):
                continue
            # A tracker finishes a frame before it begins the next: one frame per pass from a
            # camera with objects (mode `every` would otherwise hand it several).
            taken = stream.take(1 if stream.config.objects is not None else per_camera)
            if taken and cap is not None:
                # Due again one interval after this pass; a late pass does not earn a burst.
                self._due[stream.id] = max(self._due.get(stream.id, 0.0) + 1 / cap, now)
            frames += taken
        return frames

    def prepare(self, frames: list[CapturedFrame], extractor: FeatureExtractor | None = None) -> Prepared:
        """The region crops of `frames`; resized into the model's batch when `extractor` is given."""
        owners = [(frame, region) for frame in frames for region in self.streams[frame.camera].config.region_list]
        crops = [crop(frame.image, region) for frame, region in owners]
        if extractor is None or not crops:
            return Prepared(frames, owners, crops)
        return Prepared(frames, owners, crops, extractor.inputs(crops), extractor)

    def embeds(self, classifier: FewShotClassifier) -> bool:
        """Whether a pass's region crops are embedded: a class is enrolled, a camera tracks objects
        (their crops share the batch), or a camera samples its regions."""
        return classifier.has_classes or bool(self.stages) or (
            self.collection is not None and self.collection.embeds_regions)

    def reset(self) -> None:
        """A new model: its scores are not comparable with the old one's averages."""
        for smoother in self._smoothers.values():
            smoother.reset()
        for stage in self.stages.values():
            stage.reset()

    def step(self, frames: list[CapturedFrame], classifier: FewShotClassifier, model_tag: str,
             prepared: Prepared | None = None) -> Batch:
        """One pass over `frames` (their region crops resized already when `prepared` says so)."""
        extractor = classifier.extractor
        if prepared is None or prepared.frames is not frames:
            prepared = self.prepare(frames)
        owners, crops = prepared.owners, list(prepared.crops)
        n_regions = len(crops)
        # The objects path asks for its crops (proposals, checks, samples) before the batch is embedded.
        spans: list[tuple[ObjectStage, CapturedFrame, int, int]] = []
        for frame in frames:
            stage = self.stages.get(frame.camera)
            if stage is not None:
                wanted = stage.begin(FrameIn(frame.camera, frame.seq, frame.image, frame.captured_at,
                                             frame.captured_mono))
                spans.append((stage, frame, len(crops), len(crops) + len(wanted)))
                crops += wanted
        max_batch = self.config.inference.max_batch
        t0 = time.perf_counter()
        queries = None
        # The tracker compares crops by their embeddings, enrolled classes or not; regions alone
        # need embedding only when a class is enrolled or their camera samples them.
        collection = self.collection
        sampled = collection is not None and collection.embeds_regions
        if spans or (crops and (classifier.has_classes or sampled)):
            ahead = prepared.inputs if prepared.packed_by is extractor else None
            if ahead is not None:  # the region crops were resized by the prefetch thread
                self.resized_ahead += 1
                batch = ahead if len(crops) == n_regions else np.concatenate(
                    [ahead, extractor.inputs(crops[n_regions:])])
            else:  # all crops of the pass resized into one batch
                batch = extractor.inputs(crops)
            queries = classifier.embed_inputs(batch, batch_size=max_batch)
        table = classifier.score_queries(queries[:n_regions] if queries is not None else
                                         np.zeros((n_regions, extractor.embedding_dim), np.float32))
        labels = tuple(table.labels)
        scores = table.scores
        thresholds = dict(zip(labels, table.thresholds.tolist(), strict=True)) if table.thresholds is not None \
            else None
        took = time.perf_counter() - t0
        self.metrics.inference_seconds.observe(took)
        self.metrics.batch_size.observe(len(crops))
        self.last_batch = {"crops": len(crops), "seconds": round(took, 4), "at": iso(time.time())}
        decided_at, decided_mono = time.time(), time.monotonic()
        if collection is not None and queries is not None:
            collection.sync(classifier, model_tag)
        objects = self._objects(spans, queries, classifier, model_tag, decided_at)
        decisions: list[Decision] = []
        for (frame, region), row in zip(owners, scores, strict=True):
            key = (frame.camera, region.name)
            smoother = self._smoothers[key]
            decision = smoother.update(dict(zip(labels, row.tolist(), strict=True)), thresholds)
            nearest = max(smoother.ema, key=smoother.ema.__getitem__) if smoother.ema else None
            decisions.append(decision)
            self.metrics.capture_to_decision.labels(frame.camera).observe(decided_mono - frame.captured_mono)
            with self._lock:
                state = self._regions[key]
                state.label, state.score, state.proposal = decision.label, decision.score, decision.proposal
                state.capture_time, state.decision_time, state.frame = frame.captured_at, decided_at, frame.seq
                state.nearest = nearest
                if decision.changed:
                    state.since = decided_at
            if decision.changed and decision.label is not None:
                self._emit(Event(self.config.device, frame.camera, region.name, decision.label, decision.previous,
                                 decision.score, frame.captured_at, decided_at, frame.seq, model_tag,
                                 nearest=nearest))
        scores = scores.reshape(len(owners), len(labels))
        if collection is not None and queries is not None and n_regions:
            collection.regions(owners, crops[:n_regions], queries[:n_regions], labels, scores, decisions, model_tag)
        return Batch(tuple(f.camera for f, _ in owners), tuple(r.name for _, r in owners),
                     tuple(f.seq for f, _ in owners), np.array([f.captured_mono for f, _ in owners], np.float64),
                     labels, scores, tuple(decisions), decided_mono, took, objects, len(crops) - n_regions)

    def _objects(self, spans: list[tuple[ObjectStage, CapturedFrame, int, int]], queries: np.ndarray | None,
                 classifier: FewShotClassifier, model_tag: str, decided_at: float) -> tuple[ObjectFrame, ...]:
        """Finish the objects path of every camera frame of the pass: events to the sinks, the
        frame's objects to the page."""
        out = []
        for stage, frame, start, end in spans:
            assert queries is not None
            events = stage.finish(queries[start:end], classifier.score_queries, revision=classifier.revision,
                                  model=model_tag, decided_at=decided_at)
            for event in events:
                self._emit(event)
            if stage.ended and self.collection is not None:
                self.collection.tracks(frame.camera, stage.ended, classifier, model_tag)
            objects = tuple(stage.objects())
            self.metrics.objects.labels(frame.camera).set(len(objects))
            self.metrics.capture_to_decision.labels(frame.camera).observe(time.monotonic() - frame.captured_mono)
            if self._publish is not None:
                self._publish({"type": "objects", "camera": frame.camera, "frame": frame.seq,
                               "capture_time": iso(frame.captured_at), "proposals": stage.proposals,
                               "latency_ms": round((decided_at - frame.captured_at) * 1000, 1),
                               "objects": list(objects)})
            out.append(ObjectFrame(frame.camera, frame.seq, frame.captured_mono, stage.proposals, objects))
        return tuple(out)

    def states(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.as_dict() for s in self._regions.values()]

    def region_states(self, camera_id: str) -> dict[str, RegionState]:
        """A copy of the states of one camera's regions, by region name."""
        with self._lock:
            return {r: RegionState(**vars(s)) for (c, r), s in self._regions.items() if c == camera_id}
