"""Sinks: every registered sink end to end, JSON lines with rotation, webhooks with retries, and
isolation of a failing sink."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import RED, Subscriber, make_config, textured, wait_for
from pydantic import TypeAdapter, ValidationError

from edgessl.edge_runtime.daemon.config_file import check_text
from edgessl.edge_runtime.daemon.sinks import (
    SINKS,
    Event,
    SinkError,
    SinkOptions,
    SinkOptionsUnion,
    SinkRunner,
    build_sinks,
    sink_module,
    sink_packages_missing,
)
from edgessl.edge_runtime.daemon.sinks.jsonl import JsonlOptions, JsonlSink
from edgessl.edge_runtime.daemon.sinks.webhook import WebhookOptions, WebhookSink


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
    sink = JsonlSink(JsonlOptions(type="jsonl", path=path, max_bytes=1024, backups=2))
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
    sink = WebhookSink(WebhookOptions(type="webhook", url=url, retries=3, backoff_s=0.01,
                                     headers={"Authorization": "Bearer x"}))
    try:
        sink(event(1))
    finally:
        sink.close()
    assert [(r["frame"], r["auth"]) for r in _Hook.received] == [(1, "Bearer x")]


def test_webhook_gives_up_with_an_error(hook_server):
    _Hook.answers = [500] * 10
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
    sink = WebhookSink(WebhookOptions(type="webhook", url=url, retries=2, backoff_s=0.01))
    try:
        with pytest.raises(RuntimeError, match="not delivered.*answered 500"):
            sink(event())
    finally:
        sink.close()
    assert _Hook.answers == [500] * 7  # 1 attempt + 2 retries


# -- every registered sink, against a real endpoint on loopback --------------------------------


@dataclass
class Endpoint:
    options: dict[str, Any]  # the smallest valid config entry
    delivered: Callable[[int], bool]  # did the endpoint get the event of this frame?
    ready: Callable[[Any], bool] = lambda sink: True  # may the test send yet (e.g. connected)?


def _jsonl(tmp_path: Path, request: pytest.FixtureRequest) -> Endpoint:
    path = tmp_path / "out" / "events.jsonl"
    return Endpoint({"type": "jsonl", "path": str(path)},
                    lambda frame: path.exists() and f'"frame": {frame}' in path.read_text())


def _webhook(tmp_path: Path, request: pytest.FixtureRequest) -> Endpoint:
    server = request.getfixturevalue("hook_server")
    return Endpoint({"type": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/hook"},
                    lambda frame: any(r["frame"] == frame for r in _Hook.received))


def _mqtt(tmp_path: Path, request: pytest.FixtureRequest) -> Endpoint:
    broker = request.getfixturevalue("broker")  # skips when mosquitto is not installed
    sub = Subscriber(broker.port, "edgessl/dev/#")
    request.addfinalizer(sub.close)

    def delivered(frame: int) -> bool:
        events = [json.loads(p)["frame"] for p, _ in sub.on("edgessl/dev/events")]
        states = [json.loads(p)["frame"] for p, retained in sub.on("edgessl/dev/cam/full/state")]
        return frame in events and frame in states

    return Endpoint({"type": "mqtt", "host": "127.0.0.1", "port": broker.port}, delivered,
                    lambda sink: sink.connected.is_set())


ENDPOINTS: dict[str, Callable[[Path, pytest.FixtureRequest], Endpoint]] = {
    "jsonl": _jsonl, "webhook": _webhook, "mqtt": _mqtt}


def test_every_registered_sink_has_an_endpoint_here():
    assert set(ENDPOINTS) == set(SINKS), "add a loopback endpoint for each new sink to ENDPOINTS"


@pytest.mark.parametrize("name", sorted(SINKS))
def test_registered_sink(name, tmp_path, request):
    module = sink_module(name)
    assert module.NAME == name and isinstance(module.REQUIRES, tuple) and issubclass(module.Options, SinkOptions)
    assert sink_packages_missing(name) is None
    endpoint = ENDPOINTS[name](tmp_path, request)

    # Options: the minimal entry validates, alone and through the config's union; typos are errors.
    options = module.Options.model_validate(endpoint.options)
    assert options.type == name and options.queue_size == 1000
    assert type(TypeAdapter(SinkOptionsUnion).validate_python(endpoint.options)) is module.Options
    with pytest.raises(ValidationError, match="no_such_key"):
        module.Options.model_validate({**endpoint.options, "no_such_key": 1})
    other = next(n for n in sorted(SINKS) if n != name) if len(SINKS) > 1 else "nothing"
    with pytest.raises(ValidationError, match="type"):
        module.Options.model_validate({**endpoint.options, "type": other})

    # Built as the daemon builds it, it delivers one event to the endpoint, then closes.
    sink = build_sinks({"out": options}, "dev", threading.Event())["out"]
    try:
        wait_for(lambda: endpoint.ready(sink), 10, f"the {name} sink to be ready")
        sink(event(42))
        wait_for(lambda: endpoint.delivered(42), 10, f"the {name} endpoint to get the event")
    finally:
        close = getattr(sink, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("name", sorted(SINKS))
def test_a_missing_package_is_named_with_its_extra(name, tmp_path, monkeypatch):
    options = sink_module(name).Options.model_validate(ENDPOINTS_OFFLINE[name](tmp_path))
    monkeypatch.setattr(sink_module(name), "REQUIRES", ("edgessl_no_such_package.sub",))
    message = sink_packages_missing(name)
    assert message is not None and "edgessl_no_such_package.sub" in message and "edgessl[edge]" in message
    with pytest.raises(SinkError, match=r"sink 'out': .*edgessl_no_such_package\.sub.*edgessl\[edge\]"):
        build_sinks({"out": options}, "dev", threading.Event())
    text = (f"model: {{bundle: b}}\ncameras: [{{id: a, url: x.mp4}}]\nsinks:\n"
            f"  out: {json.dumps(ENDPOINTS_OFFLINE[name](tmp_path))}\n")
    config, errors = check_text(text, "edge.yaml")
    assert config is None and any(e.startswith("edge.yaml:4:") and "sinks.out" in e and "edgessl[edge]" in e
                                  for e in errors), errors


# Valid entries that need no endpoint to validate (nothing is built from them).
ENDPOINTS_OFFLINE: dict[str, Callable[[Path], dict[str, Any]]] = {
    "jsonl": lambda tmp: {"type": "jsonl", "path": str(tmp / "e.jsonl")},
    "webhook": lambda tmp: {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
    "mqtt": lambda tmp: {"type": "mqtt", "host": "127.0.0.1"},
}


def test_an_unknown_type_names_the_valid_ones():
    with pytest.raises(SinkError, match="unknown sink type 'kafka'; valid types: jsonl, mqtt, webhook"):
        sink_module("kafka")


def test_a_sink_that_cannot_start_closes_the_others(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    first = JsonlOptions(type="jsonl", path=tmp_path / "ok.jsonl")
    second = JsonlOptions(type="jsonl", path=blocker / "events.jsonl")  # its folder is a file
    with pytest.raises(SinkError, match="sink 'second' \\(jsonl\\) could not start"):
        build_sinks({"first": first, "second": second}, "dev", threading.Event())


def test_config_imports_no_sink_package():
    code = ("import sys, edgessl.edge_runtime.daemon.config; "
            "print(sorted(m for m in ('paho', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "sink files must import their REQUIRES inside the sink, not at the top"


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
                         sinks={"events": {"type": "jsonl", "path": str(tmp_path / "events.jsonl"), "queue_size": 50}})
    daemon = start_daemon(config, extra_sinks={"broken": broken, "good": good.append})
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(4)])
    wait_for(lambda: any(e.label == "red" for e in good), 20, "the 'red' event in the good sink")
    wait_for(lambda: '"label": "red"' in (tmp_path / "events.jsonl").read_text(), 10, "the event in the JSONL file")
    status = daemon.sink_status()
    assert status["broken"]["errors"] >= 1 and status["good"]["errors"] == 0 and "events" in status
    assert b'edgessl_sink_errors_total{sink="broken"}' in daemon.metrics.render()
    red = next(e for e in good if e.label == "red")
    assert red.capture_time <= red.decision_time < red.capture_time + 5 and red.camera == "cam"
