"""The one parity gate: export ships, and marks as a profile's default, only what that
profile's health check accepts; every calibration method; TensorRT without a GPU is unchecked;
input sizes that differ from a profile's are flagged at export and at flash."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle, read_manifest, write_manifest
from edgessl.edge_runtime.device.health import check_bundle
from edgessl.edge_runtime.device.profiles import load_profile, resolve_profile
from edgessl.edge_runtime.inference.parity import golden_agreement
from edgessl.export.bundle_writer import export_bundle
from edgessl.export.formats import nvidia_gpu
from edgessl.export.quantize_ort import CALIBRATION_METHODS, even_batch

PROFILE = """\
name = "{name}"
description = "test: ONNX Runtime int8 or fp32"
arch = "x86_64"
backends = ["onnxruntime"]
precisions = ["int8", "fp32"]
threads = 1
input_size = [16, 16]
latency_budget_ms = 500.0
memory_budget_mb = 4096

[min_cosine]
fp32 = 0.999
fp16 = 0.99
int8 = {int8}
"""


def write_profile(folder: Path, name: str, int8: float) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(PROFILE.format(name=name, int8=int8))
    return path


@pytest.fixture(scope="module")
def gated(checkpoint, images, tmp_path_factory):
    """A bundle for two profiles that differ only in their int8 threshold: one no int8 model
    reaches (1.0), one every int8 model reaches (0.1)."""
    folder = tmp_path_factory.mktemp("gate")
    strict, lenient = write_profile(folder, "strict-box", 1.0), write_profile(folder, "lenient-box", 0.1)
    out = export_bundle(checkpoint, folder / "bundle", formats=["onnx-int8"], calib=images, calib_size=20,
                        devices=[str(strict), str(lenient)], threads=1)
    return out, {"strict-box": load_profile(strict), "lenient-box": load_profile(lenient)}


def test_an_artifact_below_a_profiles_threshold_is_never_its_default(gated):
    out, profiles = gated
    m = load_bundle(out).manifest
    row = next(r for r in m.report if r.name == "onnx-int8")
    # Shipped (it passes the least strict target), recorded with the gate's figure ...
    assert row.status == "ok" and row.in_bundle and row.centred_min is not None and row.centred_min < 1.0
    assert m.artifact_named("onnx-int8").parity["golden_min_centred"] == row.centred_min
    assert "strict-box (1.0)" in row.reason and "never the default there" in row.reason
    # ... but not the default of the profile whose threshold it misses.
    assert m.defaults["strict-box"] == "onnx"
    assert m.defaults["lenient-box"] in ("onnx", "onnx-int8")
    for name, artifact in m.defaults.items():
        a = m.artifact_named(artifact)
        assert a.parity["golden_min_centred"] >= profiles[name].min_cosine.for_precision(a.precision)


def test_the_int8_quantization_aims_at_the_strictest_target(gated):
    out, _ = gated
    row = next(r for r in load_bundle(out).manifest.report if r.name == "onnx-int8")
    # 1.0 cannot be reached: the exclusion loop ran (weight layers only, then layers kept in fp32).
    assert "weight layers only" in row.reason and "kept in fp32" in row.reason
    assert "quantization target not reached" in row.reason


def _with_default(bundle: Path, out: Path, profile: str, artifact: str) -> Path:
    shutil.copytree(bundle, out)
    m = read_manifest(out)
    write_manifest(out, m.model_copy(update={"defaults": {**m.defaults, profile: artifact}}))
    return out


def test_every_artifact_that_passes_the_gate_for_a_profile_passes_its_health_check(gated, tmp_path):
    out, profiles = gated
    m = load_bundle(out).manifest
    checked = 0
    for name, profile in profiles.items():
        for a in m.artifacts:
            threshold = profile.min_cosine.for_precision(a.precision)
            passed = a.parity["golden_min_centred"] >= threshold
            report = check_bundle(_with_default(out, tmp_path / f"{name}-{a.label}", name, a.label), profile)
            assert report.artifact == a.file
            # Export judged more images than the golden set: passing export implies passing here.
            if passed:
                assert report.ok, (name, a.label, report.reason)
                checked += 1
            else:
                assert not report.ok and "golden embeddings do not match" in report.reason
    assert checked >= 3  # onnx for both, onnx-int8 for the lenient one


@pytest.mark.parametrize("profile", ["x86-cpu", "raspberry-pi-5", "intel-nuc"])
def test_a_builtin_profiles_default_passes_its_health_check(checkpoint, images, tmp_path_factory, profile):
    out = export_bundle(checkpoint, tmp_path_factory.mktemp(profile) / "b", calib=images, calib_size=20,
                        devices=[profile], threads=1)
    # The built-in profiles' latency budgets are for 224x224 and hold for this 16x16 model too.
    report = check_bundle(out, resolve_profile(profile)[0])
    m = load_bundle(out).manifest
    assert report.ok, report.reason
    assert report.artifact == m.artifact_named(m.defaults[profile]).file


def test_even_batches_cover_every_image():
    assert even_batch(40) == 10 and even_batch(48) == 16 and even_batch(37) == 1 and even_batch(5) == 5


@pytest.mark.parametrize("method", sorted(CALIBRATION_METHODS))
def test_every_calibration_method_quantizes(checkpoint, images, tmp_path, method):
    # 21 images: batches of 16 would leave a last batch of 5, which the histogram methods
    # (entropy, percentile) used to fail on ("inhomogeneous shape").
    out = export_bundle(checkpoint, tmp_path / "b", formats=["onnx-int8"], calib=images, calib_size=21,
                        calib_method=method, threads=1)
    m = load_bundle(out).manifest
    row = next(r for r in m.report if r.name == "onnx-int8")
    assert row.status != "failed-export", row.reason
    assert f"{method} calibration on 21 images" in row.reason
    assert row.centred_min is not None and np.isfinite(row.centred_min)


def test_entropy_and_percentile_calibration_give_other_ranges_than_minmax(checkpoint, images, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgessl.export.bundle_writer import sample_images
    from edgessl.export.onnx_export import export_onnx
    from edgessl.export.parity import device_inputs
    from edgessl.export.quantize_ort import quantize_int8
    from edgessl.train.checkpoint import load_backbone, load_checkpoint

    fp32 = export_onnx(load_backbone(load_checkpoint(checkpoint)), tmp_path / "m.onnx", (16, 16))
    spec = load_bundle(export_bundle(checkpoint, tmp_path / "b")).manifest.preprocess
    x = device_inputs(sample_images(images, 16, 30), spec)

    def scales(method: str) -> dict[str, float]:
        out = quantize_int8(fp32, tmp_path / f"{method}.onnx", x[:21], x[21:], method=method, target_median=0.0).path
        return {i.name: float(numpy_helper.to_array(i)) for i in onnx.load(str(out)).graph.initializer
                if i.name.endswith("_scale") and numpy_helper.to_array(i).size == 1}

    minmax, entropy, percentile = scales("minmax"), scales("entropy"), scales("percentile")
    assert minmax.keys() == entropy.keys() == percentile.keys()
    # Both clip outliers: activation ranges no wider than min/max, and some narrower. Percentile
    # keeps 99.999% of the values of 21 small images, so it trims only the extreme tail (0.3%
    # narrower here); identical ranges would be ratios of 1 +- 1e-5.
    for other in (entropy, percentile):
        assert all(other[k] <= minmax[k] * (1 + 1e-5) for k in minmax)
        assert any(other[k] < minmax[k] * 0.999 for k in minmax)


@pytest.mark.skipif(nvidia_gpu(), reason="a GPU is present: TensorRT artifacts are checked with TensorRT here")
def test_tensorrt_without_a_gpu_is_unchecked_in_export_report_and_bench(checkpoint, images, tmp_path, capsys):
    from edgessl.edge_runtime.cli.bench import run as bench
    from edgessl.edge_runtime.inference.timing import render_report

    out = export_bundle(checkpoint, tmp_path / "b", formats=["tensorrt-fp16"], calib=images, calib_size=20,
                        devices=["jetson-orin-nano"], threads=1)
    m = load_bundle(out).manifest
    row = next(r for r in m.report if r.name == "tensorrt-fp16")
    assert row.status == "unchecked" and row.in_bundle and "no NVIDIA GPU" in row.reason
    assert row.latency_ms_b1 is None  # nothing was measured with TensorRT
    # Jetson's profile adds its formats; the device builds and checks the TensorRT default.
    assert m.defaults["jetson-orin-nano"] in ("tensorrt-int8", "tensorrt-fp16")
    assert next(r for r in m.report if r.name == m.defaults["jetson-orin-nano"]).status == "unchecked"
    assert "tensorrt-fp16  unchecked" in render_report(m.report)
    bench(argparse.Namespace(bundle=out, threads=1, stored_only=False, seconds=0.05, json=False))
    printed = capsys.readouterr().out
    stored, measured = printed.split("measured here")
    assert "unchecked" in stored and "warning" not in printed
    lines = {line.split()[0]: line.split()[1] for line in measured.splitlines()[3:] if line and line[0] != " "
             and not line.startswith("notes")}
    # Bench lists exactly the bundle's artifacts, TensorRT ones as unchecked, as export did.
    assert set(lines) == {a.label for a in m.artifacts} == {r.name for r in m.report if r.in_bundle}
    assert all(status == ("unchecked" if name.startswith("tensorrt") else "ok") for name, status in lines.items())


def test_bench_measures_the_same_gate_as_export(gated, capsys):
    from edgessl.edge_runtime.cli.bench import run as bench

    out, _ = gated
    bench(argparse.Namespace(bundle=out, threads=1, stored_only=False, seconds=0.05, json=False))
    measured = capsys.readouterr().out.split("measured here")[1]
    m = load_bundle(out).manifest
    golden, center = np.load(out / "golden.npz"), np.load(out / "center.npy")
    from edgessl.edge_runtime.inference.backends import load_backend
    with load_backend("onnxruntime", out / "model.int8.onnx", threads=1) as b:
        expected = golden_agreement(golden["embeddings"], b.embed(golden["inputs"]), center)
    line = next(line for line in measured.splitlines() if line.startswith("onnx-int8 "))
    assert f"{expected:.4f}" in line.split()  # the centred-min column
    assert sorted(a.label for a in m.artifacts) == ["onnx", "onnx-int8"]


def test_an_input_size_other_than_the_profiles_is_flagged_at_export(checkpoint, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="edgessl.export.bundle_writer"):
        out = export_bundle(checkpoint, tmp_path / "b", devices=["x86-cpu"], threads=1)
    expected = "input size 16x16 differs from the input_size of device profile(s) x86-cpu (224x224)"
    assert any(expected in r.getMessage() for r in caplog.records)
    row = next(r for r in load_bundle(out).manifest.report if r.name == "onnx")
    assert expected in row.reason  # in the stored report, so `edgessl bench` shows it too


def test_an_input_size_other_than_the_profiles_is_flagged_at_flash(checkpoint, tmp_path, caplog):
    from edgessl.devices.flash import flash
    from edgessl.devices.keys import generate_keypair, sign_bundle
    from edgessl.edge_runtime.device.slots import init_device

    keys = generate_keypair(tmp_path / "keys", "k")
    out = export_bundle(checkpoint, tmp_path / "b", threads=1)
    sign_bundle(out, keys.private)
    big = tmp_path / "big.toml"
    big.write_text(PROFILE.format(name="big-box", int8=0.95).replace("[16, 16]", "[224, 224]"))
    same = write_profile(tmp_path, "same-box", 0.95)
    for root, profile in [(tmp_path / "big", big), (tmp_path / "same", same)]:
        init_device(root, profile, [keys.public])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgessl.devices.flash"):
            flash(out, str(root))
        warnings = [r.getMessage() for r in caplog.records if r.name == "edgessl.devices.flash"]
        if profile is big:
            assert any("input size 16x16 differs from the input_size 224x224 of this device's profile big-box"
                       in w for w in warnings)
        else:
            assert not warnings


def test_openvino_int8_that_misses_the_gate_is_redone_with_accuracy_control(checkpoint, images, tmp_path):
    profile = tmp_path / "ov-box.toml"
    profile.write_text(PROFILE.format(name="ov-box", int8=0.9999).replace('["onnxruntime"]', '["openvino"]'))
    out = export_bundle(checkpoint, tmp_path / "b", formats=["openvino-int8"], calib=images, calib_size=20,
                        devices=[str(profile)], threads=1)
    m = load_bundle(out).manifest
    row = next(r for r in m.report if r.name == "openvino-int8")
    assert "redone with NNCF accuracy control" in row.reason, row.reason
    assert row.centred_min is not None
    # Whatever the second pass reached, the default follows the profile's own threshold.
    if row.centred_min < 0.9999:
        assert m.defaults["ov-box"] == "openvino"
    else:
        assert m.defaults["ov-box"] in ("openvino", "openvino-int8")  # the faster one here
