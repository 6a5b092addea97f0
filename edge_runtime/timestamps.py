"""Times as the API, events and sinks write them: ISO 8601 in UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """2026-12-05T07:14:12.345Z for a wall-clock time.time() value."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
