"""Background frames: what a camera region sees when nothing enrolled is there.

`POST /v1/cameras/{id}/background` samples a region's crops; they are stored with their
embeddings in one small file per camera region (`state_dir/background/<camera>.<region>.npz`:
the crops as JPEG, the embeddings and the fingerprint of the model that made them), so they
survive restarts, and are re-embedded from the crops when another model runs. The classifier's
calibration (`FewShotClassifier.set_background`) takes all of them as impostors: a class's
threshold then sits above what the cameras see when it is not there.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgessl.edge_runtime.fewshot.crops import decode_crop, encode_crop
from edgessl.edge_runtime.fewshot.reembed import Embedder
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackgroundSet:
    camera: str
    region: str
    crops: list[bytes]  # JPEG
    embeddings: np.ndarray  # (N, D) float32
    fingerprint: str  # of the model that made the embeddings


class BackgroundStore:
    """Background crops and embeddings per camera region, in `folder`; `revision` grows with
    every change (the inference loop hands the new set to its classifier)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self.revision = 0
        self._cache: tuple[int, str, np.ndarray | None] | None = None  # (revision, fingerprint, embeddings)

    def _path(self, camera: str, region: str) -> Path:
        return self.folder / f"{camera}.{region}.npz"  # both match NAME_PATTERN: no dots, no slashes

    def save(self, camera: str, region: str, crops: list[np.ndarray], embeddings: np.ndarray, fingerprint: str,
             *, max_side: int | None = None) -> int:
        """Replace the background of one camera region (written to a temporary file, then renamed)."""
        blobs = [encode_crop(c, max_side) for c in crops]
        with self._lock:
            self._write(BackgroundSet(camera, region, blobs, np.asarray(embeddings, np.float32), fingerprint))
            self.revision += 1
        log.info("camera %s/%s: %d background frames stored", camera, region, len(blobs))
        return len(blobs)

    def _write(self, bg: BackgroundSet) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(b) for b in bg.crops], np.int64)
        buf = io.BytesIO()
        np.savez(buf, jpegs=np.frombuffer(b"".join(bg.crops), np.uint8), lengths=lengths,
                 embeddings=bg.embeddings, fingerprint=np.array(bg.fingerprint))
        path = self._path(bg.camera, bg.region)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read(self, path: Path) -> BackgroundSet | None:
        camera, _, region = path.name.removesuffix(".npz").partition(".")
        try:
            with np.load(path, allow_pickle=False) as data:
                jpegs, lengths = data["jpegs"].tobytes(), data["lengths"]
                emb, fingerprint = data["embeddings"].astype(np.float32), str(data["fingerprint"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable background file, ignored: %s", path, exc)
            return None
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        crops = [jpegs[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]
        return BackgroundSet(camera, region, crops, emb, fingerprint)

    def sets(self) -> list[BackgroundSet]:
        with self._lock:
            found = sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []
            return [s for s in (self._read(p) for p in found) if s is not None]

    def clear(self, camera: str, region: str | None = None) -> int:
        """Remove the background of one region, or of every region of the camera; how many frames."""
        removed = 0
        with self._lock:
            paths = [self._path(camera, region)] if region is not None else \
                (list(self.folder.glob(f"{camera}.*.npz")) if self.folder.is_dir() else [])
            for path in paths:
                bg = self._read(path) if path.exists() else None
                if bg is None:
                    continue
                path.unlink()
                removed += len(bg.crops)
            if removed:
                self.revision += 1
        return removed

    def embeddings(self, extractor: Embedder) -> np.ndarray | None:
        """(M, D) embeddings of every stored background by the model `extractor`; sets made by
        another model are re-embedded from their crops (and rewritten). None when there is none."""
        fingerprint = getattr(extractor, "fingerprint", "")
        cached, revision = self._cache, self.revision
        if cached is not None and cached[:2] == (revision, fingerprint):
            return cached[2]
        parts = []
        for bg in self.sets():
            emb = bg.embeddings
            if bg.fingerprint != fingerprint:
                try:
                    emb = np.asarray(extractor.embed([decode_crop(c) for c in bg.crops]), np.float32)
                except EdgesslError as exc:
                    log.warning("camera %s/%s: background not re-embedded: %s", bg.camera, bg.region, exc)
                    continue
                try:
                    with self._lock:
                        self._write(BackgroundSet(bg.camera, bg.region, bg.crops, emb, fingerprint))
                except OSError as exc:  # a read-only state_dir: re-embedded again next time
                    log.warning("camera %s/%s: re-embedded background not stored: %s", bg.camera, bg.region, exc)
                log.info("camera %s/%s: %d background frames re-embedded", bg.camera, bg.region, len(bg.crops))
            parts.append(emb)
        out = np.concatenate(parts) if parts else None
        self._cache = (revision, fingerprint, out)
        return out

    def status(self) -> list[dict[str, object]]:
        return [{"camera": s.camera, "region": s.region, "frames": len(s.crops)} for s in self.sets()]
