"""Request JSON → numpy tensors and tf.Examples, with TF Serving's rules and messages.

Parsing uses orjson; TF Serving also accepts the bare tokens NaN, Infinity and
-Infinity (rapidjson's kParseNanAndInfFlag), which orjson rejects, so such
bodies go through the standard library's parser.

Tensors: a NumPy fast path converts a whole (homogeneous, numeric) value in
one call and checks TF Serving's rules with array operations; anything it
cannot vouch for (ragged lists, strings, bools, lossy numbers, ...) takes the
exact element-by-element path, which gives TF Serving's error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import TypeGuard, cast

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.api.rest.floatfmt import format_scalar
from serving.errors import ServingError, invalid_argument, unimplemented
from serving.servables.signature import TensorSpec, short_dtype_name

INSTANCES = "instances"
INPUTS = "inputs"
B64 = "b64"
ROW, COLUMNAR = "row", "columnar"

# The rules TF Serving applies to JSON numbers (numeric.py's fast path shares them).
FLOAT_MAX_INT = (1 << 24) - 1
DOUBLE_MAX_INT = (1 << 53) - 1
FLT_MAX = float(np.finfo(np.float32).max)
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
SMALL_INTS = (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8)
# A tensor has at most this many dimensions (TensorFlow's and NumPy's limit).
MAX_RANK = 64
# Error messages quote at most this much of the request.
EXCERPT_CHARS = 512
# A \\uXXXX escape of a UTF-16 surrogate that is not part of a pair.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


# ------------------------------------------------------------------ JSON text


def parse_json(body: bytes | bytearray | memoryview) -> dict:
    """The request document; TF Serving's parse errors; it must be an object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise invalid_argument(
                f"JSON Parse error: Nesting too deep at offset: {exc.pos}"
            ) from None
        doc = _parse_leniently(bytes(body))
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {pretty(doc)} Is not object")
    return doc


class _TooBig(Exception):
    def __init__(self, digits: str) -> None:
        self.digits = digits


def _parse_int(digits: str) -> int | float:
    """Integers past 64 bits become doubles (as rapidjson reads them); past a double's range,
    an error (Python would refuse to convert them beyond a few thousand digits anyway)."""
    if len(digits) <= 20:
        return int(digits)
    value = float(digits)
    if math.isinf(value):
        raise _TooBig(digits)
    return value


def _parse_leniently(body: bytes) -> object:
    """What orjson refuses but rapidjson reads: NaN/Infinity tokens, bytes that are not UTF-8
    (kept as they are in strings), integers past 64 bits."""
    if b"\\u" in body:
        lone = _LONE_SURROGATE.search(body)
        if lone is not None:
            raise invalid_argument(
                "JSON Parse error: The surrogate pair in string is invalid. "
                f"at offset: {lone.end()}"
            )
    text = body.decode("utf-8", errors="surrogateescape")
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise invalid_argument(_parse_error(text, exc)) from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: Nesting too deep") from None
    except _TooBig as exc:
        offset = len(text[: max(text.find(exc.digits), 0)].encode("utf-8", "surrogateescape"))
        raise invalid_argument(
            f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"
        ) from None


def _parse_error(text: str, exc: json.JSONDecodeError) -> str:
    """rapidjson's wording (GetParseError_En) for the stdlib's error."""
    pos = exc.pos
    msg = exc.msg
    if not text.strip():
        reason = "The document is empty."
    elif msg == "Expecting value":
        reason = "Invalid value."
    elif msg == "Expecting ',' delimiter":
        reason = (
            "Missing a comma or '}' after an object member."
            if _innermost(text, pos) == "{"
            else "Missing a comma or ']' after an array element."
        )
    elif msg == "Expecting ':' delimiter":
        reason = "Missing a colon after a name of object member."
    elif msg.startswith("Expecting property name"):
        reason = "Missing a name for object member."
    elif msg.startswith("Unterminated string"):
        reason = "Missing a closing quotation mark in string."
        pos = len(text)
    elif msg == "Invalid \\escape":
        reason = "Invalid escape character in string."
    elif msg.startswith("Invalid \\uXXXX"):
        reason = "Incorrect hex digit after \\u escape in string."
    elif msg.startswith("Invalid control character"):
        reason = "Invalid encoding in string."
    elif msg == "Extra data" and pos < len(text) and text[pos] in ".eE":
        reason = (
            "Miss fraction part in number." if text[pos] == "." else "Miss exponent part in number."
        )
        pos += 1
    elif msg == "Extra data":
        reason = "The document root must not be followed by other values."
    else:
        reason = msg + "."
    offset = len(text[:pos].encode("utf-8", errors="surrogateescape"))
    return f"JSON Parse error: {reason} at offset: {offset}"


