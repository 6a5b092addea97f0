"""TensorRT: engines built from the bundle's ONNX files on an NVIDIA GPU (skipped elsewhere, saying why)."""

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.inference.backends import load_backend
from edgessl.export.bundle_writer import export_bundle

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt_bundle(checkpoint, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "bundle"
    return export_bundle(checkpoint, out, formats=["tensorrt-fp16", "tensorrt-int8"], calib=images, calib_size=40)


@pytest.mark.parametrize("name,min_median", [("tensorrt-fp16", 0.999), ("tensorrt-int8", 0.99)])
def test_engine_matches_the_golden_embeddings(trt_bundle, name, min_median):
    bundle = load_bundle(trt_bundle)
    row = next(r for r in bundle.manifest.report if r.name == name)
    assert row.status == "ok" and row.latency_ms_b1 is not None, row.reason  # measured on the GPU at export
    artifact = bundle.manifest.artifact_named(name)
    golden = np.load(trt_bundle / "golden.npz")
    with load_backend("tensorrt", trt_bundle / artifact.file, max_batch=8) as b:
        got = b.embed(golden["inputs"])
        assert b.embed(golden["inputs"][:3]).shape == (3, golden["embeddings"].shape[1])  # dynamic batch
    ref = golden["embeddings"]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.median(cos) >= min_median
    engines = list(trt_bundle.glob("*.engine"))
    assert engines, "the engine is cached next to the ONNX file"


def test_cached_engine_is_reused(trt_bundle):
    artifact = load_bundle(trt_bundle).manifest.artifact_named("tensorrt-fp16")
    with load_backend("tensorrt", trt_bundle / artifact.file):
        pass
    before = {p: p.stat().st_mtime_ns for p in trt_bundle.glob("*.engine")}
    with load_backend("tensorrt", trt_bundle / artifact.file):
        pass
    assert {p: p.stat().st_mtime_ns for p in trt_bundle.glob("*.engine")} == before
