"""Hostile files: ONNX external data that points outside the bundle, and pickled checkpoints."""

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgessl.edge_runtime.bundle.manifest import file_entry, load_bundle, read_manifest, write_manifest
from edgessl.edge_runtime.inference.backends import load_backend
from edgessl.errors import EdgesslError


def model_with_external_weight(folder: Path, location: str) -> Path:
    """A valid graph whose weight claims to live at `location` (external data)."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], vals=np.zeros(12, np.float32).tobytes(), raw=True)
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "W"], ["embedding"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", 4])], initializer=[weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture
def outside(tmp_path):
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(os.urandom(48))
    return secret


def opened_paths(fn):
    """Every path Python opened while `fn` ran (audit hook), plus what fn raised."""
    seen: list[str] = []
    active = [True]

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            seen.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)
    try:
        fn()
    except EdgesslError as exc:
        return seen, exc
    finally:
        active[0] = False
    return seen, None


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_bundle_is_refused_before_it_is_opened(make_bundle, tmp_path, outside, kind):
    bundle = make_bundle("bundle")
    if kind == "dotdot":
        location = "../outside/secret.bin"
    elif kind == "absolute":
        location = str(outside)
    else:
        (bundle / "weights.bin").symlink_to(outside)
        location = "weights.bin"
    model = model_with_external_weight(bundle, location)
    # Re-list the model (and the link, if any) in the manifest so only the external data is wrong.
    manifest = read_manifest(bundle)
    files = dict(manifest.files)
    files["model.onnx"] = file_entry(model)
    write_manifest(bundle, manifest.model_copy(update={"files": files}))

    seen, error = opened_paths(lambda: load_bundle(bundle))
    assert error is not None and "external data" in str(error)
    assert not any(Path(p).resolve() == outside.resolve() for p in seen)

    seen, error = opened_paths(lambda: load_backend("onnxruntime", model))
    assert error is not None and "external data" in str(error)
    assert not any(Path(p).resolve() == outside.resolve() for p in seen)


def test_external_data_inside_the_bundle_but_unlisted_is_refused(make_bundle, tmp_path):
    bundle = make_bundle("bundle")
    (bundle / "weights.bin").write_bytes(bytes(48))
    model = model_with_external_weight(bundle, "weights.bin")
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.model_copy(update={"files": {**manifest.files, "model.onnx": file_entry(model)}}))
    with pytest.raises(EdgesslError, match="not listed"):
        load_bundle(bundle)
    # Listed with its checksum, the same model is accepted.
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.model_copy(
        update={"files": {**manifest.files, "weights.bin": file_entry(bundle / "weights.bin")}}))
    load_bundle(bundle)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_with_weights_only(tmp_path):
    from edgessl.train.checkpoint import FORMAT, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "config": Payload()}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_checkpoint(path)


def test_every_torch_load_in_the_code_uses_weights_only():
    root = Path(__file__).resolve().parents[2]
    for folder in ("edgessl", "train", "export", "edge_runtime", "devices", "bench"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            for i, line in enumerate(text.splitlines(), 1):
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f"{path}:{i}: torch.load without weights_only=True"