def _innermost(text: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[: min(pos, 1 << 20)]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _rj_double(value: float) -> str:
    """A double as rapidjson's Writer::Double prints it (shortest digits, JS-like layout)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    joined = whole + frac
    digits = joined.lstrip("0")
    point = len(whole) + int(exp or 0) - (len(joined) - len(digits))
    digits = digits.rstrip("0") or "0"
    length = len(digits)
    if length <= point <= 21:
        return sign + digits + "0" * (point - length) + ".0"
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    mant = digits if length == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mant}e{point - 1}"


def pretty(value: object, depth: int = 0) -> str:
    """A JSON value as TF Serving's error messages show it (rapidjson PrettyWriter).

    TF Serving echoes the whole value; a message here stops after
    `EXCERPT_CHARS` characters with "...", so a huge or deeply nested body
    costs neither time nor memory in its error answer (and no recursion limit).
    """
    out: list[str] = []
    budget = [EXCERPT_CHARS]
    try:
        _pretty(value, depth, out, budget)
    except _Cut:
        out.append("...")
    return "".join(out)


class _Cut(Exception):
    pass


def _put(text: str, out: list[str], budget: list[int]) -> None:
    if len(text) > budget[0]:
        out.append(text[: max(budget[0], 0)])
        raise _Cut
    budget[0] -= len(text)
    out.append(text)


def _pretty(value: object, depth: int, out: list[str], budget: list[int]) -> None:
    pad = "    "
    if isinstance(value, (dict, list)):
        if not value:
            _put("{}" if isinstance(value, dict) else "[]", out, budget)
            return
        if depth >= MAX_RANK:
            _put("[...]" if isinstance(value, list) else "{...}", out, budget)
            raise _Cut
        inner = "\n" + pad * (depth + 1)
        _put(("{" if isinstance(value, dict) else "[") + inner, out, budget)
        if isinstance(value, dict):
            for index, (key, item) in enumerate(value.items()):
                if index:
                    _put("," + inner, out, budget)
                _put(_excerpt_str(str(key), budget[0]) + ": ", out, budget)
                _pretty(item, depth + 1, out, budget)
            _put("\n" + pad * depth + "}", out, budget)
        else:
            for index, item in enumerate(value):
                if index:
                    _put("," + inner, out, budget)
                _pretty(item, depth + 1, out, budget)
            _put("\n" + pad * depth + "]", out, budget)
        return
    _put(_leaf(value, depth, budget[0]), out, budget)


def _leaf(value: object, depth: int, room: int) -> str:
    if isinstance(value, str):
        return _excerpt_str(value, room)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        # TF prints a top-level double through its float formatter.
        if depth == 0 and (not math.isfinite(value) or abs(value) <= FLT_MAX):
            return format_scalar(float(np.float32(value)))
        return _rj_double(value)
    if isinstance(value, int) and value.bit_length() > 64 * 8:
        return f"(an integer of about {int(value.bit_length() * 0.30103)} digits)"
    return str(value)


def _excerpt_str(text: str, room: int) -> str:
    """A JSON string literal, cut (without its closing quote) when longer than `room`."""
    if len(text) > room:
        return _json_str(text[: max(room, 0)])[:-1]
    return _json_str(text)


def _json_str(text: str) -> str:
    from serving.api.rest.jsonfmt import json_string

    return json_string(text)


def json_type(value: object) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name")
    if name is None and "signature_name" not in doc:
        return ""
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {pretty(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def _status_text(exc: ServingError) -> str:
    # tensorflow::Status::ToString(): "INVALID_ARGUMENT: message".
    return f"{exc.code.name}: {exc.message}"


# ----------------------------------------------------------------- b64 values


def is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def b64_decode(value: object) -> bytes:
    if not is_b64(value):
        raise invalid_argument(
            f"JSON Value: {pretty(value)} not formatted correctly for base64 data"
        )
    text = value[B64].strip()  # type: ignore[index]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


# ------------------------------------------------------------ predict tensors


def _dense_shape(value: object, outer: int = 0) -> list[int]:
    """The shape the first elements imply; more than `MAX_RANK` dimensions
    (counting `outer` ones around the value) is a client error."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) + outer > MAX_RANK:
            raise invalid_argument(
                f"JSON value nested more than {MAX_RANK} lists deep: a tensor has at most "
                f"{MAX_RANK} dimensions"
            )
        if not value:
            break
        value = value[0]
    return shape


def _type_error(value: object, dtype: int) -> ServingError:
    return invalid_argument(
        f"JSON Value: {pretty(value)} Type: {json_type(value)} is not of expected type: "
        f"{short_dtype_name(dtype)}"
    )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(value: object, dtype: int) -> object:
    """One JSON leaf as TF Serving's AddValueToTensor accepts it."""
    if dtype in FLOATS or dtype == types_pb2.DT_DOUBLE:
        if not _is_number(value):
            raise _type_error(value, dtype)
        double = dtype == types_pb2.DT_DOUBLE
        if isinstance(value, int):
            if abs(value) > (DOUBLE_MAX_INT if double else FLOAT_MAX_INT):
                target = "double" if double else "float"
                raise invalid_argument(
                    f"Cannot convert JSON value: {value} to {target} without loss of precision."
                )
        elif math.isfinite(value) and not double and abs(value) > FLT_MAX:
            raise invalid_argument(
                f"Cannot convert JSON value: {pretty(value)} to float without loss of precision."
            )
        return value
    if dtype in SMALL_INTS:
        if not (isinstance(value, int) and not isinstance(value, bool)) or not (
            INT32[0] <= value <= INT32[1]
        ):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_INT64:
        if not (isinstance(value, int) and not isinstance(value, bool)) or not (
            INT64[0] <= value <= INT64[1]
        ):
            raise _type_error(value, dtype)
        return value
    if dtype in (types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        top = (1 << 32) - 1 if dtype == types_pb2.DT_UINT32 else (1 << 64) - 1
        if not (isinstance(value, int) and not isinstance(value, bool)) or not 0 <= value <= top:
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", errors="surrogateescape")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise unimplemented(
        f"Conversion of JSON Value: {pretty(value)} to type: {short_dtype_name(dtype)}"
    )


def _fill(value: object, level: int, shape: list[int], dtype: int, out: list) -> None:
    """TF Serving's FillTensorProto: check the nesting, collect the leaves."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {pretty(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(b64_decode(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(leaves: list, shape: list[int], spec: TensorSpec) -> np.ndarray:
    target = spec.np_dtype
    if spec.dtype == types_pb2.DT_STRING:
        arr = np.empty(len(leaves), dtype=object)
        arr[:] = leaves
        return arr.reshape(shape)
    if not leaves:
        return np.zeros(shape, dtype=target)
    if spec.dtype in SMALL_INTS:
        # TF Serving stores these in int_val and narrows: 300 becomes 44 in uint8.
        return np.array(leaves, dtype=np.int64).astype(target).reshape(shape)
    if target.kind == "f" or target.name == "bfloat16":
        return np.array(leaves, dtype=np.float64).astype(target).reshape(shape)
    return np.array(leaves, dtype=target).reshape(shape)


# Up to this many values, `_fast`'s float checks run on Python numbers: each
# NumPy reduction has a fixed cost larger than a few values' worth of Python.
_FEW_VALUES = 32


def _few_fit(values: list, limit: float, double: bool) -> bool:
    """`_fast`'s vectorised checks for a few values (ints or floats, as tolist gives them)."""
    top = 0.0
    for v in values:
        if math.isfinite(v):
            top = max(top, abs(v))
    if top > limit and any(
        math.isfinite(v) and abs(v) > limit and v == math.floor(v) for v in values
    ):
        return False  # an integral value past the limit may have been a JSON int
    return double or top <= FLT_MAX


def _fast(value: object, spec: TensorSpec) -> np.ndarray | None:
    """Whole-value NumPy conversion when TF Serving's rules provably accept it."""
    dtype = spec.dtype
    if dtype == types_pb2.DT_STRING or dtype == types_pb2.DT_BOOL:
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged or odd: the exact path explains
    kind = arr.dtype.kind
    if arr.size == 0 or kind not in "fiu":
        return None
    if dtype in FLOATS or dtype == types_pb2.DT_DOUBLE:
        double = dtype == types_pb2.DT_DOUBLE
        limit = DOUBLE_MAX_INT if double else FLOAT_MAX_INT
        if arr.size <= _FEW_VALUES:
            if not _few_fit(arr.reshape(-1).tolist(), limit, double):
                return None
        elif kind in "iu":
            if np.abs(arr).max() > limit:
                return None
        else:
            # Without temporaries the size of `arr` in the common case (all
            # finite, all small): a large request's peak memory is set here.
            finite_mask = np.isfinite(arr)
            finite = arr if finite_mask.all() else arr[finite_mask]
            top = max(float(finite.max()), -float(finite.min())) if finite.size else 0.0
            if top > limit:
                big = np.abs(finite)
                # An integral value past the limit may have been a JSON int: check exactly.
                if ((big > limit) & (finite == np.floor(finite))).any():
                    return None
            if not double and top > FLT_MAX:
                return None
        return arr.astype(spec.np_dtype)
    if kind == "f":
        return None  # ints wanted; the exact path names the offending value
    if dtype in SMALL_INTS:
        if arr.min() < INT32[0] or arr.max() > INT32[1]:
            return None
        return arr.astype(np.int64).astype(spec.np_dtype)
    if dtype == types_pb2.DT_INT64:
        return arr.astype(np.int64) if kind == "i" else None
    if dtype in (types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        if arr.min() < 0 or (dtype == types_pb2.DT_UINT32 and arr.max() > (1 << 32) - 1):
            return None
        return arr.astype(spec.np_dtype)
    return None


def value_tensor(value: object, spec: TensorSpec, fast: bool) -> np.ndarray:
    """A columnar value (or one instance) → array, exactly or via the fast path."""
    if fast:
        arr = _fast(value, spec)
        if arr is not None:
            return arr
    shape = _dense_shape(value)
    leaves: list = []
    _fill(value, 0, shape, spec.dtype, leaves)
    return _to_array(leaves, shape, spec)


def _instances(
    instances: list, specs: Mapping[str, TensorSpec], fast: bool
) -> dict[str, np.ndarray]:
    first = instances[0]
    if not isinstance(first, dict) and len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = isinstance(first, dict) and not is_b64(first)
    names = sorted(specs)
    if not objects:
        name = names[0]
        spec = specs[name]
        if fast and not any(isinstance(v, dict) for v in instances[:1]):
            arr = _fast(instances, spec)
            if arr is not None and arr.ndim >= 1:
                return {name: arr}
        return {name: _stack_rows(instances, name, spec, keyed=False)}
    rows: dict[str, list] = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not (isinstance(item, dict) and not is_b64(item)):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        for key, value in item.items():
            if key not in specs:
                raise invalid_argument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {key}"
                )
            rows[key].append((index, value))
        if set(item) != set(names):
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{pretty(item)} keys must be equal to: {','.join(names)}"
            )
    out = {}
    for name in names:
        spec = specs[name]
        values = [v for _i, v in rows[name]]
        arr = _fast(values, spec) if fast else None
        out[name] = arr if arr is not None else _stack_rows(values, name, spec, keyed=True)
    return out


