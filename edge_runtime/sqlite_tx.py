"""One write transaction on a SQLite file that may sit on a full or read-only disk: BEGIN
IMMEDIATE (the write lock first, so two writers queue instead of failing half-way), COMMIT, or
ROLLBACK on any error; SQLite's own errors are translated into the store's typed ones (a full
disk, a read-only file) so that the API can say what to do. The gallery and the sample store
both write this way, and open read-only the same way when they cannot."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class StorageFailure(Exception):
    """Mixed into a store's error type: its file cannot be written, because its filesystem is full
    (`full`) or the file or filesystem is read-only."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


@contextmanager
def immediate(db: sqlite3.Connection,
              translate: Callable[[sqlite3.Error], Exception | None]) -> Iterator[sqlite3.Connection]:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise translate(exc) or exc from exc
    try:
        yield db
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise translate(exc) or exc from exc
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def storage_problem(exc: sqlite3.Error) -> str | None:
    """"full" when the file's filesystem is full, "readonly" when the file or its filesystem
    cannot be written, else None (another error: corruption, a bug)."""
    text = str(exc).lower()
    if "full" in text:
        return "full"
    if "readonly" in text or "read-only" in text:
        return "readonly"
    return None


def connect_read_only(path: str | Path, probe: str, *, check_same_thread: bool = True) -> tuple[sqlite3.Connection, int]:
    """A connection that only reads `path` and its user_version, once `probe` (a query) runs on it.
    A WAL file without its -shm on a read-only filesystem can only be read as immutable, so that
    is the second try; raises the last sqlite3.Error when neither works."""
    last: sqlite3.Error | None = None
    for query in ("mode=ro", "mode=ro&immutable=1"):
        db = sqlite3.connect(f"file:{path}?{query}", uri=True, isolation_level=None, timeout=30.0,
                             check_same_thread=check_same_thread)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute(probe).fetchone()
        except sqlite3.Error as exc:
            db.close()
            last = exc
            continue
        return db, int(version)
    assert last is not None
    raise last
