"""A stale gallery (issue 13, item 3): after a model change the daemon re-embeds the stored
crops in the background, in batches committed one by one, round-robin over classes, so the
API answers at once and labels are served while it works; a kill -9 during the re-embedding
loses at most the batch in progress, and the next start carries on from there."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx
import numpy as np
from daemon_helpers import BLUE, RED, textured, wait_for, write_yaml

from edgessl.edge_runtime.fewshot.gallery import Gallery

TOKEN = "reembed-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PER_CLASS = 600
BATCH = 16


def fresh(gallery, fingerprint: str) -> int:
    db = sqlite3.connect(gallery)
    try:
        return db.execute("SELECT COUNT(*) FROM exemplars WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]
    finally:
        db.close()


def test_restart_with_a_stale_gallery_serves_at_once_and_a_kill_loses_at_most_a_batch(
        tmp_path, tiny_bundle, clips, daemon_process):
    state = tmp_path / "state"
    gallery = state / "gallery.db"
    with Gallery(gallery) as g:  # enrolled with another model: every embedding is stale
        for label, bgr in (("red", RED), ("blue", BLUE)):
            crops = [textured(bgr, i, seed=3) for i in range(PER_CLASS)]
            g.add(label, crops, np.random.default_rng(0).normal(size=(PER_CLASS, 8)), "an-older-model")
    total = 2 * PER_CLASS
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: reembed-test
        state_dir: {state}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras:
          - {{id: cam, url: {clips["red"]}, loop: true}}
        smoothing: {{alpha: 0.6, consecutive: 2, hysteresis: 0.05}}
        api: {{port: 0}}
        enrollment: {{reembed_batch: {BATCH}, reembed_pause_s: 0.05}}
    """)
    started = time.monotonic()
    proc = daemon_process(config, tmp_path / "first.log", env={"EDGESSL_API_TOKEN": TOKEN})
    url = proc.api_url(timeout=30)
    health = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()
    took = time.monotonic() - started
    print(f"stale gallery of {total}: /health answered {took:.2f} s after the start (process start included)")
    assert took < 5.0, f"/health took {took:.1f} s after the start"
    fingerprint = health["model"]["fingerprint"]
    assert health["gallery"]["reembedding"]["total"] == total

    # Labels are served while the re-embedding runs (every class has fresh exemplars early on).
    def red_while_reembedding() -> dict | None:
        h = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()
        labels = httpx.get(f"{url}/v1/state", headers=AUTH, timeout=10).json()
        assert h["gallery"]["reembedding"]["running"], f"re-embedding finished first: {h['gallery']}"
        return h if labels[0]["label"] == "red" else None

    seen = wait_for(red_while_reembedding, 20, "the label red while re-embedding")
    progress = seen["gallery"]["reembedding"]
    print(f"label 'red' served with {progress['done']}/{progress['total']} exemplars re-embedded")
    assert 0 < progress["done"] < total

    # kill -9 in the middle; the gallery keeps every committed batch.
    wait_for(lambda: httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["gallery"]["reembedding"]["done"]
             >= progress["done"] + 2 * BATCH, 20, "more batches")
    reported = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["gallery"]["reembedding"]["done"]
    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    kept = fresh(gallery, fingerprint)
    print(f"kill -9 after {reported} reported re-embedded: {kept} kept in the gallery (batch {BATCH})")
    assert reported <= kept < total
    assert kept % BATCH == 0  # whole batches only: the batch in progress is all that was lost
    with Gallery(gallery) as g:
        assert {c.label: c.exemplars for c in g.classes()} == {"red": PER_CLASS, "blue": PER_CLASS}

    # The next start re-embeds only what is left, and finishes.
    again = daemon_process(config, tmp_path / "second.log", env={"EDGESSL_API_TOKEN": TOKEN})
    url = again.api_url(timeout=30)
    assert httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["gallery"]["reembedding"]["total"] == total - kept
    wait_for(lambda: not httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["gallery"]["reembedding"]["running"], 60,
             "the re-embedding to finish")
    assert httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["gallery"]["reembedding"]["error"] is None
    assert fresh(gallery, fingerprint) == total
    assert f"re-embedding {total - kept} stale exemplars" in again.output()


class MeanColour:
    """A stand-in model: a crop's mean BGR and a constant."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.batches: list[int] = []

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        self.batches.append(len(images))
        return np.array([[*im.reshape(-1, 3).mean(axis=0), 1.0] for im in images], np.float32)


def test_a_model_switch_stages_embeddings_while_the_old_ones_serve(tmp_path):
    with Gallery(tmp_path / "g.db") as g:
        g.add("red", [textured(RED, i) for i in range(5)], np.zeros((5, 4), np.float32), "old")
        g.add("blue", [textured(BLUE, i) for i in range(5)], np.zeros((5, 4), np.float32), "old")
        new = MeanColour("new")
        assert g.stage(new, batch_size=4) == 10 and new.batches == [4, 4, 2]
        # staged aside: the running model's embeddings are untouched
        assert g.embeddings("old")[0] == ["red"] * 5 + ["blue"] * 5 and g.stale("new") == 10
        g.add("red", [textured(RED, 9)], np.zeros((1, 4), np.float32), "old")  # enrolled meanwhile
        switch = MeanColour("new")
        assert g.reembed(switch, 4) == 11  # the staged ten moved in one transaction, one embedded
        assert switch.batches == [1] and g.stale("new") == 0 and g.staged("new") == 0
        labels, emb = g.embeddings("new")
        assert sorted(labels) == ["blue"] * 5 + ["red"] * 6
        assert emb[labels.index("red"), 2] > emb[labels.index("red"), 0]  # red (BGR): from the crops