def _stack_rows(values: list, name: str, spec: TensorSpec, keyed: bool) -> np.ndarray:
    """Each instance checked on its own, then all must share one shape (TF's AddInstanceItem)."""
    leaves: list = []
    first_shape: list[int] | None = None
    first_size = 0
    for index, value in enumerate(values):
        if not keyed and isinstance(value, dict) and not is_b64(value):
            raise invalid_argument(
                f"Expecting value/list but got object at item {index} of input list"
            )
        shape = _dense_shape(value, outer=1)
        before = len(leaves)
        try:
            _fill(value, 0, shape, spec.dtype, leaves)
        except ServingError as exc:
            where = f"{index} key: {name}" if keyed else f"{index}"
            raise invalid_argument(
                f"Failed to process element: {where} of 'instances' list. "
                f"Error: {_status_text(exc)}"
            ) from None
        size = len(leaves) - before
        if first_shape is None:
            first_shape, first_size = shape, size
        elif size != first_size:
            raise _wrap(index, name, keyed, f"Expecting tensor size: {first_size} but got: {size}")
        elif shape != first_shape:
            raise _wrap(
                index,
                name,
                keyed,
                f"Expecting shape {_shape_text(first_shape)} but got: {_shape_text(shape)}",
            )
    return _to_array(leaves, [len(values), *(first_shape or [])], spec)


