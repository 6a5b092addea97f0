"""The supervisor: notices stalled cameras, and pings systemd's watchdog only while the daemon
really works: the inference loop came round recently *and* the API answered its own probe.

A process whose threads live but whose API is gone (every file descriptor held by clients, a
wedged event loop) is not healthy; without pings, systemd restarts it (`WatchdogSec` in the
unit). Without systemd (no WATCHDOG_USEC) it only checks the cameras.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from edgessl.edge_runtime.daemon.http.server import ApiServer
from edgessl.edge_runtime.daemon.streams import CameraStream
from edgessl.edge_runtime.daemon.systemd import sd_notify, watchdog_interval

API_STALE_S = 10.0  # an API whose last answer is older than this is dead


class Supervisor:
    def __init__(self, streams: Iterable[CameraStream], inference_alive: Callable[[], bool],
                 stop: threading.Event, ready: threading.Event) -> None:
        self.streams = list(streams)
        self.inference_alive = inference_alive
        self.stop = stop
        self.ready = ready
        self.server: ApiServer | None = None  # set when the API is started
        self.pings = 0

    def api_alive(self) -> bool:
        s = self.server
        return s is None or (s.last_answer is not None and time.monotonic() - s.last_answer < API_STALE_S)

    def healthy(self) -> bool:
        return self.inference_alive() and self.api_alive()

    def run(self) -> None:
        interval = watchdog_interval()
        probe_every = min(2.0, interval / 2) if interval else 2.0
        last_ping = last_probe = 0.0
        while not self.stop.wait(0.25):
            now = time.monotonic()
            for stream in self.streams:
                stream.check_stall(now)
            if self.server is not None and now - last_probe >= probe_every:
                self.server.probe()
                last_probe = time.monotonic()
            if interval is not None and self.ready.is_set() and now - last_ping >= interval and self.healthy():
                sd_notify("WATCHDOG=1")
                self.pings += 1
                last_ping = now
