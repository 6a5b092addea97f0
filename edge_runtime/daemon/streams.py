"""One reader thread per camera: open, read, keep the newest frame, reconnect with backoff.

A `CameraStream` never raises to its owner: a camera that is missing, unreachable or broken
cycles through its states (connecting -> streaming, or backing_off -> connecting, ...) and
its counters say what happened. Latest mode keeps only the newest frame (a frame replaced
before the inference took it is counted as dropped), so latency stays bounded whatever the
load; every mode hands over each frame in order through a bounded queue (for files).

A stall is a read that waits longer than `stall_timeout_s` for the next frame. The
supervisor notices it with `check_stall` while the reader is still blocked inside FFmpeg;
the reader notices it when the read returns (OpenCV's read timeout is the stall timeout,
and after a timeout FFmpeg may still hand out a frame it had buffered). Either way the
stream is reopened. Time spent waiting for the inference (every mode) is not a stall.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cv2
import numpy as np

from edgessl.edge_runtime.daemon.capture import Capture, Opener, open_capture, probe
from edgessl.edge_runtime.daemon.config import CameraConfig
from edgessl.edge_runtime.redact import redact_text, redact_url

log = logging.getLogger(__name__)


class State(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKING_OFF = "backing_off"
    FAILED = "failed"  # max_attempts reached: left alone
    ENDED = "ended"  # a file that does not loop reached its end
    STOPPED = "stopped"


@dataclass(frozen=True)
class CapturedFrame:
    camera: str
    seq: int  # 1, 2, ... per camera, over reconnections
    image: np.ndarray  # BGR uint8 HxWx3
    captured_at: float  # wall clock (time.time()) when the reader got it
    captured_mono: float  # time.monotonic() at the same moment (for latencies)


@dataclass(frozen=True)
class StreamStatus:
    """A snapshot of a stream for /health, metrics and the web page."""

    camera: str
    state: State
    state_since: float  # wall clock
    captured: int
    dropped: int
    processed: int
    reconnects: int
    connect_failures: int
    stalls: int
    fps: float  # frames per second read recently
    last_frame_age_s: float | None
    last_error: str | None
    frame_size: tuple[int, int] | None  # (width, height)
    history: list[tuple[float, str]]  # the last state changes: (wall clock, state)
    reason: str | None = None  # why it is not streaming, in words (None while streaming)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["state"] = str(self.state)
        out["history"] = [[round(t, 3), st] for t, st in self.history]
        return out


class CameraStream:
    def __init__(self, config: CameraConfig, *, on_frame: Callable[[], None] | None = None,
                 opener: Opener = open_capture, seed: int | None = None) -> None:
        self.config = config
        self.id = config.id
        self.where = redact_url(config.url)  # the URL as logs, errors and answers show it
        self._on_frame = on_frame
        self._opener = opener
        self._rand = random.Random(seed)
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # Shared with readers of the state (under _cond).
        self._latest: CapturedFrame | None = None
        self._latest_taken = True
        self._queue: queue.Queue[CapturedFrame] = queue.Queue(maxsize=config.queue_size)
        self._state = State.STOPPED
        self._state_since = time.time()
        self._seq = 0
        self.captured = 0
        self.dropped = 0
        self.processed = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.stalls = 0
        self.last_error: str | None = None
        self._last_frame_mono: float | None = None
        self._read_started: float | None = None  # monotonic start of the read in progress
        self._history: deque[tuple[float, str]] = deque(maxlen=16)
        self._gap = 0.0  # EMA of the time between frames
        self._frame_size: tuple[int, int] | None = None

    # -- control --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.id}: already started")
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the reader to finish (it may be blocked in a read until its timeout)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the reader to finish; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, state: State, error: str | None = None) -> None:
        if error is not None:
            error = redact_text(error)  # it may quote the URL, or an error quoting it: never its secrets
        with self._cond:
            if error is not None and error != self.last_error:  # a new reason: said once, not per retry
                log.warning("camera %s: %s", self.id, error)
            if error is not None:
                self.last_error = error
            if state != self._state:
                log.info("camera %s: %s -> %s", self.id, self._state, state)
                self._state, self._state_since = state, time.time()
                self._history.append((self._state_since, str(state)))
            self._cond.notify_all()

    def check_stall(self, now: float | None = None) -> bool:
        """Mark the stream stalled when a read has waited longer than stall_timeout_s."""
        now = time.monotonic() if now is None else now
        with self._cond:
            started = self._read_started
            if started is not None and now - started > self.config.stall_timeout_s:
                return self._declare_stall(now - started)
        return False

    def _declare_stall(self, waited: float) -> bool:
        with self._cond:
            if self._state != State.STREAMING:
                return False
            self.stalls += 1
            self._set_state(State.STALLED, f"no frame for {waited:.1f} s (stall timeout "
                                           f"{self.config.stall_timeout_s:g} s)")
            return True

    def status(self) -> StreamStatus:
        with self._cond:
            age = None if self._last_frame_mono is None else time.monotonic() - self._last_frame_mono
            return StreamStatus(self.id, self._state, self._state_since, self.captured, self.dropped, self.processed,
                                self.reconnects, self.connect_failures, self.stalls,
                                round(1 / self._gap, 2) if self._gap > 0 else 0.0,
                                None if age is None else round(age, 3), self.last_error, self._frame_size,
                                list(self._history), self._reason(age))

    def _reason(self, age: float | None) -> str | None:
        """Why the camera is not streaming, for a person: the state and the last error in words."""
        state, error = self._state, self.last_error
        if state == State.STREAMING:
            return None
        if state == State.STALLED:
            waited = f"{age:.0f} s" if age is not None else f"over {self.config.stall_timeout_s:g} s"
            return f"stalled: no frame for {waited}"
        if state == State.ENDED:
            return "the file ended (set loop: true to replay it)"
        if state == State.STOPPED:
            return "stopped"
        if state == State.FAILED:
            return f"gave up: {error}" if error else "gave up"
        if error is None:
            return "connecting…"
        prefix = "retrying: " if state == State.BACKING_OFF else ""
        return prefix + error

    # -- consumers ------------------------------------------------------------------------

    def take(self, limit: int) -> list[CapturedFrame]:
        """Frames not yet handed to the inference: the newest (latest mode), or up to
        `limit` in order (every mode). Counted as processed."""
        if self.config.mode == "every":
            frames: list[CapturedFrame] = []
            while len(frames) < limit:
                try:
                    frames.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        else:
            with self._cond:
                if self._latest is None or self._latest_taken or limit < 1:
                    return []
                self._latest_taken = True
                frames = [self._latest]
        with self._cond:
            self.processed += len(frames)
        return frames

    def latest(self) -> CapturedFrame | None:
        """The newest frame (whether or not the inference has it), without taking it."""
        with self._cond:
            return self._latest

    def wait_newer(self, seq: int, timeout: float) -> CapturedFrame | None:
        """The newest frame once its seq is greater than `seq`; None after `timeout` s or on stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._latest is not None and self._latest.seq > seq:
                    return self._latest
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0  # consecutive failed attempts
        opened_before = False
        looping = False  # a looping file starts again: not a reconnection
        cam = self.config
        try:
            while not self._stop.is_set():
                if not looping:
                    self._set_state(State.CONNECTING)
                looping = False
                cap = self._open()
                if cap is not None:
                    if opened_before and cam.kind != "file":
                        self.reconnects += 1
                    opened_before = True
                    try:
                        outcome = self._pump(cap)
                    finally:
                        try:
                            cap.release()
                        except Exception as exc:  # OpenCV's release of a broken stream; nothing to do
                            log.debug("camera %s: release failed: %s", self.id, exc)
                    if self._stop.is_set():
                        break
                    if outcome == "eof":
                        if cam.loop:
                            attempt, looping = 0, True
                            continue
                        self._set_state(State.ENDED, "end of file")
                        return
                    if outcome == "streamed":
                        attempt = 0  # it worked for a while: start the backoff again from the shortest delay
                attempt += 1
                if cam.max_attempts is not None and attempt >= cam.max_attempts:
                    self._set_state(State.FAILED, f"{attempt} attempts failed; last: {self.last_error}")
                    return
                delay = cam.backoff.delay(attempt, self._rand.random())
                self._set_state(State.BACKING_OFF)
                log.info("camera %s: retrying in %.1f s (attempt %d)", self.id, delay, attempt + 1)
                self._stop.wait(delay)
        except Exception as exc:  # a bug must not pass silently, but must not kill the daemon either
            log.exception("camera %s: reader crashed", self.id)
            self._set_state(State.FAILED, f"reader crashed: {exc!r}")
            return
        self._set_state(State.STOPPED)

    def _open(self) -> Capture | None:
        cam = self.config
        if cam.kind == "file" and not os.path.isfile(cam.url):
            self.connect_failures += 1
            self._set_state(State.CONNECTING, f"{self.where}: no such file")
            return None
        try:
            cap = self._opener(cam)
            if cap.isOpened():
                return cap
            cap.release()
            error = f"cannot open {cam.kind} source {self.where}"
        except Exception as exc:
            error = f"cannot open {cam.kind} source {self.where}: {exc}"
        why = probe(cam.url) if cam.kind in ("rtsp", "http") else None
        if why is not None:
            error = f"cannot open {cam.kind} source {self.where}: {why}"
        self.connect_failures += 1
        self._set_state(State.CONNECTING, error)
        return None

    def _pump(self, cap: Capture) -> str:
        """Read until the stream fails ('failed'/'streamed'), ends ('eof') or stop ('stop')."""
        cam = self.config
        realtime = cam.plays_realtime
        fps = cam.fps or (cap.get(cv2.CAP_PROP_FPS) if realtime else 0) or 25.0
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            with self._cond:
                self._read_started = begun = time.monotonic()
            ok, image = cap.read()
            with self._cond:
                self._read_started = None
            now = time.monotonic()
            if self._stop.is_set():
                return "stop"
            if n and (self._state == State.STALLED or now - begun >= cam.stall_timeout_s):
                self._declare_stall(now - begun)  # noticed here when the supervisor did not
                return "streamed"  # reopen: a stalled connection rarely recovers on its own
            if not ok or image is None:
                if cam.kind == "file":
                    return "eof" if n else "failed"
                self._set_state(self._state if self._state == State.STALLED else State.CONNECTING,
                                "stream lost (read failed or timed out)")
                return "streamed" if n else "failed"
            if realtime:  # pace a file like a live camera
                due = start + n / fps
                if due > now and self._stop.wait(due - now):
                    return "stop"
                now = time.monotonic()
            n += 1
            self._deliver(image, now)
        return "stop"

    def _deliver(self, image: np.ndarray, now: float) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            from edgessl.edge_runtime.inference.preprocess import to_bgr
            image = np.ascontiguousarray(to_bgr(image))
        with self._cond:
            self._seq += 1
            frame = CapturedFrame(self.id, self._seq, image, time.time(), now)
            if self._last_frame_mono is not None:
                gap = max(1e-4, now - self._last_frame_mono)
                self._gap = 0.9 * self._gap + 0.1 * gap if self._gap else gap
            self._last_frame_mono = now
            self._frame_size = (image.shape[1], image.shape[0])
            self.captured += 1
            if self.config.mode == "latest":
                if not self._latest_taken:
                    self.dropped += 1
                self._latest_taken = False
            self._latest = frame
            if self._state != State.STREAMING:
                self._set_state(State.STREAMING)
            self._cond.notify_all()
        if self.config.mode == "every":
            while not self._stop.is_set():  # back-pressure: wait for the inference
                try:
                    self._queue.put(frame, timeout=0.2)
                    break
                except queue.Full:
                    continue
        if self._on_frame is not None:
            self._on_frame()
