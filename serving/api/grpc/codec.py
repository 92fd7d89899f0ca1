"""TF Serving's gRPC messages ↔ the inference layer's numpy arrays and results.

Tensors: decoding follows TensorFlow's Tensor::FromProto: `tensor_content`
when set, else the typed field; fewer typed values than elements repeat the
last one (a single value fills the tensor), none gives zeros. Encoding writes
the typed fields, as TF Serving's Predict does (Tensor::AsProtoField), or raw
bytes under --enable_serialization_as_tensor_content.

Everything protocol-neutral (signature rules, output checks) stays in
serving.inference; only the wire format lives here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.api.messages import fill_spec
from serving.errors import ServingError, invalid_argument, resource_exhausted
from serving.inference.model_ref import ModelRef
from serving.inference.service import ClassifyResult, RegressResult
from serving.servables.signature import (
    FEED_ALIGNMENT,
    dtype_name,
    feedable_empty,
    numpy_dtype,
    tf_dtype,
)

# DataType → the TensorProto field its values travel in.
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
# Typed fields whose packed wire form is the values' little-endian bytes, so
# a response can be filled from numpy without one Python object per value
# (extending from `.tolist()` is ~20x slower and holds a list):
# DataType → (field number, numpy dtype of one wire value).
_FIXED: dict[int, tuple[int, np.dtype[Any]]] = {
    dt: (
        tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name[_FIELD[dt]].number,
        np.dtype(wire),
    )
    for dt, wire in (
        (types_pb2.DT_FLOAT, "<f4"),
        (types_pb2.DT_DOUBLE, "<f8"),
        (types_pb2.DT_COMPLEX64, "<f4"),
        (types_pb2.DT_COMPLEX128, "<f8"),
        (types_pb2.DT_BOOL, "u1"),  # varints of 0/1 are one byte each
    )
}
# Other typed fields go through Python values; this many at a time bounds the
# temporary lists and lets other threads take the GIL between chunks.
_CHUNK = 1 << 20
_ALIGN_ABOVE = 1 << 20  # smaller feeds: TensorFlow's own copy is cheap

# The default of --max_tensor_elements.
DEFAULT_MAX_ELEMENTS = 100_000_000


def too_many_elements(count: int, shape: Iterable[int], limit: int) -> str | None:
    """Why a tensor is larger than the per-request limit, or None if it is not."""
    if limit and count > limit:
        return (
            f"shape {list(shape)} has {count} elements, more than the limit of "
            f"{limit} (--max_tensor_elements)"
        )
    return None


def _input_too_large(name: str, why: str) -> ServingError:
    return invalid_argument(f"tensor parsing error: {name} ({why})" if name else why)


def check_input_sizes(inputs: Mapping[str, np.ndarray], limit: int) -> None:
    """Refuse a request tensor larger than the per-request limit (for decoders that
    cannot check before allocating: JSON already costs bytes per element)."""
    for name, array in inputs.items():
        why = too_many_elements(array.size, array.shape, limit)
        if why:
            raise _input_too_large(name, why)


def check_output_sizes(outputs: Mapping[str, np.ndarray], limit: int) -> None:
    """Refuse to encode a result tensor larger than the per-request limit."""
    for alias, array in outputs.items():
        why = too_many_elements(array.size, array.shape, limit)
        if why:
            raise resource_exhausted(f"Output '{alias}' is too large to send: {why}")


# ----------------------------------------------------------------- requests


class _HasModelSpec(Protocol):
    def HasField(self, field_name: str) -> bool: ...

    @property
    def model_spec(self) -> model_pb2.ModelSpec: ...


def model_ref(request: _HasModelSpec) -> ModelRef:
    """The request's model_spec, checked as TF Serving checks it."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return spec_to_ref(request.model_spec)


