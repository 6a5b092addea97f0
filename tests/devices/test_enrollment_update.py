"""Enrollments survive a model update, and a re-embedding killed half-way loses nothing.

Classes are enrolled under model v1 (the active bundle of a device root); v2 (other
weights) is flashed; a classifier on v2 re-embeds the stored crops and classifies correctly.
A child process that re-embeds with v2 is SIGKILLed in the middle (while embedding its second
batch); the gallery then holds every class and exemplar with its crop, the first batch
re-embedded with v2 (committed per batch, issue 13) and the rest with their v1 embeddings."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.slots import active_bundle
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.inference.extractor import FeatureExtractor

COLORS = {"red": (30, 30, 200), "green": (30, 200, 30), "blue": (200, 30, 30)}  # BGR
PER_CLASS = 4


def _images(bgr: tuple[int, int, int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, *bgr])
    return [np.clip(np.array(bgr) + rng.normal(0, 25, (40, 50, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _extractor(root: Path) -> FeatureExtractor:
    return FeatureExtractor.from_bundle(load_bundle(active_bundle(root)), "onnxruntime", threads=1)


def _classify_all(root: Path, gallery: Path) -> None:
    with _extractor(root) as extractor, Gallery(gallery) as g:
        clf = FewShotClassifier(extractor, g)  # re-embeds stale exemplars
        assert g.stale(extractor.fingerprint) == 0
        for label, bgr in COLORS.items():
            predictions = clf.classify(_images(bgr, 3, seed=99))
            assert [p.label for p in predictions] == [label] * 3, predictions


def _rows(gallery: Path) -> list[tuple]:
    db = sqlite3.connect(gallery)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute("SELECT c.label, e.id, e.crop, e.embedding, e.fingerprint FROM exemplars e "
                          "JOIN classes c ON c.id = e.class_id ORDER BY e.id").fetchall()
    finally:
        db.close()


# The child re-embeds with v2 in chunks of 2 rows; its embedder announces the second chunk
# (after the first chunk was committed) and then blocks until it is killed.
CHILD = """
import sys
from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.fewshot.gallery import Gallery

bundle, gallery = sys.argv[1:]
real = FeatureExtractor.from_bundle(load_bundle(bundle), "onnxruntime", threads=1)

class Blocking:
    fingerprint = real.fingerprint
    calls = 0
    def embed(self, images, batch_size=32):
        Blocking.calls += 1
        if Blocking.calls == 2:
            print("MID-REEMBED", flush=True)
            sys.stdin.read()  # blocks: the parent kills this process now
        return real.embed(images, batch_size)

with Gallery(gallery) as g:
    g.reembed(Blocking(), chunk=2)
print("FINISHED", flush=True)
"""


def test_enrollment_survives_update_and_killed_reembedding(device_root, signed_bundle, tmp_path):
    root = device_root()
    gallery = tmp_path / "gallery.db"
    install(root, signed_bundle("v1", version=1, seed=0))
    with _extractor(root) as v1, Gallery(gallery) as g:
        clf = FewShotClassifier(v1, g)
        for label, bgr in COLORS.items():
            assert clf.enroll(label, _images(bgr, PER_CLASS, seed=1)) == PER_CLASS
        v1_fingerprint = v1.fingerprint
    before = _rows(gallery)
    assert len(before) == len(COLORS) * PER_CLASS and {r[4] for r in before} == {v1_fingerprint}

    install(root, signed_bundle("v2", version=2, seed=1))

    # Kill a re-embedding half-way through its transaction.
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(active_bundle(root)), str(gallery)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child never reached the second chunk"
        assert child.stdout.readline().strip() == "MID-REEMBED", child.stderr.read()
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)

    after = _rows(gallery)  # integrity_check is ok
    # every class and exemplar with its crop; one batch (2 rows) re-embedded, the rest untouched
    assert [(r[0], r[1], r[2]) for r in after] == [(r[0], r[1], r[2]) for r in before]
    fresh = [a for a in after if a[4] != v1_fingerprint]
    assert len(fresh) == 2
    assert [a for a in after if a[4] == v1_fingerprint] == [b for b in before if b[1] not in {f[1] for f in fresh}]
    with Gallery(gallery, create=False) as g:
        assert {c.label: c.exemplars for c in g.classes()} == dict.fromkeys(COLORS, PER_CLASS)

    # v2 re-embeds from the stored crops, and classifies correctly.
    started = time.monotonic()
    _classify_all(root, gallery)
    rows = _rows(gallery)
    assert len(rows) == len(before) and {r[4] for r in rows} != {v1_fingerprint}
    assert [r[2] for r in rows] == [r[2] for r in before]  # the same crops
    assert time.monotonic() - started < 30
