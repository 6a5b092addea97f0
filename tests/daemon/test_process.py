"""`edgessl run` as a process, as systemd runs it: READY and WATCHDOG notifications, missing
cameras, and SIGTERM shutdown within 5 s even with a reader stuck on a frozen RTSP server."""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx
from daemon_helpers import wait_for, write_yaml


def test_notify_watchdog_missing_cameras_and_sigterm(tmp_path, tiny_bundle, clips, rtsp_server, daemon_process):
    rtsp_server.pause()  # frozen: the daemon's open of this camera blocks in FFmpeg
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: proc-test
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras:
          - {{id: good, url: {clips["red"]}, loop: true}}
          - {{id: missing, url: {tmp_path / "missing.mp4"}}}
          - {{id: frozen, url: "{rtsp_server.url}", open_timeout_s: 30, stall_timeout_s: 30}}
        api: {{port: 0}}
    """)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # unix socket paths are limited to 108 bytes
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(path)
            notify.settimeout(30)
            proc = daemon_process(config, tmp_path / "daemon.log",
                                  env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
            try:
                messages = [notify.recv(4096).decode()]
                assert messages[0].startswith("READY=1"), messages
                url = proc.api_url()
                # /health without the token: each camera's state (what an orchestrator needs), no more
                wait_for(lambda: httpx.get(f"{url}/health", timeout=10).json()["cameras"]["good"]
                         == "streaming", 20, "the good camera to stream")
                health = httpx.get(f"{url}/health", timeout=10).json()
                assert health["cameras"]["missing"] in ("connecting", "backing_off")
                assert health["cameras"]["frozen"] == "connecting"  # still blocked in its open
                assert health["full"] is False and "model" not in health
                pings = 0
                while pings < 2:  # the watchdog is pinged every WATCHDOG_USEC / 2
                    message = notify.recv(4096).decode()
                    pings += message == "WATCHDOG=1"
                proc.proc.send_signal(signal.SIGTERM)
                start = time.monotonic()
                code = proc.proc.wait(10)
                took = time.monotonic() - start
                while True:
                    message = notify.recv(4096).decode()
                    if message.startswith("STOPPING=1"):
                        break
            finally:
                rtsp_server.resume()
    assert code == 0, proc.output()
    assert took < 5.0, f"SIGTERM took {took:.1f} s"
    print(f"SIGTERM took {took:.2f} s")
    assert "received SIGTERM: stopping" in proc.output()
