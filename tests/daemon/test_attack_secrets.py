"""Secrets in URLs never leave the device: a camera or webhook URL with `user:password@` or a
password in its query string fails for reasons other than a refused connection (a server that
hangs up, one that answers nonsense, a webhook that fails); neither /health (with or without the
token), /v1/cameras nor the daemon's log holds the secret."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from daemon_helpers import wait_for, write_yaml

from edgessl.edge_runtime.redact import redact_text, redact_url

TOKEN = "secrets-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = ["camPa55word", "s3cretQuery", "tok3nValue", "hookPa55", "hookT0ken", "onlyuser"]


@pytest.fixture
def rude_server() -> Iterator[int]:
    """A TCP server on loopback that accepts, sends nonsense and hangs up (not a refusal)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            try:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 500 nonsense\r\n\r\ngarbage")
            except OSError:
                pass
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


@pytest.mark.parametrize(("url", "kept"), [
    ("rtsp://admin:camPa55word@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("http://cam.local/video.mjpg?user=bob&password=s3cretQuery", "http://cam.local/video.mjpg?user=bob&password=***"),
    ("https://h/x?api_key=tok3nValue&fps=5", "https://h/x?api_key=***&fps=5"),
    ("rtsp://onlyuser@h/s", "rtsp://***@h/s"),
    ("rtsps://a:b@h:322/s?sig=tok3nValue", "rtsps://***@h:322/s?sig=***"),
])
def test_redaction(url, kept):
    assert redact_url(url) == kept
    text = redact_text(f"cannot open source {url}: connection reset ({url})")
    assert not any(s in text for s in SECRETS) and kept in text


def test_no_secret_in_answers_or_log(tmp_path, tiny_bundle, clips, rude_server, daemon_process):
    port = rude_server
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: secrets
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras:
          - {{id: rtsp, url: "rtsp://admin:camPa55word@127.0.0.1:{port}/stream1", open_timeout_s: 2,
             backoff: {{initial_s: 0.2, max_s: 0.5}}}}
          - {{id: mjpeg, url: "http://127.0.0.1:{port}/video.mjpg?password=s3cretQuery&token=tok3nValue",
             open_timeout_s: 2, backoff: {{initial_s: 0.2, max_s: 0.5}}}}
          - {{id: user, url: "rtsp://onlyuser@127.0.0.1:{port}/s", open_timeout_s: 2}}
          - {{id: red, url: "{clips["red"]}", loop: true}}  # its label changes go to the failing webhook
        sinks:
          hook: {{type: webhook, url: "http://u:hookPa55@127.0.0.1:{port}/hook?token=hookT0ken", retries: 0}}
        api: {{port: 0}}
    """)
    proc = daemon_process(config, tmp_path / "daemon.log", env={"EDGESSL_API_TOKEN": TOKEN})
    url = proc.api_url()

    def failed_twice() -> bool:
        cams = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["cameras"]
        return all(c["connect_failures"] >= 2 and c["reason"] for cid, c in cams.items() if cid != "red")

    def webhook_failed() -> bool:
        return httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["sinks"]["hook"]["errors"] >= 1

    wait_for(failed_twice, 60, "every camera to fail to open, twice")
    wait_for(webhook_failed, 60, "the webhook to fail")
    answers = [httpx.get(f"{url}/health", timeout=10).text, httpx.get(f"{url}/health", headers=AUTH, timeout=10).text,
               httpx.get(f"{url}/v1/cameras", headers=AUTH, timeout=10).text,
               httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text]
    reasons = [c["reason"] for c in httpx.get(f"{url}/v1/cameras", headers=AUTH, timeout=10).json()]
    assert any("rtsp://***@127.0.0.1" in r for r in reasons), reasons  # the camera is still named, without its secret
    proc.stop()
    log = proc.output()
    assert "cannot open" in log and "sink hook failed" in log  # the failures were logged
    for text in [*answers, log]:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:2000])
