"""Recent tracks on disk (state_dir/tracks), so a person can name an object after it left.

    tracks/<id>/meta.json            what the track was: camera, times, label, zones, box
    tracks/<id>/<frame>-<n>.jpg      its kept crops (the sharpest, varied; at most crops.keep)

Every file is written to a temporary name and renamed into place, so a crash leaves either
the old file or the new one; at start, leftovers of an interrupted write and folders without
a meta.json are removed. The store is bounded: the newest `tracks.keep` tracks and at most
`tracks.max_bytes` of crops; the oldest go first. A full or read-only disk does not stop the
cameras: the failure is counted and logged once a minute, and the tracks live on in memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

META = "meta.json"


@dataclass(frozen=True)
class StoredCrop:
    name: str  # file name inside the track's folder
    frame: int
    sharpness: float


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class TrackStore:
    def __init__(self, folder: Path, keep: int, max_bytes: int) -> None:
        self.folder = folder
        self.keep = keep
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # track id -> bytes of its crops
        self.errors = 0
        self._last_warning = 0.0
        self.writable = True
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            self._failed("cannot open the track store", exc)

    # -- start-up -----------------------------------------------------------------------------

    def _recover(self) -> None:
        for entry in self.folder.iterdir():
            if not entry.is_dir() or not entry.name.isdigit():
                continue
            if not (entry / META).is_file():  # created, but the crash came before its meta
                shutil.rmtree(entry, ignore_errors=True)
                continue
            for leftover in entry.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
            self._sizes[int(entry.name)] = sum(p.stat().st_size for p in entry.glob("*.jpg"))

    def next_id(self) -> int:
        """The first id after every stored track's (ids are not reused while the tracks exist)."""
        with self._lock:
            return max(self._sizes, default=0) + 1

    # -- writing ------------------------------------------------------------------------------

    def _failed(self, what: str, exc: OSError) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("%s: %s (tracks go on in memory; %d write errors so far)", what, exc, self.errors)

    def _dir(self, track_id: int) -> Path:
        return self.folder / str(int(track_id))

    def write_meta(self, track_id: int, meta: dict[str, Any]) -> None:
        path = self._dir(track_id)
        try:
            path.mkdir(exist_ok=True)
            _write_atomic(path / META, json.dumps(meta).encode())
            with self._lock:
                self._sizes.setdefault(track_id, 0)
        except OSError as exc:
            self._failed(f"cannot store track {track_id}", exc)
            return
        self._prune()

    def add_crop(self, track_id: int, frame: int, sharpness: float, jpeg: bytes) -> str | None:
        """Store one crop; returns its name (None when it could not be written)."""
        path = self._dir(track_id)
        name = f"{frame}-{sharpness:.0f}.jpg"
        try:
            path.mkdir(exist_ok=True)
            _write_atomic(path / name, jpeg)
        except OSError as exc:
            self._failed(f"cannot store a crop of track {track_id}", exc)
            return None
        with self._lock:
            self._sizes[track_id] = self._sizes.get(track_id, 0) + len(jpeg)
        return name

    def remove_crop(self, track_id: int, name: str) -> None:
        path = self._dir(track_id) / name
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        with self._lock:
            if track_id in self._sizes:
                self._sizes[track_id] = max(0, self._sizes[track_id] - size)

    def _prune(self) -> None:
        with self._lock:
            ids = sorted(self._sizes)
            doomed = ids[:-self.keep] if len(ids) > self.keep else []
            total = sum(self._sizes.values()) - sum(self._sizes[i] for i in doomed)
            for i in ids[len(doomed):-1]:  # never the newest
                if total <= self.max_bytes:
                    break
                doomed.append(i)
                total -= self._sizes[i]
            for i in doomed:
                del self._sizes[i]
        for i in doomed:
            shutil.rmtree(self._dir(i), ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------

    def __contains__(self, track_id: int) -> bool:
        with self._lock:
            return track_id in self._sizes

    def meta(self, track_id: int) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(track_id) / META).read_text())
        except (OSError, ValueError):
            return None

    def crops(self, track_id: int) -> list[StoredCrop]:
        """The kept crops of a track, sharpest first."""
        out = []
        try:
            names = [p.name for p in self._dir(track_id).glob("*.jpg")]
        except OSError:
            return []
        for name in names:
            frame, _, sharp = name[:-4].partition("-")
            try:
                out.append(StoredCrop(name, int(frame), float(sharp)))
            except ValueError:
                continue
        return sorted(out, key=lambda c: -c.sharpness)

    def crop_bytes(self, track_id: int, name: str) -> bytes | None:
        if "/" in name or name.startswith(".") or not name.endswith(".jpg"):
            return None
        try:
            return (self._dir(track_id) / name).read_bytes()
        except OSError:
            return None

    def recent(self, limit: int, camera: str | None = None) -> list[dict[str, Any]]:
        """Metas of the newest tracks (newest first)."""
        with self._lock:
            ids = sorted(self._sizes, reverse=True)
        out = []
        for i in ids:
            meta = self.meta(i)
            if meta is None or (camera is not None and meta.get("camera") != camera):
                continue
            out.append(meta)
            if len(out) >= limit:
                break
        return out

    def oldest_kept(self) -> int | None:
        with self._lock:
            return min(self._sizes, default=None)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"tracks": len(self._sizes), "bytes": sum(self._sizes.values()), "keep": self.keep,
                    "max_bytes": self.max_bytes, "write_errors": self.errors}
