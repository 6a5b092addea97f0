"""The daemon's log, bounded: secrets redacted and floods cut.

A hostile client can make every request fail the same way (hundreds of connections, a broken
body after another), and a disk full of log lines stops the daemon as surely as a crash. So
every record passes `RedactingFilter` (URLs without their secrets) and `RateLimitFilter`: at most
`burst` records of one kind (logger and message template) per `period_s`; past that they are
counted, and the count is logged once when the period ends.
"""

from __future__ import annotations

import logging
import threading
import time

from edgessl.edge_runtime.redact import RedactingFilter


class RateLimitFilter(logging.Filter):
    def __init__(self, burst: int = 20, period_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period_s = burst, period_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (period start, records)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            start, count = self._seen.get(kind, (now, 0))
            if now - start >= self.period_s:
                if count > self.burst:  # say how many were left out, once, on this record
                    record.msg = f"{record.msg} [{count - self.burst} more like this in the last {self.period_s:g} s " \
                                 "were not logged]"
                start, count = now, 0
            count += 1
            self._seen[kind] = (start, count)
            if len(self._seen) > 1000:  # bounded: forget the oldest kinds
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
        return count <= self.burst


def bound_logging(burst: int = 20, period_s: float = 60.0) -> None:
    """Put the redacting and rate-limiting filters on every handler of the root logger (the
    daemon's process: its own records and those of uvicorn, paho, OpenCV wrappers)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RateLimitFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
            handler.addFilter(RateLimitFilter(burst, period_s))
