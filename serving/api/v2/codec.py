"""Open Inference Protocol (V2) tensors ↔ numpy: JSON, binary data, gRPC contents.

Pure functions with no server behind them: the REST routes and the gRPC
servicer decode requests here, call the shared InferenceService, and encode
its numpy outputs here. Every client mistake is a ServingError
(INVALID_ARGUMENT) whose message names the tensor at fault.

Datatypes are V2's names; BYTES travel as object arrays of `bytes` (what
TensorFlow's string tensors take) and BF16 as ml_dtypes' bfloat16, which only
the binary forms (REST binary data, gRPC raw contents) carry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from serving.errors import invalid_argument

BYTES = "BYTES"
BF16 = "BF16"
FP16 = "FP16"

# V2 datatype → numpy dtype (little-endian, the byte order of binary data).
NUMPY_OF: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    FP16: np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    BF16: np.dtype(ml_dtypes.bfloat16),
    BYTES: np.dtype(object),
}
_DATATYPE_OF: dict[np.dtype, str] = {
    np.dtype(dt).newbyteorder("="): name for name, dt in NUMPY_OF.items()
}
# TensorFlow DataType enum value → V2 datatype, for model metadata (values of
# tensorflow/core/framework/types.proto, so this module needs no TensorFlow).
_TF_DATATYPES = {
    1: "FP32",
    2: "FP64",
    3: "INT32",
    4: "UINT8",
    5: "INT16",
    6: "INT8",
    7: BYTES,
    9: "INT64",
    10: "BOOL",
    14: BF16,
    17: "UINT16",
    19: FP16,
    22: "UINT32",
    23: "UINT64",
}

# gRPC InferTensorContents field per datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    try:
        return _DATATYPE_OF[array.dtype.newbyteorder("=")]
    except KeyError:
        raise invalid_argument(f"tensor type {array.dtype} has no V2 datatype") from None


def tf_datatype(dtype: int) -> str:
    """A signature's TensorFlow type as a V2 datatype (its TF name if V2 has none)."""
    return _TF_DATATYPES.get(dtype, f"TF_TYPE_{dtype}")


def numpy_dtype(datatype: str, name: str) -> np.dtype:
    try:
        return NUMPY_OF[datatype]
    except KeyError:
        raise invalid_argument(f"input '{name}': unsupported datatype '{datatype}'") from None


def element_count(shape: Sequence[int], name: str) -> int:
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise invalid_argument(f"input '{name}': invalid shape {list(shape)}")
        count *= dim
    return count


def metadata_shape(shape: tuple[int, ...] | None) -> list[int]:
    """A signature's shape for metadata: -1 for unknown dims, [-1] for unknown rank."""
    return [-1] if shape is None else [int(d) for d in shape]


# ------------------------------------------------------------ binary forms


