"""The health check: a signed bundle whose model is wrong is never made active.

Wrong weights (golden cosine fails) and NaN outputs are caught in the separate health-check
process before the switch; a failure after the switch (the running daemon cannot load the
model) switches back. Either way the previous model stays active and keeps working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.device.health import check_bundle, run_health_check
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.profiles import load_profile
from edgessl.edge_runtime.device.selection import SelectionError, choose
from edgessl.edge_runtime.device.slots import active_bundle, status
from edgessl.errors import InstallError


@pytest.fixture
def v1_device(device_root, signed_bundle) -> Path:
    root = device_root()
    install(root, signed_bundle("v1", version=1, seed=0))
    return root


def _assert_v1_still_serves(root: Path, helpers, before: dict[str, str]) -> None:
    assert active_bundle(root) == root / "slots" / "a"
    assert helpers.tree_hashes(root / "slots" / "a") == before
    assert not (root / "slots" / "b").exists()  # the failed bundle never became a slot
    report = check_bundle(active_bundle(root), load_profile(root / "profile.toml"))
    assert report.ok and report.min_cosine is not None and report.min_cosine > 0.999
    st = status(root)
    assert (st.active, st.active_version, st.last_good_version) == ("a", 1, 1)
    assert st.history[-1]["ok"] is False


@pytest.mark.parametrize("kind", ["wrong weights", "NaN"])
def test_bad_model_is_rolled_back(kind, v1_device, signed_bundle, helpers):
    root = v1_device
    before = helpers.tree_hashes(root / "slots" / "a")
    model = helpers.tiny_onnx_model(seed=5) if kind == "wrong weights" else helpers.nan_onnx_model()
    bad = signed_bundle("bad", version=2, model=model)
    load_bundle(bad)  # a well-formed, correctly hashed bundle: only its model is bad

    with pytest.raises(InstallError) as failed:
        install(root, bad)
    message = str(failed.value)
    print(message)
    if kind == "wrong weights":
        assert "health check failed: golden embeddings do not match: min cosine" in message
        assert "< 0.999 (fp32 threshold)" in message
    else:
        assert "health check failed: model produced NaN or infinite embeddings" in message
    assert message.endswith("slot a stays active")
    steps = failed.value.result.steps
    assert steps[-2].startswith("extracted 3 files") and steps[-1].startswith("onnx-fp32 failed its health check")
    _assert_v1_still_serves(root, helpers, before)


def test_failure_after_switch_rolls_back(v1_device, signed_bundle, helpers):
    """The daemon's hot reload fails: `current` goes back and the daemon reloads the old model."""
    root = v1_device
    before = helpers.tree_hashes(root / "slots" / "a")
    calls: list[Path] = []

    def reload(bundle_dir: Path) -> None:
        calls.append(bundle_dir)
        if bundle_dir.name == "b":
            raise RuntimeError("out of GPU memory")

    with pytest.raises(InstallError, match=r"v2 in slot b failed to load in the running daemon: out of GPU memory; "
                                           r"slot a \(v1\) is active again"):
        install(root, signed_bundle("v2", version=2, seed=1), on_switch=reload)
    assert calls == [root / "slots" / "b", root / "slots" / "a"]
    assert active_bundle(root) == root / "slots" / "a"
    assert helpers.tree_hashes(root / "slots" / "a") == before
    st = status(root)
    assert (st.active, st.previous, st.last_good_version) == ("a", None, 1)  # b is no rollback target


def test_on_switch_gets_the_new_slot(v1_device, signed_bundle):
    calls: list[Path] = []
    result = install(v1_device, signed_bundle("v2", version=2, seed=1), on_switch=calls.append)
    assert calls == [v1_device / "slots" / "b"]
    assert "running daemon reloaded the new model" in result.steps


def test_budgets_and_subprocess(tiny_bundle, tmp_path, helpers):
    """Latency and memory budgets fail the check; the check runs in its own process."""
    ok = run_health_check(tiny_bundle, helpers.write_profile(tmp_path / "ok.toml"), timeout_s=60)
    assert ok.ok and ok.peak_rss_mb is not None and 0 < ok.peak_rss_mb < 4096
    slow = run_health_check(tiny_bundle, helpers.write_profile(tmp_path / "slow.toml", latency_budget_ms="1e-6"), 60)
    assert not slow.ok and slow.reason.startswith("too slow:")
    small = run_health_check(tiny_bundle, helpers.write_profile(tmp_path / "small.toml", memory_budget_mb=1), 60)
    assert not small.ok and small.reason.startswith("too much memory:")
    garbage = run_health_check(tmp_path / "nowhere", tmp_path / "ok.toml", 60)
    assert not garbage.ok and "bundle directory not found" in garbage.reason


