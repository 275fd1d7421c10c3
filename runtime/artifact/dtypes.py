"""Every tensor dtype the project names, once: its size and what numpy, ONNX, TensorRT and Triton call it.

Artifacts, manifests and the CLI spell dtypes by name ("float32", "bfloat16", ...). numpy has no
bfloat16: numpy-side code carries bfloat16 tensors as their raw 16-bit patterns (uint16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # torch's and the manifest's name
    bytes: int
    numpy: type  # bfloat16: uint16 (raw bits)
    onnx: int  # onnx.TensorProto.DataType
    tensorrt: str  # nvinfer1::DataType member (tensorrt.DataType.<name>)
    triton: str  # Triton's TYPE_<name> / wire datatype


DTYPES = {
    d.name: d
    for d in (
        DType("float32", 4, np.float32, 1, "FLOAT", "FP32"),
        DType("float16", 2, np.float16, 10, "HALF", "FP16"),
        DType("bfloat16", 2, np.uint16, 16, "BF16", "BF16"),
        DType("float64", 8, np.float64, 11, "", "FP64"),
        DType("int64", 8, np.int64, 7, "INT64", "INT64"),
        DType("int32", 4, np.int32, 6, "INT32", "INT32"),
        DType("int16", 2, np.int16, 5, "", "INT16"),
        DType("int8", 1, np.int8, 3, "INT8", "INT8"),
        DType("uint8", 1, np.uint8, 2, "UINT8", "UINT8"),
        DType("bool", 1, np.bool_, 9, "BOOL", "BOOL"),
    )
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # what a model computes in


def dtype_bytes(name: str) -> int:
    return DTYPES[name].bytes


def numpy_dtype(name: str) -> type:
    """numpy type of a dtype name (bfloat16 as raw uint16)."""
    return DTYPES[name].numpy


def from_onnx(code: int) -> DType:
    return next(d for d in DTYPES.values() if d.onnx == code)


def from_tensorrt(member) -> DType:
    """The DType of a tensorrt.DataType member (or its name)."""
    name = str(member).rsplit(".", 1)[-1].upper()
    return next(d for d in DTYPES.values() if d.tensorrt == name)
