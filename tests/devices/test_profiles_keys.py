"""Device profiles (validated TOML files, `edgessl devices`) and keys (`edgessl keys`, `edgessl sign`)."""

from __future__ import annotations

import stat

import pytest

from edgessl.cli import main
from edgessl.devices.catalog import all_profiles, get_profile, profile_names
from edgessl.devices.keys import generate_keypair, load_private_key, sign_bundle
from edgessl.edge_runtime.bundle.signing import load_public_key, load_trusted_keys, verify_bundle_dir
from edgessl.edge_runtime.device.profiles import DeviceProfile, load_profile
from edgessl.errors import EdgesslError, SignatureError

EXPECTED = {  # name: (first backend, first precision, arch)
    "jetson-orin-nano": ("tensorrt", "int8", "arm64"),
    "raspberry-pi-5": ("onnxruntime", "int8", "arm64"),
    "intel-nuc": ("openvino", "int8", "x86_64"),
    "x86-cpu": ("onnxruntime", "fp32", "x86_64"),
}


def test_builtin_profiles():
    assert set(EXPECTED) <= set(profile_names())
    for profile in all_profiles():
        assert get_profile(profile.name) == profile
        if profile.name in EXPECTED:
            assert (profile.backends[0], profile.precisions[0], profile.arch) == EXPECTED[profile.name]
        assert "onnxruntime" in profile.backends  # every profile can fall back to the ONNX model
        assert profile.min_cosine.fp32 == 0.999 and profile.min_cosine.fp16 == 0.99 and profile.min_cosine.int8 == 0.95
    assert get_profile("raspberry-pi-5").threads == 4
    jetson = get_profile("jetson-orin-nano")
    assert jetson.runtime_versions["tensorrt"] == ">=10,<11" and "TensorRT 10" in jetson.notes
    assert get_profile("intel-nuc").backend_options["openvino"] == {"device": "CPU"}


def test_every_profile_field_is_described():
    missing = [name for name, field in DeviceProfile.model_fields.items() if not field.description]
    assert missing == []


def test_profile_validation(tmp_path, helpers):
    with pytest.raises(EdgesslError, match=r"unknown device profile 'nope'; valid profiles: .*jetson-orin-nano"):
        get_profile("nope")
    bad = helpers.write_profile(tmp_path / "bad.toml", colour='"red"', threads=0, precisions='["fp8"]')
    with pytest.raises(EdgesslError, match=r"bad\.toml: invalid device profile: .*precisions\.0: .*threads: .*colour: "
                                           r"Extra inputs are not permitted"):
        load_profile(bad)
    (tmp_path / "broken.toml").write_text("name = ")
    with pytest.raises(EdgesslError, match="not valid TOML"):
        load_profile(tmp_path / "broken.toml")
    assert load_profile(helpers.write_profile(tmp_path / "ok.toml")).min_cosine.int8 == 0.95


def test_devices_command(capsys):
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "arch", "backends"]
    assert any(line.startswith("raspberry-pi-5") and "onnxruntime" in line and "120" in line for line in out)
    assert main(["devices", "show", "jetson-orin-nano"]) == 0
    shown = capsys.readouterr().out
    assert "backends           tensorrt, onnxruntime" in shown and "latency_budget_ms  15.0" in shown
    assert main(["devices", "show", "pi"]) == 1
    assert "unknown device profile 'pi'; valid profiles: intel-nuc, jetson-orin-nano" in capsys.readouterr().err


def test_keys_and_signatures(tmp_path, signed_bundle, other_keypair, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ops"]) == 0
    private, public = tmp_path / "k" / "ops.key", tmp_path / "k" / "ops.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    key_id = capsys.readouterr().out.split()[1]
    with pytest.raises(SignatureError, match="already exist"):
        generate_keypair(tmp_path / "k", "ops")
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ops"]) == 1

    bundle = signed_bundle("b", sign=False)
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    assert f"signed {bundle} with key {key_id}" in capsys.readouterr().out
    trusted = {key_id: load_public_key(public)}
    assert verify_bundle_dir(bundle, trusted) == key_id
    with pytest.raises(SignatureError, match="which this device does not trust"):
        verify_bundle_dir(bundle, load_trusted_keys(other_keypair.public.parent))
    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes() + b" ")
    with pytest.raises(SignatureError, match="manifest was changed after signing"):
        verify_bundle_dir(bundle, trusted)
    (bundle / "manifest.sig").write_text("garbage")
    with pytest.raises(SignatureError, match="not a valid signature document"):
        verify_bundle_dir(bundle, trusted)


def test_sign_refuses_bad_input(tmp_path, signed_bundle, keypair):
    bundle = signed_bundle("b", sign=False)
    (bundle / "center.npy").write_bytes(b"changed")
    with pytest.raises(EdgesslError, match=r"center\.npy: size .* does not match the manifest"):
        sign_bundle(bundle, keypair.private)
    assert not (bundle / "manifest.sig").exists()
    with pytest.raises(SignatureError, match="not an unencrypted PEM private key"):
        load_private_key(keypair.public)
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(keypair.private)
