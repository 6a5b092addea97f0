"""Collection on a real daemon (loopback, a looping file camera with sampling on): samples appear
with their figures and in /metrics and /health; every harvest route needs the token and path
tricks get no file; the archive is a tar of exactly named members whose JSON's sha256 matches
its JPEG; an ack with a wrong sha256 deletes nothing and with the right one deletes; the gallery
archive holds the enrolled exemplars with their labels; an object track gives one sample when it
leaves."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import httpx
import pytest
from daemon_helpers import (
    BLUE,
    FAST_SAMPLING,
    RED,
    make_config,
    raw_status,
    sampling_config,
    textured,
    wait_for,
)

from edgessl import scene
from edgessl.edge_runtime.daemon.core import Daemon

TOKEN = "samples-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PER_HOUR = 12


@pytest.fixture(scope="module")
def harvest(tmp_path_factory, tiny_bundle, clips):
    """A daemon whose camera sampled PER_HOUR crops (its hourly limit): nothing new comes after."""
    tmp = tmp_path_factory.mktemp("samples")
    (tmp / "token").write_text(TOKEN)
    config = sampling_config(tmp, tiny_bundle, clips["red"], token_file=tmp / "token",
                             sampling={"per_hour": PER_HOUR})
    daemon = Daemon(config)
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
            wait_for(lambda: client.get("/v1/samples").json()["stored"] >= PER_HOUR, 60, f"{PER_HOUR} samples")
            wait_for(lambda: 'reason="rate_hour"' in client.get("/metrics").text, 20, "the hourly limit")
            yield daemon, client
    finally:
        daemon.stop()


def test_samples_appear_with_their_figures_in_metrics_and_health(harvest):
    daemon, client = harvest
    page = client.get("/v1/samples", params={"after": 0, "limit": 1000}).json()
    samples = page["samples"]
    assert len(samples) == page["stored"] == PER_HOUR and page["next_after"] == samples[-1]["id"]
    assert page["bytes"] == sum(s["bytes"] for s in samples) and page["quota_bytes"] == 256 * 2**20
    ids = [s["id"] for s in samples]
    assert ids == sorted(ids)
    first = samples[0]
    # Nothing is enrolled: every crop is unknown, the reason it was kept.
    assert {k: first[k] for k in ("camera", "source", "ref", "model", "reason", "label", "nearest", "margin")} == {
        "camera": "cam", "source": "region", "ref": "full", "model": "tiny:1", "reason": "unknown", "label": None,
        "nearest": None, "margin": None}
    assert first["time"].endswith("Z") and 0 <= first["novelty"] <= 2
    jpeg = client.get(f"/v1/samples/{first['id']}.jpg")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(jpeg.content).hexdigest() == first["sha256"] and len(jpeg.content) == first["bytes"]
    # Paging: after an id, ascending, at most `limit`.
    assert [s["id"] for s in client.get("/v1/samples", params={"after": ids[3], "limit": 2}).json()["samples"]] \
        == ids[4:6]
    end = client.get("/v1/samples", params={"after": ids[-1]}).json()
    assert end["samples"] == [] and end["next_after"] == ids[-1]

    metrics = client.get("/metrics").text
    assert f'edgessl_samples_kept_total{{camera="cam",reason="unknown"}} {PER_HOUR}.0' in metrics
    assert 'edgessl_samples_rejected_total{camera="cam",reason="interval"}' in metrics
    assert 'edgessl_samples_rejected_total{camera="cam",reason="rate_hour"}' in metrics
    assert f"edgessl_samples_bytes {float(page['bytes'])}" in metrics
    assert f"edgessl_samples_stored {float(PER_HOUR)}" in metrics
    assert 'edgessl_drift{camera="cam"}' in metrics

    health = client.get("/health").json()["samples"]
    assert health["enabled"] is True and health["error"] is None
    assert health["store"]["stored"] == PER_HOUR and health["store"]["newest_id"] == ids[-1]
    assert health["cameras"]["cam"] == {"kept": PER_HOUR, "last_hour": PER_HOUR, "last_day": PER_HOUR}
    assert health["drift"]["cam"]["ready"] is True and health["drift"]["cam"]["score"] < 0.25
    assert daemon.collection.store_path == daemon.config.state_dir / "samples.db"


def test_every_harvest_route_needs_the_token_and_path_tricks_get_no_file(harvest):
    daemon, client = harvest
    url = daemon.api_url
    anonymous = [("GET", "/v1/samples"), ("GET", "/v1/samples/1.jpg"), ("GET", "/v1/samples/archive"),
                 ("POST", "/v1/samples/ack"), ("GET", "/v1/gallery/archive")]
    for method, path in anonymous:
        assert raw_status(url, method, path, {}) == 401, path
        assert raw_status(url, method, path, {"Authorization": "Bearer " + "x" * len(TOKEN)}) == 401, path
    r = httpx.post(f"{url}/v1/samples/ack", json={"samples": {}})
    assert r.status_code == 401
    for path in ("/v1/samples/..%2Fgallery.db", "/v1/samples/../gallery.db", "/v1/samples/%2e%2e/samples.db",
                 "/v1/samples/abc.jpg", "/v1/samples/-1.jpg", "/v1/samples/1.jpg.db", "/v1/samples/1",
                 "/v1/samples/99999999.jpg", "/v1/samples/archive/../../api-token"):
        assert raw_status(url, "GET", path, AUTH) == 404, path
    assert client.get("/v1/samples/99999999999999999999999.jpg").status_code == 422  # past SQLite's integers
    for path, params in (("/v1/samples", {"after": -1}), ("/v1/samples", {"limit": 0}),
                         ("/v1/samples", {"limit": 1001}), ("/v1/samples/archive", {"after": -1}),
                         ("/v1/samples/archive", {"limit": 5001}), ("/v1/samples", {"after": "1; DROP"})):
        r = client.get(path, params=params)
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", (path, params)
    for body in ({"samples": {"../1": "a" * 64}}, {"samples": {"1": "z" * 64}}, {"samples": {"1": "a" * 63}},
                 {"samples": {str(i): "a" * 64 for i in range(10_001)}}, {"samples": {}, "more": 1}, {},
                 {"samples": {"1" * 19: "a" * 64}}):
        assert client.post("/v1/samples/ack", json=body).status_code == 422
    assert client.get("/v1/samples").json()["stored"] == PER_HOUR  # nothing was deleted


def test_the_archive_is_a_tar_of_exact_members_whose_json_matches_its_jpeg(harvest):
    daemon, client = harvest
    ids = [s["id"] for s in client.get("/v1/samples").json()["samples"]]
    r = client.get("/v1/samples/archive", params={"after": 0, "limit": 4})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert "content-length" not in r.headers  # streamed as it is read
    assert r.headers["x-edgessl-last-id"] == str(ids[3]) and len(r.content) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{i:010d}.{ext}" for i in ids[:4] for ext in ("jpg", "json")]
        assert all(m.isreg() and m.mode == 0o644 for m in members)
        files = {m.name: tar.extractfile(m).read() for m in members}
    listed = {s["id"]: s for s in client.get("/v1/samples").json()["samples"]}
    for i in ids[:4]:
        meta = json.loads(files[f"{i:010d}.json"])
        jpeg = files[f"{i:010d}.jpg"]
        assert meta["sha256"] == hashlib.sha256(jpeg).hexdigest() and meta["bytes"] == len(jpeg)
        assert meta == {**listed[i], "embedding_dim": 16}
    # The next archive starts where this one ended; past the last id it is empty (and says so).
    r = client.get("/v1/samples/archive", params={"after": ids[3]})
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        assert tar.getnames()[0] == f"{ids[4]:010d}.jpg" and len(tar.getnames()) == 2 * (len(ids) - 4)
    assert r.headers["x-edgessl-last-id"] == str(ids[-1])
    r = client.get("/v1/samples/archive", params={"after": ids[-1]})
    assert r.headers["x-edgessl-last-id"] == str(ids[-1])
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        assert tar.getnames() == []


def test_an_ack_deletes_only_what_the_server_has_intact(harvest):
    daemon, client = harvest
    samples = client.get("/v1/samples").json()["samples"]
    ids = [s["id"] for s in samples[:3]]
    received = {i: client.get(f"/v1/samples/{i}.jpg").content for i in ids}
    wrong = {str(i): hashlib.sha256(received[i] + b"x").hexdigest() for i in ids}
    r = client.post("/v1/samples/ack", json={"samples": wrong})
    assert r.status_code == 200 and r.json() == {"deleted": 0, "mismatched": ids, "missing": []}
    assert all(client.get(f"/v1/samples/{i}.jpg").status_code == 200 for i in ids)
    right = {str(i): hashlib.sha256(received[i]).hexdigest().upper() for i in ids}
    r = client.post("/v1/samples/ack", json={"samples": {**right, "424242": "a" * 64}})
    assert r.json() == {"deleted": 3, "mismatched": [], "missing": [424242]}
    assert all(client.get(f"/v1/samples/{i}.jpg").status_code == 404 for i in ids)
    page = client.get("/v1/samples").json()
    assert [s["id"] for s in page["samples"]] == [s["id"] for s in samples[3:]]
    assert page["stored"] == PER_HOUR - 3 == client.get("/health").json()["samples"]["store"]["stored"]
    assert f"edgessl_samples_stored {float(PER_HOUR - 3)}" in client.get("/metrics").text
    assert client.post("/v1/samples/ack", json={"samples": right}).json()["missing"] == ids
    # Harvested samples still count against the hourly limit: nothing new comes.
    assert client.get("/health").json()["samples"]["cameras"]["cam"]["last_hour"] == PER_HOUR


def test_the_gallery_archive_holds_the_enrolled_exemplars_with_their_labels(harvest):
    daemon, client = harvest
    r = client.get("/v1/gallery/archive")
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        assert tar.getnames() == []  # nothing enrolled yet
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    daemon.enrollment.enroll_images("red", [textured(BLUE, 0)], negative=True)
    red = next(c for c in client.get("/v1/classes").json() if c["label"] == "red")
    r = client.get("/v1/gallery/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        names = tar.getnames()
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    ids = sorted(red["exemplar_ids"] + red["negative_ids"])
    assert names == [f"exemplars/{i:010d}.{ext}" for i in ids for ext in ("jpg", "json")]
    for i in ids:
        meta = json.loads(files[f"exemplars/{i:010d}.json"])
        assert meta == {"id": i, "label": "red", "negative": i in red["negative_ids"], "source": None}
        assert files[f"exemplars/{i:010d}.jpg"] == client.get(f"/v1/exemplars/{i}.jpg").content


def test_an_object_track_gives_one_sample_when_it_leaves(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    w, _ = scene.SIZE
    ball = scene.SceneObject(1, "circle", (30, 30, 220), 32.0,
                             (scene.Leg(0.3, 4.0, (-32.0, 180.0), (w + 32.0, 180.0)),), 0.3, "evaluation")
    clip = tmp_path / "yard.mp4"
    scene.write(clip, [ball], tail_s=3.0)  # the empty view after it left: the track ends (tracker.max_lost_s)
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clip), "mode": "every", "realtime": True,
                                                  "objects": {}, "sampling": {**FAST_SAMPLING, "regions": False}}],
                         api={"port": 0})
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
        left = wait_for(lambda: [t for t in client.get("/v1/tracks").json() if t["state"] == "ended"], 60,
                        "the object to leave")
        samples = wait_for(lambda: client.get("/v1/samples").json()["samples"], 10, "its sample")
        assert len(samples) == 1 and len(left) == 1
        sample = samples[0]
        assert (sample["source"], sample["ref"], sample["camera"]) == ("track", str(left[0]["id"]), "cam")
        assert sample["reason"] == "unknown" and sample["label"] is None
        best = client.get(f"/v1/tracks/{left[0]['id']}/best.jpg").content
        assert client.get(f"/v1/samples/{sample['id']}.jpg").content == best  # its sharpest crop, as kept

