"""TensorProto ↔ numpy without per-element Python loops where avoidable.

Decoding follows TensorFlow's Tensor::FromProto: `tensor_content` when set,
else the typed field; fewer typed values than elements repeat the last one
(a single value fills the tensor), none gives zeros. Encoding writes the
typed fields, as TF Serving's Predict does (Tensor::AsProtoField).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid_argument
from serving.servables.signature import dtype_name, numpy_dtype

_FIELD: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
_BITS16 = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
_COMPLEX = (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128)

DTYPE_OF_NUMPY: dict[np.dtype, int] = {}
for _dt in _FIELD:
    with contextlib.suppress(TypeError):  # bfloat16 without ml_dtypes
        DTYPE_OF_NUMPY.setdefault(numpy_dtype(_dt), _dt)


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "") -> np.ndarray:
    """Decode one request tensor; `name` goes into error messages."""
    label = f" for input '{name}'" if name else ""
    if proto.dtype not in _FIELD:
        raise invalid_argument(f"Unsupported tensor dtype {dtype_name(proto.dtype)}{label}")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"Tensor shape must be known{label}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid_argument(f"Tensor shape {list(shape)} has a negative dimension{label}")
    dtype = numpy_dtype(proto.dtype)
    count = math.prod(shape)

    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(proto.string_val), dtype=object)
        flat[:] = list(proto.string_val)
        return _fill(flat, shape, count, label)

    if proto.tensor_content:
        raw = proto.tensor_content
        if len(raw) != count * dtype.itemsize:
            raise invalid_argument(
                f"tensor_content holds {len(raw)} bytes but shape {list(shape)} of "
                f"{dtype_name(proto.dtype)} needs {count * dtype.itemsize}{label}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    field = getattr(proto, _FIELD[proto.dtype])
    if proto.dtype in _BITS16:
        flat = np.array(field, dtype=np.uint16).view(dtype)
    elif proto.dtype in _COMPLEX:
        parts = np.array(field, dtype=np.float32 if dtype == np.complex64 else np.float64)
        if parts.size % 2:
            raise invalid_argument(f"complex values need real and imaginary parts{label}")
        flat = parts.view(dtype)
    else:
        flat = np.array(field, dtype=dtype)
    return _fill(flat, shape, count, label)


def _fill(flat: np.ndarray, shape: tuple[int, ...], count: int, label: str) -> np.ndarray:
    n = flat.size
    if n == count:
        return flat.reshape(shape)
    if n > count:
        raise invalid_argument(
            f"Tensor has {n} values but its shape {list(shape)} holds {count}{label}"
        )
    if n == 0:
        fill = b"" if flat.dtype == object else 0
        out = np.full(count, fill, dtype=flat.dtype)
    else:
        out = np.empty(count, dtype=flat.dtype)
        out[:n] = flat
        out[n:] = flat[-1]
    return out.reshape(shape)


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    proto = tensor_shape_pb2.TensorShapeProto()
    for size in shape:
        proto.dim.add().size = size
    return proto


def from_ndarray(
    array: np.ndarray, dtype: int | None = None, out: tensor_pb2.TensorProto | None = None
) -> tensor_pb2.TensorProto:
    """Encode a result tensor into typed fields (TF Serving's AsProtoField)."""
    array = np.asarray(array)
    if dtype is None:
        dtype = _dtype_of(array)
    proto = out if out is not None else tensor_pb2.TensorProto()
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    flat = array.reshape(-1)
    field = getattr(proto, _FIELD[dtype])
    if dtype == types_pb2.DT_STRING:
        field.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype in _BITS16:
        field.extend(flat.view(np.uint16).tolist())
    elif dtype in _COMPLEX:
        field.extend(flat.view(flat.real.dtype).tolist())
    else:
        field.extend(flat.tolist())
    return proto


def to_tensor_content(array: np.ndarray, out: tensor_pb2.TensorProto) -> None:
    """Encode a numeric tensor as raw bytes (--enable_serialization_as_tensor_content)."""
    array = np.ascontiguousarray(array)
    out.dtype = _dtype_of(array)
    for size in array.shape:
        out.tensor_shape.dim.add().size = size
    out.tensor_content = array.tobytes()


def _dtype_of(array: np.ndarray) -> int:
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    try:
        return DTYPE_OF_NUMPY[array.dtype]
    except KeyError:
        raise invalid_argument(f"cannot encode numpy dtype {array.dtype}") from None
