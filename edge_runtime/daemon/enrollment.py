"""Enrollment on the device: from uploaded images or from a live camera region, with quality
gates per shot and figures per class, so a person knows when a class has enough examples.

Live enrollment `until="stable"` keeps capturing until the class's leave-one-out figures say it
has enough (`StopRule`), or a cap is reached; background frames of a camera region feed the
thresholds' calibration (background.py); a deleted class can be restored for
`enrollment.undo_s` seconds (its crops are kept in memory that long).
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from edgessl.edge_runtime.daemon.background import BackgroundStore
from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.errors import Conflict, DaemonError, NotFound, Rejected
from edgessl.edge_runtime.daemon.model import ModelService
from edgessl.edge_runtime.daemon.pipeline import crop
from edgessl.edge_runtime.daemon.storage import Storage
from edgessl.edge_runtime.daemon.streams import CameraStream, State
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.fewshot.crops import decode_crop
from edgessl.edge_runtime.fewshot.gallery import Gallery, GalleryStorageError
from edgessl.edge_runtime.fewshot.labels import label_key, normalize_label
from edgessl.edge_runtime.fewshot.quality import StopRule, check_shot, class_quality
from edgessl.errors import EdgesslError, GalleryError

T = TypeVar("T")


def checked_label(label: str) -> str:
    """The normalised label, or Rejected (422) saying what a valid label is."""
    try:
        return normalize_label(label)
    except GalleryError as exc:
        raise Rejected(str(exc)) from None


@dataclass
class _Deleted:
    label: str
    until: float  # monotonic deadline of the undo
    positives: list[bytes]
    negatives: list[bytes]


class Enrollment:
    """Adds and removes classes and exemplars in the daemon's gallery."""

    def __init__(self, config: DaemonConfig, models: ModelService, streams: dict[str, CameraStream],
                 stop: threading.Event, storage: Storage | None = None,
                 background: BackgroundStore | None = None) -> None:
        self.config = config
        self.models = models
        self.streams = streams
        self.gallery_path = config.gallery_path
        self._stop = stop
        self.storage = storage or Storage(config.state_dir, config.gallery_path, config.storage_reserve_bytes)
        self.background = background or BackgroundStore(config.state_dir / "background")
        self._deleted: dict[str, _Deleted] = {}  # label_key -> a deleted class that can be restored
        self._deleted_lock = threading.Lock()

    @contextmanager
    def _gallery(self, what: str) -> Iterator[Gallery]:
        """The gallery; a full or read-only filesystem becomes a typed error (507 / 503)."""
        try:
            with Gallery(self.gallery_path) as gallery:
                yield gallery
        except (GalleryStorageError, OSError) as exc:
            raise self.storage.translate(exc, what) or exc from exc

    def _freeing(self, what: str, change: Callable[[Gallery], T]) -> T:
        """Run a change that frees space (a deletion); when the disk is too full even for that,
        give up the storage reserve and try again. Afterwards the space goes back to the
        filesystem (WAL checkpoint, incremental vacuum) and the reserve is made again if it fits."""
        try:
            with self._gallery(what) as gallery:
                result = change(gallery)
        except DaemonError as exc:
            if exc.status != 507 or not self.storage.release_reserve():
                raise
            with self._gallery(what) as gallery:
                result = change(gallery)
        try:
            with Gallery(self.gallery_path) as gallery:
                gallery.compact()
        except EdgesslError:
            pass
        self.storage.make_reserve()
        return result

    def crop_side(self) -> int:
        """Longest side of a stored crop: enrollment.max_crop_side, else 4x the model input."""
        if self.config.enrollment.max_crop_side is not None:
            return self.config.enrollment.max_crop_side
        return 4 * max(self.models.current.extractor.spec.input_size)

    def find_stream(self, camera_id: str) -> CameraStream:
        try:
            return self.streams[camera_id]
        except KeyError:
            raise NotFound(f"no camera {camera_id!r}; cameras: {', '.join(self.streams) or '(none)'}") from None

    def _region(self, stream: CameraStream, name: str | None) -> RegionConfig:
        regions = stream.config.region_list
        if not regions:
            raise NotFound(f"camera {stream.id} has no regions (it tracks objects): enroll from one of its tracks "
                           "with POST /v1/tracks/{id}/enroll")
        if name is None:
            return regions[0]
        for r in regions:
            if r.name == name:
                return r
        raise NotFound(f"camera {stream.id} has no region {name!r}; regions: {', '.join(r.name for r in regions)}")

    def enroll_images(self, label: str, images: list[np.ndarray], *, negative: bool = False,
                      source: str | None = None) -> dict[str, Any]:
        """Embed and store `images` (crops are stored scaled down to `crop_side`). A label that
        differs from an enrolled one only in case or spacing enrolls into that class. `source`:
        what the images are views of when they are not independent shots (a track)."""
        label = checked_label(label)
        if not images:
            raise DaemonError(f"no images to enroll as {label!r}; give at least one")
        if not self.storage.gallery_writable:
            raise self.storage.read_only(f"cannot enroll {label!r}", self.gallery_path)
        side = self.crop_side()
        with self.models.use() as model, self._gallery(f"cannot enroll {label!r}") as gallery:
            label = gallery.find_class(label) or label
            added = gallery.add(label, images, model.extractor.embed(images), model.extractor.fingerprint,
                                negative=negative, max_side=side, source=source)
        return {"label": label, "added": added, "negative": negative, "quality": self.class_report(label)}

    def enroll_live(self, camera_id: str, label: str, *, region: str | None = None, frames: int | None = None,
                    negative: bool = False, interval_s: float | None = None,
                    timeout_s: float | None = None, until: str = "count",
                    max_frames: int | None = None) -> dict[str, Any]:
        """Capture shots of a region from the live camera, keep those that pass the quality
        gates, enroll them; the answer lists what was kept, why the others were not, and why it
        stopped. `until="count"` keeps `frames` shots; `until="stable"` keeps shots until the
        class's leave-one-out figures say it has enough (StopRule) or `max_frames` are kept."""
        label = checked_label(label)
        stream = self.find_stream(camera_id)
        reg = self._region(stream, region)
        cfg = self.config.enrollment
        _check_until(until, negative, frames)
        wanted = (max_frames or cfg.max_frames) if until == "stable" else (frames or cfg.frames)
        interval = cfg.interval_s if interval_s is None else interval_s
        deadline = time.monotonic() + (timeout_s or cfg.timeout_s)
        newest = stream.latest()
        if newest is None or stream.state != State.STREAMING:
            raise Conflict(f"camera {camera_id} is not streaming (state {stream.state}); enroll when it is")
        rule = StopRule(cfg.stable_min_exemplars, cfg.stable_margin, cfg.stable_patience) if until == "stable" else None
        if rule is not None:
            with self.models.use() as model, self._gallery("cannot read the gallery") as gallery:
                stored = gallery.find_class(label) or label
                labels, emb = gallery.embeddings(model.extractor.fingerprint)
                center = model.extractor.center
            label = stored
            known_labels, known_emb = list(labels), emb
            new_emb: list[np.ndarray] = []
        kept: list[np.ndarray] = []
        thumbs: list[np.ndarray] = []
        rejected: list[dict[str, Any]] = []
        stopped: tuple[str, str] | None = None
        seq, last_shot = newest.seq - 1, -1e9
        while len(kept) < wanted and stopped is None:
            if self._stop.is_set():
                stopped = ("stopping", "the daemon is stopping")
                break
            wait = last_shot + interval - time.monotonic()
            if wait > 0 and self._stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = ("timeout", f"gave up after {timeout_s or cfg.timeout_s:g} s (timeout_s)")
                break
            frame = stream.wait_newer(seq, left)
            if frame is None:
                if not self._stop.is_set():
                    stopped = ("timeout", f"no new frame from {camera_id} within the timeout "
                               f"({timeout_s or cfg.timeout_s:g} s)")
                continue
            seq, last_shot = frame.seq, time.monotonic()
            shot = np.ascontiguousarray(crop(frame.image, reg))
            check = check_shot(shot, cfg, thumbs)
            if not check.ok:
                rejected.append({"frame": frame.seq, **check.as_dict()})
                continue
            kept.append(shot)
            thumbs.append(check.thumbnail)
            if rule is not None:
                with self.models.use() as model:
                    new_emb.append(model.extractor.embed([shot])[0])
                stopped = self._judge(rule, label, known_labels, known_emb, new_emb, center)
        if stopped is None:
            stopped = ("cap", f"kept max_frames = {wanted} shots; the figures may still improve: enroll again "
                       "from another angle") if until == "stable" else ("count", f"kept the {wanted} shots asked for")
        reasons = Tally((r["reason"] or "").split(":")[0] for r in rejected)
        report: dict[str, Any] = {"camera": camera_id, "region": reg.name, "label": label, "negative": negative,
                                  "until": until, "wanted": wanted, "kept": len(kept), "rejected": len(rejected),
                                  "reasons": dict(reasons), "rejections": rejected[:20],
                                  "stopped": stopped[0], "stop_reason": stopped[1]}
        if rule is not None:
            report["progress"] = rule.history
        if not kept:
            raise Rejected(f"no shot of {camera_id}/{reg.name} passed the quality gates; nothing enrolled "
                           f"({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'no frames'})", report)
        result = self.enroll_images(label, kept, negative=negative)
        report.update(added=result["added"], complete=len(kept) >= wanted or stopped[0] in ("stable", "no_gain"),
                      quality=result["quality"])
        return report

    @staticmethod
    def _judge(rule: StopRule, label: str, known_labels: list[str], known_emb: np.ndarray,
               new_emb: list[np.ndarray], center: np.ndarray | None) -> tuple[str, str] | None:
        """The stop rule on the class's figures with the shots kept so far (not yet stored)."""
        new = np.stack(new_emb).astype(np.float32)
        emb = np.concatenate([known_emb, new]) if len(known_labels) else new
        labels = known_labels + [label] * len(new)
        mine = next(q for q in class_quality(labels, emb, center, thresholds=()) if q.label == label)
        return rule.update(mine.exemplars, mine.loo_accuracy, mine.margin)

    def capture_background(self, camera_id: str, *, region: str | None = None, frames: int | None = None,
                           interval_s: float | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """Sample what a camera region sees when nothing enrolled is there and store it as that
        region's background (replacing an earlier one); the thresholds are recalibrated with it."""
        stream = self.find_stream(camera_id)
        reg = self._region(stream, region)
        cfg = self.config.enrollment
        wanted = frames or cfg.background_frames
        interval = cfg.interval_s if interval_s is None else interval_s
        deadline = time.monotonic() + (timeout_s or cfg.timeout_s)
        newest = stream.latest()
        if newest is None or stream.state != State.STREAMING:
            raise Conflict(f"camera {camera_id} is not streaming (state {stream.state}); sample its background "
                           "when it is")
        if not self.storage.state_writable:
            raise self.storage.read_only(f"cannot store the background of {camera_id}", self.config.state_dir)
        shots: list[np.ndarray] = []
        seq = newest.seq - 1
        while len(shots) < wanted and not self._stop.is_set():
            left = deadline - time.monotonic()
            frame = stream.wait_newer(seq, left) if left > 0 else None
            if frame is None:
                break
            seq = frame.seq
            shots.append(np.ascontiguousarray(crop(frame.image, reg)))
            if len(shots) < wanted and self._stop.wait(interval):
                break
        if not shots:
            raise Conflict(f"no frame from {camera_id} within {timeout_s or cfg.timeout_s:g} s; nothing stored")
        with self.models.use() as model:
            emb = model.extractor.embed(shots)
            fingerprint = model.extractor.fingerprint
        try:
            stored = self.background.save(camera_id, reg.name, shots, emb, fingerprint, max_side=self.crop_side())
        except OSError as exc:
            raise self.storage.translate(exc, f"cannot store the background of {camera_id}") or exc from exc
        return {"camera": camera_id, "region": reg.name, "frames": stored, "complete": stored >= wanted,
                "background": self.background.status(), "classes": self.class_report()}

    def clear_background(self, camera_id: str, region: str | None = None) -> dict[str, Any]:
        stream = self.find_stream(camera_id)
        name = self._region(stream, region).name if region is not None else None
        try:
            removed = self.background.clear(camera_id, name)
        except OSError as exc:
            raise self.storage.translate(exc, f"cannot remove the background of {camera_id}") or exc from exc
        return {"camera": camera_id, "region": name, "removed": removed, "background": self.background.status()}

    def forget(self, label: str) -> tuple[str, int]:
        """Remove the class `label` names (exactly, or up to case and spacing); works on a full
        disk (see `_freeing`). Its crops are kept in memory for `enrollment.undo_s` seconds, so
        that `restore` can bring it back. Returns (the stored label, exemplars removed)."""
        kept: dict[str, list[bytes]] = {"pos": [], "neg": []}

        def remove(gallery: Gallery) -> tuple[str, int]:
            stored = gallery.find_class(label)
            if stored is None:
                known = [c.label for c in gallery.classes()]
                raise NotFound(f"no class {label!r} in the gallery; classes: "
                               f"{', '.join(map(repr, known)) or '(none)'}")
            kept["pos"], kept["neg"] = [], []
            for e in gallery.exemplars(stored):
                kept["neg" if e.negative else "pos"].append(gallery.crop(e.id))
            return stored, gallery.forget(stored)

        stored, removed = self._freeing(f"cannot delete class {label!r}", remove)
        undo_s = self.config.enrollment.undo_s
        if undo_s > 0:
            with self._deleted_lock:
                now = time.monotonic()
                for key in [k for k, d in self._deleted.items() if d.until <= now]:
                    del self._deleted[key]
                self._deleted[label_key(stored)] = _Deleted(stored, now + undo_s, kept["pos"], kept["neg"])
                while len(self._deleted) > 8:  # bounded memory: the oldest deletions go first
                    del self._deleted[next(iter(self._deleted))]
        return stored, removed

    def restore(self, label: str) -> dict[str, Any]:
        """Bring back a class deleted less than `enrollment.undo_s` seconds ago (its crops are
        embedded again by the running model)."""
        key = label_key(label)
        with self._deleted_lock:
            deleted = self._deleted.get(key)
            if deleted is None or deleted.until <= time.monotonic():
                self._deleted.pop(key, None)
                raise NotFound(f"no deleted class {label!r} to restore: a deletion can be undone for "
                               f"{self.config.enrollment.undo_s:g} s (enrollment.undo_s)")
            del self._deleted[key]
        added = 0
        try:
            for blobs, negative in ((deleted.positives, False), (deleted.negatives, True)):
                if blobs:
                    added += self.enroll_images(deleted.label, [decode_crop(b) for b in blobs],
                                                negative=negative)["added"]
        except BaseException:
            with self._deleted_lock:  # not restored: try again within the window
                self._deleted.setdefault(key, deleted)
            raise
        return {"label": deleted.label, "restored": added, "quality": self.class_report(deleted.label)}

    def class_report(self, label: str | None = None) -> list[dict[str, Any]]:
        """Per class: exemplars, negatives, leave-one-out accuracy, nearest confusable class,
        advice, and the ids of the exemplars (for thumbnails)."""
        c = self.config.classifier
        with self.models.use() as model:
            with self._gallery("cannot read the gallery") as gallery:
                counts = {c.label: (c.exemplars, c.negatives) for c in gallery.classes()}
                labels, emb = gallery.embeddings(model.extractor.fingerprint)
                exemplars = gallery.exemplars(label)
                background = self.background.embeddings(model.extractor) if labels and c.calibrate else None
                # The thresholds the inference loop uses: the same classifier on the same gallery
                # (cohort, background, negatives and sources included).
                thresholds = FewShotClassifier(model.extractor, gallery, c.threshold, calibrated=c.calibrate,
                                               background=background, reembed=False).thresholds()
        report = class_quality(labels, emb, model.extractor.center, counts, thresholds=thresholds,
                               background=background, fallback=c.threshold)
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
        with self._gallery("cannot read the gallery") as gallery:
            try:
                return gallery.crop(exemplar_id)
            except EdgesslError as exc:
                raise NotFound(str(exc)) from None

    def remove_exemplar(self, exemplar_id: int) -> None:
        def remove(gallery: Gallery) -> None:
            try:
                gallery.remove_exemplar(exemplar_id)
            except GalleryStorageError:
                raise
            except EdgesslError as exc:
                raise NotFound(str(exc)) from None

        self._freeing(f"cannot remove exemplar {exemplar_id}", remove)


def _check_until(until: str, negative: bool, frames: int | None) -> None:
    if until not in ("count", "stable"):
        raise Rejected(f"until must be 'count' or 'stable', got {until!r}")
    if until == "stable" and negative:
        raise Rejected("until='stable' follows the leave-one-out figures of positive shots; "
                       "enroll negatives with a number of frames")
    if until == "stable" and frames is not None:
        raise Rejected("give either frames (until='count') or max_frames (until='stable'), not frames with "
                       "until='stable'")
