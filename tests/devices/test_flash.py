"""Flashing: a device root, a running daemon (HTTP push), a fleet (canary first, stop on failure).

The daemon side of `POST /v1/model` is stood in for by a small HTTP server that does what
the daemon is specified to do: check the bearer token, take the multipart field `bundle`
(a .tar), run `installer.install` on its device root and answer with the result as JSON."""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgessl.cli import main
from edgessl.devices.flash import FlashError, flash_fleet, flash_one, load_fleet, pack_bundle, push
from edgessl.edge_runtime.bundle.manifest import read_manifest
from edgessl.edge_runtime.daemon.http.responses import InstallAnswer, InstallSteps, ModelInfo
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.slots import status
from edgessl.errors import InstallError

TOKEN = "s3cret-token"


class _StubDaemon(BaseHTTPRequestHandler):
    root: Path
    uploads: list[dict[str, str]]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/model":
            return self._answer(404, {"detail": "not found"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"detail": "invalid or missing token"})
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        upload = self.root.parent / "upload.tar"
        upload.write_bytes(fields["bundle"].get_payload(decode=True))
        allow = fields["allow_downgrade"].get_content().strip() == "true"
        self.uploads.append({"filename": fields["bundle"].get_filename(), "allow_downgrade": str(allow)})
        try:
            result = install(self.root, upload, allow_downgrade=allow)
        except InstallError as exc:  # as the daemon answers a refusal: the detail and the installer's steps
            return self._answer(409, {"ok": False, "detail": str(exc),
                                      "install": exc.result.to_dict() if exc.result else None})
        # The type the daemon's route answers with (the fleet push parses it)
        manifest = read_manifest(self.root / "current")
        model = ModelInfo(name=manifest.model.name, version=manifest.model.version, backbone=manifest.model.backbone,
                          fingerprint="stub", bundle=str(self.root / "current"), embedding_dim=manifest.embedding_dim,
                          generation=1, backend="onnxruntime", artifact="onnx", precision="fp32", threads=None,
                          why="stub", cohort=0)
        answer = InstallAnswer(model=model, install=InstallSteps(**result.to_dict()))
        return self._answer(200, answer.model_dump())


@pytest.fixture
def daemon(device_root) -> Iterator[tuple[str, Path, list]]:
    """(url, device root, uploads) of a stub daemon on a free local port."""
    root = device_root("pushed")
    uploads: list[dict[str, str]] = []
    handler = type("Handler", (_StubDaemon,), {"root": root, "uploads": uploads})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, uploads
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_pack_bundle_is_a_clean_tar(signed_bundle, tmp_path):
    bundle = signed_bundle("v1")
    (bundle / "notes.txt").write_text("not part of the bundle")
    with tarfile.open(pack_bundle(bundle, tmp_path / "b.tar")) as tar:
        names = tar.getnames()
        assert all(m.isreg() and m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())
    assert names == ["manifest.json", "manifest.sig", "center.npy", "golden.npz", "model.onnx"]
    with pytest.raises(FlashError, match="not signed"):
        pack_bundle(signed_bundle("unsigned", sign=False), tmp_path / "u.tar")


def test_push_to_daemon(daemon, signed_bundle, helpers, capsys):
    url, root, uploads = daemon
    answer = push(signed_bundle("v1", version=1), url, TOKEN)
    assert (answer.ok, answer.install.version, answer.install.slot, answer.model.version) == (True, 1, "a", 1)
    assert uploads == [{"filename": "bundle.tar", "allow_downgrade": "False"}]

    # A bad model pushed to the daemon is rolled back there; the client reports why.
    bad = signed_bundle("bad", version=2, model=helpers.tiny_onnx_model(seed=5))
    with pytest.raises(FlashError, match=r"refused the bundle \(HTTP 409\): health check failed: golden embeddings") as exc:
        push(bad, url, TOKEN)
    assert exc.value.answer is not None and exc.value.answer["ok"] is False
    assert status(root).active_version == 1

    # The command prints the daemon's JSON answer; a .tar is uploaded as it is.
    tar = pack_bundle(signed_bundle("v3", version=3, seed=1), root.parent / "v3.tar")
    assert main(["flash", str(tar), "--to", url, "--token", TOKEN]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["ok"], printed["install"]["version"], printed["install"]["previous_version"]) == (True, 3, 1)
    assert main(["flash", str(signed_bundle("v2", version=2)), "--to", url, "--token", TOKEN,
                 "--allow-downgrade"]) == 0
    assert uploads[-1]["allow_downgrade"] == "True" and status(root).active_version == 2


