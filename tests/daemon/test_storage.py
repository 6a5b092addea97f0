"""Failing storage and crashes (issue 13, items 4 and 5): a full state_dir gives a clear 507
that says what is full and how to free space, and a class can still be deleted; a read-only
state_dir and gallery are reported at start (log and /health) and enrolling is a clear 503;
no `incoming/` leftovers survive a kill -9 and a restart; a device state file that disagrees
with `current` is reconciled at start, with a note in the history.

The full and read-only filesystems are real: small tmpfs mounts (this needs root, or
CAP_SYS_ADMIN; the tests skip, saying so, where mounting is not permitted)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess

import cv2
import httpx
import numpy as np
import pytest
from daemon_helpers import RED, make_config, provision_device, textured, wait_for, write_yaml
from disks import fill, tmpfs

from edgessl.edge_runtime.fewshot.gallery import Gallery

TOKEN = "storage-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(i: int) -> bytes:
    ok, buf = cv2.imencode(".png", textured(RED, i))
    assert ok
    return buf.tobytes()


def enroll(url: str, label: str, n: int = 3) -> httpx.Response:
    files = [("images", (f"{i}.png", png(i), "image/png")) for i in range(n)]
    return httpx.post(f"{url}/v1/classes", headers=AUTH, data={"label": label}, files=files, timeout=30)


def test_a_full_state_dir_is_a_clear_507_and_classes_can_still_be_deleted(tmp_path, make_bundle, clips,
                                                                          start_daemon):
    (tmp_path / "token").write_text(TOKEN)
    device = provision_device(tmp_path / "dev", make_bundle)  # a daemon that installs uploads
    with tmpfs(tmp_path / "small", "3m") as disk:
        config = make_config(tmp_path, device.v1, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                             model={"root": str(device.root), "threads": 1},
                             state_dir=str(disk / "state"), storage_reserve_bytes=256 * 1024,
                             api={"port": 0, "token_file": str(tmp_path / "token")})
        daemon = start_daemon(config)
        url = daemon.api_url
        assert (disk / "state" / ".reserve").stat().st_size == 256 * 1024
        assert enroll(url, "keep").status_code == 201
        assert enroll(url, "big", n=6).status_code == 201
        filler = fill(disk)

        r = enroll(url, "more", n=6)
        print("enroll on a full disk:", r.status_code, r.json()["detail"])
        assert r.status_code == 507, r.text
        detail = r.json()["detail"]
        assert "is full" in detail and "DELETE /v1/classes" in detail and str(disk / "state") in detail
        assert r.json()["storage"] == "full"

        bundle = b"\0" * 400_000  # the upload cannot even be stored
        r = httpx.post(f"{url}/v1/model", headers={**AUTH, "Content-Type": "application/x-tar"}, content=bundle,
                       timeout=30)
        assert r.status_code == 507 and "cannot store the uploaded bundle" in r.json()["detail"], r.text
        assert not list((disk / "state" / "incoming").iterdir())

        r = httpx.delete(f"{url}/v1/classes/big", headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json().items() >= {"label": "big", "removed": 6}.items(), r.text
        labels = [c["label"] for c in httpx.get(f"{url}/v1/classes", headers=AUTH).json()]
        assert labels == ["keep"]
        health = httpx.get(f"{url}/health", headers=AUTH).json()["storage"]
        assert health["last_error"]["status"] == 507

        filler.unlink()  # space again: enrolling works, and the reserve comes back with the next delete
        assert enroll(url, "again").status_code == 201
        assert httpx.delete(f"{url}/v1/classes/again", headers=AUTH).status_code == 200
        assert (disk / "state" / ".reserve").exists()
        daemon.stop()


def test_read_only_storage_is_reported_at_start(tmp_path, tiny_bundle, clips, start_daemon, caplog):
    (tmp_path / "token").write_text(TOKEN)
    with tmpfs(tmp_path / "ro", "4m") as disk:
        state = disk / "state"
        state.mkdir()
        with Gallery(state / "gallery.db") as g:
            g.add("red", [textured(RED, 0)], np.zeros((1, 4), np.float32), "some-model")
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {r.stderr.strip()}")
        config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                             state_dir=str(state), api={"port": 0, "token_file": str(tmp_path / "token")})
        with caplog.at_level(logging.WARNING):
            daemon = start_daemon(config)
        url = daemon.api_url
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("state_dir" in m and "cannot be written" in m for m in warnings), warnings
        assert any("gallery" in m and "cannot be written" in m for m in warnings), warnings
        health = httpx.get(f"{url}/health", headers=AUTH).json()
        print("read-only storage in /health:", json.dumps(health["storage"]["problems"]))
        assert health["status"] == "degraded"
        assert health["storage"]["ok"] is False and not health["storage"]["gallery_writable"]
        assert any("Read-only file system" in p for p in health["storage"]["problems"])
        assert [c["label"] for c in httpx.get(f"{url}/v1/classes", headers=AUTH).json()] == ["red"]  # still served
        r = enroll(url, "blue")
        assert r.status_code == 503 and "read-only" in r.json()["detail"], r.text
        r = httpx.delete(f"{url}/v1/classes/red", headers=AUTH)
        assert r.status_code == 503 and "read-only" in r.json()["detail"], r.text
        daemon.stop()


def test_no_incoming_leftovers_after_a_kill_and_a_restart(tmp_path, make_bundle, clips, daemon_process):
    state = tmp_path / "state"
    device = provision_device(tmp_path / "dev", make_bundle)  # a daemon that installs uploads
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: crash-test
        state_dir: {state}
        model: {{root: {device.root}, threads: 1}}
        cameras:
          - {{id: cam, url: {clips["red"]}, loop: true}}
        api: {{port: 0}}
    """)
    proc = daemon_process(config, tmp_path / "first.log", env={"EDGESSL_API_TOKEN": TOKEN})
    host, port = proc.api_url().removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # an upload, half sent
        sock.sendall(f"POST /v1/model HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/x-tar\r\nContent-Length: 5000000\r\n\r\n".encode())
        sock.sendall(b"\0" * 1_000_000)
        incoming = state / "incoming"
        wait_for(lambda: incoming.is_dir() and any(p.stat().st_size > 0 for p in incoming.iterdir()), 20,
                 "the upload to land in incoming/")
        os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
    left = list(incoming.iterdir())
    assert left and all(p.suffix == ".tar" for p in left)  # what the crash left

    again = daemon_process(config, tmp_path / "second.log", env={"EDGESSL_API_TOKEN": TOKEN})
    again.api_url()
    assert list(incoming.iterdir()) == []
    assert f"removed {len(left)} leftovers of interrupted uploads from {incoming}" in again.output()


