"""Uploads are refused as early as they can be: from the headers, before any of the body is read
or stored, when the daemon installs nothing (403) or an install runs (409); a flood of refused
uploads never pushes the install that runs out of `edgessl device status`; and a bundle whose
key was removed from the device's trusted keys does not run at the next start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from daemon_helpers import TOKEN, daemon_on_device, make_config

from edgessl.devices import flash
from edgessl.devices.keys import sign_bundle
from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.device import installer, slots
from edgessl.errors import EdgesslError, InstallError

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DECLARED = 50_000_000  # a declared body (under the cap) of which nothing is ever sent


def headers_only_upload(api_url: str, declared: int = DECLARED) -> tuple[int, float]:
    """POST /v1/model declaring `declared` bytes and sending none: (status, seconds to the answer)."""
    host, port = api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        start = time.monotonic()
        s.sendall((f"POST /v1/model HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Type: application/x-tar\r\nContent-Length: {declared}\r\n\r\n").encode())
        s.settimeout(5)  # the answer must come without the body: waiting for it would time out here
        head = s.recv(64).decode(errors="replace")
        return int(head.split()[1]), time.monotonic() - start


def incoming(state: Path) -> list[Path]:
    folder = state / "incoming"
    return list(folder.iterdir()) if folder.exists() else []


def test_a_daemon_without_device_root_refuses_an_upload_from_its_headers(tmp_path, tiny_bundle, clips, monkeypatch):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0})
    with Daemon(config) as daemon:
        status, seconds = headers_only_upload(daemon.api_url)
        assert status == 403 and seconds < 5
        assert incoming(config.state_dir) == []
        r = httpx.post(f"{daemon.api_url}/v1/model", headers=AUTH, content=b"x" * 1000, timeout=10)
        assert r.status_code == 403 and "installs nothing" in r.json()["detail"]


def test_an_upload_during_an_install_is_refused_from_its_headers(tmp_path, clips, monkeypatch, device, make_bundle):
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        with daemon.models._install_lock:  # an install is running (its health check takes seconds)
            status, seconds = headers_only_upload(daemon.api_url)
            assert status == 409 and seconds < 5
            v2 = make_bundle("v2", seed=1, version=2)
            sign_bundle(v2, device.key)
            with pytest.raises(flash.FlashError, match=r"HTTP 409.*another model upload is being installed"):
                flash.push(v2, daemon.api_url, TOKEN)
        assert incoming(daemon.config.state_dir) == []
        assert flash.push(v2, daemon.api_url, TOKEN).install.version == 2  # free again


def test_an_upload_over_the_size_cap_is_refused_from_its_headers(tmp_path, clips, monkeypatch, device):
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        status, seconds = headers_only_upload(daemon.api_url, daemon.config.api.max_bundle_bytes + 1)
        assert status == 413 and seconds < 5
        assert incoming(daemon.config.state_dir) == []
        assert headers_only_upload(daemon.api_url, 10 * daemon.config.api.max_bundle_bytes)[0] == 413


def test_refused_uploads_never_push_the_running_install_out_of_the_record(tmp_path, clips, monkeypatch, device,
                                                                           make_bundle):
    unsigned = make_bundle("unsigned", seed=2, version=9)
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        for _ in range(3):  # over HTTP, as an attacker with the token would
            with pytest.raises(flash.FlashError, match="sign"):
                flash.push(unsigned, daemon.api_url, TOKEN)
    for _ in range(slots.HISTORY_KEEP + 5):  # the rest straight through the installer (the same record)
        with pytest.raises(EdgesslError):
            installer.install(device.root, unsigned)
    state = slots.read_state(device.root)
    assert sum(not e.ok for e in state.history) == slots.HISTORY_KEEP
    assert [e.version for e in state.history if e.ok and e.action == "install"] == [1]
    proc = subprocess.run([sys.executable, "-m", "edgessl", "device", "status", "--root", str(device.root), "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    shown = json.loads(proc.stdout)["history"]
    assert any(e["ok"] and e["version"] == 1 for e in shown), shown
    assert len(shown) <= 10


def test_a_bundle_whose_key_is_no_longer_trusted_does_not_start(tmp_path, clips, monkeypatch, device):
    for key in (device.root / slots.KEYS_DIR).iterdir():  # the operator's key leaked: it is removed
        key.unlink()
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, device.v1, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         model={"root": str(device.root)}, api={"port": 0})
    with pytest.raises(InstallError, match=r"not signed by a key this device trusts now"):
        with Daemon(config):
            pass
    proc = subprocess.run([sys.executable, "-m", "edgessl", "run", "--root", str(device.root), "--port", "0",
                           "--camera", str(clips["red"])], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not signed by a key this device trusts now" in proc.stderr, proc.stderr[-2000:]
