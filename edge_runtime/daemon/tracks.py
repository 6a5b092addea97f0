"""Objects and tracks as the API shows them, and enrollment from a track.

A live track's crops are in memory (the objects stage keeps them); an ended one's in the track
store (state_dir/tracks), until it expires. Enrolling from a track ("that is Rex") takes its best
diverse crops: the sharpest first, then each next one the least like those taken (farthest
point, on the running model's embeddings), so one pass of an object gives several views for
free. Rejecting a track ("not Rex") adds all its crops as negative examples of the class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgessl.edge_runtime.daemon.enrollment import Enrollment, checked_label
from edgessl.edge_runtime.daemon.errors import NotFound
from edgessl.edge_runtime.daemon.pipeline import Pipeline
from edgessl.edge_runtime.daemon.streams import CameraStream
from edgessl.edge_runtime.fewshot.crops import decode_crop
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.objects.store import TrackStore

ENROLL_CROPS = 5  # crops enrolled from a track by default


def diverse(embeddings: np.ndarray, k: int) -> list[int]:
    """Indices of k rows, the first row first, then each the farthest (least cosine) from those taken."""
    n = len(embeddings)
    if n == 0 or k <= 0:
        return []
    chosen = [0]
    closest = embeddings @ embeddings[0]
    while len(chosen) < min(k, n):
        closest[chosen] = np.inf
        nxt = int(np.argmin(closest))
        chosen.append(nxt)
        closest = np.maximum(closest, embeddings @ embeddings[nxt])
    return chosen


class TrackService:
    def __init__(self, pipeline: Pipeline, store: TrackStore | None, enrollment: Enrollment,
                 streams: dict[str, CameraStream]) -> None:
        self.pipeline = pipeline
        self.store = store
        self.enrollment = enrollment
        self.streams = streams

    def objects(self, camera_id: str) -> dict[str, Any]:
        stream = self.enrollment.find_stream(camera_id)
        stage = self.pipeline.stages.get(camera_id)
        if stage is None:
            raise NotFound(f"camera {camera_id} does not track objects; add `objects: {{}}` to its entry in the "
                           "config (see `edgessl config schema`)")
        status = stream.status()
        return {"camera": camera_id, "frame_size": status.frame_size, "zones": [z.model_dump() for z in
                                                                               stage.zones.zones],
                "objects": stage.objects(), "frames": stage.frames}

    def recent(self, limit: int = 50, camera: str | None = None) -> list[dict[str, Any]]:
        """Live objects first, then ended tracks from the store, newest first."""
        if camera is not None:
            self.enrollment.find_stream(camera)
        live = [{**o, "camera": cid, "live": True} for cid, stage in self.pipeline.stages.items()
                if camera in (None, cid) for o in stage.objects()]
        live.sort(key=lambda o: -o["id"])
        seen = {o["id"] for o in live}
        stored = [{**m, "live": False} for m in (self.store.recent(limit + len(seen), camera) if self.store else [])
                  if m["id"] not in seen]
        return (live + stored)[:limit]

    def get(self, track_id: int) -> dict[str, Any]:
        live = self._live(track_id)
        meta = live or (self.store.meta(track_id) if self.store is not None and track_id in self.store else None)
        if meta is None:
            raise self._missing(track_id)
        crops = [c.name for c in self.store.crops(track_id)] if self.store is not None else []
        return {**meta, "live": live is not None,
                "crop_urls": [f"/v1/tracks/{track_id}/crops/{name}" for name in crops]}

    def _live(self, track_id: int) -> dict[str, Any] | None:
        for cid, stage in self.pipeline.stages.items():
            for o in stage.objects():
                if o["id"] == track_id:
                    return {**o, "camera": cid}
        return None

    def _missing(self, track_id: int) -> NotFound:
        if self.store is None:
            return NotFound(f"no track {track_id}: no camera of this daemon tracks objects")
        oldest = self.store.oldest_kept()
        if oldest is not None and track_id < oldest or oldest is None and track_id < self.store.next_id():
            return NotFound(f"track {track_id} has expired: the daemon keeps the newest {self.store.keep} tracks "
                            f"and {self.store.max_bytes} bytes of their crops (tracks.keep, tracks.max_bytes); "
                            f"the oldest kept is {oldest}")
        return NotFound(f"no track {track_id} (GET /v1/tracks lists the recent ones)")

    def crop(self, track_id: int, name: str | None = None) -> bytes:
        """A kept crop of a track (JPEG); without a name, its sharpest."""
        blobs = self._crops(track_id)
        if name is None:
            return blobs[0]
        data = self.store.crop_bytes(track_id, name) if self.store is not None else None
        if data is None:
            raise NotFound(f"track {track_id} has no crop {name!r}; GET /v1/tracks/{track_id} lists them")
        return data

    def _crops(self, track_id: int) -> list[bytes]:
        """JPEGs of a track's kept crops, sharpest first (404 with the reason when there are none)."""
        for stage in self.pipeline.stages.values():
            live = stage.kept_crops(track_id)
            if live:
                return live
        if self.store is not None and track_id in self.store:
            blobs = [b for c in self.store.crops(track_id) if (b := self.store.crop_bytes(track_id, c.name))]
            if blobs:
                return blobs
            raise NotFound(f"track {track_id} has no crops kept (it was not seen clearly, or the disk was full)")
        raise self._missing(track_id)

    def enroll(self, track_id: int, label: str, crops: int = ENROLL_CROPS, *, negative: bool = False) -> dict[str, Any]:
        """Enroll a track's best diverse crops as `label` (all of them as negatives of it with `negative`)."""
        label = checked_label(label)
        images = [decode_crop(b) for b in self._crops(track_id)]
        if not negative and len(images) > crops:
            with self.enrollment.models.use() as model:
                emb = center_normalize(model.extractor.embed(images), model.extractor.center)
            images = [images[i] for i in diverse(emb, crops)]
        result = self.enrollment.enroll_images(label, images, negative=negative, source=f"track:{track_id}")
        return {**result, "track": track_id, "crops": len(images)}
