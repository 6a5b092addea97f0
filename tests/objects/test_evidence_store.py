"""A track's label from all its crops, and the store of recent tracks on disk."""

import json

import numpy as np
from disks import fill, tmpfs

from edgessl.edge_runtime.fewshot.classifier import ClassScores
from edgessl.edge_runtime.fewshot.labels import UNKNOWN
from edgessl.edge_runtime.objects.config import DecisionConfig
from edgessl.edge_runtime.objects.evidence import Evidence
from edgessl.edge_runtime.objects.store import TrackStore

PROTOS = np.eye(4)[:2]  # two classes: "cat" along axis 0, "dog" along axis 1


def scorer(queries: np.ndarray) -> ClassScores:
    scores = (queries @ PROTOS.T).astype(np.float32)
    return ClassScores(["cat", "dog"], scores, np.array([0.5, 0.5], np.float32), scores.argmax(axis=1))


def view(*weights: float) -> np.ndarray:
    v = np.array(weights + (0.0,) * (4 - len(weights)))
    return v / np.linalg.norm(v)


def test_nothing_is_said_before_enough_crops_then_the_evidence_decides():
    ev = Evidence(DecisionConfig(min_crops=3))
    for _ in range(2):
        ev.add(view(1, 0.2))
        assert ev.update(scorer) == (None, None)
    ev.add(view(0.1, 1))  # one bad crop among good ones is outvoted
    assert ev.update(scorer) == (None, "cat") and ev.label == "cat"
    assert ev.verdict.nearest == "cat" and ev.verdict.agreement == 2 / 3


def test_a_stranger_stays_unknown_and_a_change_needs_two_opinions():
    ev = Evidence(DecisionConfig(min_crops=2))
    for _ in range(2):
        ev.add(view(0.3, 0.2, 1))  # like neither class: below both thresholds
    assert ev.update(scorer) == (None, UNKNOWN)
    for _ in range(6):
        ev.add(view(0, 1))
    ev.update(scorer)  # the crops now say dog: the first time it is only pending
    assert ev.label == UNKNOWN
    assert ev.update(scorer) == (UNKNOWN, "dog")


def test_the_label_follows_the_gallery_as_it_is_now():
    ev = Evidence(DecisionConfig(min_crops=1))
    ev.add(view(1, 0.1))
    empty = lambda q: ClassScores([], np.zeros((len(q), 0), np.float32), np.zeros(0, np.float32), None)  # noqa: E731
    assert ev.update(empty) == (None, UNKNOWN)
    ev.update(scorer)
    assert ev.update(scorer) == (UNKNOWN, "cat")  # enrolled later: the same crops now name it


def test_the_store_keeps_the_newest_tracks_within_its_bounds(tmp_path):
    store = TrackStore(tmp_path / "tracks", keep=3, max_bytes=100_000)
    for i in range(1, 6):
        store.write_meta(i, {"id": i, "camera": "yard"})
        store.add_crop(i, 10 * i, 50.0 + i, b"x" * 1000)
    assert [m["id"] for m in store.recent(10)] == [5, 4, 3]
    assert 1 not in store and store.meta(1) is None and store.next_id() == 6
    assert [c.name for c in store.crops(5)] == ["50-55.jpg"] and store.crop_bytes(5, "50-55.jpg") == b"x" * 1000
    assert store.crop_bytes(5, "../4/meta.json") is None
    # bytes: a big crop pushes the oldest out first, never the newest
    store.write_meta(6, {"id": 6, "camera": "yard"})
    store.add_crop(6, 60, 1.0, b"y" * 99_500)
    store.write_meta(6, {"id": 6, "camera": "yard", "label": "cat"})
    assert [m["id"] for m in store.recent(10)] == [6]


def test_the_store_recovers_from_a_crash(tmp_path):
    folder = tmp_path / "tracks"
    store = TrackStore(folder, keep=10, max_bytes=10**6)
    store.write_meta(1, {"id": 1, "camera": "yard"})
    store.add_crop(1, 3, 40.0, b"jpeg")
    (folder / "2").mkdir()  # a crash before the meta of track 2 was written
    (folder / "2" / "5-10.jpg").write_bytes(b"half")
    (folder / "1" / ".7-9.jpg.tmp").write_bytes(b"half")  # a crash during a crop's write
    again = TrackStore(folder, keep=10, max_bytes=10**6)
    assert not (folder / "2").exists() and not (folder / "1" / ".7-9.jpg.tmp").exists()
    assert [c.name for c in again.crops(1)] == ["3-40.jpg"] and again.next_id() == 2
    assert json.loads((folder / "1" / "meta.json").read_text())["camera"] == "yard"


def test_a_full_disk_does_not_stop_the_tracks(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as disk:
        store = TrackStore(disk / "tracks", keep=10, max_bytes=10**7)
        store.write_meta(1, {"id": 1})
        fill(disk)
        assert store.add_crop(1, 1, 1.0, b"j" * 200_000) is None  # no room: counted, not raised
        store.write_meta(2, {"id": 2, "camera": "yard", "pad": "p" * 100_000})
        assert store.errors == 2 and store.crops(1) == [] and store.meta(2) is None
        assert store.recent(5) == [{"id": 1}]
