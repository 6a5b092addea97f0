"""Where label changes go: sinks are plain callables `sink(event) -> None`.

Each sink runs on a worker thread of its own behind a bounded queue (`SinkRunner`), so a
sink that raises, blocks or falls behind never stops or slows the inference loop or the
other sinks: its errors are logged and counted, and when its queue is full it loses the
oldest message. Sinks that hold a connection or a file also have `close()`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgessl.edge_runtime.daemon.config import JsonlConfig, MqttConfig, WebhookConfig

log = logging.getLogger(__name__)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """A region's stable label changed."""

    device: str
    camera: str
    region: str
    label: str
    previous: str | None  # None for the first label after start-up
    score: float  # smoothed score of `label`
    capture_time: float  # wall clock when the reader got the frame that settled the change
    decision_time: float  # wall clock when the change was decided
    frame: int  # the frame's sequence number on its camera
    model: str  # name:version of the model that decided

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score"] = round(self.score, 4)
        out["capture_time"] = iso(self.capture_time)
        out["decision_time"] = iso(self.decision_time)
        out["latency_ms"] = round((self.decision_time - self.capture_time) * 1000, 1)
        return out

    def state(self) -> dict[str, Any]:
        """The retained state of the region (the newest event, without the previous label)."""
        out = self.as_dict()
        del out["previous"]
        return out


Sink = Callable[[Event], None]


class SinkRunner:
    """Runs one sink on its own thread; `submit` never blocks and never raises."""

    def __init__(self, name: str, sink: Sink, *, maxsize: int = 1000,
                 on_error: Callable[[str], None] | None = None, on_drop: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.sink = sink
        self.delivered = 0
        self.errors = 0
        self.dropped = 0
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=maxsize)
        self._on_error = on_error
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def submit(self, event: Event) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # lose the oldest
                    self.dropped += 1
                    if self._on_drop:
                        self._on_drop(self.name)
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.sink(event)
                self.delivered += 1
            except Exception as exc:
                self.errors += 1
                log.warning("sink %s failed: %s", self.name, exc)
                if self._on_error:
                    self._on_error(self.name)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (for up to `timeout` s), then close the sink."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        close = getattr(self.sink, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                log.warning("sink %s: close failed: %s", self.name, exc)


# -- JSON lines -------------------------------------------------------------------------------


class JsonlSink:
    """Append each event as one JSON line; rotate at max_bytes (path.1 is the newest old file)."""

    def __init__(self, config: JsonlConfig) -> None:
        self.path = Path(config.path)
        self.max_bytes = config.max_bytes
        self.backups = config.backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.as_dict(), ensure_ascii=False) + "\n"
        if self._file.tell() and self._file.tell() + len(line.encode()) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# -- webhook ----------------------------------------------------------------------------------


class WebhookSink:
    """POST each event as JSON; retry with a doubling delay; raise when every attempt failed."""

    def __init__(self, config: WebhookConfig, stop: threading.Event | None = None) -> None:
        import httpx

        self.config = config
        self._stop = stop or threading.Event()
        self._client = httpx.Client(timeout=config.timeout_s, headers=config.headers)

    def __call__(self, event: Event) -> None:
        import httpx

        delay = self.config.backoff_s
        error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                if self._stop.wait(delay):
                    break
                delay *= 2
            try:
                response = self._client.post(self.config.url, json=event.as_dict())
                if response.status_code < 400:
                    return
                error = RuntimeError(f"{self.config.url} answered {response.status_code}")
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the request is wrong: retrying will not help
            except httpx.HTTPError as exc:
                error = exc
        raise RuntimeError(f"webhook {self.config.url}: not delivered: {error}")

    def close(self) -> None:
        self._stop.set()
        self._client.close()


# -- MQTT -------------------------------------------------------------------------------------


class MqttSink:
    """Availability with a last will, retained per-region state, and an events topic.

    paho's network thread connects in the background and reconnects by itself, so a broker
    that is down at start-up or restarts does not stop the daemon."""

    def __init__(self, config: MqttConfig, device: str) -> None:
        import paho.mqtt.client as mqtt

        self.config = config
        base = f"{config.topic_prefix}/{device}"
        self.availability_topic = f"{base}/available"
        self.events_topic = f"{base}/events"
        self._base = base
        self._states: dict[str, str] = {}  # topic -> payload, republished after a reconnection
        self._lock = threading.Lock()
        self.connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id or f"edgessl-{device}")
        client.will_set(self.availability_topic, "offline", qos=config.qos, retain=True)
        if config.username:
            password = config.password_file.read_text().strip() if config.password_file else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_s)
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        client.loop_start()

    def state_topic(self, camera: str, region: str) -> str:
        return f"{self._base}/{camera}/{region}/state"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT %s:%d refused the connection: %s", self.config.host, self.config.port, reason)
            return
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        client.publish(self.availability_topic, "online", qos=self.config.qos, retain=True)
        with self._lock:
            states = list(self._states.items())
        for topic, payload in states:
            client.publish(topic, payload, qos=self.config.qos, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        self.connected.clear()
        log.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.config.host, self.config.port, reason)

    def _publish(self, topic: str, payload: str, retain: bool) -> None:
        import paho.mqtt.client as mqtt

        info = self._client.publish(topic, payload, qos=self.config.qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_QUEUE_SIZE):
            raise RuntimeError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if info.rc != mqtt.MQTT_ERR_SUCCESS and self.config.qos == 0:
            raise RuntimeError(f"MQTT not connected: message to {topic} lost (QoS 0)")

    def __call__(self, event: Event) -> None:
        state_topic = self.state_topic(event.camera, event.region)
        state = json.dumps(event.state())
        with self._lock:
            self._states[state_topic] = state
        self._publish(state_topic, state, retain=True)
        self._publish(self.events_topic, json.dumps(event.as_dict()), retain=False)

    def close(self, timeout: float = 1.0) -> None:
        """Say offline (retained), then disconnect: a clean stop does not need the last will."""
        try:
            if self.connected.is_set():
                info = self._client.publish(self.availability_topic, "offline", qos=self.config.qos, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:  # not queued: the connection just went
                    log.debug("MQTT offline message not sent: %s", exc)
            self._client.disconnect()
        finally:
            self._client.loop_stop()
