"""load_bundle refuses a bundle whose files differ from the manifest, and names the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import file_entry, load_bundle
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import BundleError

FILES = ["model.onnx", "center.npy", "golden.npz"]


def flip(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_one_flipped_byte_fails_naming_the_file(make_bundle, name, where):
    root = make_bundle()
    load_bundle(root)  # intact: loads
    path = root / name
    flip(path, round(where * (path.stat().st_size - 1)))
    with pytest.raises(BundleError, match=rf"{re.escape(name)}: sha256 does not match"):
        load_bundle(root)


def test_every_byte_of_the_center_is_checked(make_bundle):
    root = make_bundle()
    path = root / "center.npy"
    original = path.read_bytes()
    for i in range(len(original)):
        flip(path, i)
        with pytest.raises(BundleError, match="center.npy"):
            load_bundle(root)
        path.write_bytes(original)
    load_bundle(root)


def test_changed_size_is_reported(make_bundle):
    root = make_bundle()
    with open(root / "golden.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"golden.npz: size \d+ does not match the manifest"):
        load_bundle(root)


@pytest.mark.parametrize("name", FILES)
def test_missing_file_is_named(make_bundle, name):
    root = make_bundle()
    (root / name).unlink()
    with pytest.raises(BundleError, match=rf"{re.escape(name)}: file listed in the manifest is missing"):
        load_bundle(root)


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m["preprocess"].update(resize="squash"), "resize"),
        (lambda m: m.update(center="../center.npy"), r"\.\."),
        (lambda m: m.pop("embedding_dim"), "embedding_dim"),
    ],
    ids=["extra-field", "bad-resize", "path-outside", "missing-field"],
)
def test_invalid_manifest_names_the_problem(make_bundle, edit, expected):
    root = make_bundle()
    _edit_manifest(root, edit)
    with pytest.raises(BundleError, match="invalid manifest") as info:
        load_bundle(root)
    assert re.search(expected, str(info.value))


def test_manifest_that_is_not_json(make_bundle):
    root = make_bundle()
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: invalid manifest"):
        load_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="directory not found"):
        load_bundle(tmp_path / "nowhere")


def test_embedding_dim_must_match_the_model(make_bundle):
    root = make_bundle()
    _edit_manifest(root, lambda m: m.update(embedding_dim=8))
    with pytest.raises(BundleError, match="embedding_dim"):
        FeatureExtractor.from_bundle(load_bundle(root))


def test_model_output_dim_must_match_the_manifest(make_bundle):
    # A centre of the manifest's (wrong) size, so that only the model's output disagrees.
    root = make_bundle()
    np.save(root / "center.npy", np.zeros(8, np.float32))

    def edit(manifest: dict) -> None:
        manifest["embedding_dim"] = 8
        manifest["files"]["center.npy"] = file_entry(root / "center.npy").model_dump()

    _edit_manifest(root, edit)
    with pytest.raises(BundleError, match=r"model outputs embeddings of shape \(16,\); the manifest says embedding_dim 8"):
        FeatureExtractor.from_bundle(load_bundle(root))


def test_extractor_reads_the_bundle(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    with FeatureExtractor.from_bundle(bundle, threads=1) as extractor:
        assert extractor.embedding_dim == 16
        assert extractor.fingerprint == bundle.manifest.files["model.onnx"].sha256
        np.testing.assert_array_equal(extractor.center, np.load(tiny_bundle / "center.npy"))
        golden = np.load(tiny_bundle / "golden.npz")
        np.testing.assert_allclose(extractor.backend.embed(golden["inputs"]), golden["embeddings"], rtol=1e-5, atol=1e-6)
        images = [np.full((20, 30, 3), v, np.uint8) for v in (0, 100, 200)]
        emb = extractor.embed(images, batch_size=2)
        assert emb.shape == (3, 16) and emb.dtype == np.float32
        np.testing.assert_allclose(emb, extractor.embed(images, batch_size=32), rtol=1e-6)
        assert not np.allclose(emb[0], emb[2])
        assert extractor.embed([]).shape == (0, 16)


def test_missing_artifact_lists_what_the_bundle_has(tiny_bundle):
    with pytest.raises(BundleError, match="no onnx/int8 artifact; it has: onnx/fp32"):
        FeatureExtractor.from_bundle(load_bundle(tiny_bundle), precision="int8")
