"""The sample store (edge_runtime/samples/store.py) on real SQLite files: the quota is never
exceeded and the oldest go first; an ack deletes only what matches its sha256; a writer killed
with SIGKILL at random moments leaves a sound file within its quota; a read-only or full
filesystem (real tmpfs mounts, tests/disks.py) is a clear error that loses nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from disks import fill, tmpfs

from edgessl.edge_runtime.samples.store import SampleStorageError, SampleStore, SampleStoreError


def add(store: SampleStore, rng: np.random.Generator, size: int, t: float = 1000.0, camera: str = "cam",
        model: str = "m1"):
    return store.add(camera=camera, source="region", ref="full", time=t, model=model, reason="novel",
                     jpeg=rng.bytes(size), embedding=rng.standard_normal(8).astype(np.float32), label="cat",
                     nearest="cat", score=0.7, margin=0.2, novelty=0.5)


def sql_figures(path: Path) -> tuple[int, int, list[int]]:
    """(SUM(bytes), the usage row's bytes, ids), read with a connection of its own."""
    db = sqlite3.connect(path)
    try:
        total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM samples").fetchone()[0]
        usage = db.execute("SELECT bytes FROM usage").fetchone()[0]
        ids = [r[0] for r in db.execute("SELECT id FROM samples ORDER BY id")]
    finally:
        db.close()
    return total, usage, ids


def test_the_quota_is_never_exceeded_and_the_oldest_go_first(tmp_path):
    quota = 60_000
    rng = np.random.default_rng(1)
    added: list[int] = []
    with SampleStore(tmp_path / "samples.db", quota) as store:
        for i in range(300):
            size = int(rng.integers(1, 15_000))
            before = set(sql_figures(store.path)[2])
            result = add(store, rng, size, t=1000.0 + i)
            added.append(result.id)
            total, usage, ids = sql_figures(store.path)
            assert total == usage == store.status()["bytes"] <= quota, (i, total, usage)
            # What is left is always the newest ones: a contiguous tail of what was added.
            assert ids == added[len(added) - len(ids):], i
            assert set(before) - set(ids) == {sid for sid, _ in result.evicted}
            assert all(sid < result.id for sid, _ in result.evicted)
        assert store.status()["stored"] == len(ids) < 300
        # One sample larger than the whole quota is refused; nothing changes.
        with pytest.raises(SampleStoreError, match="larger than the whole quota"):
            add(store, rng, quota + 1)
        assert sql_figures(store.path)[2] == ids
    # A smaller quota at the next open evicts down to it at once.
    with SampleStore(tmp_path / "samples.db", 20_000) as store:
        total, usage, left = sql_figures(store.path)
        assert total == usage <= 20_000 and left == ids[len(ids) - len(left):]
    # No quota given (a harvest from a copied state folder): the file's own, nothing evicted.
    with SampleStore(tmp_path / "samples.db") as store:
        assert store.quota_bytes == store.status()["quota_bytes"] == 20_000
        assert sql_figures(store.path)[2] == left


def test_ack_deletes_only_where_the_sha256_matches(tmp_path):
    rng = np.random.default_rng(2)
    with SampleStore(tmp_path / "samples.db", 10**7) as store:
        ids = [add(store, rng, 1000 + i).id for i in range(5)]
        infos = {s.id: s for s in store.page(0, 100)}
        assert [s.id for s in store.page(ids[1], 2)] == ids[2:4]
        assert infos[ids[0]].sha256 == hashlib.sha256(store.jpeg(ids[0])).hexdigest()
        wrong = {ids[0]: "0" * 64, ids[1]: infos[ids[2]].sha256}
        result = store.delete_acked(wrong)
        assert (result.deleted, result.mismatched, result.missing) == ([], [ids[0], ids[1]], [])
        assert [s.id for s in store.page(0, 100)] == ids
        result = store.delete_acked({ids[0]: infos[ids[0]].sha256.upper(), ids[1]: infos[ids[1]].sha256,
                                     ids[2]: "f" * 64, 987654: "a" * 64})
        assert (result.deleted, result.mismatched, result.missing) == ([ids[0], ids[1]], [ids[2]], [987654])
        assert [s.id for s in store.page(0, 100)] == ids[2:]
        assert store.jpeg(ids[0]) is None
        # Harvested samples still count for the rate limits (the log of kept times).
        assert store.count_since("cam", 0) == 5 and store.count_since("other", 0) == 0
        # The archive reads in batches, stops at until_id, and has the JPEGs.
        rows = list(store.iter_with_jpeg(0, 10, until_id=ids[3]))
        assert [info.id for info, _ in rows] == ids[2:4]
        assert all(hashlib.sha256(jpeg).hexdigest() == info.sha256 for info, jpeg in rows)
        kept_ids, emb = store.embeddings("m1")
        assert kept_ids == ids[2:] and emb.shape == (3, 8) and store.embeddings("m2")[1].shape == (0, 0)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from edgessl.edge_runtime.samples.store import SampleStore

    path, quota, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    store = SampleStore(path, quota)
    i = 0
    while True:
        store.add(camera="cam", source="track", ref=str(i), time=float(i), model="m", reason="unknown",
                  jpeg=rng.bytes(int(rng.integers(1, 9000))), embedding=rng.standard_normal(16))
        i += 1
        if i == 1:
            print("WRITING", flush=True)
""")


def test_a_writer_killed_at_random_moments_leaves_a_sound_store_within_its_quota(tmp_path):
    path, quota = tmp_path / "samples.db", 40_000
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(3)
    last_ids: list[int] = []
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(quota), str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            assert line.startswith("WRITING"), (line, proc.stderr.read() if proc.stderr else "")
            time.sleep(float(rng.uniform(0.02, 0.4)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT id, bytes, sha256, jpeg FROM samples ORDER BY id").fetchall()
            usage = db.execute("SELECT bytes, count FROM usage").fetchone()
        finally:
            db.close()
        assert sum(r[1] for r in rows) == usage[0] <= quota and len(rows) == usage[1]
        for sample_id, nbytes, digest, jpeg in rows:
            assert len(jpeg) == nbytes and hashlib.sha256(jpeg).hexdigest() == digest, sample_id
        ids = [r[0] for r in rows]
        assert ids and ids == list(range(ids[0], ids[0] + len(ids)))  # the newest, contiguous
        assert not last_ids or ids[-1] > last_ids[-1]  # every round wrote more (ids are never reused)
        last_ids = ids
    with SampleStore(path, quota) as store:  # and it opens and writes again
        assert store.status()["stored"] == len(last_ids)
        add(store, rng, 500)


def test_a_read_only_store_is_a_clear_error_and_loses_nothing(tmp_path):
    rng = np.random.default_rng(4)
    with tmpfs(tmp_path / "ro", "4m") as disk:
        with SampleStore(disk / "samples.db", 10**6) as store:
            ids = [add(store, rng, 2000).id for _ in range(3)]
            digests = [s.sha256 for s in store.page(0, 10)]
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {r.stderr.strip()}")
        with SampleStore(disk / "samples.db", 10**6) as store:
            assert store.read_only and store.status()["writable"] is False
            assert [s.sha256 for s in store.page(0, 10)] == digests  # readable: a server can still harvest
            with pytest.raises(SampleStorageError, match="read-only") as info:
                add(store, rng, 100)
            assert info.value.full is False and str(disk / "samples.db") in str(info.value)
            with pytest.raises(SampleStorageError, match="read-only"):
                store.delete_acked({ids[0]: digests[0]})
            assert [s.id for s in store.page(0, 10)] == ids
        with pytest.raises(SampleStoreError, match="cannot create the sample store"):
            SampleStore(disk / "other.db", 10**6)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path):
    rng = np.random.default_rng(5)
    with tmpfs(tmp_path / "small", "2m") as disk:
        store = SampleStore(disk / "samples.db", 10**7)
        try:
            ids = [add(store, rng, 3000).id for _ in range(5)]
            filler = fill(disk)
            with pytest.raises(SampleStorageError, match="is full") as info:
                for _ in range(200):  # pages freed inside the file are used first; then the disk is full
                    add(store, rng, 20_000)
            assert info.value.full is True
            left = store.page(0, 1000)
            assert [s.id for s in left][:5] == ids
            assert all(hashlib.sha256(store.jpeg(s.id)).hexdigest() == s.sha256 for s in left)
            filler.unlink()
            add(store, rng, 1000)  # space again: it writes
        finally:
            store.close()
        db = sqlite3.connect(disk / "samples.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
