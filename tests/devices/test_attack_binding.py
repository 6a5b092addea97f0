"""A valid signature is not enough: a bundle signed by the fleet key but built for another model
or another device profile (replayed to this device with a higher version) is refused unless the
operator allows the model change; the health check's child process imports nothing from the
folder the operator flashed from, and a bundle folder holding a file the manifest does not list
is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgessl.devices.keys import sign_bundle
from edgessl.edge_runtime.bundle.manifest import read_manifest, write_manifest
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.slots import active_bundle, status
from edgessl.errors import EdgesslError, InstallError


def rebadged(bundle: Path, keypair, **update: object) -> Path:
    """The bundle with other manifest fields (model name, profiles), signed again by the fleet key."""
    manifest = read_manifest(bundle)
    model = manifest.model.model_copy(update={k: v for k, v in update.items() if k in ("name", "version")})
    rest = {k: v for k, v in update.items() if k not in ("name", "version")}
    write_manifest(bundle, manifest.model_copy(update={"model": model, **rest}))
    sign_bundle(bundle, keypair.private)
    return bundle


def test_a_bundle_of_another_model_is_not_installed_without_the_operator(device_root, signed_bundle, keypair):
    root = device_root()
    install(root, signed_bundle("v1", version=1))
    other = rebadged(signed_bundle("doorbell", version=7, seed=1), keypair, name="doorbell-net")
    with pytest.raises(InstallError, match=r"this device runs the model 'tiny'; the bundle is the model "
                                           r"'doorbell-net'; pass --allow-model-change"):
        install(root, other)
    st = status(root)
    assert (st.active, st.active_version) == ("a", 1)
    assert read_manifest(active_bundle(root)).model.name == "tiny"

    result = install(root, other, allow_model_change=True)
    assert result.version == 7 and any("replaced by 'doorbell-net'" in s for s in result.steps)
    assert read_manifest(active_bundle(root)).model.name == "doorbell-net"


def test_a_bundle_for_another_device_profile_is_refused(device_root, signed_bundle, keypair):
    root = device_root()
    install(root, signed_bundle("v1", version=1))
    jetson = rebadged(signed_bundle("jetson", version=2), keypair, profiles=["jetson-orin-nano"])
    with pytest.raises(InstallError, match=r"built for the device profiles jetson-orin-nano, not for this device's "
                                           r"test-cpu; re-export it with --device test-cpu"):
        install(root, jetson, allow_model_change=True)  # the operator's consent does not cover a wrong device
    assert status(root).active_version == 1
    ours = rebadged(signed_bundle("ours", version=3), keypair, profiles=["jetson-orin-nano", "test-cpu"])
    assert install(root, ours).version == 3


def test_the_health_check_imports_nothing_from_the_working_folder(device_root, signed_bundle, tmp_path, monkeypatch):
    """An operator flashes from a folder that holds a `numpy.py` (a download, a checkout, an
    attacker's file): the health check's child must import the installed numpy, not run that."""
    work = tmp_path / "downloads"
    work.mkdir()
    marker = tmp_path / "imported"
    for module in ("numpy", "onnxruntime", "edgessl"):
        (work / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}\\n')\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONPATH", str(work))  # ignored by the isolated child as well
    root = device_root()
    bundle = signed_bundle("v1", version=1)
    result = install(root, bundle)
    assert result.version == 1
    assert not marker.exists(), marker.read_text()


def test_a_bundle_folder_with_an_unlisted_file_is_refused(device_root, signed_bundle):
    root = device_root()
    install(root, signed_bundle("v1", version=1))
    bundle = signed_bundle("v2", version=2, seed=1)
    (bundle / "numpy.py").write_text("raise SystemExit('imported from the bundle')\n")
    with pytest.raises(EdgesslError, match=r"holds files the signed manifest does not list: numpy.py"):
        install(root, bundle)
    assert status(root).active_version == 1
    (bundle / "numpy.py").unlink()
    assert install(root, bundle).version == 2
