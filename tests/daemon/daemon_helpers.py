"""Helpers of the daemon tests: rendered clips, an RTSP server, a mosquitto broker, daemon processes.

Everything listens on loopback on a free port, is waited for with a deadline, and is stopped
in a `finally` (see conftest.py). Clips are rendered with OpenCV: nothing comes from ../shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

RED, BLUE, GREEN = (30, 30, 200), (200, 30, 30), (30, 200, 30)  # BGR
SYSTEM_PYTHON = "/usr/bin/python3"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def raw_status(api_url: str, method: str, path: str, headers: dict[str, str]) -> int:
    """The status of a request sent byte for byte as given: httpx refuses header values such as
    "Bearer " (trailing space), which an attacker's client sends anyway."""
    host, port = api_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Length: 0", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def textured(bgr: tuple[int, int, int], i: int, size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """A noisy frame of one colour with a moving white disc (sharp, and every frame differs)."""
    w, h = size
    rng = np.random.default_rng([seed, i, *bgr])
    frame = np.clip(np.array(bgr) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.circle(frame, (int(w * 0.15 + (i * 7) % int(w * 0.7)), h // 2), max(4, h // 10), (255, 255, 255), -1)
    return frame


def render_clip(path: Path, colors: list[tuple[int, int, int]], seconds_each: float, fps: int = 10,
                size: tuple[int, int] = (160, 120)) -> Path:
    """An mp4 (mp4v) showing each colour in turn for `seconds_each`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    try:
        i = 0
        for bgr in colors:
            for _ in range(round(seconds_each * fps)):
                writer.write(textured(bgr, i, size))
                i += 1
    finally:
        writer.release()
    return path


# -- daemons ---------------------------------------------------------------------------------


def make_config(tmp_path: Path, bundle: Path, cameras: list[dict[str, Any]], **sections: Any) -> Any:
    from edgessl.edge_runtime.daemon.config import DaemonConfig

    data: dict[str, Any] = {
        "device": "test-device",
        "state_dir": str(tmp_path / "state"),
        "model": {"bundle": str(bundle), "threads": 1},
        "cameras": cameras,
        "smoothing": {"alpha": 0.6, "consecutive": 2, "hysteresis": 0.05},
        "api": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = value
    return DaemonConfig.model_validate(data)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


class DaemonProcess:
    """`edgessl run --config FILE` in a child process; its log goes to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "edgessl"), "run", "--config", str(config)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def api_url(self, timeout: float = 60) -> str:
        def found() -> str | None:
            for line in self.output().splitlines():
                if "API listening on " in line:
                    return line.split("API listening on ")[1].split()[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.output()}")
            return None
        return wait_for(found, timeout, "the daemon's API to listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log_file.close()


# -- RTSP ------------------------------------------------------------------------------------

RTSP_SERVER = textwrap.dedent("""
    import sys
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    port, clip = sys.argv[1], sys.argv[2]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{clip}" ! qtdemux ! mpeg4videoparse ! rtpmp4vpay name=pay0 pt=96 )')
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {port}")
    print("READY", server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
""")


def have_rtsp_server() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, timeout=30)
    return probe.returncode == 0


class RtspServer:
    def __init__(self, script: Path, clip: Path, port: int) -> None:
        self.script, self.clip, self.port = script, clip, port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(self.script), str(self.port), str(self.clip)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints READY once it listens (or exits)
        if not line.startswith("READY"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.kill()
            raise AssertionError(f"the RTSP server did not start: {line!r} {err}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


# -- MQTT ------------------------------------------------------------------------------------


class Broker:
    def __init__(self, tmp_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        conf = tmp_path / f"mosquitto-{self.port}.conf"
        self.log = tmp_path / f"mosquitto-{self.port}-{time.monotonic_ns()}.log"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {self.log}\nlog_type all\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))  # else root mosquitto drops to 'mosquitto'
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10, "mosquitto to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Subscriber:
    """Collects messages of a topic filter (paho, its own network thread)."""

    def __init__(self, port: int, topic: str) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []  # (topic, payload, retained)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{id(self)}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[str, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- a daemon on a provisioned device root --------------------------------------------------------

TOKEN = "push-test-token-0123456789"


@dataclass
class Device:
    root: Path
    v1: Path
    key: Path  # the private key the device trusts
    public: Path


def provision_device(tmp_path: Path, make_bundle: Callable[..., Path], trust: Device | None = None) -> Device:
    """A device root that trusts one operator key (a new one, or `trust`'s), with signed model v1 installed."""
    from profile_text import TEST_PROFILE

    from edgessl.devices import keys
    from edgessl.edge_runtime.device import installer, slots

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "profile.toml").write_text(TEST_PROFILE)
    if trust is None:
        pair = keys.generate_keypair(tmp_path / "keys", "operator")
        private, public = pair.private, pair.public
    else:
        private, public = trust.key, trust.public
    root = tmp_path / "device"
    slots.init_device(root, tmp_path / "profile.toml", [public])
    v1 = make_bundle(f"v1-{tmp_path.name}", seed=0, version=1)
    keys.sign_bundle(v1, private)
    installer.install(root, v1)
    return Device(root, v1, private, public)


@contextmanager
def daemon_on_device(tmp_path: Path, device: Device, clips: dict[str, Path], monkeypatch: Any) -> Iterator[Any]:
    """A daemon running the device root's model on the red clip, with "red" enrolled and seen."""
    from edgessl.edge_runtime.daemon.core import Daemon

    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, device.v1, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         model={"root": str(device.root), "threads": 1}, api={"port": 0})
    with Daemon(config) as daemon:
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "red", 15, "red before the update")
        yield daemon


# -- collection: a daemon that keeps samples for a server ---------------------------------------

# Sampling tuned for a test clip: a sample every 0.2 s per region, no duplicate filter (the frames
# of a rendered clip are near copies), at most `per_hour` samples; drift references after 5 crops.
FAST_SAMPLING = {"min_interval_s": 0.2, "duplicate": 0.0, "per_hour": 12, "per_day": 1000}


def sampling_config(tmp_path: Path, bundle: Path, clip: Path, *, token_file: Path | None = None,
                    sampling: dict[str, Any] | None = None, **sections: Any) -> Any:
    """A daemon config with one looping file camera ("cam", the whole frame as region "full") that
    samples (FAST_SAMPLING, updated by `sampling`), the API on a free port of loopback, and the
    drift reference after 5 crops. The token: `token_file`, else $EDGESSL_API_TOKEN."""
    api: dict[str, Any] = {"port": 0, **({"token_file": str(token_file)} if token_file else {})}
    camera = {"id": "cam", "url": str(clip), "loop": True, "sampling": {**FAST_SAMPLING, **(sampling or {})}}
    return make_config(tmp_path, bundle, [camera], api=api, drift={"reference_crops": 5}, **sections)
