"""The daemon's storage: checked at start (read-only or unwritable state_dir or gallery),
leftovers of interrupted uploads removed, a reserve file that is given up when the disk is
full (so that classes can still be deleted), and typed errors that say what is full or
read-only and how to fix it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgessl.edge_runtime.daemon.errors import DaemonError, InsufficientStorage, StorageUnavailable
from edgessl.edge_runtime.fewshot.gallery import Gallery, GalleryStorageError
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

RESERVE_FILE = ".reserve"
LOCK_FILE = "daemon.lock"
INCOMING = "incoming"
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def _free(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _probe(folder: Path) -> str | None:
    """None when a file can be created, written, synced and removed in `folder`, else why not."""
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    return None


class Storage:
    """What the daemon writes: state_dir (uploads, token, reserve) and the gallery."""

    def __init__(self, state_dir: Path, gallery: Path, reserve_bytes: int) -> None:
        self.state_dir = Path(state_dir)
        self.gallery = Path(gallery)
        self.reserve_bytes = reserve_bytes
        self.problems: list[str] = []
        self.state_writable = True
        self.gallery_writable = True
        self.last_error: dict[str, Any] | None = None
        self._lock_fd: int | None = None

    @property
    def reserve(self) -> Path:
        return self.state_dir / RESERVE_FILE

    # -- start-up ---------------------------------------------------------------------------

    def lock(self) -> None:
        """One daemon per state folder: a second one would share the gallery and the uploads
        folder, diverge from the first after an install and clean away its uploads. The lock is
        the kernel's (flock): it goes with the process, so a crash leaves none behind."""
        path = self.state_dir / LOCK_FILE
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("cannot create the state lock %s (%s): a second daemon on this folder would not be noticed",
                        path, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(f"another edgessl daemon (pid {other}) is running with state_dir {self.state_dir}; one "
                              "daemon per state folder (give the second one a state_dir of its own)") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check(self) -> list[str]:
        """Find out, and log, whether state_dir and the gallery can be written. A full disk with
        the reserve still in place gives the reserve up first: that is what it is for, and the
        daemon must start and serve the API (to delete classes) however full the disk is."""
        self.problems = []
        why = _probe(self.state_dir)
        if why is not None and "ENOSPC" in why and self.release_reserve():
            why = _probe(self.state_dir)
        self.state_writable = why is None
        if why is not None:
            self.problems.append(f"state_dir {self.state_dir} cannot be written: {why}; uploads, the API token "
                                 f"and the storage reserve need it (make it writable, or remount it read-write)")
        gallery_dir_why = why if self.gallery.parent == self.state_dir else _probe(self.gallery.parent)
        gallery_why: str | None = gallery_dir_why
        if gallery_why is None and self.gallery.exists() and not os.access(self.gallery, os.W_OK):
            gallery_why = "the file is not writable (permissions)"
        if gallery_why is None and self.gallery.exists():
            try:
                with Gallery(self.gallery) as g:
                    if g.read_only:
                        gallery_why = "SQLite opened it read-only"
            except EdgesslError as exc:
                gallery_why = str(exc)
        self.gallery_writable = gallery_why is None
        if gallery_why is not None:
            self.problems.append(f"gallery {self.gallery} cannot be written: {gallery_why}; classes are served "
                                 f"but nothing can be enrolled or deleted (make it and its folder writable, "
                                 f"then restart)")
        for problem in self.problems:
            log.warning("storage: %s", problem)
        return self.problems

    def clean_incoming(self) -> int:
        """Remove what interrupted uploads left in state_dir/incoming; return how many files."""
        folder = self.state_dir / INCOMING
        if not folder.is_dir():
            return 0
        count = size = 0
        for leftover in folder.iterdir():
            try:
                size += leftover.stat().st_size if leftover.is_file() else 0
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
                count += 1
            except OSError as exc:
                log.warning("cannot remove %s, left by an interrupted upload: %s", leftover, exc)
        if count:
            log.info("removed %d leftovers of interrupted uploads from %s (%.1f MiB)", count, folder, size / 2**20)
        return count

    def make_reserve(self) -> bool:
        """Write the reserve file (real blocks, not a sparse file) if it is missing and fits."""
        if self.reserve_bytes <= 0 or not self.state_writable:
            return False
        try:
            if self.reserve.exists() and self.reserve.stat().st_size >= self.reserve_bytes:
                return True
            free = _free(self.state_dir) or 0
            if free < 2 * self.reserve_bytes:
                log.warning("storage: only %d bytes free in %s; the %d-byte reserve is not made", free,
                            self.state_dir, self.reserve_bytes)
                return False
            with open(self.reserve, "wb") as f:
                left = self.reserve_bytes
                while left:
                    n = min(left, 1 << 20)
                    f.write(b"\0" * n)
                    left -= n
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            log.warning("storage: cannot make the reserve %s: %s", self.reserve, exc)
            return False

    def release_reserve(self) -> bool:
        """Give the reserve up (the disk is full); True when there was one."""
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        log.warning("storage: %s is full; gave up the %d-byte reserve %s", self.state_dir, self.reserve_bytes,
                    self.reserve)
        return True

    # -- errors -----------------------------------------------------------------------------

    def full(self, what: str, path: Path, exc: BaseException | None = None) -> InsufficientStorage:
        free = _free(path)
        error = InsufficientStorage(
            f"{what}: the filesystem of {path} is full ({free if free is not None else '?'} bytes free). Free "
            f"space by deleting classes (DELETE /v1/classes/{{label}}) or exemplars (DELETE /v1/exemplars/{{id}}), "
            f"or by removing files from {self.state_dir} or its filesystem" + (f" ({exc})" if exc else ""),
            {"storage": "full", "path": str(path)})
        self._note(error)
        return error

    def read_only(self, what: str, path: Path, exc: BaseException | None = None) -> StorageUnavailable:
        error = StorageUnavailable(
            f"{what}: {path} is read-only or cannot be written" + (f" ({exc})" if exc else "")
            + "; make it and its folder writable (remount read-write, fix ownership or permissions) and restart "
              "the daemon", {"storage": "read-only", "path": str(path)})
        self._note(error)
        return error

    def translate(self, exc: BaseException, what: str, path: Path | None = None) -> DaemonError | None:
        """The typed error for a storage failure (a full or read-only filesystem), else None."""
        if isinstance(exc, GalleryStorageError):
            return (self.full if exc.full else self.read_only)(what, path or self.gallery, exc)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return self.full(what, Path(exc.filename) if exc.filename else (path or self.state_dir), exc)
        if isinstance(exc, OSError) and exc.errno in READ_ONLY_ERRNOS:
            return self.read_only(what, Path(exc.filename) if exc.filename else (path or self.state_dir), exc)
        return None

    def _note(self, error: DaemonError) -> None:
        self.last_error = {"at": time.time(), "status": error.status, "message": str(error)}

    def status(self) -> dict[str, Any]:
        return {"ok": not self.problems, "state_dir": str(self.state_dir), "gallery": str(self.gallery),
                "state_dir_writable": self.state_writable, "gallery_writable": self.gallery_writable,
                "free_bytes": _free(self.state_dir), "reserve": self.reserve.exists(),
                "problems": list(self.problems), "last_error": self.last_error}
