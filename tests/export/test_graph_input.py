"""Preprocessing in the graph: artifacts that take uint8 BGR crops compute what the float-input
artifacts of the same checkpoint compute, through the device's own path."""

import numpy as np
import onnx
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.inference.backends import backend_unavailable, load_backend
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.inference.parity import centred_cosine
from edgessl.edge_runtime.inference.preprocess import read_image
from edgessl.errors import BackendError
from edgessl.export.bundle_writer import export_bundle
from edgessl.export.formats import FORMATS
from edgessl.train.data import list_images

# TensorRT formats ship ONNX files; without a GPU their ONNX runs on ONNX Runtime, as export checks it.
RUNS_HERE = {name: ("onnxruntime" if f.backend == "tensorrt" and backend_unavailable("tensorrt") else f.backend)
             for name, f in FORMATS.items()}


@pytest.fixture(scope="module")
def bundles(checkpoint, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("graph-input")
    return {kind: load_bundle(export_bundle(checkpoint, root / kind, formats=list(FORMATS), calib=images,
                                            calib_size=40, model_input=kind, threads=1))
            for kind in ("uint8-nhwc-bgr", "float32-nchw")}


@pytest.fixture(scope="module")
def frames(images):
    """Real BGR images of their own size (24x24; the model takes 16x16), as a camera crop would be,
    and crops of other shapes, so the device's resize runs too."""
    files = list_images(images)[:24]
    out = [read_image(f) for f in files]
    return out + [np.ascontiguousarray(img[2:22, 0:24]) for img in out[:6]] + [cv_tall(img) for img in out[6:10]]


def cv_tall(img):
    return np.ascontiguousarray(np.concatenate([img, img[::-1]], axis=0))  # 48x24


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_an_artifact_with_preprocessing_in_the_graph_embeds_like_the_float_input_one(bundles, frames, name):
    new, old = bundles["uint8-nhwc-bgr"], bundles["float32-nchw"]
    a_new, a_old = new.manifest.artifact_named(name), old.manifest.artifact_named(name)
    assert (a_new.input, a_old.input) == ("uint8-nhwc-bgr", "float32-nchw")  # the manifest says which
    backend = RUNS_HERE[name]
    with FeatureExtractor.load(new, backend, a_new, threads=1) as ex_new, \
            FeatureExtractor.load(old, backend, a_old, threads=1) as ex_old:
        got, expected = ex_new.embed(frames, batch_size=8), ex_old.embed(frames, batch_size=8)
    center = np.load(new.path(new.manifest.center))
    cos = centred_cosine(expected, got, center)
    assert cos.min() >= 0.9999, f"{name}: min centred cosine {cos.min():.6f}"


def test_the_preprocessing_is_folded_into_the_first_convolution_of_the_fp32_model(bundles):
    bundle = bundles["uint8-nhwc-bgr"]
    graph = onnx.load(str(bundle.path("model.onnx"))).graph
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [16, 16, 3]
    ops = [n.op_type for n in graph.node[:4]]
    assert ops == ["Cast", "Transpose", "Sub", "Conv"]  # channel swap and scale are in the conv's weights
    # Golden inputs are what the artifacts take: uint8 crops at the input size.
    golden = np.load(bundle.path("golden.npz"))
    assert golden["inputs"].dtype == np.uint8 and golden["inputs"].shape[1:] == (16, 16, 3)


def test_a_backend_says_what_its_model_takes_and_refuses_the_other(bundles):
    bundle = bundles["uint8-nhwc-bgr"]
    golden = np.load(bundle.path("golden.npz"))
    for name in ("onnx", "openvino"):
        artifact = bundle.manifest.artifact_named(name)
        with load_backend(RUNS_HERE[name], bundle.path(artifact.file)) as b:
            assert b.input_kind == "uint8-nhwc-bgr"
            assert b.embed(golden["inputs"]).shape == golden["embeddings"].shape
            with pytest.raises(BackendError, match="uint8 crops of shape"):
                b.embed(golden["inputs"].astype(np.float32))


def test_a_manifest_that_misstates_the_input_is_refused(bundles):
    bundle = bundles["uint8-nhwc-bgr"]
    artifact = bundle.manifest.artifact_named("onnx").model_copy(update={"input": "float32-nchw"})
    with pytest.raises(Exception, match="the manifest says the model takes float32-nchw"):
        FeatureExtractor.load(bundle, "onnxruntime", artifact)
