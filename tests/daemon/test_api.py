"""The HTTP API of a running daemon: auth, limits, enrollment (uploaded and live), events,
snapshots, metrics, and model upload with hot reload (bundle folder and A/B installer)."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from daemon_helpers import BLUE, RED, make_config, png, raw_status, render_clip, textured, wait_for

from edgessl.edge_runtime.daemon.core import Daemon

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}



@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_bundle):
    """A daemon with four looping file cameras: red, blue, a static scene and a dark one."""
    tmp = tmp_path_factory.mktemp("api")
    red = render_clip(tmp / "red.mp4", [RED], 2.0)
    blue = render_clip(tmp / "blue.mp4", [BLUE], 2.0)
    static = tmp / "static.mp4"
    writer = cv2.VideoWriter(str(static), cv2.VideoWriter.fourcc(*"mp4v"), 10, (160, 120))
    for _ in range(20):
        writer.write(textured((90, 140, 90), 0))  # the very same frame: every shot but the first is a duplicate
    writer.release()
    dark = render_clip(tmp / "dark.mp4", [(8, 8, 8)], 2.0)
    (tmp / "token").write_text(TOKEN + "\n")
    cameras = [{"id": name, "url": str(path), "loop": True} for name, path in
               [("red", red), ("blue", blue), ("static", static), ("dark", dark)]]
    config = make_config(tmp, tiny_bundle, cameras,
                         api={"port": 0, "token_file": str(tmp / "token"), "max_image_upload_bytes": 200_000,
                              "max_bundle_bytes": 2_000_000, "max_image_pixels": 1_000_000},
                         enrollment={"interval_s": 0.05, "timeout_s": 5})
    daemon = Daemon(config)
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:  # reading needs it too
            wait_for(lambda: all(s.status().processed > 0 for s in daemon.streams.values()), 20, "frames from all cameras")
            yield daemon, client
    finally:
        daemon.stop()


def label_of(client: httpx.Client, camera: str) -> str | None:
    return next(s["label"] for s in client.get("/v1/state").json() if s["camera"] == camera)


def test_openapi_health_metrics_and_page(api):
    daemon, client = api
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/metrics", "/v1/classes", "/v1/cameras/{camera_id}/enroll", "/v1/events",
            "/v1/cameras/{camera_id}/snapshot.jpg", "/v1/model"} <= set(paths)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["name"] == "tiny"
    assert set(health["cameras"]) == {"red", "blue", "static", "dark"}
    text = client.get("/metrics").text
    for name in ("edgessl_frames_captured_total", "edgessl_frames_processed_total", "edgessl_frames_dropped_total",
                 "edgessl_inference_seconds_bucket", "edgessl_capture_to_decision_seconds_bucket",
                 "edgessl_camera_reconnects_total", "edgessl_gallery_classes", "edgessl_gallery_exemplars",
                 "edgessl_model_version", 'edgessl_camera_state{camera="red",state="streaming"} 1.0'):
        assert name in text, name
    page = client.get("/")
    assert page.status_code == 200 and 'id="enroll-form"' in page.text
    assert client.get("/web/app.js").status_code == 200


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/v1/classes", {"files": {"images": ("a.png", b"x")}, "data": {"label": "a"}}),
    ("DELETE", "/v1/classes/red", {}),
    ("DELETE", "/v1/exemplars/1", {}),
    ("POST", "/v1/cameras/red/enroll", {"json": {"label": "red"}}),
    ("POST", "/v1/model", {"content": b"not a tar"}),
])
def test_mutating_routes_need_the_token(api, method, path, kwargs):
    daemon, _ = api
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.request(method, daemon.api_url + path, headers=headers, timeout=30, **kwargs)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert raw_status(daemon.api_url, method, path, {"Authorization": "Bearer "}) == 401


def test_enroll_uploaded_images_then_classes_and_thumbnails(api):
    daemon, client = api
    files = [("images", (f"{i}.png", png(textured(RED, i)), "image/png")) for i in range(4)]
    r = client.post("/v1/classes", headers=AUTH, data={"label": "red"}, files=files)
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 4
    classes = {c["label"]: c for c in client.get("/v1/classes").json()}
    red = classes["red"]
    assert red["exemplars"] == 4 and red["loo_accuracy"] == 1.0 and len(red["exemplar_ids"]) == 4
    # The class's own threshold (calibrated from its 4 exemplars), with the reason and a recommendation.
    assert red["threshold_calibrated"] is True and -1 <= red["threshold"] <= 1 and red["threshold_reason"]
    assert red["recommendation"]
    thumb = client.get(f"/v1/exemplars/{red['exemplar_ids'][0]}.jpg")
    assert thumb.headers["content-type"] == "image/jpeg"
    side = 4 * max(daemon.model.extractor.spec.input_size)  # crops are stored at most 4x the model input
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR).shape == (side * 3 // 4, side, 3)
    wait_for(lambda: label_of(client, "red") == "red", 15, "the red camera to read red")
    assert client.get("/v1/exemplars/999999.jpg").status_code == 404

    # Negative examples: "this is not red" (a purple that the red prototype would take).
    purple = [("images", (f"p{i}.png", png(textured((150, 30, 180), i)), "image/png")) for i in range(2)]
    r = client.post("/v1/classes", headers=AUTH, data={"label": "red", "negative": "true"}, files=purple)
    assert r.status_code == 201 and r.json()["negative"]
    red = next(c for c in client.get("/v1/classes").json() if c["label"] == "red")
    assert (red["exemplars"], red["negatives"], len(red["negative_ids"])) == (4, 2, 2)


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400, "damaged or truncated"),
    (b"GIF89a not supported", 400, "not a JPEG, PNG, WebP or BMP image"),
    (b"", 400, "not a JPEG, PNG, WebP or BMP image"),
    # A valid PNG header that claims 50000 x 50000 pixels: refused before decoding.
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (50000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00", 413,
     "the limit is 1000000 pixels"),
])
def test_bad_images_are_refused(api, data, status, message):
    _, client = api
    good = ("images", ("ok.png", png(textured(BLUE, 0)), "image/png"))
    r = client.post("/v1/classes", headers=AUTH, data={"label": "bad"}, files=[good, ("images", ("x.png", data))])
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert "bad" not in [c["label"] for c in client.get("/v1/classes").json()]  # nothing enrolled


def test_oversized_upload_is_refused_without_reading_it(api):
    daemon, client = api
    host, port = daemon.api_url.removeprefix("http://").split(":")
    # Declares 10 GB and sends none of it: the answer comes at once.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/classes HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n".encode())
        start = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):  # the server answers and closes the connection
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 413") and time.monotonic() - start < 5
        assert "the limit of this route is 200000 bytes" in answer

    # No Content-Length (chunked): cut off once past the limit.
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(100):
            yield b"\0" * 10_000
    r = client.post("/v1/classes", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
                    content=chunks())
    assert r.status_code == 413
    r = client.post("/v1/model", headers=AUTH, content=(b"\0" * 100_000 for _ in range(30)))
    assert r.status_code == 403  # this daemon installs nothing: refused from the headers (test_attack_uploads)
    assert client.get("/health").status_code == 200  # still serving


def test_live_enrollment_with_quality_gates(api):
    daemon, client = api
    r = client.post("/v1/cameras/blue/enroll", headers=AUTH, json={"label": "blue", "frames": 3})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["kept"], report["added"], report["complete"]) == (3, 3, True)
    assert report["quality"][0]["exemplars"] == 3
    wait_for(lambda: label_of(client, "blue") == "blue", 15, "the blue camera to read blue")

    # A static scene: the first shot is kept, the others are near-duplicates, and the answer says so.
    r = client.post("/v1/cameras/static/enroll", headers=AUTH,
                    json={"label": "plant", "frames": 3, "timeout_s": 1.5})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["kept"] == 1 and not report["complete"]
    assert set(report["reasons"]) == {"near-duplicate of a shot already kept"} and report["rejected"] >= 2
    assert client.delete("/v1/classes/plant", headers=AUTH).json()["removed"] == 1

    # Too dark: nothing is enrolled, 422 with the reasons.
    r = client.post("/v1/cameras/dark/enroll", headers=AUTH, json={"label": "night", "frames": 2, "timeout_s": 1})
    assert r.status_code == 422
    assert set(r.json()["reasons"]) == {"too dark"} and "nothing enrolled" in r.json()["detail"]

    assert client.post("/v1/cameras/nope/enroll", headers=AUTH, json={"label": "x"}).status_code == 404
    assert client.post("/v1/cameras/red/enroll", headers=AUTH,
                       json={"label": "x", "region": "nope"}).status_code == 404
    # an invalid label is a validation error of the request (issue 13): 422
    assert client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "unknown"}).status_code == 422
    assert client.post("/v1/cameras/red/enroll", headers=AUTH, json={"label": "x", "bogus": 1}).status_code == 422


def test_snapshot(api):
    _, client = api
    r = client.get("/v1/cameras/red/snapshot.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    assert client.get("/v1/cameras/nope/snapshot.jpg").status_code == 404


def test_server_sent_events_carry_capture_and_decision_time(api):
    daemon, client = api
    files = [("images", (f"{i}.png", png(textured((200, 200, 30), i)), "image/png")) for i in range(3)]
    with client.stream("GET", "/v1/events") as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        # Forget red and enroll it again: the red camera goes red -> unknown/other -> red.
        assert client.delete("/v1/classes/red", headers=AUTH).status_code == 200
        assert client.post("/v1/classes", headers=AUTH, data={"label": "teal"}, files=files).status_code == 201
        events = []
        deadline = time.monotonic() + 20
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if any(e["camera"] == "red" and e["previous"] == "red" for e in events):
                    break
            assert time.monotonic() < deadline, f"no change of the red camera in {events}"
    change = next(e for e in events if e["camera"] == "red" and e["previous"] == "red")
    assert change["type"] == "event" and change["label"] != "red"
    assert change["capture_time"] <= change["decision_time"] and 0 <= change["latency_ms"] < 5000
    assert client.delete("/v1/classes/red", headers=AUTH).status_code == 404


def tar_of(bundle: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(bundle.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()
