"""Bounded work off the event loop: a worker pool for decoding and embedding uploads, a
budget of pixels being decoded at once, and slots for live enrollments.

The HTTP event loop only reads request bodies and image headers; decoding (up to ~1.4 s and
120 MB for a 40 M-pixel PNG) and embedding run in `WorkPool`'s threads. When its queue is
full, a request is answered at once with 503 and `Retry-After` instead of waiting, and when
the live-enrollment slots of a camera (or of the daemon) are taken, with 429: the API's own
threads are never all held by long requests, so /health and /v1/state keep answering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from edgessl.edge_runtime.daemon.errors import Busy

log = logging.getLogger(__name__)

T = TypeVar("T")


class WorkPool:
    """`await pool.run(fn, ...)`: fn runs in one of `workers` threads; at most `max_queued`
    calls wait for or occupy a worker (past that: Busy, 503). `with pool.pixels(n):` reserves
    n decoded pixels of the daemon-wide budget, waiting (in the worker) until they fit."""

    def __init__(self, workers: int, max_queued: int, max_pixels: int) -> None:
        self.workers = workers
        self.max_queued = max_queued
        self.max_pixels = max_pixels
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="work")
        self._lock = threading.Lock()
        self._queued = 0
        self._budget = threading.Condition()
        self._in_flight = 0
        self.rejected = 0

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._queued >= self.max_queued:
                self.rejected += 1
                raise Busy(f"the daemon is busy: {self._queued} uploads are being decoded or wait for one of "
                           f"{self.workers} workers (api.max_queued = {self.max_queued}); retry shortly",
                           retry_after_s=2, status=503)
            self._queued += 1

        def call() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._queued -= 1

        try:
            return self._executor.submit(call)
        except RuntimeError:  # shut down
            with self._lock:
                self._queued -= 1
            raise Busy("the daemon is stopping", retry_after_s=5, status=503) from None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    @contextmanager
    def pixels(self, n: int) -> Iterator[None]:
        """Hold `n` pixels of the budget while decoding (one image alone always fits)."""
        with self._budget:
            while self._in_flight and self._in_flight + n > self.max_pixels:
                self._budget.wait()
            self._in_flight += n
        try:
            yield
        finally:
            with self._budget:
                self._in_flight -= n
                self._budget.notify_all()

    def status(self) -> dict[str, int]:
        return {"workers": self.workers, "queued": self._queued, "max_queued": self.max_queued,
                "pixels_in_flight": self._in_flight, "max_pixels_in_flight": self.max_pixels,
                "rejected": self.rejected}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Slots:
    """At most `per_key` holders of one key and `total` over all keys; `acquire` never waits:
    past a cap it raises Busy (429) with Retry-After. Each holder runs in its own thread
    (`run`), not in the API's thread pool."""

    def __init__(self, per_key: int, total: int, what: str, retry_after_s: int = 5) -> None:
        self.per_key = per_key
        self.total = total
        self.what = what
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(total, thread_name_prefix=what.replace(" ", "-"))
        self.rejected = 0

    def _acquire(self, key: str) -> None:
        with self._lock:
            running = sum(self._held.values())
            if self._held.get(key, 0) >= self.per_key:
                self.rejected += 1
                raise Busy(f"{self._held[key]} {self.what}s are running on {key} (at most {self.per_key} at once); "
                           f"retry when one is done", retry_after_s=self.retry_after_s)
            if running >= self.total:
                self.rejected += 1
                raise Busy(f"{running} {self.what}s are running (at most {self.total} at once on the device); "
                           f"retry when one is done", retry_after_s=self.retry_after_s)
            self._held[key] = self._held.get(key, 0) + 1

    def _release(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]

    async def run(self, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._acquire(key)

        def call() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                self._release(key)

        try:
            future = self._executor.submit(call)
        except BaseException:
            self._release(key)
            raise
        return await asyncio.wrap_future(future)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"running": dict(self._held), "per_camera": self.per_key, "total": self.total,
                    "rejected": self.rejected}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
