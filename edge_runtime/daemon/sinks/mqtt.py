"""MQTT: availability with a last will, retained state per region, and an events topic."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal

from pydantic import Field

from edgessl.edge_runtime.daemon.sinks import Event, SinkContext, SinkEvent, SinkOptions
from edgessl.edge_runtime.objects.events import ObjectEvent
from edgessl.edge_runtime.schema import ConfigPath

log = logging.getLogger(__name__)

NAME = "mqtt"
REQUIRES: tuple[str, ...] = ("paho.mqtt",)


class MqttOptions(SinkOptions):
    """Topics: <prefix>/<device>/available (online/offline, retained, last will),
    <prefix>/<device>/<camera>/<region>/state (JSON, retained), <prefix>/<device>/events (JSON, region
    label changes), <prefix>/<device>/objects (JSON, what objects did) and
    <prefix>/<device>/<camera>/objects (JSON, retained: the objects on the camera now, by label)."""

    type: Literal["mqtt"] = Field(description="publish to an MQTT broker")
    host: str = Field(description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port")
    topic_prefix: str = Field(default="edgessl", pattern=r"^[^#+\s]+$", description="first level of every topic")
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT quality of service of every message")
    client_id: str | None = Field(default=None, description="default: edgessl-<device>")
    username: str | None = Field(default=None, description="broker user name")
    password_file: ConfigPath | None = Field(default=None, description="file holding the broker password")
    tls: bool = Field(default=False, description="connect with TLS (system CA certificates)")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval (seconds)")
    reconnect_max_s: int = Field(default=30, ge=1, le=3600, description="longest delay between reconnection attempts")


Options = MqttOptions


class MqttSink:
    """Availability with a last will, retained per-region state, and an events topic.

    paho's network thread connects in the background and reconnects by itself, so a broker
    that is down at start-up or restarts does not stop the daemon."""

    def __init__(self, options: MqttOptions, device: str) -> None:
        import paho.mqtt.client as mqtt

        self.options = options
        base = f"{options.topic_prefix}/{device}"
        self.availability_topic = f"{base}/available"
        self.events_topic = f"{base}/events"
        self.objects_topic = f"{base}/objects"
        self._base = base
        self._states: dict[str, str] = {}  # topic -> payload, republished after a reconnection
        self._lock = threading.Lock()
        self.connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=options.client_id or f"edgessl-{device}")
        client.will_set(self.availability_topic, "offline", qos=options.qos, retain=True)
        if options.username:
            password = options.password_file.read_text().strip() if options.password_file else None
            client.username_pw_set(options.username, password)
        if options.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=options.reconnect_max_s)
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(options.host, options.port, keepalive=options.keepalive_s)
        client.loop_start()

    def state_topic(self, camera: str, region: str) -> str:
        return f"{self._base}/{camera}/{region}/state"

    def present_topic(self, camera: str) -> str:
        return f"{self._base}/{camera}/objects"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT %s:%d refused the connection: %s", self.options.host, self.options.port, reason)
            return
        log.info("MQTT connected to %s:%d", self.options.host, self.options.port)
        client.publish(self.availability_topic, "online", qos=self.options.qos, retain=True)
        with self._lock:
            states = list(self._states.items())
        for topic, payload in states:
            client.publish(topic, payload, qos=self.options.qos, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        self.connected.clear()
        log.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.options.host, self.options.port, reason)

    def _publish(self, topic: str, payload: str, retain: bool) -> None:
        import paho.mqtt.client as mqtt

        info = self._client.publish(topic, payload, qos=self.options.qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_QUEUE_SIZE):
            raise RuntimeError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if info.rc != mqtt.MQTT_ERR_SUCCESS and self.options.qos == 0:
            raise RuntimeError(f"MQTT not connected: message to {topic} lost (QoS 0)")

    def __call__(self, event: SinkEvent) -> None:
        if isinstance(event, ObjectEvent):
            retained, state = self.present_topic(event.camera), json.dumps(event.present)
            message = (self.objects_topic, json.dumps(event.as_dict()))
        else:
            assert isinstance(event, Event)
            retained, state = self.state_topic(event.camera, event.region), json.dumps(event.state())
            message = (self.events_topic, json.dumps(event.as_dict()))
        with self._lock:
            self._states[retained] = state
        self._publish(retained, state, retain=True)
        self._publish(*message, retain=False)

    def close(self, timeout: float = 1.0) -> None:
        """Say offline (retained), then disconnect: a clean stop does not need the last will."""
        try:
            if self.connected.is_set():
                info = self._client.publish(self.availability_topic, "offline", qos=self.options.qos, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:  # not queued: the connection just went
                    log.debug("MQTT offline message not sent: %s", exc)
            self._client.disconnect()
        finally:
            self._client.loop_stop()


def create(options: MqttOptions, context: SinkContext) -> MqttSink:
    return MqttSink(options, context.device)
