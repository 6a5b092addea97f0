"""The preprocessing moved into the graph: an artifact takes crops as the camera gives them,
uint8 (N, H, W, 3) BGR at the model's input size.

Every format is built and quantized from the float-input fp32 model as before; then its input
is swapped (`put_preprocessing_in_graph`), so an INT8 artifact is the very model that was
calibrated, behind an exact front end:

    ONNX:  uint8 NHWC BGR -> Cast -> Transpose (NCHW) -> Sub 255*mean -> first convolution with
           the channel swap and 1/(255*std) folded into its weights
    IR:    OpenVINO's PrePostProcessor (u8 NHWC BGR tensor; convert, colour, mean, scale)

Folding the scale and the channel order into the convolution is exact: a convolution is
linear in each input channel, and the zeros it pads the shifted input with are the zeros of
the normalised input. The mean stays a subtraction (folding it into the bias would not be
exact at padded borders). Where the input feeds something else (a QuantizeLinear in an INT8
graph, a Cast in an fp16 one), the swap and the scale stay as a Gather and a Mul in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgessl.edge_runtime.bundle.manifest import PreprocessSpec

PREFIX = "preprocess/"  # names of the preprocessing's nodes and tensors (unique next to a QDQ graph's)
NORMALISED, CENTRED = PREFIX + "normalised", PREFIX + "centred"


def put_preprocessing_in_graph(artifact: Path, spec: PreprocessSpec) -> None:
    """Give the artifact at `artifact` (.onnx, or an OpenVINO .xml) a uint8 NHWC BGR input, in
    place; one that takes uint8 already is left as it is (formats may share a file)."""
    if artifact.suffix == ".xml":
        _ir_with_preprocessing(artifact, spec)
    elif onnx.load(str(artifact), load_external_data=False).graph.input[0].type.tensor_type.elem_type \
            != TensorProto.UINT8:
        fold_preprocessing(artifact, artifact, spec)


def _ir_with_preprocessing(xml: Path, spec: PreprocessSpec) -> None:
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    model = ov.Core().read_model(str(xml))
    if model.input(0).get_element_type() == ov.Type.u8:
        return
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    steps.convert_color(ColorFormat.RGB if spec.channel_order == "RGB" else ColorFormat.BGR)
    steps.mean([255.0 * m for m in spec.mean]).scale([255.0 * s for s in spec.std])
    model = ppp.build()
    # Written next to the old files and moved over them: a reader never sees half an IR.
    tmp = xml.with_name(f".{xml.stem}.preprocessed.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # constants keep the precision they had
    del model
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)


def fold_preprocessing(src: Path, dst: Path, spec: PreprocessSpec) -> Path:
    """Write `dst`: the float NCHW model `src` behind a uint8 NHWC BGR input of the same name."""
    model = onnx.load(str(src))
    graph = model.graph
    if len(graph.input) != 1:
        raise ValueError(f"{src}: expected one graph input, found {[i.name for i in graph.input]}")
    old = graph.input[0]
    name = old.name
    batch = old.type.tensor_type.shape.dim[0]
    # order[k]: the camera (BGR) channel that model channel k reads; it is its own inverse.
    order = [2, 1, 0] if spec.channel_order == "RGB" else [0, 1, 2]
    mean = np.asarray(spec.mean, np.float64)
    scale = 1.0 / (255.0 * np.asarray(spec.std, np.float64))

    for node in graph.node:  # the rest of the graph reads the normalised tensor under a new name
        node.input[:] = [NORMALISED if i == name else i for i in node.input]
    for info in list(graph.value_info):
        if info.name == name:
            graph.value_info.remove(info)
    consumers = [n for n in graph.node if NORMALISED in n.input]
    initializers = {t.name: t for t in graph.initializer}
    folded = all(_foldable(n, initializers) for n in consumers) and bool(consumers)

    nodes = [
        helper.make_node("Cast", [name], [PREFIX + "float"], PREFIX + "cast", to=TensorProto.FLOAT),
        helper.make_node("Transpose", [PREFIX + "float"], [PREFIX + "nchw"], PREFIX + "nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Sub", [PREFIX + "nchw", PREFIX + "mean_value"], [CENTRED], PREFIX + "mean"),
    ]
    constants = [numpy_helper.from_array((255.0 * mean[order]).astype(np.float32).reshape(1, 3, 1, 1), PREFIX + "mean_value")]
    if folded:
        for conv in consumers:
            weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
            folded_weight = weight[:, order] * scale[order].reshape(1, 3, 1, 1)
            new_name = f"{PREFIX}{conv.input[1]}"
            constants.append(numpy_helper.from_array(folded_weight.astype(np.float32), new_name))
            conv.input[0], conv.input[1] = CENTRED, new_name
        used = {i for n in graph.node for i in n.input}
        for tensor in list(graph.initializer):
            if tensor.name not in used:
                graph.initializer.remove(tensor)
    else:
        nodes += [
            helper.make_node("Gather", [CENTRED, PREFIX + "order_index"], [PREFIX + "ordered"], PREFIX + "order", axis=1),
            helper.make_node("Mul", [PREFIX + "ordered", PREFIX + "scale_value"], [NORMALISED], PREFIX + "scale"),
        ]
        constants += [numpy_helper.from_array(np.asarray(order, np.int64), PREFIX + "order_index"),
                      numpy_helper.from_array(scale.astype(np.float32).reshape(1, 3, 1, 1), PREFIX + "scale_value")]
    graph.initializer.extend(constants)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)

    h, w = spec.input_size
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [None, h, w, 3])
    new_input.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


def _foldable(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    """A plain convolution of the input (3 input channels, one group) with a stored weight."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[0] != NORMALISED or node.input[1] not in initializers:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    dims = list(initializers[node.input[1]].dims)
    return group == 1 and len(dims) == 4 and dims[1] == 3 and NORMALISED not in node.input[1:]
