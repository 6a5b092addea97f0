"""Sinks: JSON lines with rotation, webhooks with retries, and isolation of a failing sink."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from daemon_helpers import RED, make_config, textured, wait_for

from edgessl.edge_runtime.daemon.config import JsonlConfig, WebhookConfig
from edgessl.edge_runtime.daemon.sinks import Event, JsonlSink, SinkRunner, WebhookSink


def event(i: int = 0, label: str = "red") -> Event:
    now = time.time()
    return Event("dev", "cam", "full", label, None, 0.9, now - 0.05, now, i, "tiny:1")


def test_event_payload_carries_capture_and_decision_time():
    d = event(7).as_dict()
    capture = datetime.fromisoformat(d["capture_time"].replace("Z", "+00:00"))
    decision = datetime.fromisoformat(d["decision_time"].replace("Z", "+00:00"))
    assert 0 < (decision - capture).total_seconds() < 1 and d["latency_ms"] == pytest.approx(50, abs=2)
    assert {"device", "camera", "region", "label", "previous", "score", "frame", "model"} <= set(d)


def test_jsonl_appends_and_rotates(tmp_path):
    path = tmp_path / "log" / "events.jsonl"
    sink = JsonlSink(JsonlConfig(path=path, max_bytes=1024, backups=2))
    try:
        for i in range(40):
            sink(event(i))
    finally:
        sink.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 1024 for p in path.parent.iterdir())
    newest = [json.loads(line)["frame"] for line in path.read_text().splitlines()]
    older = [json.loads(line)["frame"] for line in (path.parent / "events.jsonl.1").read_text().splitlines()]
    assert newest[-1] == 39 and older[-1] == newest[0] - 1  # contiguous across the rotation


class _Hook(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.answers.pop(0) if self.answers else 200
        if status < 400:
            self.received.append(json.loads(body) | {"auth": self.headers.get("Authorization")})
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server():
    _Hook.answers, _Hook.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_retries_then_delivers(hook_server):
    _Hook.answers = [503, 500]
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
    sink = WebhookSink(WebhookConfig(url=url, retries=3, backoff_s=0.01, headers={"Authorization": "Bearer x"}))
    try:
        sink(event(1))
    finally:
        sink.close()
    assert [(r["frame"], r["auth"]) for r in _Hook.received] == [(1, "Bearer x")]


def test_webhook_gives_up_with_an_error(hook_server):
    _Hook.answers = [500] * 10
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
    sink = WebhookSink(WebhookConfig(url=url, retries=2, backoff_s=0.01))
    try:
        with pytest.raises(RuntimeError, match="not delivered.*answered 500"):
            sink(event())
    finally:
        sink.close()
    assert _Hook.answers == [500] * 7  # 1 attempt + 2 retries


def test_a_failing_or_stuck_sink_does_not_stop_the_others():
    got: list[int] = []
    release = threading.Event()
    errors: list[str] = []

    def broken(e: Event) -> None:
        raise ConnectionError("broker down")

    def stuck(e: Event) -> None:
        release.wait(10)

    runners = [SinkRunner("broken", broken, on_error=errors.append),
               SinkRunner("stuck", stuck, maxsize=3),
               SinkRunner("good", lambda e: got.append(e.frame))]
    try:
        for i in range(20):
            for r in runners:
                r.submit(event(i))  # never blocks, never raises
        wait_for(lambda: len(got) == 20, 10, "the good sink to get every event")
        wait_for(lambda: runners[0].errors == 20, 10, "the broken sink to fail on every event")
        assert got == list(range(20)) and errors == ["broken"] * 20
        assert runners[1].dropped >= 16  # the stuck sink lost the oldest, the others did not wait for it
    finally:
        release.set()
        for r in runners:
            r.close(timeout=2)


def test_daemon_keeps_delivering_when_one_sink_fails(tmp_path, tiny_bundle, clips, start_daemon):
    good: list[Event] = []

    def broken(e: Event) -> None:
        raise RuntimeError("this sink always fails")

    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         sinks={"jsonl": {"path": str(tmp_path / "events.jsonl")}})
    daemon = start_daemon(config, extra_sinks={"broken": broken, "good": good.append})
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(4)])
    wait_for(lambda: any(e.label == "red" for e in good), 20, "the 'red' event in the good sink")
    wait_for(lambda: '"label": "red"' in (tmp_path / "events.jsonl").read_text(), 10, "the event in the JSONL file")
    status = daemon.sink_status()
    assert status["broken"]["errors"] >= 1 and status["good"]["errors"] == 0
    assert b'edgessl_sink_errors_total{sink="broken"}' in daemon.metrics.render()
    red = next(e for e in good if e.label == "red")
    assert red.capture_time <= red.decision_time < red.capture_time + 5 and red.camera == "cam"
