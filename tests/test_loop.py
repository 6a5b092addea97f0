"""The closed loop on loopback, on the real path: a daemon on a device root (a rendered scene as a
looping file camera, sampling on, three classes enrolled) collects; `edgessl loop` (the real
command, in its own process) harvests over the API, adapts for a short budget, gates, signs and
flashes; the daemon switches model without restarting its stream, re-embeds the gallery and
keeps every class; what the server holds is deleted on the device, nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "daemon"))
from daemon_helpers import wait_for  # noqa: E402
from profile_text import TEST_PROFILE  # noqa: E402

TOKEN = "loop-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server side: an SSL run on rendered shapes (another domain than the scene's floor),
    its bundle v1 signed with the operator's key."""
    from edgessl.devices import keys
    from edgessl.export.bundle_writer import export_bundle
    from edgessl.synthetic import write_image_set
    from edgessl.train.pretrain import PretrainConfig, pretrain

    root = tmp_path_factory.mktemp("loop-server")
    write_image_set(root / "base", per_class=16, size=32, seed=0)
    run = pretrain(PretrainConfig(data=str(root / "base"), out=str(root / "run"), image_size=32, batch_size=16,
                                  epochs=1, threads=1))
    v1 = export_bundle(run, root / "v1", formats=["onnx"], name="door-model", version=1)
    pair = keys.generate_keypair(root / "keys", "operator")
    keys.sign_bundle(v1, pair.private)
    return root, run, v1, pair


def _scene(path: Path) -> Path:
    from edgessl import scene

    objects = scene.plan(["circle", "square"], ["star"], seed=3, returns=1, strangers=2, lookalikes=0, stop_s=1.0)
    scene.write(path, objects, seed=3)
    return path


def _shapes(kind: str, n: int, seed: int) -> list[np.ndarray]:
    from edgessl.synthetic import render

    rng = np.random.default_rng(seed)
    return [render(kind, rng, 48) for _ in range(n)]


@contextmanager
def _device(tmp_path: Path, server: Any, monkeypatch: Any, enroll: dict[str, list[np.ndarray]]) -> Iterator[Any]:
    """A device root running v1, its daemon on the scene with sampling on, `enroll` enrolled, at
    least 12 samples kept; yields (daemon, API client, fleet file)."""
    from edgessl.edge_runtime.daemon.config import DaemonConfig
    from edgessl.edge_runtime.daemon.core import Daemon
    from edgessl.edge_runtime.device import installer, slots

    root, run, v1, pair = server
    (tmp_path / "profile.toml").write_text(TEST_PROFILE)
    device_root = tmp_path / "device"
    slots.init_device(device_root, tmp_path / "profile.toml", [pair.public])
    installer.install(device_root, v1)
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = DaemonConfig.model_validate({
        "device": "door", "state_dir": str(tmp_path / "state"), "model": {"root": str(device_root), "threads": 1},
        "api": {"port": 0},
        "cameras": [{"id": "cam", "url": str(_scene(tmp_path / "scene.mp4")), "loop": True,
                     "regions": [{"name": "left", "width": 0.5}, {"name": "right", "x": 0.5, "width": 0.5}],
                     "objects": {},
                     "sampling": {"min_interval_s": 0.2, "duplicate": 0.002, "novelty": 0.01,
                                  "per_hour": 1000, "per_day": 1000}}],
    })
    with Daemon(config) as daemon:
        for label, crops in enroll.items():
            daemon.enrollment.enroll_images(label, crops)
        api = httpx.Client(base_url=daemon.api_url, headers=AUTH, timeout=30)
        wait_for(lambda: api.get("/v1/samples", params={"limit": 1}).json()["stored"] >= 12, 90, "12 samples kept")
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(f'[[devices]]\nname = "door"\ntarget = "{daemon.api_url}"\ntoken_env = "LOOP_TOKEN"\n')
        yield daemon, api, fleet


def _loop(fleet: Path, run: Path, v1: Path, key: Path, work: Path, margin: str,
          minutes: str = "0.2") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "edgessl"), "loop", "--fleet", str(fleet), "--from", str(run),
         "--bundle", str(v1), "--key", str(key), "--minutes", minutes, "--work", str(work),
         "--min-samples", "8", "--margin", margin, "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LOOP_TOKEN": TOKEN})


