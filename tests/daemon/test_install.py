"""A daemon on a real device root: `edgessl flash --to http://...` (devices.flash.push) goes
through the A/B installer (signature, health check, switch) and the daemon hot-reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import RED, TOKEN, daemon_on_device, make_config, textured, wait_for
from profile_text import TEST_PROFILE

from edgessl.edge_runtime.daemon.core import Daemon

keys = pytest.importorskip("edgessl.devices.keys")
flash = pytest.importorskip("edgessl.devices.flash")
installer = pytest.importorskip("edgessl.edge_runtime.device.installer")
slots = pytest.importorskip("edgessl.edge_runtime.device.slots")

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_push_to_a_daemon_on_a_device_root(tmp_path, make_bundle, clips, monkeypatch, device):
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        assert daemon.model.info()["version"] == 1

        v2 = make_bundle("v2", seed=1, version=2)
        keys.sign_bundle(v2, device.key)
        answer = flash.push(v2, daemon.api_url, TOKEN)
        assert answer.ok and answer.model.version == 2 and answer.install.slot == "b"
        assert daemon.model.bundle.root.resolve() == slots.active_bundle(device.root).resolve()
        assert daemon.streams["cam"].status().reconnects == 0
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "red", 15, "red with the new model")

        unsigned = make_bundle("v3", seed=2, version=3)
        with pytest.raises(flash.FlashError) as info:
            flash.push(unsigned, daemon.api_url, TOKEN)
        assert "sign" in str(info.value).lower()
        assert daemon.model.info()["version"] == 2  # refused: the running model stays
        with pytest.raises(flash.FlashError, match="token"):
            flash.push(v2, daemon.api_url, "wrong-token")


def _with_foreign_golden(bundle, other):
    """The bundle's model with another model's golden embeddings: its health check must fail."""
    import shutil

    from edgessl.edge_runtime.bundle.manifest import file_entry, read_manifest, write_manifest

    shutil.copy(other / "golden.npz", bundle / "golden.npz")
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.model_copy(
        update={"files": {**manifest.files, "golden.npz": file_entry(bundle / "golden.npz")}}))
    return bundle


def test_a_pushed_bundle_that_fails_its_health_check_is_rolled_back_while_the_daemon_classifies(
        tmp_path, make_bundle, clips, monkeypatch, device):
    import threading

    root, v1 = device.root, device.v1
    bad = _with_foreign_golden(make_bundle("v2", seed=1, version=2), v1)
    keys.sign_bundle(bad, device.key)  # signed: only the health check can catch it

    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        samples: list[tuple[str | None, int, int]] = []
        done = threading.Event()

        def watch() -> None:  # what the daemon decides while the install runs
            while not done.is_set():
                state = daemon.pipeline.states()[0]
                samples.append((state["label"], daemon.model.info()["version"], state["frame"]))
                done.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with pytest.raises(flash.FlashError) as info:
                flash.push(bad, daemon.api_url, TOKEN)
        finally:
            done.set()
            watcher.join()
        assert "cosine" in str(info.value) or "golden" in str(info.value), str(info.value)
        assert slots.status(root).to_dict()["active_version"] == 1
        assert daemon.model.info()["version"] == 1
        assert samples and all(label == "red" and version == 1 for label, version, _ in samples)
        frames = [frame for _, _, frame in samples]
        assert frames[-1] > frames[0]  # it kept classifying new frames during the install
        wait_for(lambda: daemon.pipeline.states()[0]["frame"] > frames[-1], 15, "frames after the refused install")


# -- every upload path verifies signatures -------------------------------------------------------

def _tar(bundle: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(bundle).as_posix())
    return buf.getvalue()


def _bad_uploads(tmp_path, make_bundle, device_key: Path) -> dict[str, bytes]:
    """An unsigned bundle, one signed by a key the device does not trust, and a tampered manifest."""
    unsigned = make_bundle("unsigned", seed=2, version=7)
    stranger = keys.generate_keypair(tmp_path / "stranger", "stranger")
    untrusted = make_bundle("untrusted", seed=2, version=8)
    keys.sign_bundle(untrusted, stranger.private)
    tampered = make_bundle("tampered", seed=2, version=9)
    keys.sign_bundle(tampered, device_key)
    manifest = (tampered / "manifest.json").read_text()
    (tampered / "manifest.json").write_text(manifest.replace('"version": 9', '"version": 10'))
    assert '"version": 10' in (tampered / "manifest.json").read_text()  # the tampering took
    return {"unsigned": _tar(unsigned), "untrusted key": _tar(untrusted), "tampered manifest": _tar(tampered)}


def _assert_refused_and_unchanged(daemon: Daemon, uploads: dict[str, bytes], status: set[int]) -> None:
    import httpx

    from edgessl.edge_runtime.fewshot.gallery import Gallery

    before = daemon.model.info()
    with Gallery(daemon.gallery_path) as g:
        classes = [(c.label, c.exemplars) for c in g.classes()]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar"}
    with httpx.Client(base_url=daemon.api_url, timeout=60, headers=AUTH) as client:
        for kind, body in uploads.items():
            r = client.post("/v1/model", headers=headers, content=body)
            assert r.status_code in status, (kind, r.status_code, r.text)
            assert r.json()["ok"] is False and r.json()["detail"], kind
            assert client.get("/v1/model").json() == before, kind
    with Gallery(daemon.gallery_path) as g:
        assert [(c.label, c.exemplars) for c in g.classes()] == classes
    frame = daemon.pipeline.states()[0]["frame"]
    wait_for(lambda: daemon.pipeline.states()[0]["frame"] > frame and daemon.pipeline.states()[0]["label"] == "red",
             15, "frames still labelled after the refused uploads")
    assert not list((daemon.config.state_dir / "incoming").glob("*"))  # nothing left behind


def test_uploads_with_a_device_root_are_verified(tmp_path, make_bundle, clips, monkeypatch, device):
    uploads = _bad_uploads(tmp_path, make_bundle, device.key)
    with daemon_on_device(tmp_path, device, clips, monkeypatch) as daemon:
        _assert_refused_and_unchanged(daemon, uploads, {400, 401, 403, 409, 422})
        assert slots.status(device.root).active_version == 1


def test_uploads_without_a_device_root_are_refused(tmp_path, make_bundle, clips, monkeypatch, device):
    uploads = _bad_uploads(tmp_path, make_bundle, device.key)
    signed = make_bundle("signed", seed=3, version=11)
    keys.sign_bundle(signed, device.key)
    uploads["correctly signed"] = _tar(signed)  # no device root: nothing is trusted, so nothing installs
    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    config = make_config(tmp_path, device.v1, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                         api={"port": 0})
    with Daemon(config) as daemon:
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "red", 15, "red before the uploads")
        _assert_refused_and_unchanged(daemon, uploads, {403})
        import httpx

        r = httpx.post(f"{daemon.api_url}/v1/model", headers={"Authorization": f"Bearer {TOKEN}"},
                       content=uploads["correctly signed"], timeout=30)
        assert "edgessl device init" in r.json()["detail"]  # says how to set up a device root


# -- the daemon runs what the device's health check verified -------------------------------------

OV_PROFILE = TEST_PROFILE.replace('name = "test-cpu"', 'name = "test-ov"').replace(
    'backends = ["onnxruntime"]', 'backends = ["openvino", "onnxruntime"]')


def _with_openvino(bundle: Path, profile: str) -> Path:
    """Add an OpenVINO IR of the bundle's model and make it export's default for `profile`."""
    ov = pytest.importorskip("openvino")
    from edgessl.edge_runtime.bundle.manifest import Artifact, file_entry, read_manifest, write_manifest

    (bundle / "openvino").mkdir()
    ov.save_model(ov.convert_model(str(bundle / "model.onnx")), str(bundle / "openvino" / "model.xml"),
                  compress_to_fp16=False)
    m = read_manifest(bundle)
    files = {**m.files, **{f"openvino/{n}": file_entry(bundle / "openvino" / n) for n in ("model.xml", "model.bin")}}
    artifact = Artifact(format="openvino", precision="fp32", file="openvino/model.xml", name="openvino-fp32")
    write_manifest(bundle, m.model_copy(update={"artifacts": [*m.artifacts, artifact], "files": files,
                                                "defaults": {profile: "openvino-fp32"}}))
    return bundle


def test_a_device_root_whose_profile_prefers_openvino_runs_openvino(tmp_path, make_bundle, clips, monkeypatch):
    import httpx

    (tmp_path / "ov.toml").write_text(OV_PROFILE)
    pair = keys.generate_keypair(tmp_path / "keys", "operator")
    root = tmp_path / "device"
    slots.init_device(root, tmp_path / "ov.toml", [pair.public])
    bundle = _with_openvino(make_bundle("v1", seed=0, version=1), "test-ov")
    keys.sign_bundle(bundle, pair.private)
    assert installer.install(root, bundle).ok
    assert slots.status(root).runs["artifact"] == "openvino-fp32"  # `edgessl device status` agrees

    monkeypatch.setenv("EDGESSL_API_TOKEN", TOKEN)
    cams = [{"id": "cam", "url": str(clips["red"]), "loop": True}]
    config = make_config(tmp_path, bundle, cams, model={"root": str(root)}, api={"port": 0})
    with Daemon(config) as daemon, httpx.Client(base_url=daemon.api_url, timeout=30, headers=AUTH) as client:
        model = client.get("/v1/model").json()
        assert (model["backend"], model["artifact"]) == ("openvino", "openvino-fp32")
        assert model["cohort"] == 0  # the tiny bundle has none: plain cosines
        assert "verified by the health check" in model["why"]
        metrics = client.get("/metrics").text
        assert 'backend="openvino"' in metrics and 'artifact="openvino-fp32"' in metrics
        assert client.get("/health").json()["model"]["backend"] == "openvino"
        daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "red", 15, "red classified with OpenVINO")

    # An explicit model.backend in the config wins over the device's choice.
    explicit = make_config(tmp_path, bundle, cams, model={"root": str(root), "backend": "onnxruntime"},
                           api={"enabled": False})
    with Daemon(explicit) as daemon:
        assert (daemon.model.info()["backend"], daemon.model.info()["artifact"]) == ("onnxruntime", "onnx-fp32")
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "red", 15, "red classified with ONNX Runtime")


def test_fleet_push_over_http_to_two_daemons_prints_version_and_slot(tmp_path, make_bundle, clips, monkeypatch,
                                                                     capsys):
    """`edgessl flash --fleet` against two real daemons, each on its own device root: the table
    reads the installed version and slot from the daemon's typed answer (InstallAnswer)."""
    from contextlib import ExitStack

    from daemon_helpers import provision_device

    from edgessl.cli import main

    porch = provision_device(tmp_path / "porch", make_bundle)
    devices = [porch, provision_device(tmp_path / "garage", make_bundle, trust=porch)]  # one fleet key
    v2 = make_bundle("v2", seed=1, version=2)
    keys.sign_bundle(v2, porch.key)
    with ExitStack() as stack:
        daemons = [stack.enter_context(daemon_on_device(tmp_path / d.root.parent.name, d, clips, monkeypatch))
                   for d in devices]
        fleet = tmp_path / "fleet.toml"
        fleet.write_text("workers = 2\n" + "".join(
            f'\n[[devices]]\nname = "{name}"\ntarget = "{d.api_url}"\ntoken_env = "FLEET_TOKEN"\n'
            for name, d in zip(("porch", "garage"), daemons, strict=True)))
        monkeypatch.setenv("FLEET_TOKEN", TOKEN)
        assert main(["flash", str(v2), "--fleet", str(fleet)]) == 0
        out = capsys.readouterr().out
        print(out)
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("porch ", "garage "))}
        assert set(rows) == {"porch", "garage"}
        for name, daemon in zip(("porch", "garage"), daemons, strict=True):
            assert daemon.model.info()["version"] == 2
            assert rows[name][2:5] == ["ok", "2", "b"], rows[name]