def test_push_errors(daemon, signed_bundle, capsys):
    url, root, _ = daemon
    bundle = signed_bundle("v1")
    with pytest.raises(FlashError, match=r"refused the token \(HTTP 401\): invalid or missing token"):
        push(bundle, url, "wrong")
    with pytest.raises(FlashError, match=r"needs the daemon's token"):
        push(bundle, url, None)
    with pytest.raises(FlashError, match=r"cannot reach the daemon at http://127\.0\.0\.1:9/"):
        push(bundle, "http://127.0.0.1:9/", TOKEN)  # the discard port: nothing listens
    assert main(["flash", str(bundle), "--to", "http://127.0.0.1:9", "--token", TOKEN]) == 1
    assert "edgessl flash: error: cannot reach the daemon at http://127.0.0.1:9" in capsys.readouterr().err
    assert status(root).active is None


def _fleet_file(path: Path, devices: list[tuple[str, str]], workers: int = 2, canary: str | None = None) -> Path:
    lines = [f"workers = {workers}"]
    for name, target in devices:
        lines += ["", "[[devices]]", f'name = "{name}"', f'target = "{target}"']
        if target.startswith("http"):
            lines.append('token_env = "EDGESSL_TEST_TOKEN"')
        if name == canary:
            lines.append("canary = true")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fleet_canary_then_concurrent(device_root, daemon, signed_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGESSL_TEST_TOKEN", TOKEN)
    url, pushed_root, _ = daemon
    roots = [device_root(f"cam{i}") for i in range(3)]
    order: list[str] = []
    fleet = load_fleet(_fleet_file(tmp_path / "fleet.toml", [("cam0", str(roots[0])), ("cam1", str(roots[1])),
                                                             ("pushed", url), ("cam2", str(roots[2]))],
                                   canary="cam1"))
    results = flash_fleet(signed_bundle("v1"), fleet, on_result=lambda r: order.append(r.name))
    assert order[0] == "cam1"  # the canary, alone, first
    assert [(r.name, r.status, r.version) for r in results] == [
        ("cam0", "ok", 1), ("cam1", "ok", 1), ("pushed", "ok", 1), ("cam2", "ok", 1)]
    assert status(pushed_root).active_version == 1

    # The command prints a per-device table and exits 1 when a device fails.
    assert main(["flash", str(signed_bundle("v1b", version=1)), "--fleet", str(tmp_path / "fleet.toml")]) == 1
    out = capsys.readouterr().out
    assert "device  target" in out and "cam1    " in out and "rollout stopped: canary cam1 failed" in out
    assert "0 ok, 1 failed, 3 skipped" in out


def test_fleet_stops_on_first_failure(device_root, signed_bundle, other_keypair, tmp_path):
    good = [device_root(f"good{i}") for i in range(3)]
    stranger = tmp_path / "stranger"  # trusts another key: refuses our bundle
    from edgessl.edge_runtime.device.slots import init_device
    init_device(stranger, tmp_path / "test-cpu.toml", [other_keypair.public])
    devices = [("good0", str(good[0])), ("stranger", str(stranger)), ("good1", str(good[1])), ("good2", str(good[2]))]
    fleet = load_fleet(_fleet_file(tmp_path / "fleet.toml", devices, workers=1))
    results = flash_fleet(signed_bundle("v1"), fleet)
    assert [(r.name, r.status) for r in results] == [
        ("good0", "ok"), ("stranger", "failed"), ("good1", "skipped"), ("good2", "skipped")]
    assert "does not trust" in results[1].reason and results[2].reason == "rollout stopped: stranger failed"
    assert status(good[1]).active is None


def test_fleet_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[devices]]\nname = "a"\ntarget = "/x"\n\n[[devices]]\nname = "a"\ntarget = "/y"\ncolour = 1\n')
    with pytest.raises(FlashError, match=r"invalid fleet file: .*colour: Extra inputs are not permitted"):
        load_fleet(bad)
    bad.write_text('[[devices]]\nname = "a"\ntarget = "/x"\n\n[[devices]]\nname = "a"\ntarget = "/y"\n')
    with pytest.raises(FlashError, match=r"device names must be unique; repeated: a"):
        load_fleet(bad)
    with pytest.raises(FlashError, match="cannot read the fleet file"):
        load_fleet(tmp_path / "missing.toml")


def test_flash_one_reports_instead_of_raising(tmp_path, signed_bundle):
    result = flash_one(signed_bundle("v1"), "ghost", str(tmp_path / "no-device"))
    assert result.status == "failed" and "not a device root" in result.reason
