"""The target of bench/adversarial.py: a real `edgessl run` on a device root with a signed
stand-in model, cameras and a webhook whose URLs hold secrets (their server answers nonsense),
a poller that watches /health and the daemon's RSS, and small helpers to talk to it raw."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from daemon import standin_bundle, video

from edgessl.devices.keys import generate_keypair, sign_bundle
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.slots import init_device

TOKEN = "adversarial-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = ("camPa55word", "s3cretQuery", "hookT0ken")
PROFILE = """name = "bench-cpu"
description = "bench: the stand-in CNN on ONNX Runtime"
arch = "x86_64"
backends = ["onnxruntime"]
precisions = ["fp32"]
threads = 1
input_size = [96, 96]
latency_budget_ms = 2000.0
memory_budget_mb = 4096
health_timeout_s = 120.0
"""
# The console script, as an operator runs it (`python -m` would put the working folder on sys.path
# of the operator's own process, which no fix in edgessl can change).
_SCRIPT = Path(sys.executable).with_name("edgessl")
EDGESSL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgessl"]


@dataclass
class Row:
    attack: str
    tries: int
    outcome: str  # refused / contained / accepted
    note: str
    worst_health_ms: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class Target:
    url: str
    pid: int
    log: Path
    root: Path
    state: Path
    work: Path
    key: Path
    bundle: Path
    clip: Path


# -- the daemon and what watches it ------------------------------------------------------------


class Watch:
    """Asks /health (no token) every 100 ms and samples the daemon's RSS, per attack."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.worst = self.peak = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(0.1):
                self._poll(client)

    def _poll(self, client: httpx.Client) -> None:
        start = time.monotonic()
        try:
            ok = client.get(f"{self.url}/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        self.worst = max(self.worst, time.monotonic() - start if ok else 5.0)
        self.failures += not ok
        self.peak = max(self.peak, self._rss_mb())

    def take(self) -> tuple[float, float]:
        """The worst /health and peak RSS since the last take, with one poll now (an attack shorter
        than the poll interval is measured too)."""
        with httpx.Client(timeout=5) as client:
            self._poll(client)
        worst, peak = self.worst, self.peak
        self.worst = self.peak = 0.0
        return worst * 1000, peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def rude_server() -> int:
    """A TCP server on loopback that accepts, answers nonsense and hangs up (a failing camera)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            try:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 500 nonsense\r\n\r\ngarbage")
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def provision(work: Path, name: str, key: Path, public: Path, bundle: Path) -> Path:
    (work / "bench-cpu.toml").write_text(PROFILE)
    root = work / name
    init_device(root, work / "bench-cpu.toml", [public])
    install(root, bundle)
    return root


def start_daemon(work: Path) -> tuple[Target, subprocess.Popen[bytes]]:
    clip, _ = video(work)
    pair = generate_keypair(work / "keys", "fleet")
    bundle = standin_bundle(work / "bundle")
    sign_bundle(bundle, pair.private)
    root = provision(work, "device", pair.private, pair.public, bundle)
    rude = rude_server()
    config = work / "edge.yaml"
    config.write_text(json.dumps({
        "device": "bench", "state_dir": str(root / "state"), "model": {"root": str(root), "threads": 1},
        "cameras": [{"id": "street", "url": str(clip), "loop": True},
                    {"id": "gate", "url": f"rtsp://admin:{SECRETS[0]}@127.0.0.1:{rude}/s", "open_timeout_s": 2,
                     "backoff": {"initial_s": 0.2, "max_s": 0.5}},
                    {"id": "yard", "url": f"http://127.0.0.1:{rude}/v.mjpg?password={SECRETS[1]}",
                     "open_timeout_s": 2, "backoff": {"initial_s": 0.2, "max_s": 0.5}}],
        "sinks": {"hook": {"type": "webhook", "url": f"http://127.0.0.1:{rude}/hook?token={SECRETS[2]}"}},
        "api": {"port": 0, "max_event_streams": 16, "max_event_streams_per_client": 4}}))
    log = work / "daemon.log"
    proc = subprocess.Popen([*EDGESSL, "run", "--config", str(config)], stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, env={**os.environ, "EDGESSL_API_TOKEN": TOKEN},
                            start_new_session=True)
    deadline = time.monotonic() + 120
    url = None
    while url is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the daemon did not start:\n{log.read_text()[-3000:]}")
        url = next((line.split("API listening on ")[1].split()[0] for line in log.read_text().splitlines()
                    if "API listening on " in line), None)
        time.sleep(0.2)
    return Target(url, proc.pid, log, root, root / "state", work, pair.private, bundle, clip), proc


def raw(url: str, request: str, timeout: float = 5.0) -> int:
    """Send a raw request; the status code of the answer (-1: none within `timeout`)."""
    address, port = url.removeprefix("http://").split(":")
    with socket.create_connection((address, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        s.settimeout(timeout)
        try:
            return int(s.recv(64).decode(errors="replace").split()[1])
        except (OSError, ValueError, IndexError):
            return -1


def active_version(root: Path) -> int:
    out = subprocess.run([*EDGESSL, "device", "status", "--root", str(root), "--json"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["active_version"]


def write_plain_config(t: Target, name: str, state: Path | None = None, **extra: object) -> Path:
    """A daemon of a plain bundle folder (it installs nothing) with a state folder of its own."""
    config = t.work / f"{name}.yaml"
    config.write_text(json.dumps({"state_dir": str(state or t.work / f"{name}-state"), "model": {"bundle": str(t.bundle)},
                                  "cameras": [{"id": "c", "url": str(t.clip), "loop": True}], "api": {"port": 0},
                                  **extra}))
    return config


@contextlib.contextmanager
def side_daemon(config: Path) -> Iterator[str]:
    """Another `edgessl run --config CONFIG` for the length of the block; its API address."""
    proc = subprocess.Popen([*EDGESSL, "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "EDGESSL_API_TOKEN": TOKEN},
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "API listening on " in line:
                break
        else:
            raise RuntimeError(f"{config}: the daemon did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield line.split("API listening on ")[1].split()[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
