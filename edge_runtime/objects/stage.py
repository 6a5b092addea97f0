"""The objects path of one camera, per frame, around the daemon's one embedding batch:

    begin(frame)  -> proposals (filtered, masked) -> tracker.associate -> the crops this frame
                     needs embedded: contested and new proposals, stationary checks, background
                     samples, and track samples (the sharpest crop of each track since its last
                     sample, a few per second)
    finish(embeddings, scorer) -> tracker.finish -> evidence per track -> label decisions ->
                     ObjectEvents (entered, label, changed, left), crops kept on disk

Samples of a track come only from frames where its box was unambiguous (one track, one
proposal): a crop of two objects merged would count for both. A track's crops are kept (the
sharpest, varied: a near-duplicate replaces its twin only when sharper), in memory while it is
active and in the track store once it is confirmed, for enrollment from the track.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.fewshot.crops import encode_crop, fit_crop
from edgessl.edge_runtime.objects.boxes import area, square_crop, square_inside
from edgessl.edge_runtime.objects.config import ObjectsConfig
from edgessl.edge_runtime.objects.events import ObjectEvent, ObjectEventType
from edgessl.edge_runtime.objects.evidence import Evidence, Scorer
from edgessl.edge_runtime.objects.proposals import Proposer, create_proposer
from edgessl.edge_runtime.objects.store import TrackStore
from edgessl.edge_runtime.objects.tracker import Plan, Track, Tracker, TrackState
from edgessl.edge_runtime.objects.zones import Masks, Zones
from edgessl.edge_runtime.timestamps import iso

DUPLICATE = 0.97  # centred cosine above which two kept crops show the same view


@dataclass(frozen=True)
class FrameIn:
    """A camera frame as the stage needs it (the daemon's CapturedFrame has these fields)."""

    camera: str
    seq: int
    image: np.ndarray
    captured_at: float  # wall clock
    captured_mono: float


@dataclass
class _Kept:
    name: str | None  # in the store (None: not stored, e.g. before confirmation or a full disk)
    jpeg: bytes
    embedding: np.ndarray
    sharpness: float
    frame: int


@dataclass
class _Pending:
    crop: np.ndarray
    sharpness: float
    frame: int
    inside: float  # share of the crop inside the frame


WHOLE = 0.98  # a crop with this share inside the frame shows the whole object


@dataclass(frozen=True)
class EndedTrack:
    """A confirmed track that left in the last frame: its final verdict and its sharpest kept crop,
    for whoever wants one crop per object (the sampler), without coupling the stage to it."""

    id: int
    label: str | None  # the final label: a class, "unknown", or None (never enough crops)
    nearest: str | None
    score: float
    jpeg: bytes | None  # its sharpest kept crop (None: no whole view was kept)
    embedding: np.ndarray | None  # that crop's embedding (centred, normalised; zeros after a model change)
    first_seen: float  # wall clock
    last_seen: float


@dataclass
class _TrackInfo:
    """What the stage knows of a track beyond its geometry."""

    evidence: Evidence
    first_seen: float  # wall clock
    last_sample: float = -np.inf  # monotonic
    pending: _Pending | None = None
    kept: list[_Kept] = field(default_factory=list)
    zones: tuple[str, ...] = ()
    last_seen: float = 0.0  # wall clock


def crop_sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian at 64 pixels: comparable between crops of one track."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


class ObjectStage:
    def __init__(self, camera: str, config: ObjectsConfig, *, device: str, store: TrackStore | None = None,
                 proposer: Proposer | None = None) -> None:
        self.camera = camera
        self.config = config
        self.device = device
        self.store = store
        self.proposer = proposer or create_proposer(config.proposer, Masks(config.masks))
        self.tracker = Tracker(config.tracker, first_id=store.next_id() if store is not None else 1)
        self.zones = Zones(config.zones)
        self._masks = Masks(config.masks)
        self._info: dict[int, _TrackInfo] = {}  # track key -> info
        self._frame: FrameIn | None = None
        self._plan: Plan | None = None
        self._slots: list[tuple[str, int]] = []  # what each crop of this frame is: (kind, proposal or key)
        self._revision: object = None  # the gallery revision the labels were judged against
        self._lock = threading.Lock()
        self._view: list[dict[str, Any]] = []
        self.proposals = 0  # proposals of the last frame
        self.last_proposals = np.zeros((0, 4))  # and their boxes
        self.frames = 0
        self.ghosts = 0
        self.ended: list[EndedTrack] = []  # the confirmed tracks that left in the last finished frame

    # -- the first half ---------------------------------------------------------------------

    def begin(self, frame: FrameIn) -> list[np.ndarray]:
        """Propose and associate; returns the crops to embed (in the daemon's batch)."""
        h, w = frame.image.shape[:2]
        boxes = self._filter(self.proposer.propose(frame.image), w, h)
        self.proposals, self.last_proposals = len(boxes), boxes
        plan = self.tracker.associate(boxes, frame.captured_mono, (w, h))
        margin = self.config.crops.margin
        crops: list[np.ndarray] = []
        slots: list[tuple[str, int]] = []

        def add(kind: str, ref: int, image: np.ndarray, box: np.ndarray) -> None:
            crops.append(fit_crop(square_crop(image, box, margin), self.config.crops.max_side))
            slots.append((kind, ref))

        for j in plan.embed:
            add("proposal", j, frame.image, plan.boxes[j])
        for tr in plan.checks:
            add("check", tr.key, frame.image, tr.box)
        background = self.proposer.background() if plan.backgrounds else None
        if background is not None:
            for tr in plan.backgrounds:
                add("background", tr.key, background, tr.box)
        # Samples: the sharpest crop of each cleanly matched track since its last sample.
        every = 1.0 / self.config.crops.per_second
        for tr, j in plan.matched:
            info = self._info.get(tr.key)
            if info is None or tr.key not in plan.clean:  # a blob of two objects counts for neither
                continue
            crop = self._crop_of(frame.image, plan.boxes[j])
            sharp = crop_sharpness(crop)
            inside = square_inside(plan.boxes[j], margin, w, h)
            # The sharpest since the last sample, and a whole view over a partial one.
            if info.pending is None or (inside, sharp) >= (info.pending.inside, info.pending.sharpness):
                info.pending = _Pending(crop, sharp, frame.seq, inside)
            if frame.captured_mono - info.last_sample >= every:
                crops.append(info.pending.crop)
                slots.append(("sample", tr.key))
        self._frame, self._plan, self._slots = frame, plan, slots
        return crops

    def _filter(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        f = self.config.filters
        if not len(boxes):
            return boxes.reshape(0, 4)
        share = area(boxes) / float(width * height)
        bw, bh = boxes[:, 2] - boxes[:, 0], np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
        aspect = bw / bh
        keep = (share >= f.min_area) & (share <= f.max_area) & (aspect >= f.min_aspect) & (aspect <= f.max_aspect)
        return boxes[keep]

    # -- the second half --------------------------------------------------------------------

    def finish(self, embeddings: np.ndarray, scorer: Scorer, *, revision: object = None, model: str = "",
               decided_at: float | None = None) -> list[ObjectEvent]:
        """Finish the frame begun last with the embeddings (centred, normalised) of its crops,
        in the order `begin` returned them; `scorer` scores embeddings against the gallery,
        whose `revision` tells when every label must be judged again."""
        frame, plan, slots = self._frame, self._plan, self._slots
        if frame is None or plan is None:
            raise RuntimeError("finish() without begin()")
        if len(embeddings) != len(slots):
            raise ValueError(f"{len(slots)} crops were asked for, {len(embeddings)} embeddings came")
        decided_at = time.time() if decided_at is None else decided_at
        h, w = frame.image.shape[:2]
        margin = self.config.crops.margin
        by_kind: dict[str, dict[int, np.ndarray]] = {"proposal": {}, "check": {}, "background": {}, "sample": {}}
        for (kind, ref), emb in zip(slots, embeddings, strict=True):
            by_kind[kind][ref] = emb
        update = self.tracker.finish(plan, by_kind["proposal"], by_kind["check"], by_kind["background"],
                                     by_kind["sample"])
        self.frames += 1
        self.ghosts += update.ghosts
        events: list[ObjectEvent] = []
        self.ended = []
        keys = {tr.key for tr in self.tracker.tracks}

        # New tracks: their birth crop is their first sample.
        for tr in self.tracker.tracks:
            if tr.key not in self._info:
                self._info[tr.key] = _TrackInfo(Evidence(self.config.decision), frame.captured_at)
                j = next((j for j in range(len(plan.boxes)) if tr.box is not None
                          and np.array_equal(plan.boxes[j], tr.box)), None)
                if j is not None and j in by_kind["proposal"]:
                    crop = self._crop_of(frame.image, plan.boxes[j])
                    self._add_sample(tr, self._info[tr.key], _Pending(
                        crop, crop_sharpness(crop), frame.seq, square_inside(plan.boxes[j], margin, w, h)),
                        by_kind["proposal"][j], frame.captured_mono)
        for key, emb in by_kind["sample"].items():
            tr = self._track(key)
            info = self._info.get(key)
            if tr is None or info is None or info.pending is None:
                continue
            self._add_sample(tr, info, info.pending, emb, frame.captured_mono)
            info.pending = None

        # Events: entered, label decided or changed, left.
        rejudge = revision != self._revision
        self._revision = revision
        for tr in update.entered:
            info = self._info[tr.key]
            self._store_track(tr, info, model)
            events.append(self._event("entered", tr, info, frame, decided_at, model, w, h))
        for tr in self.tracker.active():
            info = self._info[tr.key]
            info.last_seen = frame.captured_at if tr.key in update.matched else info.last_seen or frame.captured_at
            info.zones = tuple(self.zones.of(tr.box, w, h))
            if tr.key in by_kind["sample"] or rejudge or tr in update.entered or (
                    tr.key in update.matched and info.evidence.label is None):
                before, after = info.evidence.update(scorer)
                if after != before:
                    change: ObjectEventType = "label" if before is None else "changed"
                    events.append(self._event(change, tr, info, frame, decided_at, model, w, h, previous=before))
                    self._store_track(tr, info, model)
        for tr in update.ended:
            info = self._info.pop(tr.key, None)
            if info is None or not tr.confirmed:
                continue
            events.append(self._event("left", tr, info, frame, decided_at, model, w, h))
            self._store_track(tr, info, model, ended=True)
            best = max(info.kept, key=lambda k: k.sharpness, default=None)
            self.ended.append(EndedTrack(int(tr.id or 0), info.evidence.label, info.evidence.verdict.nearest,
                                         info.evidence.verdict.score, best.jpeg if best else None,
                                         best.embedding if best else None, info.first_seen,
                                         info.last_seen or frame.captured_at))
        for key in [k for k in self._info if k not in keys]:
            del self._info[key]  # tentative tracks that never became objects
        present = Counter((self._info[tr.key].evidence.label or "pending") for tr in self.tracker.active())
        events = [_with_present(e, dict(present)) for e in events]
        self._publish_view(frame, decided_at, w, h)
        return events

    def _crop_of(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        return fit_crop(square_crop(image, box, self.config.crops.margin), self.config.crops.max_side)

    def _track(self, key: int) -> Track | None:
        return next((tr for tr in self.tracker.tracks if tr.key == key), None)

    def _add_sample(self, tr: Track, info: _TrackInfo, sample: _Pending, emb: np.ndarray, now: float) -> None:
        """A crop embedded for the track: evidence (a partial view at the frame's edge counts less),
        and a candidate for the kept crops (whole views only)."""
        info.evidence.add(emb, weight=sample.inside ** 2)
        info.last_sample = now
        if sample.inside >= WHOLE:
            self._keep(tr, info, sample.crop, sample.sharpness, sample.frame, np.asarray(emb, np.float32))

    def _keep(self, tr: Track, info: _TrackInfo, crop: np.ndarray, sharpness: float, seq: int,
              emb: np.ndarray) -> None:
        """Keep the sharpest, varied crops: every crop until `crops.keep` are kept; then a
        near-duplicate replaces its twin only when sharper, and another crop takes the place of the
        most redundant one (the blurrier of the closest pair)."""
        kept = info.kept
        if len(kept) >= self.config.crops.keep:
            sims = [float(emb @ k.embedding) for k in kept]
            twin = int(np.argmax(sims))
            if sims[twin] >= DUPLICATE:
                if sharpness <= kept[twin].sharpness:
                    return
                self._drop(tr, kept.pop(twin))
            else:
                emb_all = np.stack([k.embedding for k in kept] + [emb])
                sim = emb_all @ emb_all.T
                np.fill_diagonal(sim, -np.inf)
                a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
                sharp = [k.sharpness for k in kept] + [sharpness]
                victim = a if sharp[a] <= sharp[b] else b
                if victim == len(kept):
                    return
                self._drop(tr, kept.pop(int(victim)))
        jpeg = encode_crop(crop)
        item = _Kept(None, jpeg, emb, sharpness, seq)
        if tr.confirmed and self.store is not None:
            item.name = self.store.add_crop(tr.id, seq, sharpness, jpeg)
        kept.append(item)

    def _drop(self, tr: Track, item: _Kept) -> None:
        if item.name is not None and self.store is not None and tr.id is not None:
            self.store.remove_crop(tr.id, item.name)

    def _store_track(self, tr: Track, info: _TrackInfo, model: str, ended: bool = False) -> None:
        if self.store is None or tr.id is None:
            return
        self.store.write_meta(tr.id, self._summary(tr, info, model, ended))
        for item in info.kept:  # crops kept before the track was confirmed
            if item.name is None:
                item.name = self.store.add_crop(tr.id, item.frame, item.sharpness, item.jpeg)

    def _summary(self, tr: Track, info: _TrackInfo, model: str, ended: bool = False) -> dict[str, Any]:
        v = info.evidence.verdict
        return {"id": tr.id, "camera": self.camera, "label": info.evidence.label, "score": round(v.score, 4),
                "nearest": v.nearest, "threshold": None if v.threshold is None else round(v.threshold, 4),
                "agreement": round(v.agreement, 3), "crops": v.crops, "zones": list(info.zones),
                "box": [round(float(x)) for x in tr.box], "state": "ended" if ended else str(tr.state),
                "first_seen": iso(info.first_seen), "last_seen": iso(info.last_seen or info.first_seen),
                "duration_s": round(max(0.0, (info.last_seen or info.first_seen) - info.first_seen), 2),
                "model": model, "why_ended": tr.ended_why if ended else None}

    def _event(self, kind: ObjectEventType, tr: Track, info: _TrackInfo, frame: FrameIn, decided_at: float,
               model: str, w: int, h: int, previous: str | None = None) -> ObjectEvent:
        v = info.evidence.verdict
        best = max(info.kept, key=lambda k: k.sharpness, default=None)
        return ObjectEvent(
            self.device, self.camera, kind, int(tr.id or 0), info.evidence.label, previous, v.score, v.nearest,
            info.zones, tuple(int(round(float(x))) for x in tr.box), (w, h),
            "ended" if kind == "left" else str(tr.state), info.first_seen, info.last_seen or frame.captured_at,
            frame.seq, frame.captured_at, decided_at, model, len(info.evidence),
            f"/v1/tracks/{tr.id}/crops/{best.name}" if best is not None and best.name else None)

    # -- what the API shows -----------------------------------------------------------------

    def _publish_view(self, frame: FrameIn, decided_at: float, w: int, h: int) -> None:
        view = []
        # What the camera sees now: a lost track (hidden, being predicted on) is not shown until
        # it is found again (then with its id).
        for tr in self.tracker.active():
            if tr.state == TrackState.LOST:
                continue
            info = self._info[tr.key]
            v = info.evidence.verdict
            view.append({"id": tr.id, "label": info.evidence.label, "score": round(v.score, 4),
                         "nearest": v.nearest, "state": str(tr.state), "zones": list(info.zones),
                         "box": [round(float(x)) for x in tr.box], "crops": len(info.evidence),
                         "first_seen": iso(info.first_seen),
                         "duration_s": round(max(0.0, (info.last_seen or frame.captured_at) - info.first_seen), 2),
                         "frame": frame.seq, "capture_time": iso(frame.captured_at),
                         "latency_ms": round((decided_at - frame.captured_at) * 1000, 1)})
        with self._lock:
            self._view = view
            self._frame_size = (w, h)

    def objects(self) -> list[dict[str, Any]]:
        """The confirmed, live tracks of the last processed frame (a copy)."""
        with self._lock:
            return [dict(o) for o in self._view]

    def kept_crops(self, track_id: int) -> list[bytes] | None:
        """JPEGs of a live track's kept crops, sharpest first; None when it is not live."""
        for tr in self.tracker.tracks:
            if tr.id == track_id and tr.key in self._info:
                return [k.jpeg for k in sorted(self._info[tr.key].kept, key=lambda k: -k.sharpness)]
        return None

    def reset(self) -> None:
        """A new model: embeddings of the old one are not comparable with its own."""
        for tr in self.tracker.tracks:
            tr.appearance = tr.background = None
            if tr.key in self._info:
                info = self._info[tr.key]
                info.evidence = Evidence(self.config.decision)
                for k in info.kept:
                    k.embedding = np.zeros_like(k.embedding)


def _with_present(event: ObjectEvent, present: dict[str, int]) -> ObjectEvent:
    from dataclasses import replace

    return replace(event, present=present)
