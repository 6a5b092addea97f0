"""Connections are bounded: hundreds of event-stream connections (with and without the token)
neither stop /health from answering quickly nor the camera from streaming, the log stays small,
and a daemon whose API cannot be reached any more stops pinging systemd's watchdog."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import httpx
from daemon_helpers import make_config, wait_for, write_yaml

from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.daemon.logs import RateLimitFilter

TOKEN = "connections-token-0123456789"


def open_streams(url: str, n: int, token: str | None) -> tuple[list[socket.socket], list[int]]:
    """Open `n` event-stream connections one after another, each kept open, and read the status
    each one is answered with before opening the next: the server then decides each with the
    connections before it already counted (opened all at once, uvicorn may count them all before
    it reads the first request, and every answer is 503)."""
    host, port = url.removeprefix("http://").split(":")
    socks, codes = [], []
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        socks.append(s)
        s.sendall(f"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n".encode())
        try:
            head = s.recv(64).decode(errors="replace")
            codes.append(int(head.split()[1]) if head.startswith("HTTP/") else -1)
        except (OSError, ValueError, IndexError):
            codes.append(-1)
    return socks, codes


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closes `s` once the rest of its answer has been read."""
    s.settimeout(5)
    try:
        while chunk := s.recv(4096):
            del chunk
        return True
    except OSError:  # timed out: the server kept the connection open
        return False


def test_hundreds_of_event_streams_are_refused_at_once(tmp_path, tiny_bundle, clips, daemon_process):
    config = write_yaml(tmp_path / "edge.yaml", f"""
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras: [{{id: cam, url: "{clips["red"]}", loop: true}}]
        api: {{port: 0, max_event_streams: 8, max_event_streams_per_client: 4, max_connections_per_client: 1000}}
    """)  # the per-client connection cap has its own test below; here the caps in all are tried
    proc = daemon_process(config, tmp_path / "daemon.log", env={"EDGESSL_API_TOKEN": TOKEN})
    url = proc.api_url()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: httpx.get(f"{url}/health", timeout=10).json()["cameras"]["cam"] == "streaming", 30, "streaming")
    anonymous, codes = open_streams(url, 150, None)
    idle: list[socket.socket] = []
    held: list[socket.socket] = []
    try:
        # No token, no stream, and the connection is given back at once (not kept alive for a retry).
        assert codes == [401] * len(anonymous), sorted(set(codes))
        assert all(closed_by_server(s) for s in anonymous)
        # Connections that never send a request still count: past api.max_connections (128) the
        # answer is 503 at once, not a wait.
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(130)]
        start = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        assert time.monotonic() - start < 1.0
        for s in idle:
            s.close()

        # The server sees those closes on its own loop (503 until it has): wait until it has room again.
        def room() -> bool:
            r = httpx.get(f"{url}/health", headers=auth, timeout=10)
            return r.status_code == 200 and r.json()["api"]["connections_open"] <= 1
        wait_for(room, 20, "the connections to close")
        held, codes = open_streams(url, 150, TOKEN)  # 4 streams from this client; the rest 429, closed at once
        assert codes.count(200) == 4 and codes.count(429) == len(held) - 4, sorted(set(codes))
        assert all(closed_by_server(s) for s, code in zip(held, codes, strict=True) if code == 429)
        refused_here = codes.count(429)
        worst = 0.0
        captured = httpx.get(f"{url}/health", headers=auth, timeout=10).json()["cameras"]["cam"]["captured"]
        for _ in range(20):
            start = time.monotonic()
            r = httpx.get(f"{url}/health", timeout=10)
            worst = max(worst, time.monotonic() - start)
            assert r.status_code == 200
        assert worst < 1.0, worst
        health = httpx.get(f"{url}/health", headers=auth, timeout=10).json()
        assert health["cameras"]["cam"]["captured"] > captured  # the camera kept streaming
        assert health["api"]["event_streams"]["open"] == 4
        assert health["api"]["event_streams"]["refused"] >= refused_here > 0
    finally:
        for s in anonymous + idle + held:
            s.close()
    # The streams are given back when their clients go.
    wait_for(lambda: httpx.get(f"{url}/health", headers=auth, timeout=10).json()["api"]["event_streams"]["open"] == 0,
             20, "the streams to close")
    assert (tmp_path / "daemon.log").stat().st_size < 200_000


