"""The few-shot gallery: enrolled classes and their exemplars, in one SQLite file.

Each exemplar keeps its crop (JPEG), its embedding and the fingerprint of the model that
made it. When a new model is flashed, `reembed` recomputes the embeddings from the crops,
so enrollments survive model updates. WAL with `synchronous=FULL`: when `add` returns,
the enrollment survives a crash or power loss.
"""

from __future__ import annotations

import logging
import sqlite3
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, Self

import cv2
import numpy as np

from edgessl.edge_runtime.inference.preprocess import to_bgr
from edgessl.errors import GalleryError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
UNKNOWN = "unknown"  # what the classifier answers below its threshold; not a valid label
MAX_LABEL_CHARS = 64
JPEG_QUALITY = 95
_F32 = np.dtype("<f4")  # embeddings on disk: the same bytes on every device

_SCHEMA = """
CREATE TABLE classes (
    id          INTEGER PRIMARY KEY,
    label       TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE exemplars (
    id          INTEGER PRIMARY KEY,
    class_id    INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    crop        BLOB NOT NULL,                 -- JPEG
    embedding   BLOB NOT NULL,                 -- float32, little-endian
    fingerprint TEXT NOT NULL,                 -- sha256 of the model file that made the embedding
    negative    INTEGER NOT NULL DEFAULT 0 CHECK (negative IN (0, 1)),  -- 1: "this is not <label>"
    created_at  TEXT NOT NULL
);
CREATE INDEX exemplars_class ON exemplars(class_id);
CREATE INDEX exemplars_fingerprint ON exemplars(fingerprint);
"""


class Embedder(Protocol):
    """What `reembed` needs (a FeatureExtractor is one)."""

    fingerprint: str

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class ClassInfo:
    label: str
    exemplars: int  # positive examples
    negatives: int = 0  # negative examples ("this is not <label>")


@dataclass(frozen=True)
class ExemplarInfo:
    id: int
    label: str
    negative: bool
    created_at: str


def validate_label(label: str) -> str:
    """Return the label if it can name a class, else raise GalleryError saying what is valid."""
    if not isinstance(label, str) or not label.strip():
        raise GalleryError(f"label {label!r} is empty; a label is 1-{MAX_LABEL_CHARS} printable characters")
    if len(label) > MAX_LABEL_CHARS:
        raise GalleryError(f"label {label[:20]!r}... has {len(label)} characters; at most {MAX_LABEL_CHARS} are allowed")
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        raise GalleryError(f"label {label!r} contains control characters; use printable characters only")
    if label == UNKNOWN:
        raise GalleryError(f"label {UNKNOWN!r} is reserved for frames that match no class; choose another")
    return label


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def encode_crop(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", to_bgr(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise GalleryError(f"cannot JPEG-encode a crop of shape {image.shape}")
    return buf.tobytes()


def decode_crop(blob: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryError("a stored crop is not a decodable JPEG (gallery damaged)")
    return image


class Gallery:
    """`Gallery(path)` opens (or creates) a gallery file; use it as a context manager."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GalleryError(f"{self.path}: no gallery there (enroll a class first to create one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._changes = 0  # commits through this connection (data_version counts the others')
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise GalleryError(f"{self.path}: not a usable gallery database: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise GalleryError(f"{self.path}: gallery schema version {version}; this edgessl reads "
                                   f"version {SCHEMA_VERSION} (upgrade edgessl)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._changes += 1

    # -- enrollment -------------------------------------------------------------------

    def add(
        self, label: str, crops: Sequence[np.ndarray], embeddings: np.ndarray, fingerprint: str,
        *, negative: bool = False,
    ) -> int:
        """Store exemplars of `label` (creating the class) in one transaction; return how many.

        `negative=True` stores them as negative examples: things that are *not* `label` but
        look like it. When this returns, the exemplars are on disk."""
        validate_label(label)
        embeddings = np.asarray(embeddings, np.float32)
        if len(crops) == 0 or embeddings.ndim != 2 or len(embeddings) != len(crops):
            raise GalleryError(f"add needs one embedding row per crop and at least one crop; "
                               f"got {len(crops)} crops and embeddings of shape {embeddings.shape}")
        blobs = [encode_crop(c) for c in crops]
        now = _now()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO classes (label, created_at) VALUES (?, ?)", (label, now))
            (class_id,) = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
            db.executemany(
                "INSERT INTO exemplars (class_id, crop, embedding, fingerprint, negative, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(class_id, blob, emb.astype(_F32).tobytes(), fingerprint, int(negative), now)
                 for blob, emb in zip(blobs, embeddings, strict=True)],
            )
        log.info("enrolled %d %sexemplars of %r", len(blobs), "negative " if negative else "", label)
        return len(blobs)

    def forget(self, label: str) -> int:
        """Remove a class and its exemplars; return how many exemplars were removed."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
            if row is None:
                known = [r[0] for r in db.execute("SELECT label FROM classes ORDER BY label")]
                raise GalleryError(f"no class {label!r} in the gallery; known classes: "
                                   f"{', '.join(map(repr, known)) or '(none)'}")
            removed = db.execute("DELETE FROM exemplars WHERE class_id = ?", row).rowcount
            db.execute("DELETE FROM classes WHERE id = ?", row)
        log.info("forgot %r (%d exemplars)", label, removed)
        return removed

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
            "SELECT c.label, COALESCE(SUM(e.negative = 0), 0), COALESCE(SUM(e.negative = 1), 0) "
            "FROM classes c LEFT JOIN exemplars e ON e.class_id = c.id GROUP BY c.id ORDER BY c.label")
        return [ClassInfo(label, n, neg) for label, n, neg in rows]

    def exemplars(self, label: str | None = None) -> list[ExemplarInfo]:
        """Exemplars (of one class, or all), oldest first; their crops come from `crop`."""
        query = ("SELECT e.id, c.label, e.negative, e.created_at FROM exemplars e "
                 "JOIN classes c ON c.id = e.class_id")
        args: tuple[str, ...] = ()
        if label is not None:
            query, args = query + " WHERE c.label = ?", (label,)
        rows = self._db.execute(query + " ORDER BY e.id", args).fetchall()
        return [ExemplarInfo(i, lab, bool(neg), created) for i, lab, neg, created in rows]

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
        return [r[0] for r in rows], np.stack([np.frombuffer(r[1], _F32) for r in rows]).astype(np.float32)

    def stale(self, fingerprint: str) -> int:
        """How many exemplars were embedded by a model other than `fingerprint`."""
        return self._db.execute("SELECT COUNT(*) FROM exemplars WHERE fingerprint != ?", (fingerprint,)).fetchone()[0]

    def reembed(self, extractor: Embedder, chunk: int = 64) -> int:
        """Recompute stale embeddings from the stored crops, in one transaction; return how many."""
        fingerprint = extractor.fingerprint
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM exemplars WHERE fingerprint != ?", (fingerprint,))]
            for start in range(0, len(ids), chunk):
                part = ids[start:start + chunk]
                marks = ",".join("?" * len(part))
                rows = db.execute(f"SELECT id, crop FROM exemplars WHERE id IN ({marks}) ORDER BY id", part).fetchall()
                emb = extractor.embed([decode_crop(r[1]) for r in rows])
                db.executemany("UPDATE exemplars SET embedding = ?, fingerprint = ? WHERE id = ?",
                               [(e.astype(_F32).tobytes(), fingerprint, r[0]) for r, e in zip(rows, emb, strict=True)])
        if ids:
            log.info("re-embedded %d exemplars with model %s", len(ids), fingerprint[:12])
        return len(ids)

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
