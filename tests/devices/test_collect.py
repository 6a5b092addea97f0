"""`edgessl collect`: the harvest needs the token, survives a connection cut mid-archive (keeps
what arrived, resumes after it, no sample twice or lost), deletes on the device only what the
server holds checksummed, and writes WebDataset shards the pretraining loop reads plus the
gallery's crops as the eval set. A real daemon on loopback; the cut is a real TCP proxy."""

from __future__ import annotations

import json
import re
import socket
import sys
import tarfile
import threading
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "daemon"))
from daemon_helpers import BLUE, GREEN, RED, render_clip, textured, wait_for  # noqa: E402

from edgessl.devices.harvest import harvest  # noqa: E402

TOKEN = "collect-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class CuttingProxy:
    """Forwards one loopback connection at a time to `port`, and closes both sides once the
    answer has carried `cut_after` bytes (a connection that drops mid-transfer)."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.upstream, self.cut_after = port, cut_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.cut_after), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while (limit is None or sent < limit) and (data := src.recv(4096)):
                if limit is not None:
                    data = data[: limit - sent]
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def collecting_daemon(tmp_path, tiny_bundle, monkeypatch):
    """A daemon that played a short clip once with sampling on (its samples stay as they are), with
    two classes enrolled."""
    from edgessl.edge_runtime.daemon.config import DaemonConfig
    from edgessl.edge_runtime.daemon.core import Daemon
    from edgessl.edge_runtime.daemon.streams import State

    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    clip = render_clip(tmp_path / "clip.mp4", [RED, BLUE, GREEN, (200, 200, 30), (30, 200, 200)], 1.2)
    config = DaemonConfig.model_validate({
        "device": "door", "state_dir": str(tmp_path / "state"), "model": {"bundle": str(tiny_bundle), "threads": 1},
        "api": {"port": 0}, "drift": {"reference_crops": 5},
        "cameras": [{"id": "cam", "url": str(clip), "mode": "every", "realtime": True, "fps": 20,
                     "regions": [{"name": "left", "width": 0.5}, {"name": "right", "x": 0.5, "width": 0.5}],
                     "sampling": {"min_interval_s": 0.0, "novelty": 0.001, "duplicate": 0.0005,
                                  "per_hour": 10000, "per_day": 10000}}],
    })
    with Daemon(config) as daemon:
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
        daemon.enrollment.enroll_images("blue", [textured(BLUE, i, seed=1) for i in range(3)])
        wait_for(lambda: daemon.streams["cam"].status().state == State.ENDED, 60, "the clip played once")
        api = httpx.Client(base_url=daemon.api_url, headers=AUTH, timeout=30)
        wait_for(lambda: api.get("/v1/samples", params={"limit": 1}).json()["stored"] >= 8, 30, "8 samples")
        yield daemon, api


def _stored(api: httpx.Client) -> dict[int, str]:
    out, after = {}, 0
    while page := api.get("/v1/samples", params={"after": after, "limit": 1000}).json()["samples"]:
        out.update({s["id"]: s["sha256"] for s in page})
        after = page[-1]["id"]
    return out


def _shard_keys(folder: Path) -> list[int]:
    keys = []
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert all(n.endswith((".jpg", ".json")) for n in names)
        keys += sorted({int(n.split(".")[0]) for n in names})
    return keys


def test_collect_refuses_without_the_token_and_deletes_nothing(collecting_daemon, tmp_path):
    daemon, api = collecting_daemon
    stored = _stored(api)
    for token in (None, "wrong-token-0123456789abcdef"):
        result = harvest(daemon.api_url, tmp_path / "out", name="door", token=token)
        assert result.status == "failed" and result.samples == 0
        assert ("401" in result.reason) if token else ("token" in result.reason)
    assert _stored(api) == stored


def test_a_cut_transfer_resumes_and_the_device_deletes_only_what_the_server_holds(collecting_daemon, tmp_path):
    from edgessl.train.shards import iter_shard

    daemon, api = collecting_daemon
    stored = _stored(api)
    port = int(daemon.api_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=40_000)  # headers + a few samples of the first archive
    try:
        first = harvest(proxy.url, tmp_path / "out", name="door", token=TOKEN, page=1000)
    finally:
        proxy.close()
    assert first.status == "partial" and 0 < first.samples < len(stored), first
    assert "resume" in first.reason
    kept = _shard_keys(tmp_path / "out" / "door" / "samples")
    assert len(kept) == first.samples
    assert _stored(api) == stored  # nothing deleted before the server acknowledged

    second = harvest(daemon.api_url, tmp_path / "out", name="door", token=TOKEN)
    assert second.status == "ok", second
    keys = _shard_keys(tmp_path / "out" / "door" / "samples")
    assert len(keys) == len(set(keys)) and set(keys) == set(stored)  # none twice, none lost
    assert second.acked + first.acked == len(stored)
    assert not set(_stored(api)) & set(stored)
    # The shards are what the pretraining loop reads, and each image is the one checksummed.
    for shard in sorted((tmp_path / "out" / "door" / "samples").glob("shard-*.tar")):
        assert all(image for _, image, _ in iter_shard(shard))
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                if name.endswith(".json"):
                    info = json.loads(tar.extractfile(name).read())
                    import hashlib

                    assert hashlib.sha256(tar.extractfile(name[:-5] + ".jpg").read()).hexdigest() == info["sha256"]
                    assert stored[info["id"]] == info["sha256"]
    # The eval set: the gallery's crops, one folder per class.
    eval_dir = tmp_path / "out" / "door" / "eval"
    assert {p.name: len(list(p.glob("*.jpg"))) for p in eval_dir.iterdir() if p.is_dir()} == {"red": 3, "blue": 3}
    assert second.eval_classes == {"blue": 3, "red": 3}
    # The camera's drift score as the device's /metrics says at harvest (the loop reports it).
    assert set(second.drift) == {"cam"} and 0.0 <= second.drift["cam"] <= 2.0, second.drift
    assert second.drift["cam"] == pytest.approx(daemon.collection.drift.score("cam"), abs=1e-3)


def test_the_cli_collects_from_a_local_state_folder(collecting_daemon, tmp_path, capsys):
    from edgessl.cli import main

    daemon, api = collecting_daemon
    n = len(_stored(api))
    state = Path(daemon.config.state_dir)
    daemon.stop()
    score = daemon.collection.drift.score("cam")
    assert main(["collect", "--from", str(state), "--out", str(tmp_path / "out"), "--name", "door"]) == 0
    shown = re.search(r"cam (\d+\.\d{3})", capsys.readouterr().out)  # the drift saved in state_dir/drift.json
    assert shown is not None and float(shown.group(1)) == pytest.approx(score, abs=0.0011)
    assert len(_shard_keys(tmp_path / "out" / "door" / "samples")) == n
    from edgessl.edge_runtime.samples.store import SampleStore

    with SampleStore(state / "samples.db") as store:  # all acknowledged, so all deleted there
        assert store.page(0, 1000) == []