def test_one_client_cannot_take_every_connection_nor_trickle_its_headers(tmp_path, tiny_bundle, clips,
                                                                           monkeypatch):
    """An attacker at 127.0.0.2 opens connections that send half a request and never finish it
    (slowloris), past its per-client cap: the extra ones get 503 at once, the half-sent ones are
    cut after the header timeout, and a client at 127.0.0.1 is served throughout."""
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0, "max_connections": 64, "max_connections_per_client": 8,
                              "header_timeout_s": 1.0})
    with Daemon(config) as daemon:
        host, port = daemon.api_url.removeprefix("http://").split(":")
        attacker = []
        for _ in range(40):
            s = socket.create_connection((host, int(port)), timeout=10, source_address=("127.0.0.2", 0))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            attacker.append(s)
        try:
            for _ in range(10):  # the user's client, meanwhile
                assert httpx.get(f"{daemon.api_url}/health", timeout=5).status_code == 200
            answers = []
            for s in attacker:
                s.settimeout(5)
                try:
                    answers.append(s.recv(64))  # 503 for the ones past the cap; b"" (closed) for the trickling
                except TimeoutError:
                    answers.append(None)
            busy = sum(a is not None and a.startswith(b"HTTP/1.1 503") for a in answers)
            assert busy == 32 and answers.count(b"") == 8, answers
            api = httpx.get(f"{daemon.api_url}/health", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=5).json()["api"]
            assert api["refused_per_client"] == 32 and api["cut_header_timeout"] == 8
        finally:
            for s in attacker:
                s.close()
        # A slow but honest client that finishes its headers in time is served.
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            time.sleep(0.3)
            s.sendall(b"\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")


def test_a_flood_of_one_log_line_is_cut(caplog):
    log = logging.getLogger("edgessl.test.flood")
    flt = RateLimitFilter(burst=5, period_s=0.5)
    records = [logging.LogRecord(log.name, logging.WARNING, __file__, 1, "client %s failed", (i,), None)
               for i in range(1000)]
    passed = [r for r in records if flt.filter(r)]
    assert len(passed) == 5
    time.sleep(0.6)
    late = logging.LogRecord(log.name, logging.WARNING, __file__, 1, "client %s failed", (1,), None)
    assert flt.filter(late) and "995 more like this" in late.getMessage()
    other = logging.LogRecord(log.name, logging.WARNING, __file__, 1, "another message", (), None)
    assert flt.filter(other)  # a different kind of line is not held back


def test_the_watchdog_stops_when_the_api_is_gone(tmp_path, tiny_bundle, clips, monkeypatch):
    """With its API unreachable (here: its server stopped under it), the daemon's threads live on,
    but it is not healthy: the watchdog pings stop, so systemd restarts it."""
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(path)
            notify.settimeout(1.0)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            monkeypatch.setenv("WATCHDOG_USEC", "1000000")
            config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                                 api={"port": 0})
            with Daemon(config) as daemon:
                def pinged() -> bool:
                    try:
                        return notify.recv(4096) == b"WATCHDOG=1"
                    except TimeoutError:
                        return False

                wait_for(pinged, 10, "a watchdog ping")
                assert daemon.supervisor.healthy()
                daemon.server.stop(2.0)  # the API is gone; the inference loop goes on
                wait_for(lambda: not daemon.supervisor.healthy(), 20, "the supervisor to notice the dead API")
                assert daemon.inference_alive()
                while True:  # drain what was sent before it noticed
                    try:
                        notify.recv(4096)
                    except TimeoutError:
                        break
                notify.settimeout(3.0)
                try:
                    late = notify.recv(4096)
                except TimeoutError:
                    late = b""
                assert late != b"WATCHDOG=1"
    os.environ.pop("NOTIFY_SOCKET", None)