def test_edgessl_loop_collects_adapts_gates_and_flashes_the_fleet(server, tmp_path, monkeypatch):
    from edgessl.edge_runtime.daemon.streams import State
    from edgessl.loop import render_summary

    root, run, v1, pair = server
    shapes = {kind: _shapes(kind, 4, seed=i) for i, kind in enumerate(("circle", "square", "triangle"))}
    with _device(tmp_path, server, monkeypatch, shapes) as (daemon, api, fleet):
        stream = daemon.streams["cam"]
        before_classes = {c["label"]: c["exemplars"] for c in api.get("/v1/classes").json()}
        reconnects = stream.status().reconnects
        work = tmp_path / "loop"
        proc = _loop(fleet, run, v1, pair.private, work, "99")  # the flow; the refusal is the next test
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(proc.stdout)

        # What the loop did, as JSON.
        harvested = summary["collect"][0]
        assert harvested["status"] == "ok" and harvested["samples"] >= 12 and harvested["by_camera"]["cam"] >= 12
        assert harvested["eval_images"] == 12 and sorted(harvested["eval_classes"]) == ["circle", "square", "triangle"]
        assert summary["adapt"]["version"] == 2 and summary["adapt"]["minutes"] > 0
        gate = summary["gate"]
        assert gate["verdict"] == "pass" and {r["label"] for r in gate["classes"]} == set(before_classes)
        assert [(f["device"], f["status"], f["version"]) for f in summary["flash"]] == [("door", "ok", 2)]

        # The daemon switched without restarting its stream, and the gallery survived.
        wait_for(lambda: daemon.model.bundle.manifest.model.version == 2, 60, "the daemon on v2")
        assert daemon.streams["cam"] is stream and stream.status().reconnects == reconnects
        processed = stream.status().processed
        wait_for(lambda: stream.status().processed > processed + 5 and stream.status().state == State.STREAMING, 60,
                 "frames processed with v2")
        wait_for(lambda: not daemon.models.reembedding["running"], 60, "the gallery re-embedded")
        after = {c["label"]: c["exemplars"] for c in api.get("/v1/classes").json()}
        assert after == before_classes
        assert api.get("/v1/model").json()["version"] == 2

        # Harvested samples were deleted on the device, and only those.
        shards = sorted((work / "harvest" / "door" / "samples").glob("shard-*.tar"))
        taken = {int(name.split(".")[0]) for shard in shards for name in tarfile.open(shard).getnames()}
        assert len(taken) == harvested["samples"]
        left = {s["id"] for s in api.get("/v1/samples", params={"limit": 1000}).json()["samples"]}
        assert not taken & left
        # The manifest of the flashed bundle holds the gate report.
        manifest = json.loads((Path(summary["adapt"]["bundle"]) / "manifest.json").read_text())
        assert manifest["gate"]["verdict"] == "pass"

    # And in plain text (what a person reads after a timer ran it).
    text = render_summary(summary)
    for needed in ("collected door: ok", "cam:", "adapted", "gate: pass", "circle", "flashed door: ok v2",
                   "devices updated: 1 of 1"):
        assert needed in text, text


def _colour_blind(run: Path, out: Path) -> Path:
    """The run's checkpoint with its first convolution made colour-blind: behind the per-channel
    normalisation, each filter sees only the sum of the raw channels (weights w_c = a * std_c).
    A deliberately worse model of the same architecture."""
    import torch

    from edgessl.export.bundle_writer import preprocess_spec
    from edgessl.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run)
    std = torch.tensor(preprocess_spec(ckpt).std, dtype=torch.float32).view(1, 3, 1, 1)
    state = ckpt["method_state"]
    first = next(k for k, v in state.items() if k.startswith("backbone.") and v.ndim == 4 and v.shape[1] == 3)
    state[first] = ((state[first] / std).mean(dim=1, keepdim=True) * std).contiguous()
    save_checkpoint(out / "checkpoints" / "last.pt", ckpt)
    return out


def test_the_gate_refuses_a_worse_candidate_and_the_fleet_keeps_its_version(server, tmp_path, monkeypatch):
    """Classes that differ only by colour (same brightness), and a candidate adapted from a
    colour-blind copy of the run: the gate refuses it, nothing is signed or flashed."""
    root, run, v1, pair = server
    rng = np.random.default_rng(0)
    colours = {"amber": (30, 120, 230), "teal": (230, 120, 30), "plum": (120, 30, 230)}  # BGR, one brightness
    # Each shot in its own light (brightness x0.5-1.4) and noise: only the hue tells the classes apart.
    patches = {label: [np.clip(np.array(bgr) * rng.uniform(0.5, 1.4) + rng.normal(0, 20, (48, 48, 3)), 0, 255)
                       .astype(np.uint8) for _ in range(5)] for label, bgr in colours.items()}
    worse = _colour_blind(run, tmp_path / "colour-blind-run")
    with _device(tmp_path, server, monkeypatch, patches) as (daemon, api, fleet):
        work = tmp_path / "loop"
        proc = _loop(fleet, worse, v1, pair.private, work, "0", minutes="0.05")
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        gate = summary["gate"]
        assert summary["verdict"] == gate["verdict"] == "refused" and summary["flash"] == []
        assert gate["after"]["accuracy"] < gate["before"]["accuracy"], gate
        assert any("accuracy" in r for r in gate["reasons"]), gate["reasons"]
        candidate = Path(summary["adapt"]["bundle"])
        assert not (candidate / "manifest.sig").exists()  # never signed
        assert json.loads((candidate / "manifest.json").read_text())["gate"]["verdict"] == "refused"
        assert api.get("/v1/model").json()["version"] == 1 and daemon.model.bundle.manifest.model.version == 1
        assert not (work / "current.json").exists()
