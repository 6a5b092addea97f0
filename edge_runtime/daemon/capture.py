"""Opening a camera: OpenCV/FFmpeg captures with per-camera options, and a quick probe that
names why a network camera cannot be reached (for the camera's reason in /health)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

import cv2

from edgessl.edge_runtime.daemon.config import CameraConfig
from edgessl.edge_runtime.redact import redact_url


class Capture(Protocol):
    """What the reader needs from cv2.VideoCapture (tests substitute fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


Opener = Callable[[CameraConfig], Capture]


# FFmpeg options are one process-wide environment variable that OpenCV reads while opening a
# stream. Opens that need the same options run together; an open that needs other options
# waits until those are done.
_env_lock = threading.Condition()
_env_value: str | None = None
_env_users = 0


@contextmanager
def _ffmpeg_options(value: str) -> Iterator[None]:
    global _env_value, _env_users
    with _env_lock:
        while _env_users and _env_value != value:
            _env_lock.wait()
        if _env_value != value:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = value
            _env_value = value
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            _env_lock.notify_all()


def open_capture(cam: CameraConfig) -> Capture:
    """cv2.VideoCapture for the camera, with open and read timeouts (no blocking forever)."""
    if cam.kind == "v4l2":
        return cv2.VideoCapture(cam.url, cv2.CAP_V4L2)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cam.open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cam.stall_timeout_s * 1000),
              # FFmpeg starts a decoder thread per core for every camera; cameras decode in parallel anyway.
              cv2.CAP_PROP_N_THREADS, cam.decoder_threads]
    options = f"rtsp_transport;{cam.transport}" if cam.kind == "rtsp" else ""
    with _ffmpeg_options(options):
        return cv2.VideoCapture(cam.url, cv2.CAP_FFMPEG, params)


def probe(url: str, timeout: float = 1.0) -> str | None:
    """Why a network source cannot be reached, in words ("connection refused", "no such host",
    "no answer within 1 s"), from one TCP connect to its host and port; None when it connects
    (then the stream itself is the problem) or the URL names no host."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(parts.scheme, 80)
    except ValueError:
        return f"bad port in {redact_url(url)}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port}"
    except socket.gaierror:
        return f"no such host {host!r}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
