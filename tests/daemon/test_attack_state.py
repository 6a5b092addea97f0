"""The state folder belongs to one daemon, and a full disk never keeps it from starting:
a second daemon on the same state_dir is refused with a clear error (in the same process or
another) and touches nothing of the first's, not even its in-flight uploads; a daemon whose
disk filled up while it was stopped starts, gives up its reserve, serves /health with the
problem, and lets a class be deleted to free space."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import httpx
import pytest
from daemon_helpers import RED, make_config, textured, wait_for, write_yaml
from disks import fill, tmpfs

from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.daemon.errors import DaemonError

TOKEN = "state-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def enroll(url: str, label: str, n: int = 3) -> httpx.Response:
    files = [("images", (f"{i}.png", cv2.imencode(".png", textured(RED, i))[1].tobytes(), "image/png"))
             for i in range(n)]
    return httpx.post(f"{url}/v1/classes", headers=AUTH, data={"label": label}, files=files, timeout=30)


def test_a_second_daemon_on_the_same_state_folder_is_refused(tmp_path, tiny_bundle, clips, monkeypatch,
                                                              start_daemon):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0})
    first = start_daemon(config)
    in_flight = config.state_dir / "incoming" / "upload-in-flight.tar"  # the first daemon is receiving it
    in_flight.parent.mkdir(exist_ok=True)
    in_flight.write_bytes(b"half a bundle")
    assert enroll(first.api_url, "red").status_code == 201

    second = Daemon(config)
    with pytest.raises(DaemonError, match=rf"another edgessl daemon \(pid {os.getpid()}\) is running with "
                                          rf"state_dir {config.state_dir}"):
        second.start()
    second.stop()

    other = write_yaml(tmp_path / "edge.yaml", f"""
        state_dir: {config.state_dir}
        model: {{bundle: {tiny_bundle}}}
        cameras: [{{id: cam, url: "{clips["red"]}", loop: true}}]
        api: {{port: 0}}
    """)
    proc = subprocess.run([sys.executable, "-m", "edgessl", "run", "--config", str(other)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "EDGESSL_API_TOKEN": TOKEN})
    assert proc.returncode != 0 and "one daemon per state folder" in proc.stderr, proc.stderr[-2000:]

    assert in_flight.read_bytes() == b"half a bundle"  # neither cleaned the first one's upload away
    health = httpx.get(f"{first.api_url}/health", headers=AUTH, timeout=10).json()
    assert health["status"] == "ok"
    assert [c["label"] for c in httpx.get(f"{first.api_url}/v1/classes", headers=AUTH).json()] == ["red"]
    first.stop()
    again = start_daemon(config)  # the lock goes with the process that held it
    assert not in_flight.exists()  # a start with the lock cleans what a crash left
    again.stop()


def test_a_daemon_starts_on_a_full_disk_and_lets_space_be_freed(tmp_path, tiny_bundle, clips, monkeypatch,
                                                                start_daemon):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    with tmpfs(tmp_path / "small", "3m") as disk:
        config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                             state_dir=str(disk / "state"), storage_reserve_bytes=256 * 1024, api={"port": 0})
        daemon = start_daemon(config)
        assert enroll(daemon.api_url, "keep").status_code == 201
        assert enroll(daemon.api_url, "big", n=6).status_code == 201
        daemon.stop()
        filler = fill(disk)  # something else filled the disk while the daemon was stopped
        assert (disk / "state" / ".reserve").exists()

        daemon = start_daemon(config)  # it starts
        url = daemon.api_url
        assert not (disk / "state" / ".reserve").exists()  # the reserve was given up for it
        health = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()
        assert health["status"] in ("ok", "degraded")
        wait_for(lambda: httpx.get(f"{url}/health", timeout=10).json()["cameras"]["cam"] == "streaming", 30, "stream")
        r = httpx.delete(f"{url}/v1/classes/big", headers=AUTH, timeout=30)  # the documented way out
        assert r.status_code == 200 and r.json()["removed"] == 6, r.text
        assert [c["label"] for c in httpx.get(f"{url}/v1/classes", headers=AUTH).json()] == ["keep"]
        filler.unlink()
        assert enroll(url, "again").status_code == 201
        daemon.stop()
