import json

import numpy as np
import pytest
import torch

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import EdgesslError
from edgessl.export import bundle_writer
from edgessl.export.bundle_writer import export_bundle


def test_export_writes_a_bundle_the_device_loads(checkpoint, tmp_path):
    out = export_bundle(checkpoint, tmp_path / "bundle", name="shapes", version=3)
    bundle = load_bundle(out)
    m = bundle.manifest
    assert (m.model.name, m.model.version, m.embedding_dim) == ("shapes", 3, 256)
    assert m.preprocess.input_size == (16, 16)
    assert set(m.files) == {"model.onnx", "center.npy", "golden.npz"}  # no --calib: no cohort
    assert m.cohort is None
    assert m.artifacts[0].parity["cosine_min"] >= 0.9999
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size

    # The golden embeddings are what the device's backend computes from the golden inputs.
    golden = np.load(out / "golden.npz")
    with FeatureExtractor.from_bundle(bundle) as ex:
        got = ex.backend.embed(golden["inputs"])
        assert got.shape == golden["embeddings"].shape
        assert np.allclose(got, golden["embeddings"], atol=1e-4)
        # Dynamic batch axis: any batch size runs.
        assert ex.backend.embed(np.repeat(golden["inputs"][:1], 5, axis=0)).shape == (5, 256)



def test_export_writes_the_calibration_images_embeddings_as_the_cohort(checkpoint, images, tmp_path):
    from edgessl.export.bundle_writer import device_inputs, sample_images
    from edgessl.export.parity import torch_embeddings
    from edgessl.train.checkpoint import load_backbone, load_checkpoint

    bundle = load_bundle(export_bundle(checkpoint, tmp_path / "b", calib=images, calib_size=30))
    assert bundle.manifest.cohort == "cohort.npy" and "cohort.npy" in bundle.manifest.files
    cohort = np.load(bundle.path("cohort.npy"))
    # What the fp32 model makes of the calibration images, as the device preprocesses them.
    ckpt = load_checkpoint(checkpoint)
    inputs = device_inputs(sample_images(images, 16, 30), bundle.manifest.preprocess)
    np.testing.assert_allclose(cohort, torch_embeddings(load_backbone(ckpt), inputs), atol=1e-5)
    with FeatureExtractor.from_bundle(bundle) as ex:
        assert ex.cohort is not None and ex.cohort.shape == (30, 256)
    without = load_bundle(export_bundle(checkpoint, tmp_path / "n", calib=images, calib_size=30, cohort=False))
    assert without.manifest.cohort is None and "cohort.npy" not in without.manifest.files

def test_export_refuses_a_model_that_disagrees_with_torch(checkpoint, tmp_path, monkeypatch):
    real_export = bundle_writer.export_onnx

    def export_other_weights(model, path, input_size):  # a graph that is not the checkpoint's model
        torch.manual_seed(123)
        other = type(model)((32, 64, 128, 256), (1, 1, 1, 1), stem_width=32, small_stem=True)
        return real_export(other, path, input_size)

    monkeypatch.setattr(bundle_writer, "export_onnx", export_other_weights)
    with pytest.raises(EdgesslError, match="disagrees with torch"):
        export_bundle(checkpoint, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad.*"))  # no half-written temporary folder left behind


def test_export_will_not_overwrite_without_force(checkpoint, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(EdgesslError, match="--force"):
        export_bundle(checkpoint, tmp_path / "b")
    assert (tmp_path / "b" / "keep.txt").exists()
