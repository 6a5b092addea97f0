"""Collection on the frame path: the sampler and the drift monitor (edge_runtime/samples) for the daemon.

The pipeline hands over, once the embeddings of a pass exist, each region crop (its crop,
embedding row, scores row and smoothed decision) and each object track that left (its sharpest
kept crop with its embedding, and its final label); `Collection` offers them to the sampler of
the cameras that sample, feeds every embedding to the drift monitor, counts what happened in
the metrics, and publishes drift events (and kept samples, for the page) on the event hub.

Nothing runs until `open()` (the daemon calls it at start). With no camera sampling, region
crops are not embedded for it, no JPEG is encoded and no SQL runs per crop: only the drift
monitor sees the embeddings that exist anyway (one O(D) update per camera and pass).

Threads: the inference loop calls `sync`, `regions` and `tracks`; the API's routes call `page`,
`jpeg`, `archive_rows` and `ack` from worker threads (the store serialises them with a lock,
reading the archive in short batches); `status` never waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.errors import NotFound
from edgessl.edge_runtime.daemon.metrics import Metrics
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.objects.stage import EndedTrack
from edgessl.edge_runtime.samples.drift import DriftMonitor
from edgessl.edge_runtime.samples.sampler import Candidate, Sampler, Verdict
from edgessl.edge_runtime.samples.store import Acked, SampleInfo, SampleStore, SampleStoreError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.smoothing import Decision
    from edgessl.edge_runtime.daemon.streams import CapturedFrame
    from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier

log = logging.getLogger(__name__)


def gallery_embeddings(classifier: FewShotClassifier) -> np.ndarray | None:
    """The gallery's exemplars (positive and negative) as the running model embeds them, centred and
    normalised like the queries: what the server has already, for the sampler's novelty."""
    fingerprint = classifier.extractor.fingerprint
    rows = [m for m in (classifier.gallery.embeddings(fingerprint)[1],
                        classifier.gallery.embeddings(fingerprint, negative=True)[1]) if m.size]
    return center_normalize(np.concatenate(rows), classifier.extractor.center) if rows else None


