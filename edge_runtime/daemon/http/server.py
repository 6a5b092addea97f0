"""The API's server: uvicorn on its own thread, bounded, and a probe that says it still answers.

Bounds: `api.max_connections` connections or requests at once (past it uvicorn answers 503 at
once: `limit_concurrency`), the same listen backlog, `api.max_connections_per_client` from one
client address (so one client cannot hold every connection), a request's headers due within
`api.header_timeout_s` (a client trickling them, slowloris, is cut off), idle keep-alive
connections closed after 5 s. The systemd unit's LimitNOFILE sits well above the cap, so the cameras' and sinks' sockets
and files are never starved by clients. The probe is a real request over loopback (the socket,
the event loop, a route): a process whose API cannot be reached any more is not healthy, and the
watchdog stops pinging systemd (watchdog.py).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
import time
from collections import Counter
from typing import Any

from edgessl.edge_runtime.daemon.config import ApiConfig
from edgessl.edge_runtime.daemon.errors import DaemonError

log = logging.getLogger(__name__)


_BUSY_BODY = b'{"ok":false,"detail":"too many connections from this address; retry"}\n'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def bounded_protocol(api: ApiConfig) -> tuple[type[asyncio.Protocol], Counter[str], Counter[str]]:
    """uvicorn's h11 protocol with a per-client connection cap and a deadline for headers; the
    counters of refusals (per reason) and of open connections (per client address) for /health."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_from: Counter[str] = Counter()
    refused: Counter[str] = Counter()

    class Bounded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _address = ""
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self._address = peer[0] if peer else "?"
            open_from[self._address] += 1
            if open_from[self._address] > api.max_connections_per_client:
                # Refused before uvicorn counts it: a flood from one address never fills the
                # server-wide cap (`limit_concurrency`) that other clients are measured against.
                self._refused = True
                refused["per_client"] += 1
                transport.write(BUSY)
                transport.close()
                return
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            open_from[self._address] -= 1
            if open_from[self._address] <= 0:
                del open_from[self._address]
            if self._deadline is not None:
                self._deadline.cancel()
            if not self._refused:
                super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers are due in time too

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(api.header_timeout_s, self._late)

        def _late(self) -> None:
            # Only a connection waiting for headers is cut: a stream or an upload in progress has a request.
            self._deadline = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                refused["header_timeout"] += 1
                self.transport.close()

    return Bounded, refused, open_from


class ApiServer:
    def __init__(self, app: Any, api: ApiConfig) -> None:
        import uvicorn

        self.api, self.app = api, app
        protocol, self.refused, self.open_from = bounded_protocol(api)
        config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1, limit_concurrency=api.max_connections,
                                backlog=api.max_connections, timeout_keep_alive=5, http=protocol)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.url: str | None = None
        self.port: int | None = None
        self.last_answer: float | None = None  # monotonic time of the last probe that got an answer
        self.probe_failures = 0

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DaemonError(f"the HTTP API could not listen on {self.api.host}:{self.api.port} (port in use?)")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        host = self.api.host if self.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.url = f"http://{host}:{self.port}"
        self.last_answer = time.monotonic()
        return self.url

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stop(self, join: float) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(join * 0.8)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(join * 0.2)

    def probe(self, timeout: float = 2.0) -> bool:
        """GET /health over loopback: any HTTP answer (even 503 past the connection cap) means the
        API is serving; no connection, no answer in `timeout` s, or no file descriptor left, not."""
        if self.port is None:
            return False
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.api.host, self.api.host)
        try:
            conn = http.client.HTTPConnection(host, self.port, timeout=timeout)
            try:
                conn.request("GET", "/health", headers={"Host": "localhost"})
                conn.getresponse().read()
            finally:
                conn.close()
        except OSError as exc:
            self.probe_failures += 1
            log.warning("the API did not answer its own probe: %s", exc)
            return False
        self.last_answer = time.monotonic()
        return True

    def status(self) -> dict[str, Any]:
        age = None if self.last_answer is None else round(time.monotonic() - self.last_answer, 1)
        return {"url": self.url, "answered_s_ago": age, "probe_failures": self.probe_failures,
                "max_connections": self.api.max_connections, "connections_open": sum(self.open_from.values()),
                "refused_per_client": self.refused["per_client"],
                "cut_header_timeout": self.refused["header_timeout"]}