def test_device_state_is_reconciled_with_current_at_start(tmp_path, make_bundle, clips, start_daemon):
    from profile_text import TEST_PROFILE

    keys = pytest.importorskip("edgessl.devices.keys")
    installer = pytest.importorskip("edgessl.edge_runtime.device.installer")
    slots = pytest.importorskip("edgessl.edge_runtime.device.slots")
    (tmp_path / "profile.toml").write_text(TEST_PROFILE)
    pair = keys.generate_keypair(tmp_path / "keys", "operator")
    root = tmp_path / "device"
    slots.init_device(root, tmp_path / "profile.toml", [pair.public])
    for version in (1, 2):
        bundle = make_bundle(f"v{version}", seed=version, version=version)
        keys.sign_bundle(bundle, pair.private)
        if version == 2:
            state_before = (root / slots.STATE_FILE).read_bytes()
        installer.install(root, bundle)
    # A kill between the slot switch and the state write: the state still says v1.
    (root / slots.STATE_FILE).write_bytes(state_before)
    (root / slots.SLOTS_DIR / f"{slots.STAGING}-leftover").mkdir()
    assert slots.status(root).last_good_version == 1 and slots.status(root).notes

    (tmp_path / "token").write_text(TOKEN)
    config = make_config(tmp_path, root, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         model={"root": str(root), "threads": 1}, api={"port": 0,
                                                                      "token_file": str(tmp_path / "token")})
    daemon = start_daemon(config)
    assert daemon.model.info()["version"] == 2
    status = slots.status(root)
    assert status.last_good_version == 2 and status.active == slots.current_slot(root)
    assert not status.notes, status.notes
    last = status.history[-1]
    assert last["action"] == "recover" and "interrupted update" in last["reason"] and last["version"] == 2
    assert not list((root / slots.SLOTS_DIR).glob(f"{slots.STAGING}*"))
    daemon.stop()
