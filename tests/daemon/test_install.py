"""A daemon on a real device root: `edgessl flash --to http://...` (devices.flash.push) goes
through the A/B installer (signature, health check, switch) and the daemon hot-reloads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_helpers import RED, make_config, textured, wait_for
from profile_text import TEST_PROFILE

from edgessl.edge_runtime.daemon.core import Daemon

keys = pytest.importorskip("edgessl.devices.keys")
flash = pytest.importorskip("edgessl.devices.flash")
installer = pytest.importorskip("edgessl.edge_runtime.device.installer")

TOKEN = "push-test-token-0123456789"


@dataclass
class Device:
    root: Path
    v1: Path
    key: Path


@pytest.fixture
def device(tmp_path, make_bundle) -> Device:
    """A device root that trusts one operator key, with signed model v1 installed."""
    (tmp_path / "profile.toml").write_text(TEST_PROFILE)
    pair = keys.generate_keypair(tmp_path / "keys", "operator")
    root = tmp_path / "device"
    installer.init_device(root, tmp_path / "profile.toml", [pair.public])
    v1 = make_bundle("v1", seed=0, version=1)
    keys.sign_bundle(v1, pair.private)
    installer.install(root, v1)
    return Device(root, v1, pair.private)


@contextmanager
def daemon_on_device(tmp_path, device: Device, clips, monkeypatch) -> Iterator[Daemon]:
    """A daemon running the device root's model on the red clip, with "red" enrolled and seen."""
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, device.v1, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         model={"root": str(device.root), "threads": 1}, api={"port": 0})
    with Daemon(config) as daemon:
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
        wait_for(lambda: daemon.states()[0]["label"] == "red", 15, "red before the update")
        yield daemon


def test_push_to_a_daemon_on_a_device_root(tmp_path, make_bundle, clips, monkeypatch, device):
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        assert daemon.model.info()["version"] == 1

        v2 = make_bundle("v2", seed=1, version=2)
        keys.sign_bundle(v2, device.key)
        answer = flash.push(v2, daemon.api_url, TOKEN)
        assert answer["ok"] and answer["model"]["version"] == 2
        assert daemon.model.bundle.root.resolve() == installer.active_bundle(device.root).resolve()
        assert daemon.streams["cam"].status().reconnects == 0
        wait_for(lambda: daemon.states()[0]["label"] == "red", 15, "red with the new model")

        unsigned = make_bundle("v3", seed=2, version=3)
        with pytest.raises(flash.FlashError) as info:
            flash.push(unsigned, daemon.api_url, TOKEN)
        assert "sign" in str(info.value).lower()
        assert daemon.model.info()["version"] == 2  # refused: the running model stays
        with pytest.raises(flash.FlashError, match="token"):
            flash.push(v2, daemon.api_url, "wrong-token")


def _with_foreign_golden(bundle, other):
    """The bundle's model with another model's golden embeddings: its health check must fail."""
    import shutil

    from edgessl.edge_runtime.bundle.manifest import file_entry, read_manifest, write_manifest

    shutil.copy(other / "golden.npz", bundle / "golden.npz")
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.model_copy(
        update={"files": {**manifest.files, "golden.npz": file_entry(bundle / "golden.npz")}}))
    return bundle


def test_a_pushed_bundle_that_fails_its_health_check_is_rolled_back_while_the_daemon_classifies(
        tmp_path, make_bundle, clips, monkeypatch, device):
    import threading

    root, v1 = device.root, device.v1
    bad = _with_foreign_golden(make_bundle("v2", seed=1, version=2), v1)
    keys.sign_bundle(bad, device.key)  # signed: only the health check can catch it

    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        samples: list[tuple[str | None, int, int]] = []
        done = threading.Event()

        def watch() -> None:  # what the daemon decides while the install runs
            while not done.is_set():
                state = daemon.states()[0]
                samples.append((state["label"], daemon.model.info()["version"], state["frame"]))
                done.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with pytest.raises(flash.FlashError) as info:
                flash.push(bad, daemon.api_url, TOKEN)
        finally:
            done.set()
            watcher.join()
        assert "cosine" in str(info.value) or "golden" in str(info.value), str(info.value)
        assert installer.status(root).to_dict()["active_version"] == 1
        assert daemon.model.info()["version"] == 1
        assert samples and all(label == "red" and version == 1 for label, version, _ in samples)
        frames = [frame for _, _, frame in samples]
        assert frames[-1] > frames[0]  # it kept classifying new frames during the install
        wait_for(lambda: daemon.states()[0]["frame"] > frames[-1], 15, "frames after the refused install")
