"""Signatures as plain data: what a request is validated against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# DataType enum value → numpy dtype used to feed or read that type. String
# tensors travel as object arrays of bytes; half as float16; bfloat16 is
# fed through ml_dtypes (TensorFlow's own numpy extension type).
_NP_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    types_pb2.DT_STRING: np.dtype(object),
}
try:  # bfloat16 comes with TensorFlow's ml_dtypes dependency.
    import ml_dtypes

    _NP_DTYPES[types_pb2.DT_BFLOAT16] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    pass


# numpy dtype → DataType enum value, for messages that name a request's types.
_TF_DTYPES: dict[np.dtype, int] = {np_dtype: dtype for dtype, np_dtype in _NP_DTYPES.items()}


def numpy_dtype(dtype: int) -> np.dtype:
    try:
        return _NP_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"unsupported tensor type {dtype_name(dtype)}") from None


def dtype_name(dtype: int) -> str:
    """DT_FLOAT → 'DT_FLOAT' (the spelling TF Serving's JSON metadata uses)."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DT_{dtype}"


def short_dtype_name(dtype: int) -> str:
    """DT_FLOAT → 'float', as TensorFlow spells types in error messages."""
    return dtype_name(dtype).removeprefix("DT_").lower()


def tf_dtype(dtype: np.dtype) -> int | None:
    """float32 → DT_FLOAT; None for a numpy type TensorFlow has no DataType for."""
    return _TF_DTYPES.get(dtype)


def numpy_type_name(array: np.ndarray) -> str:
    """An array's type as TensorFlow's messages spell it ('float', 'string')."""
    dtype = _TF_DTYPES.get(array.dtype)
    return short_dtype_name(dtype) if dtype is not None else str(array.dtype)


# TensorFlow feeds a numpy array without copying it only when its data is
# aligned to this many bytes (Eigen's largest alignment); numpy's own large
# allocations are not, so TensorFlow copies them into a tensor of its own.
FEED_ALIGNMENT = 64


def feedable_empty(count: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialized 1-D array TensorFlow can feed without a copy of its own.

    Measured: a large input fed from a plain numpy array costs its size once
    more inside the session (and oneDNN's allocator keeps that memory).
    """
    if dtype.hasobject:
        return np.empty(count, dtype=dtype)
    size = count * dtype.itemsize
    raw = np.empty(size + FEED_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % FEED_ALIGNMENT
    return raw[start : start + size].view(dtype)


@dataclass(frozen=True)
class TensorSpec:
    alias: str
    tensor_name: str
    dtype: int
    # None for unknown rank; -1 for an unknown dimension.
    shape: tuple[int, ...] | None

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    @classmethod
    def from_proto(cls, alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        return cls(alias=alias, tensor_name=info.name, dtype=info.dtype, shape=dims)


@dataclass(frozen=True)
class Signature:
    key: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    @classmethod
    def from_proto(cls, key: str, sig: meta_graph_pb2.SignatureDef) -> Signature:
        return cls(
            key=key,
            method_name=sig.method_name,
            inputs={a: TensorSpec.from_proto(a, i) for a, i in sorted(sig.inputs.items())},
            outputs={a: TensorSpec.from_proto(a, i) for a, i in sorted(sig.outputs.items())},
        )