def test_backend_preference(tiny_bundle, tmp_path, helpers):
    """The first backend that is installed and has an artifact; clear reasons for the others."""
    profile = load_profile(helpers.write_profile(tmp_path / "p.toml", backends='["tensorrt", "openvino", "onnxruntime"]',
                                                 precisions='["int8", "fp32"]'))
    plan = choose(load_bundle(tiny_bundle).manifest, profile)
    assert (plan.backend, plan.artifact.format, plan.precision) == ("onnxruntime", "onnx", "fp32")
    skipped = plan.skipped
    assert len(skipped) == 2 and skipped[0].startswith("tensorrt: ") and skipped[1].startswith("openvino: ")
    assert "the bundle has no openvino artifact in int8/fp32 (it has onnx/fp32)" in skipped[1]

    none = load_profile(helpers.write_profile(tmp_path / "n.toml", backends='["openvino", "no-such-backend"]'))
    with pytest.raises(SelectionError, match=r"no usable backend for profile 'test-cpu': openvino: the bundle has no "
                                          r"openvino artifact.*no-such-backend: not a registered backend"):
        choose(load_bundle(tiny_bundle).manifest, none)
    report = check_bundle(tiny_bundle, none)
    assert not report.ok and report.reason.startswith("no usable backend")


def test_golden_reference_is_what_the_check_compares(make_bundle, tmp_path, helpers):
    """A bundle whose golden embeddings are off by a small rotation passes at int8 but not fp32."""
    bundle = make_bundle("near")
    golden = dict(np.load(bundle / "golden.npz"))
    rng = np.random.default_rng(0)
    emb = golden["embeddings"]
    centred = emb - np.load(bundle / "center.npy")  # the check compares centred embeddings
    noisy = emb + rng.standard_normal(emb.shape).astype(np.float32) * np.linalg.norm(centred, axis=1, keepdims=True) * 0.05
    np.savez(tmp_path / "g.npz", inputs=golden["inputs"], embeddings=noisy)
    helpers.replace_file(bundle, "golden.npz", (tmp_path / "g.npz").read_bytes())
    fp32 = load_profile(helpers.write_profile(tmp_path / "fp32.toml"))
    report = check_bundle(bundle, fp32)
    assert not report.ok and report.min_cosine is not None and 0.95 < report.min_cosine < 0.999
    lenient = fp32.model_copy(update={"min_cosine": fp32.min_cosine.model_copy(update={"fp32": 0.95})})
    assert check_bundle(bundle, lenient).ok


def test_a_failing_default_falls_back_to_the_next_passing_artifact(device_root, signed_bundle, keypair, helpers,
                                                                   tmp_path):
    """Export's default for the profile (here an "int8" model that drifts: other weights) fails the
    health check on this device: the installer checks the next candidate, installs it, says which
    and why, and records it, so everything that runs the device runs that one."""
    from edgessl.devices.keys import sign_bundle
    from edgessl.edge_runtime.bundle.manifest import Artifact, file_entry, read_manifest, write_manifest
    from edgessl.edge_runtime.device.slots import active_model

    profile = helpers.write_profile(tmp_path / "int8.toml", precisions='["int8", "fp32"]')
    root = device_root(profile=profile)
    bundle = signed_bundle("two", sign=False)
    (bundle / "model.int8.onnx").write_bytes(helpers.tiny_onnx_model(seed=5))
    m = read_manifest(bundle)
    drifting = Artifact(format="onnx", precision="int8", file="model.int8.onnx", name="onnx-int8")
    write_manifest(bundle, m.model_copy(update={
        "artifacts": [*m.artifacts, drifting], "defaults": {"test-cpu": "onnx-int8"},
        "files": {**m.files, "model.int8.onnx": file_entry(bundle / "model.int8.onnx")}}))
    sign_bundle(bundle, keypair.private)

    result = install(root, bundle)
    assert result.ok
    fallback = next(s for s in result.steps if s.startswith("fallback:"))
    assert "onnx-fp32 installed because onnx-int8 failed its health check" in fallback
    assert "golden embeddings do not match" in fallback
    plan = active_model(root).plan
    assert (plan.backend, plan.artifact.label) == ("onnxruntime", "onnx-fp32")
    assert status(root).runs["artifact"] == "onnx-fp32"

    # When no candidate passes, nothing is installed and the message names each failure.
    (bundle / "model.onnx").write_bytes(helpers.tiny_onnx_model(seed=6))
    m = read_manifest(bundle)
    write_manifest(bundle, m.model_copy(update={
        "model": m.model.model_copy(update={"version": 2}),
        "files": {**m.files, "model.onnx": file_entry(bundle / "model.onnx")}}))
    sign_bundle(bundle, keypair.private)
    with pytest.raises(InstallError, match=r"every candidate failed: onnx-int8: golden.*; onnx-fp32: golden"):
        install(root, bundle)
    assert status(root).active_version == 1
