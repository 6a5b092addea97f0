"""The device reads an ONNX file's external-data references from its protobuf bytes (no `onnx`
import in the daemon): it must find every one that the onnx package finds, wherever it sits."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, convert_model_to_external_data

from edgessl.edge_runtime.bundle.onnx_wire import WireError, external_tensors


def model_with_tensors_everywhere() -> onnx.ModelProto:
    """Initializers, a Constant node's attribute, and both in an If's subgraph."""
    big = lambda name, seed: numpy_helper.from_array(  # noqa: E731
        np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32), name)
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["t_out"], value=big("then_const", 3))], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [64, 64])])
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [64, 64])])
    nodes = [helper.make_node("Constant", [], ["c"], value=big("node_const", 1)),
             helper.make_node("Add", ["x", "c"], ["y"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Add", ["y", "z"], ["out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64]),
                     helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [64, 64])],
        [big("w", 2), numpy_helper.from_array(np.ones(3, np.float32), "small")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_external_tensor_is_found_as_onnx_finds_it(tmp_path):
    model = model_with_tensors_everywhere()
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=1024,
                                   convert_attribute=True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    expected = sorted((t.name, next(e.value for e in t.external_data if e.key == "location"))
                      for t in _get_all_tensors(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))
                      if t.data_location == TensorProto.EXTERNAL)
    got = sorted((t.name, t.location) for t in external_tensors((tmp_path / "m.onnx").read_bytes()))
    assert len(expected) == 3 and got == expected  # w, node_const, then_const; "small" stays inline


def test_a_model_without_external_data_has_none():
    assert external_tensors(model_with_tensors_everywhere().SerializeToString()) == []


@pytest.mark.parametrize("data", [b"", b"\x08", b"not an onnx file at all", b"\x3a\xff\xff\xff\x0f"])
def test_bytes_that_are_not_a_model_are_refused(data):
    with pytest.raises(WireError):
        external_tensors(data)


def test_a_truncated_model_is_refused():
    data = model_with_tensors_everywhere().SerializeToString()
    with pytest.raises(WireError):
        external_tensors(data[: len(data) // 2])
