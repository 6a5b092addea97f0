"""Every export format, its parity check, the report, per-profile defaults, and hostile files."""

import json

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.device.profiles import resolve_profile
from edgessl.edge_runtime.inference.backends import backend_for, load_backend
from edgessl.edge_runtime.inference.parity import golden_agreement
from edgessl.export import formats as formats_module
from edgessl.export.bundle_writer import export_bundle, thresholds
from edgessl.export.formats import FORMATS, Format, nvidia_gpu, parse_formats

PROFILES = ["x86-cpu", "jetson-orin-nano", "intel-nuc"]


@pytest.fixture(scope="module")
def full_bundle(checkpoint, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats") / "bundle"
    return export_bundle(checkpoint, out, formats=list(FORMATS), calib=images, calib_size=40,
                         eval_query=images, eval_per_class=6, devices=PROFILES,
                         threads=1)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_is_built_checked_and_shipped(full_bundle, name):
    bundle = load_bundle(full_bundle)
    row = next(r for r in bundle.manifest.report if r.name == name)
    fmt = FORMATS[name]
    gate = thresholds(fmt, [resolve_profile(p)[0] for p in PROFILES])
    unchecked = fmt.backend == "tensorrt" and not nvidia_gpu()
    assert row.status == ("unchecked" if unchecked else "ok"), row.reason
    assert row.in_bundle and row.size_bytes and row.size_bytes > 0
    assert row.centred_min is not None and row.centred_min >= min(gate.values())
    assert row.cosine_median is not None and row.cosine_p1 is not None  # raw figures stay in the report
    assert row.fewshot is not None and 0.0 <= row.fewshot <= 1.0
    artifact = bundle.manifest.artifact_named(name)
    assert (artifact.format, artifact.precision) == (fmt.artifact_format, fmt.precision)
    assert artifact.parity["golden_min_centred"] == row.centred_min
    golden = np.load(full_bundle / "golden.npz")
    if unchecked:  # no GPU here: the shipped ONNX must run (the engine test is marked gpu)
        assert row.latency_ms_b1 is None and "unchecked: no NVIDIA GPU" in row.reason
        backend = "onnxruntime"
    else:
        assert row.latency_ms_b1 and row.latency_ms_b1 > 0 and row.throughput_b8 and row.throughput_b8 > 0
        backend = backend_for(artifact.format)
    with load_backend(backend, full_bundle / artifact.file) as b:
        got = b.embed(golden["inputs"])
    center = np.load(full_bundle / "center.npy")
    # The golden inputs are among the images export judged: they agree at least as well.
    assert golden_agreement(golden["embeddings"], got, center) >= row.centred_min - 1e-6


def test_report_and_defaults_are_stored_in_the_manifest(full_bundle):
    manifest = json.loads((full_bundle / "manifest.json").read_text())
    assert [r["name"] for r in manifest["report"]] == list(FORMATS)
    rows = {r["name"]: r for r in manifest["report"]}
    # Measured here: the default is the fastest artifact of the profile's first backend that passed
    # the profile's own threshold.
    for profile, names in [("x86-cpu", ["onnx", "onnx-int8"]), ("intel-nuc", ["openvino-int8", "openvino"])]:
        p = resolve_profile(profile)[0]
        passing = [n for n in names if rows[n]["centred_min"] >= p.min_cosine.for_precision(FORMATS[n].precision)]
        assert manifest["defaults"][profile] == min(passing, key=lambda n: rows[n]["latency_ms_b1"])
    # TensorRT cannot be measured without a GPU: the profile's precision order decides.
    assert manifest["defaults"]["jetson-orin-nano"] == "tensorrt-int8"


def test_a_format_that_fails_parity_is_left_out_unless_kept(checkpoint, tmp_path, monkeypatch):
    import torch

    from edgessl.export.onnx_export import export_onnx
    from edgessl.train.backbones import create_backbone

    def other_weights(ctx):  # a real model, but not the checkpoint's: it must fail parity
        torch.manual_seed(7)
        export_onnx(create_backbone("resnet_tiny"), ctx.workdir / "other.onnx", (16, 16))
        return "other.onnx"

    monkeypatch.setitem(FORMATS, "onnx-other", Format("onnx-other", "onnxruntime", "onnx", "fp32", other_weights))
    # Float-input artifacts (as bundles were before the preprocessing moved into the graph), like other_weights.
    out = export_bundle(checkpoint, tmp_path / "b", formats=["onnx-other"], model_input="float32-nchw")
    row = next(r for r in load_bundle(out).manifest.report if r.name == "onnx-other")
    assert row.status == "failed-parity" and "min centred cosine" in row.reason and not row.in_bundle
    assert not (out / "other.onnx").exists()
    kept = export_bundle(checkpoint, tmp_path / "k", formats=["onnx-other"], keep_failed=True,
                         model_input="float32-nchw")
    assert load_bundle(kept).manifest.artifact_named("onnx-other").file == "other.onnx"


def test_a_format_that_fails_to_export_is_reported(checkpoint, tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("converter exploded")

    monkeypatch.setitem(FORMATS, "onnx-broken", Format("onnx-broken", "onnxruntime", "onnx", "fp16", broken))
    out = export_bundle(checkpoint, tmp_path / "b", formats=["onnx-broken"])
    row = next(r for r in load_bundle(out).manifest.report if r.name == "onnx-broken")
    assert row.status == "failed-export" and "converter exploded" in row.reason


def test_int8_leaves_the_most_sensitive_layers_in_fp32_until_the_target_is_met(checkpoint, images, tmp_path):
    import onnx

    from edgessl.export.bundle_writer import sample_images
    from edgessl.export.onnx_export import export_onnx
    from edgessl.export.parity import device_inputs
    from edgessl.export.quantize_ort import quantize_int8
    from edgessl.train.checkpoint import load_backbone, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    fp32 = export_onnx(load_backbone(ckpt), tmp_path / "m.onnx", (16, 16))
    spec = load_bundle(export_bundle(checkpoint, tmp_path / "b")).manifest.preprocess
    x = device_inputs(sample_images(images, 16, 40), spec)
    easy = quantize_int8(fp32, tmp_path / "easy.onnx", x[:20], x[20:], target_median=0.0)
    assert easy.excluded == () and not easy.weight_layers_only
    strict = quantize_int8(fp32, tmp_path / "strict.onnx", x[:20], x[20:], target_median=1.01, max_excluded=3)
    assert strict.weight_layers_only  # first elementwise ops go back to fp32, then the worst layers
    assert len(strict.excluded) == 3  # unreachable target: stops at the limit
    quantized_convs = {n.input[0] for n in onnx.load(str(tmp_path / "strict.onnx")).graph.node
                       if n.op_type == "DequantizeLinear"}
    assert quantized_convs and strict.cosine_median >= easy.cosine_median - 1e-3


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="openvino-int8"):
        parse_formats("onnx,tflite")
    assert parse_formats("onnx-int8") == ["onnx", "onnx-int8"]


def test_formats_follow_the_profile_preferences():
    assert formats_module.formats_for_profile(["tensorrt", "onnxruntime"], ["int8", "fp16"]) == \
        ["tensorrt-int8", "tensorrt-fp16", "onnx-int8", "onnx-fp16"]
