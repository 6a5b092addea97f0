"""Errors of daemon requests; `status` is the HTTP status the API answers with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgessl.errors import EdgesslError


class DaemonError(EdgesslError):
    """A request the daemon cannot carry out; `detail` is returned to the HTTP client."""

    status = 400

    def __init__(self, message: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = dict(detail or {})


class NotFound(DaemonError):
    status = 404


class Conflict(DaemonError):
    status = 409


class Rejected(DaemonError):
    status = 422


class Forbidden(DaemonError):
    status = 403


class Busy(DaemonError):
    """The bounded work queue (or the live-enrollment slots) is full: try again later.
    Answered 429 (or 503 for a daemon-wide limit) with `Retry-After`."""

    status = 429

    def __init__(self, message: str, retry_after_s: int = 2, *, status: int = 429,
                 detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, detail)
        self.status = status
        self.headers = {"Retry-After": str(max(1, int(retry_after_s)))}


class InsufficientStorage(DaemonError):
    """A filesystem the daemon writes to is full (507)."""

    status = 507


class StorageUnavailable(DaemonError):
    """Storage the daemon must write to is read-only or unwritable (503)."""

    status = 503
