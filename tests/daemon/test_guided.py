"""Enrollment that says when it has enough, background frames in the calibration, undo of a
deletion, why a camera is down, and the nearest class of an unknown region (issue 12)."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest
from daemon_helpers import BLUE, GREEN, RED, make_config, render_clip, wait_for

from edgessl.edge_runtime.daemon.capture import probe
from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.fewshot.quality import StopRule

TOKEN = "guided-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the stop rule alone --------------------------------------------------------------------------


def test_stop_rule_stable_once_enough_and_separated():
    rule = StopRule(min_total=5, margin=0.1, patience=3)
    assert rule.update(2, 1.0, 0.3) is None  # too few exemplars, however good
    assert rule.update(4, 1.0, 0.3) is None
    code, why = rule.update(5, 1.0, 0.3)
    assert code == "stable" and "margin 0.30" in why and "5 exemplars" in why


def test_stop_rule_one_class_is_stable_at_the_minimum():
    rule = StopRule(min_total=3)
    assert rule.update(2, 1.0, None) is None
    assert rule.update(3, 1.0, None)[0] == "stable"


def test_stop_rule_no_gain_after_patience_and_not_before():
    rule = StopRule(min_total=3, margin=0.5, patience=3)
    assert rule.update(2, 0.5, 0.01) is None
    assert rule.update(3, 0.67, 0.02) is None  # improved
    assert rule.update(4, 0.67, 0.02) is None  # 1 without gain
    assert rule.update(5, 0.6, 0.015) is None  # 2
    code, why = rule.update(6, 0.67, 0.021) or (None, "")  # 3 without a gain above eps
    assert code == "no_gain" and "last 3 shots" in why
    # a gain resets the count
    rule = StopRule(min_total=3, margin=0.5, patience=2)
    for n, loo in ((3, 0.5), (4, 0.5), (5, 0.75), (6, 0.75)):
        assert rule.update(n, loo, 0.0) is None
    assert rule.update(7, 0.75, 0.0)[0] == "no_gain"


def test_probe_names_a_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        assert "connection refused" in (probe(f"rtsp://127.0.0.1:{port}/cam") or "")
    assert probe("/dev/video0") is None


# -- a daemon -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guided(tmp_path_factory, tiny_bundle):
    tmp = tmp_path_factory.mktemp("guided")
    clips = {name: render_clip(tmp / f"{name}.mp4", [bgr], 2.0) for name, bgr in
             (("red", RED), ("blue", BLUE), ("green", GREEN))}
    (tmp / "token").write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    cameras = [{"id": n, "url": str(p), "loop": True} for n, p in clips.items()]
    cameras += [{"id": "gone", "url": str(tmp / "missing.mp4")},
                {"id": "net", "url": f"rtsp://127.0.0.1:{refused_port}/cam", "open_timeout_s": 1}]
    config = make_config(tmp, tiny_bundle, cameras,
                         api={"port": 0, "token_file": str(tmp / "token")},
                         enrollment={"interval_s": 0.05, "timeout_s": 10, "undo_s": 30})
    daemon = Daemon(config)
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.api_url, timeout=60, headers=AUTH) as client:
            wait_for(lambda: all(daemon.streams[c].status().processed > 0 for c in clips), 20, "frames")
            yield daemon, client, config
    finally:
        daemon.stop()


def test_live_enrollment_until_stable_says_why_it_stopped(guided):
    daemon, client, _ = guided
    r = client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "ripe", "until": "stable"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["until"] == "stable" and body["stopped"] == "stable", body
    assert body["kept"] == 5 and body["added"] == 5  # one class: stable at stable_min_exemplars
    assert "no other class" in body["stop_reason"]
    assert [p["exemplars"] for p in body["progress"]] == [1, 2, 3, 4, 5]
    # a second class: stops once leave-one-out is 100% with a margin above the bound
    body = client.post("/v1/cameras/blue/enroll", headers=AUTH,
                       json={"label": "sky", "until": "stable", "max_frames": 12}).json()
    assert body["stopped"] == "stable" and "margin" in body["stop_reason"], body
    q = body["quality"][0]
    assert q["loo_accuracy"] == 1.0 and q["margin"] >= 0.1 and q["recommendation"] == "enough"
    # the cap: a bound that cannot be met stops at max_frames
    cfg = daemon.enrollment.config
    daemon.enrollment.config = cfg.model_copy(update={"enrollment": cfg.enrollment.model_copy(
        update={"stable_margin": 2.0, "stable_patience": 50})})
    try:
        body = client.post("/v1/cameras/blue/enroll", headers=AUTH,
                           json={"label": "sky", "until": "stable", "max_frames": 3}).json()
    finally:
        daemon.enrollment.config = cfg
    assert body["kept"] == 3 and body["stopped"] == "cap" and "max_frames = 3" in body["stop_reason"], body
    # frames with until=stable is ambiguous
    r = client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "ripe", "until": "stable", "frames": 3})
    assert r.status_code == 422 and "max_frames" in r.text
    r = client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "ripe", "until": "forever"})
    assert r.status_code == 422


def test_background_frames_calibrate_the_thresholds_and_survive(guided, tiny_bundle):
    daemon, client, config = guided
    client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "bgtest", "frames": 5})
    before = {c["label"]: c for c in client.get("/v1/classes").json()}
    assert "background" not in before["bgtest"]["threshold_reason"]
    assert httpx.post(f"{daemon.api_url}/v1/cameras/green/background", json={"frames": 4}).status_code == 401
    r = client.post("/v1/cameras/green/background", headers=AUTH, json={"frames": 4, "interval_s": 0.05})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames"] == 4 and body["background"] == [{"camera": "green", "region": "full", "frames": 4}]
    after = {c["label"]: c for c in client.get("/v1/classes").json()}
    assert all("background" in c["threshold_reason"] for c in after.values() if c["threshold_calibrated"]), after
    assert after["bgtest"]["threshold_calibrated"]
    assert (config.state_dir / "background" / "green.full.npz").is_file()
    assert client.get("/health").json()["background"][0]["frames"] == 4
    # the classifier the inference loop decides with gets it too
    from edgessl.edge_runtime.fewshot.gallery import Gallery

    with daemon.models.use() as model, Gallery(daemon.gallery_path) as gallery:
        reasons = [t.reason for t in daemon.classifier(model, gallery).thresholds() if t.calibrated]
    assert reasons and all("background" in r for r in reasons)
    # stored on disk: a new store (a restart) reads it back, re-embedding for another model
    from edgessl.edge_runtime.daemon.background import BackgroundStore

    class Other:
        fingerprint = "another-model"
        calls = 0

        def embed(self, images, batch_size=32):
            Other.calls += 1
            return np.ones((len(images), 7), np.float32)

    store = BackgroundStore(config.state_dir / "background")
    emb = store.embeddings(Other())
    assert emb.shape == (4, 7) and Other.calls == 1
    assert BackgroundStore(config.state_dir / "background").embeddings(Other()).shape == (4, 7)
    assert Other.calls == 1  # rewritten with the other model's embeddings: not embedded again
    # back to the running model's embeddings for the rest of the tests
    with daemon.models.use() as model:
        assert store.embeddings(model.extractor).shape[0] == 4
    # DELETE clears it
    assert client.delete("/v1/cameras/green/background", headers=AUTH).json()["removed"] == 4
    cleared = {c["label"]: c for c in client.get("/v1/classes").json()}
    assert "background" not in cleared["bgtest"]["threshold_reason"]
    assert client.post("/v1/cameras/gone/background", headers=AUTH, json={}).status_code == 409
    assert client.post("/v1/cameras/nope/background", headers=AUTH, json={}).status_code == 404
    client.delete("/v1/classes/bgtest", headers=AUTH)


def test_delete_can_be_undone(guided):
    daemon, client, _ = guided
    client.post("/v1/cameras/green/enroll", headers=AUTH, json={"label": "Leaf", "frames": 4})
    client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "Leaf", "frames": 2, "negative": True})
    before = {c["label"]: c for c in client.get("/v1/classes").json()}["Leaf"]
    r = client.delete("/v1/classes/leaf", headers=AUTH)
    assert r.status_code == 200 and r.json()["undo_s"] == 30 and r.json()["restore"] == "/v1/classes/Leaf/restore"
    assert "Leaf" not in {c["label"] for c in client.get("/v1/classes").json()}
    assert httpx.post(f"{daemon.api_url}/v1/classes/Leaf/restore").status_code == 401
    r = client.post("/v1/classes/Leaf/restore", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["restored"] == 6
    after = {c["label"]: c for c in client.get("/v1/classes").json()}["Leaf"]
    assert (after["exemplars"], after["negatives"]) == (before["exemplars"], before["negatives"]) == (4, 2)
    assert client.post("/v1/classes/Leaf/restore", headers=AUTH).status_code == 404  # once only
    client.delete("/v1/classes/Leaf", headers=AUTH)
    daemon.enrollment._deleted["leaf"].until = 0  # the window has passed
    r = client.post("/v1/classes/Leaf/restore", headers=AUTH)
    assert r.status_code == 404 and "undo_s" in r.text


def test_a_camera_that_is_down_says_why(guided):
    daemon, client, _ = guided

    def reasons():
        cams = client.get("/health").json()["cameras"]
        ok = cams["gone"]["reason"] and "no such file" in cams["gone"]["reason"] and cams["net"]["reason"] \
            and "connection refused" in cams["net"]["reason"]
        return cams if ok else None

    cams = wait_for(reasons, 20, "reasons of the cameras that are down")
    assert cams["red"]["reason"] is None
    listed = {c["id"]: c for c in client.get("/v1/cameras").json()}
    assert "no such file" in listed["gone"]["reason"]


def test_snapshot_carries_the_decision_drawn_on_it_and_states_name_the_nearest(guided):
    daemon, client, _ = guided
    client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "near", "frames": 4})
    try:
        def decided():
            states = {s["camera"]: s for s in client.get("/v1/state").json()}
            return states if states["green"]["label"] is not None and states["green"]["nearest"] else None

        states = wait_for(decided, 20, "a decision on green")
        classes = {c["label"] for c in client.get("/v1/classes").json()}
        assert states["green"]["nearest"] in classes  # named even when the label is unknown
        r = client.get("/v1/cameras/red/snapshot.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        drawn = json.loads(r.headers["x-region-states"])
        assert drawn[0]["region"] == "full" and drawn[0]["snapshot_frame"] >= drawn[0]["frame"] > 0
        assert drawn[0]["label"] is not None and drawn[0]["nearest"] in classes
        assert client.get("/v1/cameras/gone/snapshot.jpg").status_code == 409
    finally:
        client.delete("/v1/classes/near", headers=AUTH)



def test_the_restore_url_works_for_any_label(guided):
    """The DELETE answer's restore URL is percent-encoded: labels with spaces, '%', '?' and '#'."""
    _, client, _ = guided
    label = "50% off? #1 & co"
    assert client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": label, "frames": 2}).status_code == 200
    r = client.delete("/v1/classes/50%25%20off%3F%20%231%20%26%20co", headers=AUTH)
    assert r.status_code == 200 and r.json()["restore"] == "/v1/classes/50%25%20off%3F%20%231%20%26%20co/restore"
    r = client.post(r.json()["restore"], headers=AUTH)
    assert r.status_code == 200 and r.json()["label"] == label and r.json()["restored"] == 2, r.text
    client.delete("/v1/classes/50%25%20off%3F%20%231%20%26%20co", headers=AUTH)


def test_the_reason_of_each_state_is_words_a_person_reads():
    from edgessl.edge_runtime.daemon.config import CameraConfig
    from edgessl.edge_runtime.daemon.streams import CameraStream, State

    stream = CameraStream(CameraConfig(id="cam", url="rtsp://10.0.0.5/cam", stall_timeout_s=5))
    assert stream.status().reason == "stopped"
    stream._set_state(State.STREAMING)
    assert stream.status().reason is None
    stream._set_state(State.STALLED, "no frame for 5.2 s (stall timeout 5 s)")
    assert stream.status().reason == "stalled: no frame for over 5 s"  # no frame ever: the timeout
    stream._last_frame_mono = __import__("time").monotonic() - 7
    assert stream.status().reason == "stalled: no frame for 7 s"
    stream._set_state(State.BACKING_OFF, "cannot open rtsp source rtsp://10.0.0.5/cam: connection refused by 10.0.0.5:554")
    assert stream.status().reason.startswith("retrying: ") and "connection refused" in stream.status().reason
    stream._set_state(State.FAILED, "3 attempts failed; last: x")
    assert stream.status().reason == "gave up: 3 attempts failed; last: x"
    stream._set_state(State.ENDED, "end of file")
    assert "file ended" in stream.status().reason
