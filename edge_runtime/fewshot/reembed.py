"""Re-embedding a gallery after a model update: the gallery's stale exemplars recomputed from
their stored crops, in batches of one transaction each, either in place (`reembed`) or staged in
a side table while the old embeddings keep serving (`stage`, then `apply_staged`).

A mixin of `Gallery` (gallery.py), which provides the connection and its transactions.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np

from edgessl.edge_runtime.fewshot.crops import decode_crop

log = logging.getLogger(__name__)

REEMBED_BATCH = 16  # exemplars per re-embedding transaction: a crash loses at most this many
F32 = np.dtype("<f4")  # embeddings on disk: the same bytes on every device


class Embedder(Protocol):
    """What `reembed` needs (a FeatureExtractor is one)."""

    fingerprint: str

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray: ...


class Reembedding:
    """Gallery methods that bring embeddings up to date with a new model."""

    _db: sqlite3.Connection
    read_only: bool

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def stale(self, fingerprint: str) -> int:
        """How many exemplars were embedded by a model other than `fingerprint`."""
        return self._db.execute("SELECT COUNT(*) FROM exemplars WHERE fingerprint != ?", (fingerprint,)).fetchone()[0]

    def _stale_batch(self, fingerprint: str, size: int, *, staged: bool) -> list[tuple[int, bytes]]:
        """Up to `size` (id, crop) of exemplars not embedded by `fingerprint` (with `staged`:
        nor staged for it), round-robin over classes so that every class gets fresh
        embeddings from the first batches on."""
        skip = ("AND id NOT IN (SELECT exemplar_id FROM staged_embeddings WHERE fingerprint = ?1)"
                if staged else "")
        rows = self._db.execute(
            "SELECT e.id, e.crop FROM exemplars e JOIN ("
            "  SELECT id, ROW_NUMBER() OVER (PARTITION BY class_id ORDER BY id) AS turn FROM exemplars"
            f"  WHERE fingerprint != ?1 {skip}) t ON t.id = e.id ORDER BY t.turn, e.id LIMIT ?2",
            (fingerprint, size)).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def _embed_batches(self, extractor: Embedder, *, staged: bool, batch_size: int,
                       stop: Callable[[], bool] | None, pause_s: float,
                       progress: Callable[[int, int], None] | None) -> int:
        fingerprint = extractor.fingerprint
        total = self.stale(fingerprint) - (self.staged(fingerprint) if staged else 0)
        done = 0
        while not (stop is not None and stop()):
            rows = self._stale_batch(fingerprint, batch_size, staged=staged)
            if not rows:
                break
            emb = extractor.embed([decode_crop(blob) for _, blob in rows], batch_size=batch_size)
            values = [(e.astype(F32).tobytes(), fingerprint, i) for (i, _), e in zip(rows, emb, strict=True)]
            with self._transaction() as db:  # one batch per transaction: a crash loses at most one batch
                if staged:
                    db.executemany("INSERT OR REPLACE INTO staged_embeddings (embedding, fingerprint, exemplar_id) "
                                   "VALUES (?, ?, ?)", values)
                else:
                    db.executemany("UPDATE exemplars SET embedding = ?, fingerprint = ? WHERE id = ?", values)
            done += len(rows)
            if progress is not None:
                progress(done, max(total, done))
            if pause_s > 0:
                time.sleep(pause_s)
        return done

    def staged(self, fingerprint: str) -> int:
        """How many embeddings are staged for the model `fingerprint` (see `stage`)."""
        if self.read_only:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM staged_embeddings s JOIN exemplars e ON e.id = s.exemplar_id "
                                "WHERE s.fingerprint = ? AND e.fingerprint != ?",
                                (fingerprint, fingerprint)).fetchone()[0]

    def stage(self, extractor: Embedder, *, batch_size: int = REEMBED_BATCH, stop: Callable[[], bool] | None = None,
              pause_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> int:
        """Embed the stale exemplars with `extractor` into a side table, in batches (one
        transaction each), while the embeddings of the running model stay in place;
        `apply_staged` (or `reembed`) moves them over. Returns how many were staged."""
        n = self._embed_batches(extractor, staged=True, batch_size=batch_size, stop=stop, pause_s=pause_s,
                                progress=progress)
        if n:
            log.info("staged %d embeddings for model %s", n, extractor.fingerprint[:12])
        return n

    def apply_staged(self, fingerprint: str) -> int:
        """Move the embeddings staged for `fingerprint` into place (one short transaction) and
        drop every staged row; return how many exemplars changed."""
        if self.read_only:
            return 0
        with self._transaction() as db:
            n = db.execute(
                "UPDATE exemplars SET embedding = (SELECT s.embedding FROM staged_embeddings s "
                "WHERE s.exemplar_id = exemplars.id), fingerprint = ?1 WHERE fingerprint != ?1 AND id IN "
                "(SELECT exemplar_id FROM staged_embeddings WHERE fingerprint = ?1)", (fingerprint,)).rowcount
            db.execute("DELETE FROM staged_embeddings")
        return n

    def reembed(self, extractor: Embedder, chunk: int = REEMBED_BATCH, *, stop: Callable[[], bool] | None = None,
                pause_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> int:
        """Recompute stale embeddings from the stored crops, `chunk` exemplars per transaction
        (a crash loses at most one batch; the next call carries on), using staged embeddings
        first; stop early when `stop()` says so. Returns how many were re-embedded."""
        fingerprint = extractor.fingerprint
        n = self.apply_staged(fingerprint)
        n += self._embed_batches(extractor, staged=False, batch_size=chunk, stop=stop, pause_s=pause_s,
                                 progress=progress)
        if n:
            log.info("re-embedded %d exemplars with model %s", n, fingerprint[:12])
        return n
