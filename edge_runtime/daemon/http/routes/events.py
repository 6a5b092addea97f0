"""Server-sent events: label changes, what objects did, the objects of each frame, model switches,
drift, samples kept for the server.

A stream stays open for as long as its client likes, so streams are capped: in all
(`api.max_event_streams`) and per client address (`api.max_event_streams_per_client`); past a
cap the answer is 429 at once, so a few hundred connections cannot hold the daemon's file
descriptors or its event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from edgessl.edge_runtime.daemon.errors import Busy
from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.schemas import errors

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon


class StreamSlots:
    """How many event streams are open, in all and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self.refused = 0

    def take(self, client: str) -> None:
        with self._lock:
            if sum(self._open.values()) >= self.total or self._open[client] >= self.per_client:
                self.refused += 1
                mine = self._open[client]
                raise Busy(f"too many event streams open ({mine} from {client}, {sum(self._open.values())} in all; at "
                           f"most {self.per_client} per client and {self.total} in all): close one and retry",
                           retry_after_s=5)
            self._open[client] += 1

    def give(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"open": sum(self._open.values()), "clients": len(self._open), "max": self.total,
                    "max_per_client": self.per_client, "refused": self.refused}


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["events"], dependencies=[Depends(auth.require)])
    slots = daemon.event_streams

    @r.get("/v1/events", response_class=StreamingResponse, responses=errors(401, 429),
           summary="server-sent events: region label changes (`event`), object events (`object`), the objects "
           "of each frame (`objects`), model switches (`model`), drift (`drift`), samples kept (`sample`)")
    async def events(request: Request) -> StreamingResponse:
        client = request.client.host if request.client else "?"
        slots.take(client)
        try:
            q = daemon.hub.subscribe()
        except BaseException:
            slots.give(client)
            raise

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(q.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    yield f"event: {item.get('type', 'message')}\ndata: {json.dumps(item)}\n\n"
            finally:
                daemon.hub.unsubscribe(q)
                slots.give(client)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return r
