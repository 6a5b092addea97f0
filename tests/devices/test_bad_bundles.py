"""Bad bundles are refused with a clear reason, and touch neither slot.

The device holds v1 (inactive slot a, the previous bundle) and v2 (active slot b). Each bad
bundle is offered as v3 (or v1 for the downgrade); afterwards both slot trees, the `current`
link and the active model are exactly as before.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from edgessl.devices.keys import sign_bundle
from edgessl.edge_runtime.device.health import check_bundle
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.profiles import load_profile
from edgessl.edge_runtime.device.slots import active_bundle, init_device, status
from edgessl.errors import InstallError


@pytest.fixture(scope="module")
def _two_versions_template(tmp_path_factory, keypair, helpers) -> Path:
    tmp = tmp_path_factory.mktemp("template")
    root = tmp / "device"
    init_device(root, helpers.write_profile(tmp / "test-cpu.toml"), [keypair.public])
    for version, seed in [(1, 0), (2, 1)]:
        bundle = helpers.build_tiny_bundle(tmp / f"v{version}", seed=seed, version=version)
        sign_bundle(bundle, keypair.private)
        install(root, bundle)
    return root


@pytest.fixture
def two_versions(_two_versions_template, tmp_path) -> Path:
    """A device root with v1 in slot a (previous) and v2 in slot b (active); a fresh copy per test."""
    root = tmp_path / "device"
    shutil.copytree(_two_versions_template, root, symlinks=True)
    assert (status(root).active, status(root).previous) == ("b", "a")
    return root


def _unsigned(h, make, tmp: Path, other) -> Path:
    return make("unsigned", version=3, sign=False)


def _untrusted(h, make, tmp: Path, other) -> Path:
    return make("untrusted", version=3, key=other)


def _flipped_byte(h, make, tmp: Path, other) -> Path:
    bundle = make("flipped", version=3)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    return bundle


def _manifest_edited(h, make, tmp: Path, other) -> Path:
    bundle = make("edited", version=3)
    # An attacker swaps the model and fixes its hash in the manifest, keeping the old signature.
    signature = (bundle / "manifest.sig").read_bytes()
    h.replace_file(bundle, "model.onnx", h.tiny_onnx_model(seed=7))
    (bundle / "manifest.sig").write_bytes(signature)
    return bundle


def _tar_with(*args, **kwargs):
    def build(h, make, tmp: Path, other) -> Path:
        return h.make_tar(make("base", version=3), tmp / "bad.tar", [h.member(*args, **kwargs)])
    return build


def _symlink_over_model(h, make, tmp: Path, other) -> Path:
    bundle = make("base", version=3)
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to("/etc/passwd")
    return h.make_tar(bundle, tmp / "bad.tar")


CASES = {
    "unsigned": (_unsigned, r"not signed"),
    "untrusted key": (_untrusted, r"signed with key '[0-9a-f]{16}', which this device does not trust"),
    "flipped byte in model": (_flipped_byte, r"model\.onnx: sha256 does not match the signed manifest"),
    "manifest edited after signing": (_manifest_edited, r"does not match manifest\.json: the manifest was changed"),
    "../ in archive": (_tar_with("../escape.txt", data=b"x"), r"'\.\.' in a path is not allowed"),
    "absolute path in archive": (_tar_with("/tmp/edgessl-escape.txt", data=b"x"), r"absolute paths are not allowed"),
    "symlink in archive": (_tar_with("evil", tarfile.SYMTYPE, linkname="/etc/passwd"), r"is a symbolic link"),
    "symlink replacing a listed file": (_symlink_over_model, r"'model\.onnx' is a symbolic link"),
    "hardlink in archive": (_tar_with("evil", tarfile.LNKTYPE, linkname="/etc/passwd"), r"is a hard link"),
    "device file in archive": (_tar_with("null", tarfile.CHRTYPE), r"is a device file"),
    "fifo in archive": (_tar_with("pipe", tarfile.FIFOTYPE), r"is a FIFO"),
    "unlisted file in archive": (_tar_with("extra.bin", data=b"payload"),
                                 r"files the signed manifest does not list: extra\.bin"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_is_refused_and_touches_nothing(case, two_versions, signed_bundle, other_keypair, tmp_path,
                                                   helpers):
    root = two_versions
    tree_hashes = helpers.tree_hashes
    build, reason = CASES[case]
    bad = build(helpers, signed_bundle, tmp_path, other_keypair)
    before = {"a": tree_hashes(root / "slots" / "a"), "b": tree_hashes(root / "slots" / "b"),
              "current": (root / "current").readlink()}

    with pytest.raises(InstallError, match=reason) as refused:
        install(root, bad)

    print(f"{case}: {refused.value}")
    assert "slot b stays active" in str(refused.value)
    result = refused.value.result
    assert result is not None and result.ok is False and result.slot == "b" and result.previous_version == 2
    after = {"a": tree_hashes(root / "slots" / "a"), "b": tree_hashes(root / "slots" / "b"),
             "current": (root / "current").readlink()}
    assert after == before
    assert sorted(p.name for p in (root / "slots").iterdir()) == ["a", "b"]  # no staging left
    assert not Path("/tmp/edgessl-escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    active = active_bundle(root)
    assert active == root / "slots" / "b"
    report = check_bundle(active, load_profile(root / "profile.toml"))
    assert report.ok, report.reason
    history = status(root).history[-1]
    assert (history["action"], history["ok"]) == ("install", False)


def test_downgrade_is_refused_unless_allowed(two_versions, signed_bundle, helpers):
    root = two_versions
    tree_hashes = helpers.tree_hashes
    old = signed_bundle("old", version=1, seed=2)
    before = tree_hashes(root / "slots")
    with pytest.raises(InstallError, match=r"version 1 is not newer than the installed version 2.*--allow-downgrade"):
        install(root, old)
    assert tree_hashes(root / "slots") == before
    # Same version again is no upgrade either.
    with pytest.raises(InstallError, match=r"version 2 is not newer"):
        install(root, signed_bundle("same", version=2, seed=3))

    result = install(root, old, allow_downgrade=True)
    assert (result.ok, result.version, result.slot, result.previous_version) == (True, 1, "a", 2)
    assert any("downgrade from v2 allowed" in s for s in result.steps)


def test_resigned_after_edit_is_accepted(two_versions, signed_bundle, keypair):
    """The counterpart of 'manifest edited after signing': re-signing makes it valid again."""
    bundle = signed_bundle("resigned", version=3)
    sign_bundle(bundle, keypair.private)
    assert install(two_versions, bundle).version == 3
