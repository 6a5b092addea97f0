"""The SQLite gallery: durable enrollment, forgetting, re-embedding after a model update."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from edgessl.edge_runtime.fewshot.crops import decode_crop
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.fewshot.gallery_schema import SCHEMA_VERSION
from edgessl.edge_runtime.fewshot.labels import validate_label
from edgessl.errors import GalleryError

CHILD = """
import sys
import numpy as np
from edgessl.edge_runtime.fewshot.gallery import Gallery

rng = np.random.default_rng(0)
with Gallery(sys.argv[1]) as gallery:
    for i in range(1_000_000):
        crops = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
        gallery.add(f"class-{i:06d}", crops, rng.standard_normal((3, 16)).astype(np.float32), "model-1")
        print(f"class-{i:06d}", flush=True)  # acknowledged: add has returned
"""


def test_acknowledged_enrollments_survive_sigkill(tmp_path):
    db = tmp_path / "gallery.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        acked = [proc.stdout.readline().strip() for _ in range(20)]
        assert all(acked), f"the child stopped early: {acked}"
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-way, not finished
    acked += rest.split()  # lines already in the pipe were acknowledged too

    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Gallery(db) as gallery:
        classes = {c.label: c.exemplars for c in gallery.classes()}
    missing = [label for label in acked if label not in classes]
    assert not missing, f"acknowledged but lost: {missing}"
    assert all(n == 3 for n in classes.values()), f"a class was stored in part: {classes}"
    assert len(set(classes) - set(acked)) <= 1  # at most the add in flight when killed


def _crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(n)]


def test_add_classes_embeddings_forget(tmp_path):
    emb_a = np.arange(2 * 4, dtype=np.float32).reshape(2, 4)
    emb_b = -np.ones((3, 4), np.float32)
    with Gallery(tmp_path / "g.db") as gallery:
        assert gallery.add("cat", _crops(2), emb_a, "m1") == 2
        assert gallery.add("dog", _crops(3), emb_b, "m1") == 3
        assert gallery.add("cat", _crops(1), emb_a[:1], "m1") == 1
        assert [(c.label, c.exemplars) for c in gallery.classes()] == [("cat", 3), ("dog", 3)]
        labels, matrix = gallery.embeddings("m1")
        assert labels == ["cat", "cat", "dog", "dog", "dog", "cat"]
        np.testing.assert_array_equal(matrix, np.concatenate([emb_a, emb_b, emb_a[:1]]))
        assert gallery.embeddings("other")[0] == []
        with pytest.raises(GalleryError, match=r"no class 'bird' in the gallery; known classes: 'cat', 'dog'"):
            gallery.forget("bird")
        assert gallery.forget("cat") == 3
        assert [c.label for c in gallery.classes()] == ["dog"]
        assert gallery.embeddings("m1")[0] == ["dog"] * 3
    with sqlite3.connect(tmp_path / "g.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT COUNT(*) FROM exemplars").fetchone()[0] == 3  # cat's rows are gone


def test_crops_are_stored_as_jpeg(tmp_path):
    crop = np.zeros((16, 24, 3), np.uint8)
    crop[:, 12:] = (0, 0, 255)
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add("half-red", [crop], np.ones((1, 4), np.float32), "m1")
    with sqlite3.connect(tmp_path / "g.db") as raw:
        blob = raw.execute("SELECT crop FROM exemplars").fetchone()[0]
    assert blob[:2] == b"\xff\xd8"  # JPEG magic
    decoded = decode_crop(blob)
    assert decoded.shape == crop.shape
    assert np.abs(decoded.astype(int) - crop).mean() < 8


class CountingEmbedder:
    """Embeds a crop as its mean BGR colour and a constant (a stand-in for a new model)."""

    def __init__(self, fingerprint: str, fail_after: int | None = None) -> None:
        self.fingerprint = fingerprint
        self.calls = 0
        self.fail_after = fail_after

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("embedding failed")
        return np.array([[*im.reshape(-1, 3).mean(axis=0), 1.0] for im in images], np.float32)


def test_reembed_updates_stale_rows_from_the_crops(tmp_path):
    crops = [np.full((8, 8, 3), v, np.uint8) for v in (10, 200)]
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add("a", crops[:1], np.zeros((1, 4), np.float32), "old")
        gallery.add("b", crops[1:], np.zeros((1, 4), np.float32), "new")
        assert gallery.stale("new") == 1
        assert gallery.reembed(CountingEmbedder("new")) == 1
        assert gallery.stale("new") == 0
        labels, matrix = gallery.embeddings("new")
        assert labels == ["a", "b"]
        np.testing.assert_allclose(matrix[0], [10, 10, 10, 1], atol=1.0)  # recomputed from the JPEG crop
        np.testing.assert_array_equal(matrix[1], 0)  # already current: untouched


def test_failed_reembed_keeps_the_committed_batches(tmp_path):
    """Re-embedding commits per batch (issue 13): a failure or crash loses at most the batch in
    progress, and the next call carries on from there."""
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add("a", _crops(4), np.zeros((4, 4), np.float32), "old")
        with pytest.raises(RuntimeError):
            gallery.reembed(CountingEmbedder("new", fail_after=1), chunk=2)  # fails on the second chunk
        assert gallery.stale("new") == 2  # the first batch was kept
        assert gallery.embeddings("old")[0] == ["a"] * 2
        assert gallery.reembed(CountingEmbedder("new"), chunk=2) == 2
        assert gallery.stale("new") == 0


@pytest.mark.parametrize(
    ("label", "message"),
    [("", "empty"), ("   ", "empty"), ("x" * 65, "at most 64"), ("a\nb", "control characters"),
     ("tab\there", "control characters"), ("unknown", "reserved")],
)
def test_invalid_labels_are_refused(tmp_path, label, message):
    with pytest.raises(GalleryError, match=message):
        validate_label(label)
    with Gallery(tmp_path / "g.db") as gallery, pytest.raises(GalleryError, match=message):
        gallery.add(label, _crops(1), np.zeros((1, 4), np.float32), "m1")
    assert validate_label("Café ☕ #2") == "Café ☕ #2"


def test_add_checks_rows_match_crops(tmp_path):
    with Gallery(tmp_path / "g.db") as gallery:
        with pytest.raises(GalleryError, match="one embedding row per crop"):
            gallery.add("a", _crops(2), np.zeros((3, 4), np.float32), "m1")
        with pytest.raises(GalleryError, match="at least one crop"):
            gallery.add("a", [], np.zeros((0, 4), np.float32), "m1")
        assert gallery.classes() == []


def test_revision_changes_with_other_connections(tmp_path):
    with Gallery(tmp_path / "g.db") as reader, Gallery(tmp_path / "g.db") as writer:
        before = reader.revision
        assert reader.revision == before
        writer.add("a", _crops(1), np.zeros((1, 4), np.float32), "m1")
        assert reader.revision != before


def test_bad_files_are_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match="junk.db: not a usable gallery database"):
        Gallery(junk)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(GalleryError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Gallery(newer)
    with pytest.raises(GalleryError, match="no gallery there"):
        Gallery(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_a_version_1_gallery_is_upgraded_and_keeps_its_exemplars(tmp_path):
    """Galleries written before exemplars had a source (version 1) open, gain the column, and
    their exemplars count as independent shots; new ones can name their source (a track)."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE classes (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)")
        raw.execute("CREATE TABLE exemplars (id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES classes(id) "
                    "ON DELETE CASCADE, crop BLOB NOT NULL, embedding BLOB NOT NULL, fingerprint TEXT NOT NULL, "
                    "negative INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL)")
        raw.execute("INSERT INTO classes (label, created_at) VALUES ('cat', 'then')")
        raw.execute("INSERT INTO exemplars (class_id, crop, embedding, fingerprint, created_at) VALUES "
                    "(1, x'ffd8', ?, 'm1', 'then')", (np.ones(4, np.float32).tobytes(),))
        raw.execute("PRAGMA user_version = 1")
        assert "source" not in [r[1] for r in raw.execute("PRAGMA table_info(exemplars)")]
    with Gallery(path) as gallery:
        gallery.add("cat", _crops(2), np.zeros((2, 4), np.float32), "m1", source="track:7")
        labels, emb, sources = gallery.sources("m1")
        assert labels == ["cat"] * 3 and sources == [None, "track:7", "track:7"] and emb.shape == (3, 4)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
