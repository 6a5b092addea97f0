"""Which crops are worth sending to the server: the sampler in front of the sample store.

Each offer goes through these checks, cheapest first, and stops at the first that says no:

1. sampling is off for the camera or for this source: ignored ("off", not counted);
2. the same region or track was looked at less than `min_interval_s` ago ("interval"):
   consecutive frames are near copies, and this bounds the work per camera;
3. the camera kept `per_hour` samples in the last hour ("rate_hour") or `per_day` in the last
   24 hours ("rate_day"); the times come from the store at start, so a restart (or a harvest)
   does not reset them, and are kept in memory after;
4. worth keeping? Its novelty is 1 - the highest cosine to every gallery exemplar and every
   sample kept for this model. Below `duplicate` it is a near copy of something the server has
   or will have ("duplicate"), whatever else it is. Else it is kept when the decision is unknown
   ("unknown"), when the two best classes are within `low_margin` ("low_margin": the classifier
   hesitates), or when its novelty reaches `novelty` ("novel"); else "not_worth".

Novelty against everything kept so far is online k-center greedy: a crop is kept when it is far
from every centre so far, so the samples cover what the camera sees instead of piling up where
it looks most of the time. Only a kept crop is JPEG-encoded and stored.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgessl.edge_runtime.fewshot.crops import encode_crop
from edgessl.edge_runtime.fewshot.labels import UNKNOWN
from edgessl.edge_runtime.samples.config import SamplingConfig
from edgessl.edge_runtime.samples.store import SampleStore, SampleStoreError
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

HOUR, DAY = 3600.0, 86_400.0
IN_MEMORY = 4096  # newest kept embeddings compared against (bounds memory and the cost of an offer)
_LOOKED_MAX = 10_000  # (camera, source, ref) entries before old ones are dropped (one per track)


@dataclass(frozen=True)
class Candidate:
    """A crop offered to the sampler, with what the classifier made of it."""

    camera: str
    source: str  # "region" or "track"
    ref: str  # region name, or track id as text
    embedding: np.ndarray  # (D,) centred and L2-normalised, as the classifier uses it
    labels: Sequence[str]  # (C,) the enrolled classes
    scores: np.ndarray  # (C,) this crop's score for each
    label: str | None  # the decision: a class, "unknown", or None (not decided yet)
    model: str  # tag of the model that made the embedding
    time: float  # wall clock of the frame's capture
    crop: np.ndarray | None = None  # BGR; encoded only when kept
    jpeg: bytes | None = None  # ... or already encoded (a track's kept crop)

    def __post_init__(self) -> None:
        if self.crop is None and self.jpeg is None:
            raise ValueError("a candidate needs its crop (BGR) or its JPEG")
        if len(np.asarray(self.scores).ravel()) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {np.asarray(self.scores).size} scores")


@dataclass(frozen=True)
class Verdict:
    kept: bool
    reason: str  # kept: novel, low_margin, unknown; else off, interval, rate_hour, rate_day, duplicate,
    # not_worth, no_embedding, encode, too_large, storage
    sample_id: int | None = None
    novelty: float | None = None
    evicted: tuple[tuple[int, str], ...] = ()  # (id, camera) evicted from the store to make room


def _rows(matrix: np.ndarray | None) -> np.ndarray:
    """Rows L2-normalised (a zero row stays zero); (0, 0) for nothing."""
    if matrix is None or np.asarray(matrix).size == 0:
        return np.zeros((0, 0), np.float32)
    m = np.asarray(matrix, np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


class Sampler:
    """`offer(candidate)` -> Verdict, for the cameras whose `configs` entry is not None."""

    def __init__(self, store: SampleStore, configs: Mapping[str, SamplingConfig | None], *,
                 max_side: int | None = None, now: float | None = None) -> None:
        self.store = store
        self.configs = {cam: c for cam, c in configs.items() if c is not None}
        self.max_side = max_side  # longest side of a stored crop
        now = time.time() if now is None else now
        self._kept = {cam: deque(store.kept_times(cam, now - DAY)) for cam in self.configs}
        self._looked: dict[tuple[str, str, str], float] = {}
        self.model: str | None = None
        self._gallery = np.zeros((0, 0), np.float32)
        self._samples = np.zeros((0, 0), np.float32)
        self.kept_counts: Counter[str] = Counter()  # kept by this process, per camera
        self._last_warning = 0.0

    def enabled(self, camera: str, source: str | None = None) -> bool:
        cfg = self.configs.get(camera)
        return cfg is not None and (source is None or (cfg.regions if source == "region" else cfg.tracks))

    def reset(self, model: str, gallery: np.ndarray | None = None) -> None:
        """A new model, or the gallery changed: compare against `gallery` (its exemplars' embeddings
        by this model, centred) and the samples kept for `model`."""
        self.model = model
        self._gallery = _rows(gallery)
        _, kept = self.store.embeddings(model, IN_MEMORY)
        self._samples = _rows(kept)

    def kept_last(self, camera: str, seconds: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for t in list(self._kept.get(camera, ())) if t >= now - seconds)

    # -- the checks ---------------------------------------------------------------------------

    def offer(self, c: Candidate, now: float | None = None) -> Verdict:
        """Keep `c` or say why not; `now` is the clock of the limits (default: its capture time)."""
        if not self.enabled(c.camera, c.source):
            return Verdict(False, "off")
        cfg = self.configs[c.camera]
        now = c.time if now is None else now
        key = (c.camera, c.source, c.ref)
        if now - self._looked.get(key, -np.inf) < cfg.min_interval_s:
            return Verdict(False, "interval")
        self._looked[key] = now
        if len(self._looked) > _LOOKED_MAX:
            self._forget_looked(now)
        limited = self._rate(c.camera, cfg, now)
        if limited is not None:
            return Verdict(False, limited)
        if c.model != self.model:  # not reset for this model (the daemon resets before offering)
            self.reset(c.model)
        emb = _rows(np.asarray(c.embedding, np.float32).reshape(1, -1))[0]
        if not emb.any():
            return Verdict(False, "no_embedding")
        novelty = self._novelty(emb)
        if novelty < cfg.duplicate:
            return Verdict(False, "duplicate", novelty=novelty)
        nearest, score, margin = _figures(c.labels, c.scores)
        unknown = c.label is None or c.label == UNKNOWN
        if cfg.keep_unknown and unknown:
            reason = "unknown"
        elif margin is not None and margin < cfg.low_margin:
            reason = "low_margin"
        elif novelty >= cfg.novelty:
            reason = "novel"
        else:
            return Verdict(False, "not_worth", novelty=novelty)
        return self._keep(c, emb, reason, novelty, None if unknown else c.label, nearest, score, margin, now)

    def _rate(self, camera: str, cfg: SamplingConfig, now: float) -> str | None:
        kept = self._kept[camera]
        while kept and kept[0] < now - DAY:
            kept.popleft()
        hour = 0
        for t in reversed(kept):
            if t < now - HOUR:
                break
            hour += 1
        if hour >= cfg.per_hour:
            return "rate_hour"
        return "rate_day" if len(kept) >= cfg.per_day else None

    def _novelty(self, emb: np.ndarray) -> float:
        best = -1.0
        for matrix in (self._gallery, self._samples):
            if len(matrix) and matrix.shape[1] == len(emb):
                best = max(best, float((matrix @ emb).max()))
        return float(np.clip(1.0 - best, 0.0, 2.0)) if best > -1.0 else 1.0

    def _forget_looked(self, now: float) -> None:
        longest = max(c.min_interval_s for c in self.configs.values())
        self._looked = {k: t for k, t in self._looked.items() if now - t < longest}

    # -- keeping ------------------------------------------------------------------------------

    def _keep(self, c: Candidate, emb: np.ndarray, reason: str, novelty: float, label: str | None,
              nearest: str | None, score: float | None, margin: float | None, now: float) -> Verdict:
        try:
            jpeg = c.jpeg if c.jpeg is not None else encode_crop(c.crop, self.max_side)
        except EdgesslError as exc:
            log.info("sample of %s/%s not kept: %s", c.camera, c.ref, exc)
            return Verdict(False, "encode", novelty=novelty)
        if len(jpeg) > self.store.quota_bytes:
            return Verdict(False, "too_large", novelty=novelty)
        try:
            added = self.store.add(camera=c.camera, source=c.source, ref=c.ref, time=c.time, model=c.model,
                                   reason=reason, jpeg=jpeg, embedding=emb, label=label, nearest=nearest,
                                   score=score, margin=margin, novelty=novelty)
        except SampleStoreError as exc:  # a full or read-only disk: nothing stored is lost
            if time.monotonic() - self._last_warning > 60:  # and the log is not flooded
                self._last_warning = time.monotonic()
                log.warning("sample not kept: %s", exc)
            return Verdict(False, "storage", novelty=novelty)
        self._kept[c.camera].append(now)
        self.kept_counts[c.camera] += 1
        if self._samples.size == 0 or self._samples.shape[1] != len(emb):
            self._samples = emb[None, :].copy()
        else:
            self._samples = np.concatenate([self._samples[-(IN_MEMORY - 1):], emb[None, :]])
        return Verdict(True, reason, added.id, novelty, tuple(added.evicted))


def _figures(labels: Sequence[str], scores: np.ndarray) -> tuple[str | None, float | None, float | None]:
    """(nearest class, its score, margin to the second best) of one scores row; None where undefined."""
    row = np.asarray(scores, np.float32).ravel()
    if not len(row):
        return None, None, None
    order = np.argsort(row)[::-1]
    best = float(row[order[0]])
    margin = best - float(row[order[1]]) if len(row) >= 2 else None
    return labels[int(order[0])], best, margin
