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
