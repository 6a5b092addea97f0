"""Enrollment on the device: from uploaded images or from a live camera region, with quality
gates per shot and figures per class, so a person knows when a class has enough examples."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from typing import Any

import numpy as np

from edgessl.edge_runtime.daemon.config import DaemonConfig, RegionConfig
from edgessl.edge_runtime.daemon.errors import Conflict, DaemonError, NotFound, Rejected
from edgessl.edge_runtime.daemon.model import ModelService
from edgessl.edge_runtime.daemon.pipeline import crop
from edgessl.edge_runtime.daemon.streams import CameraStream, State
from edgessl.edge_runtime.fewshot.calibration import ClassThreshold
from edgessl.edge_runtime.fewshot.gallery import Gallery, validate_label
from edgessl.edge_runtime.fewshot.quality import check_shot, class_quality
from edgessl.errors import EdgesslError


class Enrollment:
    """Adds and removes classes and exemplars in the daemon's gallery."""

    def __init__(self, config: DaemonConfig, models: ModelService, streams: dict[str, CameraStream],
                 stop: threading.Event) -> None:
        self.config = config
        self.models = models
        self.streams = streams
        self.gallery_path = config.gallery_path
        self._stop = stop

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
        validate_label(label)
        if not images:
            raise DaemonError(f"no images to enroll as {label!r}; give at least one")
        with self.models.use() as model, Gallery(self.gallery_path) as gallery:
            added = gallery.add(label, images, model.extractor.embed(images), model.extractor.fingerprint,
                                negative=negative)
        return {"label": label, "added": added, "negative": negative, "quality": self.class_report(label)}

    def enroll_live(self, camera_id: str, label: str, *, region: str | None = None, frames: int | None = None,
                    negative: bool = False, interval_s: float | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """Capture shots of a region from the live camera, keep those that pass the quality
        gates, enroll them; the answer lists what was kept and why the others were not."""
        validate_label(label)
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

    def forget(self, label: str) -> int:
        with Gallery(self.gallery_path) as gallery:
            if label not in {c.label for c in gallery.classes()}:
                raise NotFound(f"no class {label!r} in the gallery")
            return gallery.forget(label)

    def class_report(self, label: str | None = None) -> list[dict[str, Any]]:
        """Per class: exemplars, negatives, leave-one-out accuracy, nearest confusable class,
        advice, and the ids of the exemplars (for thumbnails)."""
        model = self.models.current
        with Gallery(self.gallery_path) as gallery:
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