def _wrap(index: int, name: str, keyed: bool, message: str) -> ServingError:
    where = f"{index} key: {name}" if keyed else f"{index}"
    return invalid_argument(
        f"Failed to process element: {where} of 'instances' list. "
        f"Error: INVALID_ARGUMENT: {message}"
    )


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def predict_inputs(
    doc: dict, specs: Mapping[str, TensorSpec], fast: bool = True
) -> tuple[dict[str, np.ndarray], str]:
    """The request's tensors and its format (row or columnar)."""
    has_instances = INSTANCES in doc
    has_inputs = INPUTS in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {pretty(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc[INSTANCES]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {pretty(doc)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid_argument(f"JSON Value: {pretty(doc)} No values in 'instances' array")
        return _instances(instances, specs, fast), ROW
    if has_inputs:
        value = doc[INPUTS]
        if not isinstance(value, dict) or is_b64(value):
            if len(specs) > 1:
                raise invalid_argument(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            ((name, spec),) = specs.items()
            return {name: value_tensor(value, spec, fast)}, COLUMNAR
        out = {}
        for name in sorted(specs):
            if name not in value:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            out[name] = value_tensor(value[name], specs[name], fast)
        return out, COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------- classify/regress


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _add_feature_value(value: object, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")

    def want(expected: str) -> None:
        if kind is not None and kind != expected:
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[kind]}"
            )

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )
    if isinstance(value, bool):
        want("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        want("bytes_list")
        feature.bytes_list.value.append(b64_decode(value))
    elif isinstance(value, str):
        want("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", errors="surrogateescape"))
    elif isinstance(value, float):
        want("float_list")
        if math.isfinite(value) and abs(value) > FLT_MAX:
            raise invalid_argument(
                f"Cannot convert JSON value: {pretty(value)} to float without loss of precision."
            )
        feature.float_list.value.append(value)
    else:
        value = cast(int, value)  # what is left of JSON's types
        want("int64_list")
        if value > INT64[1]:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < INT64[0]:
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: Number")
        feature.int64_list.value.append(value)


def make_example(value: object) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example


def examples(doc: dict) -> np.ndarray:
    """`context` + `examples` → serialized tf.Examples (context first, as gRPC merges them).

    TF Serving says "When method is classify" for regress requests too.
    """
    context = b""
    if "context" in doc:
        context = make_example(doc["context"]).SerializeToString()
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {pretty(doc)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    items = doc["examples"]
    if not isinstance(items, list):
        raise invalid_argument(
            f"JSON Value: {pretty(doc)} Expecting 'examples' value to be an list/array"
        )
    if not items:
        raise invalid_argument(f"JSON Value: {pretty(doc)} 'examples' value is an empty array")
    records = [context + make_example(item).SerializeToString() for item in items]
    out = np.empty(len(records), dtype=object)
    out[:] = records
    return out