class Collection:
    def __init__(self, config: DaemonConfig, metrics: Metrics,
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._publish = publish
        self.sampling = {c.id: c.sampling for c in config.cameras if c.enabled and c.sampling is not None}
        self.store_path = config.samples_path
        self.store: SampleStore | None = None
        self.sampler: Sampler | None = None
        self.drift: DriftMonitor | None = None
        self.error: str | None = None  # why sampling is off although configured
        self._classifier: object = None
        self._revision: object = None

    @property
    def embeds_regions(self) -> bool:
        """Region crops must be embedded even with no class enrolled: a camera samples its regions."""
        return self.sampler is not None and any(c.regions for c in self.sampling.values() if c is not None)

    def open(self, crop_side: int | None = None) -> None:
        """Open the store (when a camera samples, or samples are left to harvest) and the drift
        monitor. A store that cannot be opened turns sampling off, with the reason in /health."""
        cfg = self.config
        if cfg.drift.enabled:
            self.drift = DriftMonitor(cfg.state_dir / "drift.json", cfg.drift)
        if not self.sampling and not self.store_path.exists():
            return
        try:
            self.store = SampleStore(self.store_path, cfg.samples.quota_bytes)
        except SampleStoreError as exc:
            self.error = str(exc)
            log.error("sampling is off: %s", exc)
            return
        if self.sampling:
            self.sampler = Sampler(self.store, self.sampling, max_side=crop_side)
            log.info("sampling on cameras %s into %s (quota %d bytes)", ", ".join(self.sampling),
                     self.store_path, cfg.samples.quota_bytes)
        self._gauges()

    def close(self) -> None:
        if self.drift is not None:
            self.drift.save()
        if self.store is not None:
            self.store.close()

    # -- the frame path (the inference loop's thread) -----------------------------------------

    def sync(self, classifier: FewShotClassifier, model_tag: str) -> None:
        """Once per pass, before `regions` and `tracks`: a new classifier is a new model generation
        (drift: that model's reference; sampler: its samples); a new gallery revision refreshes the
        sampler's exemplars."""
        if classifier is not self._classifier:
            self._classifier, self._revision = classifier, None
            if self.drift is not None:
                self.drift.reset(model_tag)
        if self.sampler is not None:
            revision = classifier.revision
            if revision != self._revision:
                self._revision = revision
                self.sampler.reset(model_tag, gallery_embeddings(classifier))

    def regions(self, owners: Sequence[tuple[CapturedFrame, RegionConfig]], crops: Sequence[np.ndarray],
                embeddings: np.ndarray, labels: Sequence[str], scores: np.ndarray,
                decisions: Sequence[Decision], model_tag: str) -> None:
        """The region crops of a pass: every embedding to the drift monitor, and each crop of a
        camera that samples its regions offered to the sampler."""
        if self.drift is not None:
            by_camera: dict[str, list[int]] = {}
            for i, (frame, _) in enumerate(owners):
                by_camera.setdefault(frame.camera, []).append(i)
            for camera, rows in by_camera.items():
                self._drift(camera, embeddings[rows])
        if self.sampler is None:
            return
        for i, ((frame, region), decision) in enumerate(zip(owners, decisions, strict=True)):
            if self.sampler.enabled(frame.camera, "region"):
                self._offer(Candidate(frame.camera, "region", region.name, embeddings[i], labels, scores[i],
                                      decision.label, model_tag, frame.captured_at, crop=crops[i]))

    def tracks(self, camera: str, ended: Sequence[EndedTrack], classifier: FewShotClassifier,
               model_tag: str) -> None:
        """Object tracks that left: ONE sample per track, its sharpest kept crop with its final label."""
        for track in ended:
            if track.jpeg is None or track.embedding is None or not np.any(track.embedding):
                continue  # no whole view kept, or embedded by the previous model
            emb = np.asarray(track.embedding, np.float32)
            if self.drift is not None:
                self._drift(camera, emb[None])
            if self.sampler is not None and self.sampler.enabled(camera, "track"):
                table = classifier.score_queries(emb[None])
                self._offer(Candidate(camera, "track", str(track.id), emb, table.labels, table.scores[0],
                                      track.label, model_tag, track.last_seen, jpeg=track.jpeg))

    def _offer(self, candidate: Candidate) -> Verdict:
        assert self.sampler is not None
        verdict = self.sampler.offer(candidate)
        camera = candidate.camera
        if verdict.kept:
            self.metrics.samples_kept.labels(camera, verdict.reason).inc()
        elif verdict.reason != "off":
            self.metrics.samples_rejected.labels(camera, verdict.reason).inc()
        for _, evicted_from in verdict.evicted:
            self.metrics.samples_rejected.labels(evicted_from, "quota_evicted").inc()
        if verdict.kept:
            self._gauges()
            log.debug("sample %d kept from %s/%s: %s", verdict.sample_id, camera, candidate.ref, verdict.reason)
            if self._publish is not None:
                self._publish({"type": "sample", "id": verdict.sample_id, "camera": camera,
                               "source": candidate.source, "ref": candidate.ref, "reason": verdict.reason})
        return verdict

    def _drift(self, camera: str, embeddings: np.ndarray) -> None:
        assert self.drift is not None
        event = self.drift.update(camera, embeddings)
        score = self.drift.score(camera)
        if score is not None:
            self.metrics.drift.labels(camera).set(score)
        if event is not None and self._publish is not None:
            self._publish(event)

    def _gauges(self) -> None:
        if self.store is not None:
            status = self.store.status()
            self.metrics.samples_bytes.set(status["bytes"])
            self.metrics.samples_stored.set(status["stored"])

    # -- the harvest (the API's threads) -------------------------------------------------------

    def page(self, after: int, limit: int) -> dict[str, Any]:
        """Metadata of the samples after id `after`, ascending, with the store's figures."""
        rows = self.store.page(after, limit) if self.store is not None else []
        status = self.store.status() if self.store is not None else {"stored": 0, "bytes": 0}
        return {"samples": [r.as_dict() for r in rows], "next_after": rows[-1].id if rows else after,
                "stored": status["stored"], "bytes": status["bytes"],
                "quota_bytes": self.config.samples.quota_bytes}

    def jpeg(self, sample_id: int) -> bytes:
        data = self.store.jpeg(sample_id) if self.store is not None else None
        if data is None:
            raise NotFound(f"no sample {sample_id} (harvested, evicted to make room, or never kept; "
                           "GET /v1/samples lists them)")
        return data

    def archive_rows(self, after: int, limit: int) -> tuple[int, Iterator[tuple[SampleInfo, bytes]]]:
        """(the last id the archive will hold, or `after`; its samples with their JPEGs, read lazily).
        Samples evicted or acknowledged while the archive streams are left out."""
        if self.store is None:
            return after, iter(())
        rows = self.store.page(after, limit)
        if not rows:
            return after, iter(())
        return rows[-1].id, self.store.iter_with_jpeg(after, limit, until_id=rows[-1].id)

    def ack(self, acks: Mapping[int, str]) -> Acked:
        """Delete the samples the server has, where their sha256 matches (SampleStorageError: read-only or full)."""
        if self.store is None:
            return Acked([], [], sorted(acks))
        result = self.store.delete_acked(acks)
        self._gauges()
        if result.deleted or result.mismatched:
            log.info("samples acknowledged: %d deleted, %d with another sha256 kept, %d missing",
                     len(result.deleted), len(result.mismatched), len(result.missing))
        return result

    def status(self) -> dict[str, Any]:
        """For /health: whether a camera samples, the store's figures, kept counts per camera, drift."""
        sampler = self.sampler
        cameras = {cam: {"kept": sampler.kept_counts[cam], "last_hour": sampler.kept_last(cam, 3600),
                         "last_day": sampler.kept_last(cam, 86_400)} for cam in self.sampling} if sampler else {}
        return {"enabled": sampler is not None, "error": self.error,
                "store": self.store.status() if self.store is not None else None, "cameras": cameras,
                "drift": self.drift.status() if self.drift is not None else None}
