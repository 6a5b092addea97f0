"""The external-data references of an ONNX file, read from its protobuf bytes directly.

The device checks them before ONNX Runtime opens anything (bundle.manifest.check_external_data).
Doing it with the `onnx` package would import it (and its protobuf runtime) into the daemon and
parse the whole model a second time: about 13 MB of resident memory for a yes/no answer. This
walks only the fields that can hold tensors, skipping weight bytes without copying them:

    ModelProto.graph(7), .functions(25) -> FunctionProto.node(7)
    GraphProto.node(1), .initializer(5), .sparse_initializer(15)
    NodeProto.attribute(5) -> AttributeProto.t(5), .g(6), .tensors(10), .graphs(11),
                              .sparse_tensor(22), .sparse_tensors(23)
    SparseTensorProto.values(1), .indices(2)
    TensorProto.name(8), .external_data(13) -> StringStringEntryProto key(1)/value(2),
                .data_location(14): 1 = EXTERNAL
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

EXTERNAL = 1


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    location: str


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or oversized varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: ints for varints, views for length-delimited
    fields; fixed-width fields are skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise WireError("a field runs past the end of its message")
            yield number, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise WireError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise WireError("a fixed-width field runs past the end of its message")


def _children(buf: memoryview, wanted: set[int]) -> Iterator[tuple[int, memoryview]]:
    for number, value in _fields(buf):
        if number in wanted and isinstance(value, memoryview):
            yield number, value


def _tensor(buf: memoryview) -> ExternalTensor | None:
    name, location, external = "", "", False
    for number, value in _fields(buf):
        if number == 8 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == 14 and value == EXTERNAL:
            external = True
        elif number == 13 and isinstance(value, memoryview):
            entry = dict(_children(value, {1, 2}))
            if bytes(entry.get(1, b"")) == b"location":
                location = bytes(entry.get(2, b"")).decode("utf-8", "replace")
    return ExternalTensor(name, location) if external else None


def _sparse(buf: memoryview) -> Iterator[ExternalTensor]:
    for _, tensor in _children(buf, {1, 2}):
        if (found := _tensor(tensor)) is not None:
            yield found


def _node(buf: memoryview) -> Iterator[ExternalTensor]:
    for _, attribute in _children(buf, {5}):
        for number, value in _children(attribute, {5, 6, 10, 11, 22, 23}):
            if number in (5, 10):
                if (found := _tensor(value)) is not None:
                    yield found
            elif number in (6, 11):
                yield from _graph(value)
            else:
                yield from _sparse(value)


def _graph(buf: memoryview) -> Iterator[ExternalTensor]:
    for number, value in _children(buf, {1, 5, 15}):
        if number == 1:
            yield from _node(value)
        elif number == 5:
            if (found := _tensor(value)) is not None:
                yield found
        else:
            yield from _sparse(value)


def external_tensors(model: bytes | memoryview) -> list[ExternalTensor]:
    """Every tensor of the serialized ModelProto `model` whose data lies in another file."""
    found: list[ExternalTensor] = []
    graphs = 0
    for number, value in _children(memoryview(model), {7, 25}):
        if number == 7:
            graphs += 1
            found += _graph(value)
        else:
            for _, node in _children(value, {7}):
                found += _node(node)
    if graphs != 1:
        raise WireError(f"a model has one graph, this one has {graphs}")
    return found
