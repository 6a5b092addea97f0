"""Enrollment on the device: from uploaded images or from a live camera region, with quality
gates per shot and figures per class, so a person knows when a class has enough examples."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.errors import Conflict, DaemonError, NotFound, Rejected
from edgessl.edge_runtime.daemon.model import ModelService
from edgessl.edge_runtime.daemon.pipeline import crop
from edgessl.edge_runtime.daemon.storage import Storage
from edgessl.edge_runtime.daemon.streams import CameraStream, State
from edgessl.edge_runtime.fewshot.calibration import ClassThreshold
from edgessl.edge_runtime.fewshot.gallery import Gallery, GalleryStorageError, normalize_label
from edgessl.edge_runtime.fewshot.quality import check_shot, class_quality
from edgessl.errors import EdgesslError, GalleryError

T = TypeVar("T")


def checked_label(label: str) -> str:
    """The normalised label, or Rejected (422) saying what a valid label is."""
    try:
        return normalize_label(label)
    except GalleryError as exc:
        raise Rejected(str(exc)) from None


class Enrollment:
    """Adds and removes classes and exemplars in the daemon's gallery."""

    def __init__(self, config: DaemonConfig, models: ModelService, streams: dict[str, CameraStream],
                 stop: threading.Event, storage: Storage | None = None) -> None:
        self.config = config
        self.models = models
        self.streams = streams
        self.gallery_path = config.gallery_path
        self._stop = stop
        self.storage = storage or Storage(config.state_dir, config.gallery_path, config.storage_reserve_bytes)

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

    def _find_stream(self, camera_id: str) -> CameraStream:
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

    def enroll_images(self, label: str, images: list[np.ndarray], *, negative: bool = False) -> dict[str, Any]:
        """Embed and store `images` (crops are stored scaled down to `crop_side`). A label that
        differs from an enrolled one only in case or spacing enrolls into that class."""
        label = checked_label(label)
        if not images:
            raise DaemonError(f"no images to enroll as {label!r}; give at least one")
        if not self.storage.gallery_writable:
            raise self.storage.read_only(f"cannot enroll {label!r}", self.gallery_path)
        side = self.crop_side()
        with self.models.use() as model, self._gallery(f"cannot enroll {label!r}") as gallery:
            label = gallery.find_class(label) or label
            added = gallery.add(label, images, model.extractor.embed(images), model.extractor.fingerprint,
                                negative=negative, max_side=side)
        return {"label": label, "added": added, "negative": negative, "quality": self.class_report(label)}

    def enroll_live(self, camera_id: str, label: str, *, region: str | None = None, frames: int | None = None,
                    negative: bool = False, interval_s: float | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """Capture shots of a region from the live camera, keep those that pass the quality
        gates, enroll them; the answer lists what was kept and why the others were not."""
        label = checked_label(label)
        stream = self._find_stream(camera_id)
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

    def forget(self, label: str) -> tuple[str, int]:
        """Remove the class `label` names (exactly, or up to case and spacing); works on a full
        disk (see `_freeing`). Returns (the stored label, exemplars removed)."""
        def remove(gallery: Gallery) -> tuple[str, int]:
            stored = gallery.find_class(label)
            if stored is None:
                known = [c.label for c in gallery.classes()]
                raise NotFound(f"no class {label!r} in the gallery; classes: "
                               f"{', '.join(map(repr, known)) or '(none)'}")
            return stored, gallery.forget(stored)

        return self._freeing(f"cannot delete class {label!r}", remove)

    def class_report(self, label: str | None = None) -> list[dict[str, Any]]:
        """Per class: exemplars, negatives, leave-one-out accuracy, nearest confusable class,
        advice, and the ids of the exemplars (for thumbnails)."""
        model = self.models.current
        with self._gallery("cannot read the gallery") as gallery:
            counts = {c.label: (c.exemplars, c.negatives) for c in gallery.classes()}
            labels, emb = gallery.embeddings(model.extractor.fingerprint)
            exemplars = gallery.exemplars(label)
        c = self.config.classifier
        # The thresholds the inference loop uses: calibrated from the same gallery, or the global one.
        thresholds = None if c.calibrate else [
            ClassThreshold(label, c.threshold, 1.0, False, "calibration off: the global threshold")
            for label in sorted(counts)]
        report = class_quality(labels, emb, model.extractor.center, counts, thresholds=thresholds,
                               fallback=c.threshold)
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
