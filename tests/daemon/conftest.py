"""Fixtures of the daemon tests (the helpers they use live in daemon_helpers.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    BLUE,
    RED,
    RTSP_SERVER,
    Broker,
    DaemonProcess,
    Device,
    RtspServer,
    free_port,
    have_rtsp_server,
    provision_device,
    render_clip,
)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short clips (2 s at 10 fps, 160x120) of a red and a blue scene, for looping file cameras."""
    root = tmp_path_factory.mktemp("clips")
    return {"red": render_clip(root / "red.mp4", [RED], 2.0), "blue": render_clip(root / "blue.mp4", [BLUE], 2.0)}


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two minutes of the red scene, for the RTSP server (which does not loop)."""
    return render_clip(tmp_path_factory.mktemp("clips") / "long_red.mp4", [RED], 120.0)


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Any]]:
    """start_daemon(config, **kwargs) -> a started Daemon, stopped after the test."""
    from edgessl.edge_runtime.daemon.core import Daemon

    started: list[Daemon] = []

    def start(config: Any, **kwargs: Any) -> Daemon:
        daemon = Daemon(config, **kwargs)
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture
def daemon_process() -> Iterator[Callable[..., DaemonProcess]]:
    procs: list[DaemonProcess] = []

    def start(config: Path, log: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        p = DaemonProcess(config, log, env)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def rtsp_server(tmp_path: Path, long_clip: Path) -> Iterator[RtspServer]:
    if not have_rtsp_server():
        pytest.skip("GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) is not installed")
    script = tmp_path / "rtsp_server.py"
    script.write_text(RTSP_SERVER)
    server = RtspServer(script, long_clip, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def device(tmp_path: Path, make_bundle: Callable[..., Path]) -> Device:
    """A device root that trusts one operator key, with signed model v1 installed."""
    return provision_device(tmp_path, make_bundle)
