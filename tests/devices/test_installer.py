"""The A/B installer: provisioning, install, status, rollback, recovery after an interruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edgessl.cli import main
from edgessl.edge_runtime.device.installer import InstallResult, install, rollback
from edgessl.edge_runtime.device.slots import active_bundle, active_model, init_device, status
from edgessl.errors import EdgesslError, InstallError


def test_cli_init_flash_status_rollback(tmp_path, keypair, profile_file, signed_bundle, capsys):
    root = tmp_path / "dev"
    assert main(["device", "init", "--root", str(root), "--profile", str(profile_file),
                 "--trust", str(keypair.public)]) == 0
    assert "provisioned" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["profile.toml", "slots", "state.json", "trusted_keys"]
    with pytest.raises(InstallError, match="no bundle installed yet; flash one with `edgessl flash BUNDLE --to"):
        active_bundle(root)
    assert main(["device", "rollback", "--root", str(root)]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err

    assert main(["flash", str(signed_bundle("v1", version=1)), "--to", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("installed tiny v1 in slot a")
    assert main(["flash", str(signed_bundle("v2", version=2, seed=1)), "--to", str(root)]) == 0
    assert os.readlink(root / "current") == "slots/b" and active_bundle(root) == root / "slots" / "b"

    assert main(["device", "status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "slot a       tiny v1" in out and "[previous]" in out and "slot b       tiny v2" in out and "[active]" in out
    assert main(["device", "check", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith("ok: onnxruntime/fp32: min cosine")

    assert main(["device", "rollback", "--root", str(root)]) == 0
    assert "rolled back to tiny v1 in slot a (was v2)" in capsys.readouterr().out
    assert main(["device", "status", "--root", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["active"], st["previous"], st["active_version"]) == ("a", "b", 1)
    assert [h["action"] for h in st["history"]] == ["init", "rollback", "install", "install", "rollback"]
    # Rolling back twice goes forward again (the two slots swap roles).
    assert rollback(root).version == 2


def test_init_refusals(tmp_path, keypair, profile_file, other_keypair):
    root = tmp_path / "dev"
    with pytest.raises(InstallError, match="at least one trusted public key"):
        init_device(root, profile_file, [])
    with pytest.raises(EdgesslError, match="unknown device profile 'toaster'"):
        init_device(root, "toaster", [keypair.public])
    with pytest.raises(EdgesslError, match="not a PEM public key"):
        init_device(root, profile_file, [keypair.private])
    st = init_device(root, "raspberry-pi-5", [keypair.public, other_keypair.public])
    assert st.profile == "raspberry-pi-5" and len(st.trusted_keys) == 2 and st.active is None
    with pytest.raises(InstallError, match="already a device root"):
        init_device(root, profile_file, [keypair.public])
    with pytest.raises(InstallError, match="not a device root"):
        install(tmp_path / "elsewhere", tmp_path)


def test_result_and_tar_with_top_folder(device_root, signed_bundle, helpers, tmp_path):
    root = device_root()
    bundle = signed_bundle("v1")
    tar = helpers.make_tar(bundle, tmp_path / "v1.tar", prefix="tiny-v1/")
    result = install(root, tar)
    assert isinstance(result, InstallResult)
    assert (result.ok, result.version, result.slot, result.previous_version) == (True, 1, "a", None)
    assert result.steps[0].startswith("signature of tiny v1 verified (key ")
    assert result.to_dict()["steps"] == list(result.steps)
    json.dumps(result.to_dict())
    assert helpers.tree_hashes(root / "slots" / "a") == helpers.tree_hashes(bundle)
    model = active_model(root)
    plan = model.plan
    assert (model.bundle_dir, plan.backend, plan.precision, plan.artifact.file, plan.threads) == (
        root / "slots" / "a", "onnxruntime", "fp32", "model.onnx", 1)
    assert "verified by the health check" in plan.reason  # what the install's health check passed


def test_recovers_from_interrupted_switch(device_root, signed_bundle):
    """Crash between the switch of `current` and the state write: the next run repairs the state."""
    root = device_root()
    install(root, signed_bundle("v1", version=1))
    install(root, signed_bundle("v2", version=2, seed=1))
    state = (root / "state.json").read_bytes()
    rollback(root)
    (root / "state.json").write_bytes(state)  # the state write "did not happen"
    (root / "slots" / ".staging").mkdir()  # and leftovers of another interrupted install
    (root / "slots" / ".staging" / "model.onnx").write_bytes(b"partial")
    assert any("an update was interrupted" in n for n in status(root).notes)

    result = install(root, signed_bundle("v3", version=3, seed=2))  # v1 (slot a) is active: v3 goes to b
    assert (result.slot, result.previous_version) == ("b", 1)
    st = status(root)
    assert st.notes == () and (st.active, st.previous) == ("b", "a")
    recover = [h for h in st.history if h["action"] == "recover"]
    assert recover and "kept it" in recover[-1]["reason"]


def test_one_install_at_a_time(device_root, signed_bundle):
    root = device_root()
    bundle = signed_bundle("v1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(root / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InstallError, match="another install or rollback is running"):
            install(root, bundle)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert install(root, bundle).ok


def test_damaged_root_is_reported(device_root, signed_bundle):
    root = device_root()
    install(root, signed_bundle("v1"))
    (root / "current").unlink()
    (root / "current").symlink_to("/etc")
    with pytest.raises(InstallError, match=r"points to '/etc'; expected slots/a or slots/b"):
        active_bundle(root)
    (root / "current").unlink()
    shutil.copytree(root / "slots" / "a", root / "current")
    with pytest.raises(InstallError, match="is not a symlink"):
        status(root)
