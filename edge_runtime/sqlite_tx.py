"""One write transaction on a SQLite file that may sit on a full or read-only disk: BEGIN
IMMEDIATE (the write lock first, so two writers queue instead of failing half-way), COMMIT, or
ROLLBACK on any error; SQLite's own errors are translated into the store's typed ones (a full
disk, a read-only file) so that the API can say what to do. The gallery and the sample store
both write this way."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
