"""Fan-out of label changes and model switches to the server-sent-events clients."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class EventHub:
    """Fan-out of messages to the asyncio queues of the /v1/events clients."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: dict[asyncio.Queue[dict[str, Any] | None], asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self.closed = False

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._maxsize)
        with self._lock:
            self._subs[q] = asyncio.get_running_loop()
            if self.closed:
                q.put_nowait(None)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        with self._lock:
            self._subs.pop(q, None)

    @staticmethod
    def _put(q: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
        if q.full():
            q.get_nowait()  # a slow client loses the oldest
        q.put_nowait(item)

    def publish(self, item: dict[str, Any] | None) -> None:
        with self._lock:
            subs = list(self._subs.items())
        for q, loop in subs:
            try:
                loop.call_soon_threadsafe(self._put, q, item)
            except RuntimeError:  # that client's loop is closed
                self.unsubscribe(q)

    def close(self) -> None:
        self.closed = True
        self.publish(None)
