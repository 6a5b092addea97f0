"""MQTT against a real mosquitto: availability (with last will), retained state, events, reconnection."""

from __future__ import annotations

import json
import os
import signal

from daemon_helpers import RED, Broker, Subscriber, make_config, textured, wait_for, write_yaml

DEVICE = "test-device"


def test_state_events_availability_and_reconnection(tmp_path, tiny_bundle, clips, broker, start_daemon):
    sub = Subscriber(broker.port, f"edgessl/{DEVICE}/#")
    available, events = f"edgessl/{DEVICE}/available", f"edgessl/{DEVICE}/events"
    state = f"edgessl/{DEVICE}/cam/full/state"
    try:
        config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                             sinks={"broker": {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "qos": 1,
                                               "client_id": "daemon-under-test", "reconnect_max_s": 1}})
        daemon = start_daemon(config)
        wait_for(lambda: "online" in [p for p, _ in sub.on(available)], 10, "online on the availability topic")
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(4)])
        wait_for(lambda: any(json.loads(p)["label"] == "red" for p, _ in sub.on(events)), 20, "the red event")
        event = next(json.loads(p) for p, _ in sub.on(events) if json.loads(p)["label"] == "red")
        assert (event["camera"], event["region"], event["device"]) == ("cam", "full", DEVICE)
        assert event["capture_time"] <= event["decision_time"] and event["latency_ms"] >= 0
        wait_for(lambda: any(json.loads(p)["label"] == "red" for p, _ in sub.on(state)), 10, "the red state")

        # A client that comes later gets the retained state and availability at once.
        late = Subscriber(broker.port, f"edgessl/{DEVICE}/+/+/state")
        try:
            wait_for(lambda: late.on(state), 10, "the retained state")
            payload, retained = late.on(state)[-1]
            assert retained and json.loads(payload)["label"] == "red" and "previous" not in json.loads(payload)
        finally:
            late.close()

        # The broker restarts: the daemon reconnects by itself and says it is online again.
        port = broker.port
        broker.stop()
        wait_for(lambda: daemon.mqtt is not None and not daemon.mqtt.connected.is_set(), 10, "the disconnection")
        restarted = Broker(tmp_path, port=port)
        try:
            sub.close()
            sub = Subscriber(port, f"edgessl/{DEVICE}/#")
            # (retained, or live if the daemon reconnects after the subscription)
            wait_for(lambda: "online" in [p for p, _ in sub.on(available)], 15, "online again after the broker restart")
            wait_for(lambda: any(json.loads(p)["label"] == "red" for p, _ in sub.on(state)), 10,
                     "the state republished to the fresh broker")
            daemon.stop()  # a clean stop says offline itself
            wait_for(lambda: sub.on(available)[-1][0] == "offline", 10, "offline after a clean stop")
        finally:
            restarted.stop()
    finally:
        sub.close()


def test_last_will_after_kill_9(tmp_path, tiny_bundle, clips, broker, daemon_process):
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: {DEVICE}
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras:
          - {{id: cam, url: {clips["red"]}, loop: true}}
        sinks:
          broker: {{type: mqtt, host: 127.0.0.1, port: {broker.port}, keepalive_s: 5, client_id: killed-daemon}}
        api: {{enabled: false}}
    """)
    sub = Subscriber(broker.port, f"edgessl/{DEVICE}/available")
    try:
        proc = daemon_process(config, tmp_path / "daemon.log")
        topic = f"edgessl/{DEVICE}/available"
        wait_for(lambda: [p for p, _ in sub.on(topic)] == ["online"], 60, "the daemon to come online")
        os.kill(proc.proc.pid, signal.SIGKILL)  # no chance to say goodbye
        proc.proc.wait(10)
        wait_for(lambda: [p for p, _ in sub.on(topic)] == ["online", "offline"], 15,
                 "the broker to publish the last will")
    finally:
        sub.close()
