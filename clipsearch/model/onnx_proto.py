"""The few ONNX protobuf messages vit_graph.py writes, encoded by hand: no `onnx` import.

Importing onnx costs 1.2-1.8 s on this machine (its ml_dtypes extension alone), most of what
building the graph costs otherwise, and the first `index` of a model waits for it. A model file is
protobuf's wire format (varints and length-prefixed fields) of onnx.proto's ModelProto; these
functions write exactly the fields used, with onnx.proto's field numbers, and
tests/test_vit_graph.py reads the result back with onnx itself and runs its checker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

FLOAT, INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType
_EXTERNAL = 1  # TensorProto.DataLocation


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s as two's complement, ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def tensor(name: str, shape: Iterable[int], data_type: int, raw: bytes | None = None,
           external: tuple[str, int, int] | None = None) -> bytes:
    """A TensorProto: its bytes inline (`raw`) or in a file beside the graph (location, offset, length)."""
    out = b"".join(_int(1, d) for d in shape) + _int(2, data_type) + _bytes(8, name)
    if raw is not None:
        out += _bytes(9, raw)
    if external is not None:
        location, offset, length = external
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            out += _bytes(13, _bytes(1, key) + _bytes(2, value))
        out += _int(14, _EXTERNAL)
    return out


def array(name: str, arr: np.ndarray) -> bytes:
    """A small float32 or int64 array inside the graph."""
    kind = INT64 if arr.dtype == np.int64 else FLOAT
    return tensor(name, arr.shape, kind, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())


def _attribute(name: str, value: int | float | list[int]) -> bytes:
    if isinstance(value, list):
        return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
    if isinstance(value, float):
        return _bytes(1, name) + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    return _bytes(1, name) + _int(3, int(value)) + _int(20, _ATTR_INT)


def node(op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, int | float | list[int]]) -> bytes:
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(3, outputs[0])
            + _bytes(4, op_type) + b"".join(_bytes(5, _attribute(k, v)) for k, v in attrs.items()))


def value_info(name: str, dims: list[int | str]) -> bytes:
    """A float32 tensor's name and shape; a str dimension is symbolic (the batch)."""
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, FLOAT) + _bytes(2, shape)))


def model(nodes: list[bytes], initializers: list[bytes], inputs: list[bytes], outputs: list[bytes], name: str,
          opset: int, ir_version: int, producer: str) -> bytes:
    """A ModelProto of one graph in the default domain."""
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, name) + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs))
    return (_int(1, ir_version) + _bytes(2, producer) + _bytes(7, graph)
            + _bytes(8, _bytes(1, "") + _int(2, opset)))