def spec_to_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    return ModelRef(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


def to_ndarray(
    proto: tensor_pb2.TensorProto, name: str = "", max_elements: int = DEFAULT_MAX_ELEMENTS
) -> np.ndarray:
    """Decode one request tensor; `name` goes into error messages.

    `max_elements` bounds what the tensor may expand to (a single typed value
    fills the whole shape), checked before anything is allocated.
    """
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
    why = too_many_elements(count, shape, max_elements)
    if why:
        raise _input_too_large(name, why)

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
        flat = np.frombuffer(raw, dtype=dtype)
        if len(raw) > _ALIGN_ABOVE and flat.ctypes.data % FEED_ALIGNMENT:
            # TensorFlow would copy an unaligned feed and keep that copy for
            # the whole run; one aligned copy here lets the bytes go at once.
            aligned = feedable_empty(count, dtype)
            aligned[:] = flat
            flat = aligned
        del raw
        return flat.reshape(shape)

    field = getattr(proto, _FIELD[proto.dtype])
    if proto.dtype in _BITS16:
        flat = _values(field, np.dtype(np.uint16)).view(dtype)
    elif proto.dtype in _COMPLEX:
        parts = _values(field, np.dtype(np.float32 if dtype == np.complex64 else np.float64))
        if parts.size % 2:
            raise invalid_argument(f"complex values need real and imaginary parts{label}")
        flat = parts.view(dtype)
    else:
        flat = _values(field, dtype)
    return _fill(flat, shape, count, label)


def _values(field: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """A repeated scalar field as an array, a chunk at a time, so a large one
    (decoded on a worker thread) lets the event loop take the GIL in between."""
    n = len(field)
    if n <= _CHUNK:
        if dtype.kind == "f":
            # fromiter: a quarter of np.array's cost on a repeated field (same values).
            return np.fromiter(field, dtype=dtype, count=n)
        return np.array(field, dtype=dtype)
    out = feedable_empty(n, dtype)
    for start in range(0, n, _CHUNK):
        out[start : start + _CHUNK] = field[start : start + _CHUNK]
    return out


def request_inputs(
    inputs: Mapping[str, tensor_pb2.TensorProto], max_elements: int = DEFAULT_MAX_ELEMENTS
) -> dict[str, np.ndarray]:
    """A PredictRequest's `inputs` map; any decoding failure is INVALID_ARGUMENT."""
    arrays = {}
    for alias, proto in inputs.items():
        try:
            arrays[alias] = to_ndarray(proto, alias, max_elements)
        except ServingError:
            raise
        except MemoryError:
            shape = [d.size for d in proto.tensor_shape.dim]
            raise resource_exhausted(
                f"tensor parsing error: {alias} (shape {shape} does not fit in memory; "
                f"--max_tensor_elements is {max_elements})"
            ) from None
        except Exception as exc:  # numpy's own complaint (bad values)
            raise invalid_argument(f"tensor parsing error: {alias} ({exc})") from None
    return arrays


def request_size(inputs: Mapping[str, tensor_pb2.TensorProto]) -> int:
    """Roughly the bytes a tensor map decodes or serializes to, cheaply
    (from shapes, not values)."""
    total = 0
    for proto in inputs.values():
        count = 1  # a loop, not math.prod over a generator: this runs per request
        for dim in proto.tensor_shape.dim:
            count *= dim.size
        total += max(len(proto.tensor_content), 4 * max(count, 0))
    return total


def _fill(flat: np.ndarray, shape: tuple[int, ...], count: int, label: str) -> np.ndarray:
    n = flat.size
    if n == count:
        return flat.reshape(shape)
    if n > count:
        raise invalid_argument(
            f"Tensor has {n} values but its shape {list(shape)} holds {count}{label}"
        )
    fill: object
    if n == 0:
        fill = b"" if flat.dtype == object else 0
        out = np.full(count, fill, dtype=flat.dtype)
    else:
        out = feedable_empty(count, flat.dtype)
        out[:n] = flat
        out[n:] = flat[-1]
    return out.reshape(shape)


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """Input → 1-D object array of serialized tf.Examples.

    With context, each example is the context's bytes followed by the
    example's: protobuf parsing merges them, and the example's own features
    win on a name clash, which is how TF Serving combines them.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        records = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        records = [context + e.SerializeToString() for e in with_context.examples]
    else:
        records = []
    if not records:
        raise invalid_argument("Input is empty.")
    out = np.empty(len(records), dtype=object)
    out[:] = records
    return out


# ---------------------------------------------------------------- responses


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
    elif dtype in _FIXED and flat.size > _FEW:
        _write_fixed(proto, dtype, flat)
    elif dtype in _FIXED:  # a few values: extending the field is the cheaper way
        field.extend(_packed(dtype, flat)[2].tolist())
    elif dtype in _BITS16:
        _extend(field, flat.view(np.uint16))
    else:
        _extend(field, flat)
    return proto


# Up to this many fixed-width values are added one by one, more are merged
# in their packed wire form (_write_fixed): the merge's set-up costs more
# than a few values do.
_FEW = 16


def _extend(field: Any, flat: np.ndarray) -> None:
    for start in range(0, flat.size, _CHUNK):
        field.extend(flat[start : start + _CHUNK].tolist())


def _write_fixed(proto: tensor_pb2.TensorProto, dtype: int, flat: np.ndarray) -> None:
    """Fill a fixed-width typed field by merging its packed wire form.

    The result is the same message as extending the field value by value
    (and serializes to the same bytes), at the cost of one copy.
    """
    number, wire, values = _packed(dtype, flat)
    size = values.size * wire.itemsize
    header = _field_tag(number) + _varint_bytes(size)
    buffer = bytearray(len(header) + size)
    buffer[: len(header)] = header
    np.frombuffer(buffer, dtype=wire, offset=len(header))[:] = values
    proto.MergeFromString(buffer)


def _packed(dtype: int, flat: np.ndarray) -> tuple[int, np.dtype[Any], np.ndarray]:
    """A fixed-width type's field number, wire dtype and values as wire elements
    (a complex number is its real and imaginary parts), not yet cast."""
    number, wire = _FIXED[dtype]
    return number, wire, flat.view(flat.real.dtype) if dtype in _COMPLEX else flat


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def to_tensor_content(array: np.ndarray, out: tensor_pb2.TensorProto) -> None:
    """Encode a numeric tensor as raw bytes (--enable_serialization_as_tensor_content)."""
    array = np.asarray(array)  # not ascontiguousarray: it makes a scalar 1-D
    out.dtype = _dtype_of(array)
    for size in array.shape:
        out.tensor_shape.dim.add().size = size
    out.tensor_content = array.tobytes()


# Wire tags the response writer emits (field number, length-delimited).
def _field_tag(number: int) -> bytes:
    return _varint_bytes(number << 3 | 2)


_OUTPUTS_TAG = _field_tag(predict_pb2.PredictResponse.DESCRIPTOR.fields_by_name["outputs"].number)
_KEY_TAG = _field_tag(1)  # a map entry's key
_VALUE_TAG = _field_tag(2)  # a map entry's value
_CONTENT_TAG = _field_tag(tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name["tensor_content"].number)


# Outputs smaller than this many bytes in all go through protobuf, which is
# faster for them (a few microseconds a response).
WRITE_RESPONSE_ABOVE = 1 << 14


def predict_response_bytes(
    response: predict_pb2.PredictResponse,
    outputs: Mapping[str, np.ndarray],
    tensor_content: bool = False,
) -> bytes:
    """`response` (outputs not yet filled) with `outputs` in it, serialized.

    Outputs are encoded as from_ndarray does, or as to_tensor_content for
    numeric ones when `tensor_content`. Small responses go through protobuf;
    larger ones are written by hand, the same bytes as protobuf's
    SerializeToString(deterministic=True). Hand-written because of a
    measurement: a large numeric output went through numpy, a packed copy,
    the message's repeated field and the serializer's growing buffer plus its
    final bytes, several times its size at once. Here a fixed-width output's
    numpy buffer is copied once, straight into the one bytes object; other
    dtypes go through protobuf.
    """
    if sum(array.nbytes for array in outputs.values()) < WRITE_RESPONSE_ABOVE:
        for alias, array in outputs.items():
            if tensor_content and array.dtype != object:
                to_tensor_content(array, response.outputs[alias])
            else:
                from_ndarray(array, out=response.outputs[alias])
        return response.SerializeToString()
    pieces: list[Any] = []
    for alias in sorted(outputs):
        value = _tensor_pieces(outputs[alias], tensor_content)
        value_size = sum(len(piece) for piece in value)
        key = alias.encode()
        entry = [_KEY_TAG, _varint_bytes(len(key)), key, _VALUE_TAG, _varint_bytes(value_size)]
        entry_size = sum(len(piece) for piece in entry) + value_size
        pieces += [_OUTPUTS_TAG, _varint_bytes(entry_size), *entry, *value]
    # Every field after `outputs` (model_spec) comes from protobuf itself.
    pieces.append(response.SerializeToString(deterministic=True))
    return b"".join(pieces)


def _tensor_pieces(array: np.ndarray, tensor_content: bool) -> list[Any]:
    """One output's serialized TensorProto, as pieces to join: the values of a
    fixed-width type as a view of the array's buffer, not a copy."""
    array = np.asarray(array)
    dtype = _dtype_of(array)
    raw = tensor_content and dtype != types_pb2.DT_STRING
    if not raw and dtype not in _FIXED:
        return [from_ndarray(array, dtype).SerializeToString()]
    head = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        head.tensor_shape.dim.add().size = size
    pieces: list[Any] = [head.SerializeToString()]
    if array.size:
        if raw:
            tag, values = _CONTENT_TAG, np.ascontiguousarray(array.reshape(-1))
        else:
            number, wire, real = _packed(dtype, array.reshape(-1))
            tag = _field_tag(number)
            values = np.ascontiguousarray(real, dtype=wire)
        data = values.reshape(-1).view(np.uint8)
        pieces += [tag, _varint_bytes(data.size), data]
    return pieces


def _dtype_of(array: np.ndarray) -> int:
    if array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    dtype = tf_dtype(array.dtype)
    if dtype is None or dtype not in _FIELD:
        raise invalid_argument(f"cannot encode numpy dtype {array.dtype}")
    return dtype


def classification_result(
    result: ClassifyResult, out: classification_pb2.ClassificationResult
) -> None:
    classes, scores = result.classes, result.scores
    reference = classes if classes is not None else scores
    assert reference is not None
    batch, num = reference.shape
    labels = classes.tolist() if classes is not None else None
    values = scores.tolist() if scores is not None else None
    for i in range(batch):
        row = out.classifications.add()
        for j in range(num):
            item = row.classes.add()
            if labels is not None:
                item.label = _text(labels[i][j])
            if values is not None:
                item.score = values[i][j]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def regression_result(result: RegressResult, out: regression_pb2.RegressionResult) -> None:
    for value in np.asarray(result.values).tolist():
        out.regressions.add().value = value


def inference_result(
    result: ClassifyResult | RegressResult, out: inference_pb2.InferenceResult
) -> None:
    fill_spec(out.model_spec, result.name, result.version, result.signature_name)
    if isinstance(result, ClassifyResult):
        classification_result(result, out.classification_result)
    else:
        regression_result(result, out.regression_result)
