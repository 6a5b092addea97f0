"""The few-shot gallery: enrolled classes and their exemplars, in one SQLite file.

Each exemplar keeps its crop (JPEG), its embedding and the fingerprint of the model that
made it. When a new model is flashed, `reembed` recomputes the embeddings from the crops
(reembed.py), so enrollments survive model updates. WAL with `synchronous=FULL`: when `add` returns,
the enrollment survives a crash or power loss.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np

from edgessl.edge_runtime.fewshot.crops import encode_crop
from edgessl.edge_runtime.fewshot.gallery_schema import (
    MIGRATIONS,
    READABLE_VERSIONS,
    SCHEMA,
    SCHEMA_VERSION,
    STAGED,
)
from edgessl.edge_runtime.fewshot.labels import label_key, normalize_label
from edgessl.edge_runtime.fewshot.reembed import F32, Reembedding
from edgessl.edge_runtime.sqlite_tx import StorageFailure, connect_read_only, immediate, storage_problem
from edgessl.errors import GalleryError

log = logging.getLogger(__name__)


class GalleryStorageError(StorageFailure, GalleryError):
    """The gallery cannot be written: its filesystem is full (`full`) or it is read-only."""


def _storage_error(path: Path, exc: sqlite3.Error) -> GalleryStorageError | None:
    problem = storage_problem(exc)
    if problem == "full":
        return GalleryStorageError(f"{path}: the filesystem of the gallery is full ({exc})", full=True)
    if problem == "readonly":
        return GalleryStorageError(f"{path}: the gallery is read-only ({exc})", full=False)
    return None


@dataclass(frozen=True)
class ClassInfo:
    label: str
    exemplars: int  # positive examples
    negatives: int = 0  # negative examples ("this is not <label>")
    id: int | None = None


@dataclass(frozen=True)
class ExemplarInfo:
    id: int
    label: str
    negative: bool
    created_at: str
    source: str | None = None  # what the crop is a view of, e.g. "track:17" (None: its own shot)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Gallery(Reembedding):
    """`Gallery(path)` opens (or creates) a gallery file; use it as a context manager."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GalleryError(f"{self.path}: no gallery there (enroll a class first to create one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._changes = 0  # commits through this connection (data_version counts the others')
        self.read_only = False  # opened read-only: the file or its folder cannot be written
        self._version = SCHEMA_VERSION
        self._upgrading = False  # an older file is being migrated
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # new files only: lets `compact` give space back
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except GalleryStorageError as exc:  # from _migrate's transaction
            self._db.close()
            if exc.full and not self._upgrading:  # an older file on a full disk can still be read
                raise
            self._open_read_only(exc)
        except sqlite3.OperationalError as exc:
            self._db.close()
            storage = _storage_error(self.path, exc)
            if storage is not None and storage.full:
                raise storage from exc
            if storage is None and "unable to open" not in str(exc):
                raise GalleryError(f"{self.path}: not a usable gallery database: {exc}") from exc
            self._open_read_only(exc)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise GalleryError(f"{self.path}: not a usable gallery database: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def _open_read_only(self, why: Exception) -> None:
        """Open for reading when writing is impossible (read-only file or filesystem); every
        write then raises GalleryStorageError."""
        if not self.path.exists():
            raise GalleryError(f"{self.path}: cannot create the gallery: {why}") from why
        try:
            db, version = connect_read_only(self.path, "SELECT COUNT(*) FROM exemplars")
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot open the gallery, not even read-only: {exc}") from exc
        if version not in READABLE_VERSIONS:
            db.close()
            raise GalleryError(f"{self.path}: gallery schema version {version}; this edgessl reads "
                               f"versions {', '.join(map(str, READABLE_VERSIONS))} (upgrade edgessl)")
        self._db, self.read_only, self._version = db, True, version
        log.warning("%s: the gallery cannot be written (%s); opened read-only", self.path, why)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        staged = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'staged_embeddings'").fetchone()
        if version == SCHEMA_VERSION and staged:
            return  # nothing to write (a full or read-only disk can still be read)
        self._upgrading = version in MIGRATIONS
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            elif version in MIGRATIONS:
                for statement in MIGRATIONS[version]:
                    self._db.execute(statement)
            elif version != SCHEMA_VERSION:
                raise GalleryError(f"{self.path}: gallery schema version {version}; this edgessl reads "
                                   f"versions {', '.join(map(str, READABLE_VERSIONS))} (upgrade edgessl)")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute(STAGED)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise GalleryStorageError(f"{self.path}: the gallery is read-only (its file or filesystem cannot be "
                                      f"written); nothing can be enrolled or removed", full=False)
        with immediate(self._db, lambda exc: _storage_error(self.path, exc)):
            yield self._db
        self._changes += 1

    # -- enrollment -------------------------------------------------------------------

    def add(
        self, label: str, crops: Sequence[np.ndarray], embeddings: np.ndarray, fingerprint: str,
        *, negative: bool = False, max_side: int | None = None, source: str | None = None,
    ) -> int:
        """Store exemplars of `label` (creating the class) in one transaction; return how many.

        `negative=True` stores them as negative examples: things that are *not* `label` but
        look like it. The label is normalised (`normalize_label`); a class whose label differs
        only in case is the same class. Crops are stored with their longest side at most
        `max_side`. `source` names what the crops are views of when they are not independent
        shots (e.g. "track:17", the crops of one pass of an object): calibration then leaves the
        whole source out at once. When this returns, the exemplars are on disk."""
        label = normalize_label(label)
        embeddings = np.asarray(embeddings, np.float32)
        if len(crops) == 0 or embeddings.ndim != 2 or len(embeddings) != len(crops):
            raise GalleryError(f"add needs one embedding row per crop and at least one crop; "
                               f"got {len(crops)} crops and embeddings of shape {embeddings.shape}")
        blobs = [encode_crop(c, max_side) for c in crops]
        now = _now()
        with self._transaction() as db:
            found = self._find(label)
            if found is None:
                class_id = db.execute("INSERT INTO classes (label, created_at) VALUES (?, ?)", (label, now)).lastrowid
            else:
                class_id, label = found
            db.executemany(
                "INSERT INTO exemplars (class_id, crop, embedding, fingerprint, negative, created_at, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(class_id, blob, emb.astype(F32).tobytes(), fingerprint, int(negative), now, source)
                 for blob, emb in zip(blobs, embeddings, strict=True)],
            )
        log.info("enrolled %d %sexemplars of %r", len(blobs), "negative " if negative else "", label)
        return len(blobs)

    def _find(self, label: str) -> tuple[int, str] | None:
        """(id, stored label) of the class named `label`: exactly, else by `label_key` (which
        also finds classes stored before labels were normalised)."""
        row = self._db.execute("SELECT id, label FROM classes WHERE label = ?", (label,)).fetchone()
        if row is not None:
            return row[0], row[1]
        key = label_key(" ".join(label.split()))
        for class_id, stored in self._db.execute("SELECT id, label FROM classes ORDER BY id"):
            if label_key(" ".join(stored.split())) == key:
                return class_id, stored
        return None

    def find_class(self, label: str) -> str | None:
        """The stored label of the class `label` names (see `_find`), None when there is none."""
        found = self._find(label)
        return None if found is None else found[1]

    def forget(self, label: str) -> int:
        """Remove a class and its exemplars; return how many exemplars were removed."""
        with self._transaction() as db:
            found = self._find(label)
            if found is None:
                known = [r[0] for r in db.execute("SELECT label FROM classes ORDER BY label")]
                raise GalleryError(f"no class {label!r} in the gallery; known classes: "
                                   f"{', '.join(map(repr, known)) or '(none)'}")
            class_id, label = found
            removed = db.execute("DELETE FROM exemplars WHERE class_id = ?", (class_id,)).rowcount
            db.execute("DELETE FROM classes WHERE id = ?", (class_id,))
        log.info("forgot %r (%d exemplars)", label, removed)
        return removed

    def compact(self) -> None:
        """Give freed space back to the filesystem: checkpoint and truncate the WAL, and drop
        free pages (galleries created with auto_vacuum=INCREMENTAL). Best effort."""
        for statement in ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA incremental_vacuum",
                          "PRAGMA wal_checkpoint(TRUNCATE)"):
            try:
                self._db.execute(statement).fetchall()
            except sqlite3.Error as exc:
                log.info("%s: %s failed: %s", self.path, statement, exc)

    def remove_exemplar(self, exemplar_id: int) -> None:
        """Remove one exemplar; a class left without any exemplar is removed too."""
        with self._transaction() as db:
            row = db.execute("SELECT class_id FROM exemplars WHERE id = ?", (exemplar_id,)).fetchone()
            if row is None:
                raise GalleryError(f"no exemplar with id {exemplar_id} in the gallery")
            db.execute("DELETE FROM exemplars WHERE id = ?", (exemplar_id,))
            db.execute("DELETE FROM classes WHERE id = ? AND NOT EXISTS "
                       "(SELECT 1 FROM exemplars WHERE class_id = ?)", (row[0], row[0]))

    # -- reading ----------------------------------------------------------------------

    def classes(self) -> list[ClassInfo]:
        rows = self._db.execute(
            "SELECT c.label, COALESCE(SUM(e.negative = 0), 0), COALESCE(SUM(e.negative = 1), 0), c.id "
            "FROM classes c LEFT JOIN exemplars e ON e.class_id = c.id GROUP BY c.id ORDER BY c.label")
        return [ClassInfo(label, n, neg, cid) for label, n, neg, cid in rows]

    def exemplars(self, label: str | None = None) -> list[ExemplarInfo]:
        """Exemplars (of one class, or all), oldest first; their crops come from `crop`."""
        # A gallery of an older schema opened read-only may lack the source column.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(exemplars)")}
        source = "e.source" if "source" in columns else "NULL"
        query = (f"SELECT e.id, c.label, e.negative, e.created_at, {source} FROM exemplars e "
                 "JOIN classes c ON c.id = e.class_id")
        args: tuple[str, ...] = ()
        if label is not None:
            query, args = query + " WHERE c.label = ?", (label,)
        rows = self._db.execute(query + " ORDER BY e.id", args).fetchall()
        return [ExemplarInfo(i, lab, bool(neg), created, src) for i, lab, neg, created, src in rows]

    def crop(self, exemplar_id: int) -> bytes:
        """The stored JPEG of one exemplar."""
        row = self._db.execute("SELECT crop FROM exemplars WHERE id = ?", (exemplar_id,)).fetchone()
        if row is None:
            raise GalleryError(f"no exemplar with id {exemplar_id} in the gallery")
        return bytes(row[0])

    def embeddings(self, fingerprint: str, *, negative: bool = False) -> tuple[list[str], np.ndarray]:
        """(label of each row, (N, D) float32) of the positive (or negative) exemplars made by `fingerprint`."""
        rows = self._db.execute(
            "SELECT c.label, e.embedding FROM exemplars e JOIN classes c ON c.id = e.class_id "
            "WHERE e.fingerprint = ? AND e.negative = ? ORDER BY e.id", (fingerprint, int(negative))).fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [r[0] for r in rows], np.stack([np.frombuffer(r[1], F32) for r in rows]).astype(np.float32)

    def sources(self, fingerprint: str) -> tuple[list[str], np.ndarray, list[str | None]]:
        """`embeddings` of the positive exemplars, with the source of each row (None: its own)."""
        column = "e.source" if self._version >= 2 else "NULL"
        rows = self._db.execute(
            f"SELECT c.label, e.embedding, {column} FROM exemplars e JOIN classes c ON c.id = e.class_id "
            "WHERE e.fingerprint = ? AND e.negative = 0 ORDER BY e.id", (fingerprint,)).fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32), []
        return ([r[0] for r in rows], np.stack([np.frombuffer(r[1], F32) for r in rows]).astype(np.float32),
                [r[2] for r in rows])

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever the gallery changes, through this connection or any other."""
        return self._changes, self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
