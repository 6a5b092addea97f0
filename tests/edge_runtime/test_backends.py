"""Every registered backend runs the tiny bundle's model and agrees with its golden file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgessl.edge_runtime.inference.backends import (
    BACKENDS,
    Backend,
    backend_class,
    backend_unavailable,
    load_backend,
)
from edgessl.errors import BackendError


def _require(name: str) -> None:
    why = backend_unavailable(name)
    if why is not None:
        pytest.skip(f"backend {name}: {why}")


def _model_for(name: str, bundle, tmp_path):
    """The tiny model in the artifact format the backend runs."""
    if name == "openvino":
        ov = pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")
        xml = tmp_path / "model.xml"
        ov.save_model(ov.convert_model(str(bundle / "model.onnx")), str(xml), compress_to_fp16=False)
        return xml
    return bundle / "model.onnx"  # onnxruntime; tensorrt builds its engine from it


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.gpu) if n == "tensorrt" else n
                                  for n in sorted(BACKENDS)])
def test_backend_matches_golden_embeddings(name, tiny_bundle, tmp_path):
    _require(name)
    golden = np.load(tiny_bundle / "golden.npz")
    options = {"cache_dir": tmp_path} if name == "tensorrt" else {}
    tolerance = dict(rtol=1e-3, atol=1e-3) if name == "tensorrt" else dict(rtol=1e-5, atol=1e-6)
    with load_backend(name, _model_for(name, tiny_bundle, tmp_path), threads=1, **options) as backend:
        assert isinstance(backend, Backend)
        out = backend.embed(golden["inputs"])
        assert out.dtype == np.float32 and out.shape == golden["embeddings"].shape
        np.testing.assert_allclose(out, golden["embeddings"], **tolerance)
        np.testing.assert_allclose(backend.embed(golden["inputs"][:1]), out[:1], **tolerance)
        with pytest.raises(BackendError, match=r"shape \(N, 3, H, W\)"):
            backend.embed(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(BackendError, match="closed"):
        backend.embed(golden["inputs"])


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_declares_itself(name):
    """A backend is one file declaring its name, artifact format, packages and typed options; listing
    the registry imports no runtime (so a device needs only the runtime it uses)."""
    code = (f"import sys; from edgessl.edge_runtime.inference.backends import backend_class; "
            f"c = backend_class({name!r}); print(c.name, c.artifact_format, *c.requires); "
            f"print(*(m for m in c.requires if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    cls = backend_class(name)
    assert out[0].split() == [name, cls.artifact_format, *cls.requires] and cls.requires
    assert out[1:] in ([], [""]), f"listing {name} imported its runtime: {out[1:]}"
    assert cls.Options.model_validate({}).type == name  # the discriminator
    with pytest.raises(BackendError, match=f"options of backend '{name}'.*valid options: "):
        load_backend(name, "model.onnx", no_such_option=1)


def test_unknown_backend_lists_valid_names(tiny_bundle):
    with pytest.raises(BackendError, match="unknown backend 'tflite'; valid backends: onnxruntime") as info:
        load_backend("tflite", tiny_bundle / "model.onnx")
    assert all(name in str(info.value) for name in BACKENDS)


def test_onnxruntime_options_are_checked(tiny_bundle, tmp_path):
    with pytest.raises(BackendError, match="NoSuchExecutionProvider.*available here: .*CPUExecutionProvider"):
        load_backend("onnxruntime", tiny_bundle / "model.onnx", providers=["NoSuchExecutionProvider"])
    with pytest.raises(BackendError, match="threads must be a positive number"):
        load_backend("onnxruntime", tiny_bundle / "model.onnx", threads=0)
    with pytest.raises(BackendError, match="nothing.onnx: model file not found"):
        load_backend("onnxruntime", tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="junk.onnx: ONNX Runtime cannot load the model"):
        load_backend("onnxruntime", junk)
