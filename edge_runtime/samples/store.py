"""Samples kept for the server, in one SQLite file of their own (default state_dir/samples.db).

A sample is one crop (JPEG) with its embedding, the model that made it, why it was kept and
what the classifier said. The store is bounded: the JPEG bytes of all samples never exceed
`quota_bytes`. `add` evicts the oldest samples and inserts the new one in ONE transaction, so
no crash can leave the store over its quota, nor lose the old samples without the new one
taking their place. The byte total lives in a one-row table that triggers keep equal to the
sum of `bytes` in the same transactions, so the quota check reads one row, not the table. The
quota is kept in the file too: a reader that gives none (a harvest from a copied state folder)
uses the daemon's and never evicts anything.

WAL with `synchronous=FULL` (like the gallery): when `add` or `delete_acked` returns, the change
survives a crash or power loss. A full or read-only filesystem is a `SampleStorageError` that
says which; nothing stored is lost (the transaction is rolled back), and a read-only file is
opened for reading, so a server can still harvest it.

The harvest: `page` (metadata), `iter_with_jpeg` (the archive, read in short batches), then
`delete_acked` with the sha256 the server computed of each JPEG: a sample is deleted only
where it matches, so nothing leaves the device before the server has it intact.

One connection, shared by the daemon's threads behind a lock (every method is one short
statement or transaction); `status()` answers from a cache without touching the lock, so
/health never waits for a write.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np

from edgessl.edge_runtime.samples.store_schema import (
    META,
    REASONS,
    SCHEMA,
    SCHEMA_VERSION,
    SOURCES,
    SampleInfo,
)
from edgessl.edge_runtime.sqlite_tx import StorageFailure, connect_read_only, immediate, storage_problem
from edgessl.edge_runtime.timestamps import iso
from edgessl.errors import EdgesslError

__all__ = ["Acked", "Added", "SampleInfo", "SampleStorageError", "SampleStore", "SampleStoreError"]

log = logging.getLogger(__name__)

KEPT_LOG_S = 86_400.0  # the log of kept times (rate limits over restarts) keeps one day
DEFAULT_QUOTA = 256 * 2**20  # a new file's quota when none is given
_BATCH = 32  # rows read per batch by iter_with_jpeg (the lock is free between batches)


class SampleStoreError(EdgesslError):
    """The sample store cannot do what was asked (not a sample store, a sample over the quota...)."""


class SampleStorageError(StorageFailure, SampleStoreError):
    """The sample store cannot be written: its filesystem is full (`full`) or it is read-only."""


def _storage_error(path: Path, exc: sqlite3.Error) -> SampleStorageError | None:
    problem = storage_problem(exc)
    if problem == "full":
        return SampleStorageError(f"{path}: the filesystem of the sample store is full ({exc}); nothing was "
                                  "lost, but no sample can be kept until space is freed", full=True)
    if problem == "readonly":
        return SampleStorageError(f"{path}: the sample store is read-only ({exc}); its samples can be read "
                                  "and harvested, none can be kept or deleted", full=False)
    return None


class Added(NamedTuple):
    id: int
    sha256: str
    bytes: int
    evicted: list[tuple[int, str]]  # (id, camera) of the samples evicted to make room


class Acked(NamedTuple):
    deleted: list[int]
    mismatched: list[int]  # stored, but with another sha256: kept
    missing: list[int]  # not stored (evicted, deleted before, or never there)


class SampleStore:
    """`SampleStore(path, quota_bytes)` opens (or creates) a store; use it as a context manager.

    `quota_bytes`: the most JPEG bytes kept, stored in the file (a smaller one than before evicts
    the oldest at once); None: the file's own (DEFAULT_QUOTA for a new file)."""

    def __init__(self, path: str | Path, quota_bytes: int | None = None) -> None:
        if quota_bytes is not None and quota_bytes < 1:
            raise ValueError(f"quota_bytes must be at least 1, got {quota_bytes}")
        self.path = Path(path)
        self._wanted_quota = quota_bytes
        self.quota_bytes = quota_bytes if quota_bytes is not None else DEFAULT_QUOTA
        self.read_only = False
        self._lock = threading.RLock()
        self._status: dict[str, Any] = {}
        existed = self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # connecting says why
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            if not existed:
                raise SampleStoreError(f"{self.path}: cannot create the sample store: {exc}") from exc
            self._open_read_only(exc)
        else:
            self._setup(existed)
        self._refresh()

    def _setup(self, existed: bool) -> None:
        try:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # new files only: deletions give space back
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._create()
            self._set_quota()
        except SampleStorageError as exc:
            self._db.close()
            if exc.full or not existed:
                raise
            self._open_read_only(exc)
        except sqlite3.OperationalError as exc:
            self._db.close()
            storage = _storage_error(self.path, exc)
            if storage is not None and storage.full:
                raise storage from exc
            if not existed:
                raise SampleStoreError(f"{self.path}: cannot create the sample store: {exc}") from exc
            if storage is None and "unable to open" not in str(exc):
                raise SampleStoreError(f"{self.path}: not a usable sample store: {exc}") from exc
            self._open_read_only(exc)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise SampleStoreError(f"{self.path}: not a usable sample store: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        else:  # sqlite opens a file it cannot write read-only without a word: say so, and refuse writes early
            if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
                self.read_only = True
                log.warning("%s: the sample store cannot be written; opened read-only", self.path)

    def _create(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise SampleStoreError(f"{self.path}: sample store schema version {version}; this edgessl reads "
                                   f"version {SCHEMA_VERSION} (upgrade edgessl, or move the file away)")
        with self._transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO usage VALUES (1, 0, 0, ?)", (self.quota_bytes,))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _set_quota(self) -> None:
        """The quota given (stored in the file, the oldest evicted down to it), or the file's own."""
        stored = int(self._db.execute("SELECT quota FROM usage").fetchone()[0])
        if self._wanted_quota is None:
            self.quota_bytes = stored
            return
        if stored != self.quota_bytes or self._usage()[0] > self.quota_bytes:
            with self._transaction() as db:
                db.execute("UPDATE usage SET quota = ?", (self.quota_bytes,))
                self._evict(db, 0)

    def _open_read_only(self, why: Exception) -> None:
        """Open for reading when the file or its filesystem cannot be written; every write then
        raises SampleStorageError."""
        try:
            db, version = connect_read_only(self.path, "SELECT bytes FROM usage", check_same_thread=False)
        except sqlite3.Error as exc:
            raise SampleStoreError(f"{self.path}: cannot open the sample store, not even read-only: {exc}") from exc
        if version != SCHEMA_VERSION:
            db.close()
            raise SampleStoreError(f"{self.path}: sample store schema version {version}; this edgessl reads "
                                   f"version {SCHEMA_VERSION}")
        self._db, self.read_only = db, True
        if self._wanted_quota is None:
            self.quota_bytes = int(db.execute("SELECT quota FROM usage").fetchone()[0])
        log.warning("%s: the sample store cannot be written (%s); opened read-only", self.path, why)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise SampleStorageError(f"{self.path}: the sample store is read-only (its file or filesystem cannot "
                                     "be written); its samples can be read, none kept or deleted", full=False)
        with self._lock, immediate(self._db, lambda exc: _storage_error(self.path, exc)):
            yield self._db

    # -- writing ------------------------------------------------------------------------------

    def add(self, *, camera: str, source: str, ref: str, time: float, model: str, reason: str, jpeg: bytes,
            embedding: np.ndarray, label: str | None = None, nearest: str | None = None,
            score: float | None = None, margin: float | None = None, novelty: float | None = None) -> Added:
        """Store one sample, evicting the oldest first until it fits the quota (one transaction).
        A sample larger than the whole quota is refused (SampleStoreError)."""
        if source not in SOURCES or reason not in REASONS:
            raise ValueError(f"source must be one of {SOURCES} and reason one of {REASONS}; "
                             f"got {source!r} and {reason!r}")
        size = len(jpeg)
        if size > self.quota_bytes:
            raise SampleStoreError(f"a sample of {size} bytes is larger than the whole quota of the sample store "
                                   f"({self.quota_bytes} bytes, samples.quota_bytes)")
        emb = np.ascontiguousarray(embedding, np.float32).ravel()
        digest = hashlib.sha256(jpeg).hexdigest()
        with self._transaction() as db:
            evicted = self._evict(db, size)
            sample_id = db.execute(
                f"INSERT INTO samples ({META.removeprefix('id, ')}, embedding, jpeg) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (camera, source, ref, float(time), model, reason, label, nearest, _num(score), _num(margin),
                 _num(novelty), size, digest, len(emb), emb.tobytes(), sqlite3.Binary(jpeg))).lastrowid
            db.execute("INSERT INTO kept VALUES (?, ?)", (camera, float(time)))
            db.execute("DELETE FROM kept WHERE time < ?", (float(time) - KEPT_LOG_S,))
        self._refresh()
        assert sample_id is not None
        return Added(sample_id, digest, size, evicted)

    def _evict(self, db: sqlite3.Connection, size: int) -> list[tuple[int, str]]:
        """Delete the oldest samples until `size` more bytes fit the quota; (id, camera) of each."""
        excess = self._usage()[0] + size - self.quota_bytes
        evicted: list[tuple[int, str]] = []
        while excess > 0:
            rows = db.execute("SELECT id, camera, bytes FROM samples ORDER BY id LIMIT 64").fetchall()
            if not rows:
                raise SampleStoreError(f"{self.path}: the byte total says {excess} bytes too many, but no sample "
                                       "is left to evict (damaged usage table)")
            for sample_id, camera, nbytes in rows:
                evicted.append((sample_id, camera))
                excess -= nbytes
                if excess <= 0:
                    break
            db.execute("DELETE FROM samples WHERE id <= ?", (evicted[-1][0],))
        return evicted

    def delete_acked(self, acks: Mapping[int, str]) -> Acked:
        """Delete the samples whose stored sha256 equals the one given (the server has them intact)."""
        wanted = {int(k): str(v).lower() for k, v in acks.items()}
        deleted: list[int] = []
        mismatched: list[int] = []
        ids = sorted(wanted)
        with self._transaction() as db:
            found: dict[int, str] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(db.execute(f"SELECT id, sha256 FROM samples WHERE id IN ({marks})", chunk).fetchall())
            for sample_id in ids:
                if sample_id in found:
                    (deleted if found[sample_id] == wanted[sample_id] else mismatched).append(sample_id)
            for start in range(0, len(deleted), 500):
                chunk = deleted[start:start + 500]
                db.execute(f"DELETE FROM samples WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        if deleted:
            self._compact()
        self._refresh()
        return Acked(deleted, mismatched, [i for i in ids if i not in found])

    def _compact(self) -> None:
        """Give freed pages back to the filesystem (files created with auto_vacuum=INCREMENTAL). Best effort."""
        with self._lock:
            try:
                self._db.execute("PRAGMA incremental_vacuum").fetchall()
            except sqlite3.Error as exc:
                log.info("%s: incremental_vacuum failed: %s", self.path, exc)

    # -- reading ------------------------------------------------------------------------------

    def page(self, after_id: int = 0, limit: int = 100) -> list[SampleInfo]:
        """Metadata of up to `limit` samples with id > after_id, ascending."""
        with self._lock:
            rows = self._db.execute(f"SELECT {META} FROM samples WHERE id > ? ORDER BY id LIMIT ?",
                                    (int(after_id), int(limit))).fetchall()
        return [SampleInfo(*row) for row in rows]

    def jpeg(self, sample_id: int) -> bytes | None:
        """The JPEG of one sample; None when there is no such sample."""
        with self._lock:
            row = self._db.execute("SELECT jpeg FROM samples WHERE id = ?", (int(sample_id),)).fetchone()
        return None if row is None else bytes(row[0])

    def iter_with_jpeg(self, after_id: int = 0, limit: int = 500, *,
                       until_id: int | None = None) -> Iterator[tuple[SampleInfo, bytes]]:
        """(metadata, JPEG) of up to `limit` samples with after_id < id (<= until_id), ascending, read
        in short batches: samples evicted or deleted meanwhile are left out, nothing waits on a reader."""
        last, left = int(after_id), int(limit)
        top = until_id if until_id is not None else 2**63 - 1
        while left > 0:
            with self._lock:
                rows = self._db.execute(f"SELECT {META}, jpeg FROM samples WHERE id > ? AND id <= ? "
                                        "ORDER BY id LIMIT ?", (last, top, min(left, _BATCH))).fetchall()
            if not rows:
                return
            for row in rows:
                yield SampleInfo(*row[:-1]), bytes(row[-1])
            last, left = rows[-1][0], left - len(rows)

    def count_since(self, camera: str, since: float) -> int:
        """Samples kept from `camera` at or after `since` (within the last day; harvested ones count too)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM kept WHERE camera = ? AND time >= ?",
                                    (camera, float(since))).fetchone()[0]

    def kept_times(self, camera: str, since: float) -> list[float]:
        """When samples were kept from `camera` at or after `since`, ascending (the rate limits' memory)."""
        with self._lock:
            rows = self._db.execute("SELECT time FROM kept WHERE camera = ? AND time >= ? ORDER BY time",
                                    (camera, float(since))).fetchall()
        return [r[0] for r in rows]

    def embeddings(self, model: str, limit: int | None = None) -> tuple[list[int], np.ndarray]:
        """(ids, (N, D) float32) of the samples of `model` (the newest `limit`), ascending id."""
        with self._lock:
            rows = self._db.execute("SELECT id, dim, embedding FROM samples WHERE model = ? ORDER BY id DESC "
                                    "LIMIT ?", (model, -1 if limit is None else int(limit))).fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        dim = rows[0][1]  # the newest; a model tag reused with another size keeps only its newest rows
        rows = [r for r in reversed(rows) if r[1] == dim]
        return [r[0] for r in rows], np.stack([np.frombuffer(r[2], np.float32) for r in rows])

    def _usage(self) -> tuple[int, int]:
        with self._lock:
            nbytes, count = self._db.execute("SELECT bytes, count FROM usage").fetchone()
        return int(nbytes), int(count)

    def _refresh(self) -> None:
        with self._lock:
            nbytes, count = self._usage()
            first = self._db.execute("SELECT time FROM samples ORDER BY id LIMIT 1").fetchone()
            last = self._db.execute("SELECT time FROM samples ORDER BY id DESC LIMIT 1").fetchone()
            newest = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'samples'").fetchone()
        self._status = {"path": str(self.path), "stored": count, "bytes": nbytes, "quota_bytes": self.quota_bytes,
                        "oldest": iso(first[0]) if first else None, "newest": iso(last[0]) if last else None,
                        "newest_id": int(newest[0]) if newest else 0, "writable": not self.read_only}

    def status(self) -> dict[str, Any]:
        """stored, bytes, quota_bytes, oldest and newest sample time, the highest id ever given
        (`newest_id`), writable; cached, so it never waits for a write."""
        return dict(self._status)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _num(value: float | None) -> float | None:
    """A finite float, or None (NaN and infinities are not figures)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
