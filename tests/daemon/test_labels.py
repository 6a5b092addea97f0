"""Labels and odd JSON (issue 13, items 6 and 7): NaN / Infinity / 1e309 and lone surrogates
are 422, not 500; labels are normalised (NFC, trimmed, case-folded for uniqueness), `/` and
look-alikes of `unknown` are refused, and every class that exists can be deleted, even one
stored with a `/` before labels were checked; DELETE on a thumbnail's URL is 405."""

from __future__ import annotations

import sqlite3

import httpx
import numpy as np
import pytest
from daemon_helpers import RED, make_config, png, textured, wait_for

from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.fewshot.gallery import Gallery

TOKEN = "labels-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}



@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_bundle, clips):
    tmp = tmp_path_factory.mktemp("labels")
    (tmp / "token").write_text(TOKEN + "\n")
    config = make_config(tmp, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0, "token_file": str(tmp / "token")},
                         enrollment={"interval_s": 0.05, "timeout_s": 5})
    daemon = Daemon(config)
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
            wait_for(lambda: daemon.streams["cam"].status().processed > 0, 20, "frames from the camera")
            yield daemon, client
    finally:
        daemon.stop()


def enroll(client: httpx.Client, label: str | bytes, n: int = 2) -> httpx.Response:
    files = [("images", (f"{i}.png", png(textured(RED, i)), "image/png")) for i in range(n)]
    return client.post("/v1/classes", headers=AUTH, data={"label": label}, files=files)


def labels(client: httpx.Client) -> list[str]:
    return [c["label"] for c in client.get("/v1/classes").json()]


@pytest.mark.parametrize("body", [
    '{"label": "x", "interval_s": NaN}',
    '{"label": "x", "interval_s": Infinity}',
    '{"label": "x", "timeout_s": -Infinity}',
    '{"label": "x", "frames": 1e309}',
    '{"label": "x", "interval_s": 1e309}',
    '{"label": "\\ud800x"}',  # a lone surrogate (valid JSON escape, invalid Unicode)
    '{"label": "x", "\\udc00": 1}',  # ... in an unknown field's name
    '{"label": "a/b"}',
    '{"label": "Unknown"}',
])
def test_odd_json_is_a_422_not_a_500(api, body):
    _, client = api
    r = client.post("/v1/cameras/cam/enroll", headers={**AUTH, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 422, r.text
    assert r.json()["ok"] is False and r.json()["detail"]


@pytest.mark.parametrize(("label", "message"), [
    ("a/b", "'/'"),
    ("a\\b", "'\\\\'"),
    ("cat\u200b", "'\\u200b'"),  # zero-width space: a look-alike of "cat"
    ("Unknown", "reserved"),
    ("unknown ", "reserved"),
    (" UN known", "reserved"),
    ("UNKNOWN\u3000", "reserved"),  # ideographic space
    ("..", "only dots"),
    ("x" * 65, "at most 64"),
])
def test_bad_labels_are_refused_with_a_4xx(api, label, message):
    _, client = api
    r = enroll(client, label)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"], r.json()["detail"]
    assert not any(lab.casefold().strip() in ("unknown", label.casefold()) for lab in labels(client))


def test_surrogate_bytes_in_a_form_field_are_a_4xx(api):
    _, client = api
    # "\ud800x" encoded the only way bytes can carry it (CESU-8 / WTF-8): not UTF-8
    boundary = "b0undary"
    image = png(textured(RED, 0))
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"\r\n\r\n".encode() + b"\xed\xa0\x80x"
            + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
              f"Content-Type: image/png\r\n\r\n".encode() + image + f"\r\n--{boundary}--\r\n".encode())
    r = client.post("/v1/classes", headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                    content=body)
    assert 400 <= r.status_code < 500, r.text
    assert not any("\ud800" in lab or "\ufffd" in lab for lab in labels(client))


def test_labels_are_normalised_and_case_does_not_make_a_new_class(api):
    _, client = api
    r = enroll(client, "  Cafe\u0301   au  lait ")  # decomposed é, extra spaces
    assert r.status_code == 201, r.text
    assert r.json()["label"] == "Caf\u00e9 au lait"
    r = enroll(client, "CAFÉ AU LAIT", n=1)  # same class, other case
    assert r.status_code == 201 and r.json()["label"] == "Caf\u00e9 au lait" and r.json()["added"] == 1
    assert labels(client).count("Caf\u00e9 au lait") == 1
    cls = next(c for c in client.get("/v1/classes").json() if c["label"] == "Caf\u00e9 au lait")
    assert cls["exemplars"] == 3
    r = client.delete("/v1/classes/caf%C3%A9%20AU%20lait", headers=AUTH)
    assert r.status_code == 200 and {k: r.json()[k] for k in ("label", "removed")} == {
        "label": "Caf\u00e9 au lait", "removed": 3}, r.text
    assert "Caf\u00e9 au lait" not in labels(client)


def test_a_label_with_url_characters_round_trips_through_delete(api):
    _, client = api
    label = "50% off? #1 & co"
    assert enroll(client, label).status_code == 201
    r = client.delete("/v1/classes/50%25%20off%3F%20%231%20%26%20co", headers=AUTH)
    assert r.status_code == 200 and r.json()["label"] == label, r.text


def test_a_legacy_label_with_a_slash_can_still_be_deleted(api):
    daemon, client = api
    with Gallery(daemon.gallery_path) as g:
        g.add("legacy", [textured(RED, 0)], np.zeros((1, daemon.model.extractor.embedding_dim), np.float32),
              daemon.model.extractor.fingerprint)
    db = sqlite3.connect(daemon.gallery_path)  # as an older edgessl stored it, before labels were checked
    db.execute("UPDATE classes SET label = 'a/b' WHERE label = 'legacy'")
    db.commit()
    db.close()
    assert "a/b" in labels(client)
    r = client.delete("/v1/classes/a%2Fb", headers=AUTH)
    assert r.status_code == 200 and r.json().items() >= {"label": "a/b", "removed": 1}.items(), r.text
    assert "a/b" not in labels(client)


def test_delete_on_a_thumbnail_url_is_405(api):
    _, client = api
    r = enroll(client, "thumbs", n=1)
    exemplar_id = next(c for c in client.get("/v1/classes").json() if c["label"] == "thumbs")["exemplar_ids"][0]
    assert client.get(f"/v1/exemplars/{exemplar_id}.jpg").status_code == 200
    r = client.delete(f"/v1/exemplars/{exemplar_id}.jpg", headers=AUTH)
    assert r.status_code == 405, r.text
    assert client.get(f"/v1/exemplars/{exemplar_id}.jpg").status_code == 200  # still there
    assert client.delete(f"/v1/exemplars/{2**70}", headers=AUTH).status_code == 422  # too large for SQLite
    assert client.delete(f"/v1/exemplars/{exemplar_id}", headers=AUTH).status_code == 200