def bytes_to_raw(array: np.ndarray) -> bytes:
    """BYTES elements in V2's binary form: each a 4-byte little-endian length, then the bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def raw_of(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return bytes_to_raw(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def from_raw(
    data: bytes | memoryview, datatype: str, shape: Sequence[int], name: str
) -> np.ndarray:
    """A tensor from its binary form, checking the size against the shape."""
    count = element_count(shape, name)
    dtype = numpy_dtype(datatype, name)
    if datatype == BYTES:
        items = []
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            if offset + 4 > len(view):
                raise invalid_argument(f"input '{name}': truncated BYTES element length")
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            if offset + length > len(view):
                raise invalid_argument(f"input '{name}': BYTES element longer than its data")
            items.append(bytes(view[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise invalid_argument(
                f"input '{name}': {len(items)} BYTES elements for shape {list(shape)}"
            )
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise invalid_argument(
            f"input '{name}': {len(data)} bytes of {datatype} data, "
            f"expected {expected} for shape {list(shape)}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


# ---------------------------------------------------------------- JSON form


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_json(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """A tensor from JSON `data` (flat or nested, row-major)."""
    count = element_count(shape, name)
    dtype = numpy_dtype(datatype, name)
    if datatype == BF16:
        raise invalid_argument(f"input '{name}': BF16 is only accepted as binary data")
    flat = _flatten(data)
    if len(flat) != count:
        raise invalid_argument(
            f"input '{name}': {len(flat)} elements for shape {list(shape)} ({count} expected)"
        )
    if datatype == BYTES:
        out = np.empty(count, dtype=object)
        try:
            out[:] = [s.encode() if isinstance(s, str) else bytes(s) for s in flat]
        except (TypeError, ValueError):
            raise invalid_argument(f"input '{name}': BYTES data must be strings") from None
        return out.reshape(shape)
    _check_json_kind(flat, datatype, name)
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid_argument(f"input '{name}': data is not {datatype}: {exc}") from None


def _check_json_kind(flat: list[Any], datatype: str, name: str) -> None:
    """JSON numbers for numeric types, JSON booleans for BOOL: numpy would convert anything."""
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
    elif datatype.startswith(("INT", "UINT")):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
    if not ok:
        bad = next(v for v in flat if not _kind_ok(v, datatype))
        raise invalid_argument(f"input '{name}': {_excerpt(bad)} is not a valid {datatype} value")


def _kind_ok(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if datatype.startswith(("INT", "UINT")):
        return isinstance(value, int)
    return isinstance(value, (int, float))


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def to_json_data(array: np.ndarray, name: str) -> list[Any]:
    if array.dtype == object:
        try:
            return [(v.decode() if isinstance(v, bytes) else str(v)) for v in array.reshape(-1)]
        except UnicodeDecodeError:
            raise invalid_argument(
                f"output '{name}' holds bytes that are not UTF-8: request it as binary data"
            ) from None
    return array.reshape(-1).tolist()


# ---------------------------------------------------------- REST requests


@dataclass
class RestInferRequest:
    """A decoded `POST .../infer` body."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]  # requested outputs, in order (empty: all)
    binary_outputs: set[str]  # requested with binary_data: true
    json_outputs: set[str]  # requested with binary_data: false
    binary_default: bool  # the request's binary_data_output parameter
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _header_and_binary(
    body: bytes | bytearray, header_length: int | None
) -> tuple[bytes | bytearray, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise invalid_argument(
            f"Inference-Header-Content-Length {header_length} exceeds the body's {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def parse_infer_request(
    body: bytes | bytearray, header_length: int | None, loads: Any
) -> RestInferRequest:
    """Decode an infer body (JSON, or JSON header + binary tensor data)."""
    head, binary = _header_and_binary(body, header_length)
    try:
        doc = loads(head)
    except ValueError as exc:
        raise invalid_argument(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid_argument("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid_argument("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in raw_inputs:
        if not isinstance(tensor, dict):
            raise invalid_argument("each input must be a JSON object")
        name = tensor.get("name")
        datatype = tensor.get("datatype")
        shape = tensor.get("shape")
        if not (isinstance(name, str) and isinstance(datatype, str) and isinstance(shape, list)):
            raise invalid_argument("each input needs 'name', 'shape' and 'datatype'")
        if name in inputs:
            raise invalid_argument(f"input '{name}' appears twice")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid_argument(f"input '{name}': invalid binary_data_size")
            if offset + size > len(binary):
                raise invalid_argument(
                    f"input '{name}': binary_data_size {size} exceeds the "
                    f"{len(binary) - offset} bytes of binary data left"
                )
            inputs[name] = from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            if "data" not in tensor:
                raise invalid_argument(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = from_json(tensor["data"], datatype, shape, name)
    if offset != len(binary):
        raise invalid_argument(
            f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size"
        )
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid_argument("'parameters' must be a JSON object")
    outputs: list[str] = []
    binary_outputs: set[str] = set()
    json_outputs: set[str] = set()
    for out in doc.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise invalid_argument("each requested output needs a 'name'")
        outputs.append(out["name"])
        out_params = out.get("parameters") or {}
        flag = out_params.get("binary_data") if isinstance(out_params, dict) else None
        if flag is True:
            binary_outputs.add(out["name"])
        elif flag is False:
            json_outputs.add(out["name"])
    request_id = doc.get("id")
    return RestInferRequest(
        inputs=inputs,
        outputs=outputs,
        binary_outputs=binary_outputs,
        json_outputs=json_outputs,
        binary_default=parameters.get("binary_data_output") is True,
        id=request_id if isinstance(request_id, str) else None,
        parameters=parameters,
    )


def binary_outputs(request: RestInferRequest, names: Iterable[str]) -> set[str]:
    """Outputs to send as binary data: asked per output, else the request's default."""
    if request.binary_default:
        return {n for n in names if n not in request.json_outputs}
    return set(request.binary_outputs)


def infer_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    binary: Iterable[str],
    dumps: Any,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and its JSON header's length when binary data follows."""
    wanted = set(binary)
    tensors = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in wanted or datatype == BF16:
            raw = raw_of(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = to_json_data(array, name)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    head = dumps(doc)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


# ------------------------------------------------------------ gRPC contents


def from_contents(tensor: Any, name: str) -> np.ndarray:
    """A gRPC InferInputTensor's typed `contents` as a numpy array."""
    datatype = tensor.datatype
    shape = list(tensor.shape)
    count = element_count(shape, name)
    dtype = numpy_dtype(datatype, name)
    field_name = CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise invalid_argument(f"input '{name}': {datatype} is only accepted as raw contents")
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise invalid_argument(
            f"input '{name}': {len(values)} elements in {field_name} for shape {shape} "
            f"({count} expected)"
        )
    if datatype == BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    if datatype in _NARROW:
        # int_contents / uint_contents carry 32 bits: numpy would wrap silently.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise invalid_argument(f"input '{name}': value out of range for {datatype}")
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})
