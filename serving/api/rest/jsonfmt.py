"""Response bodies byte for byte as TF Serving writes them.

TF Serving builds predict/classify/regress/error bodies with rapidjson's
PrettyWriter (4-space indent), switching arrays to single-line mode for each
row of a row-format response. Reproduced here:

    {"instances": [1.0, 2.0]}    →  {\\n    "predictions": [2.5, 3.0\\n    ]\\n}
    {"inputs": [[1.0], [2.0]]}   →  {\\n    "outputs": [\\n        [\\n            2.5\\n ...

Numbers are not formatted one by one in Python: every element becomes a
printf directive (or a literal), and one `%` operation over the joined
directives (C code, correctly rounded) formats a whole tensor.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from serving.api.rest.floatfmt import float_specs, format_scalar
from serving.errors import invalid_argument

INDENT = "    "
# Numbers formatted per `%` operation when a large answer is written in slices.
_CHUNK_ELEMENTS = 1 << 14
_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)}
_ESCAPES.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"})
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def json_string(text: str) -> str:
    """A JSON string literal as rapidjson writes it (UTF-8 kept, controls escaped)."""
    return '"' + text.translate(_ESCAPES) + '"'


def error_json(message: str) -> str:
    """TF Serving's error body: `{"error": ...}` from a PrettyWriter, no trailing newline."""
    return "{\n" + INDENT + '"error": ' + json_string(message) + "\n}"


def error_body(message: str) -> bytes:
    """`error_json` as bytes. A message may quote request text that is not valid UTF-8
    (kept as surrogate escapes, written back as the client's bytes, as rapidjson
    does) or a lone surrogate (written as a \\u escape); encoding never fails."""
    text = error_json(message)
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="backslashreplace")


def _bytes_text(value: object) -> str:
    # TF Serving writes string tensors' raw bytes; undecodable bytes pass through
    # unchanged (surrogateescape), as rapidjson does not validate UTF-8.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _fill(specs: np.ndarray, numbers: list) -> np.ndarray:
    """Apply one `%` to all pieces at once; return the texts, same shape."""
    if not numbers:
        return specs
    texts = _joined(specs, numbers).split("\x00")
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out.reshape(specs.shape)


def _joined(specs: np.ndarray, numbers: list) -> str:
    """The texts of all pieces, in order, NUL-separated (no JSON text holds a raw NUL)."""
    joined = "\x00".join(specs.reshape(-1).tolist())
    return joined % tuple(numbers) if numbers else joined


# Below this many elements, formatting each value in Python beats the vectorised
# path's fixed NumPy cost (measured with a timeit of both on a one-element answer).
_SMALL = 64


def _numeric_specs(array: np.ndarray) -> tuple[np.ndarray, list] | None:
    """Format pieces + the numbers they consume, for numeric and bool tensors."""
    kind = array.dtype.kind
    if array.size <= _SMALL and kind in "fiu":
        double = array.dtype == np.float64
        flat = array.reshape(-1).tolist()
        texts = [format_scalar(v, double) for v in flat] if kind == "f" else list(map(str, flat))
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return out.reshape(array.shape), []
    if kind == "f" or array.dtype.name == "bfloat16":
        specs, numbers = float_specs(array, array.dtype == np.float64)
        return specs, numbers.tolist()
    if kind in "iu":
        return np.full(array.shape, "%d", dtype=object), array.reshape(-1).tolist()
    if kind == "b":
        return np.where(array, "true", "false").astype(object), []
    return None


def tensor_texts(name: str, array: np.ndarray, depth_for_b64: int = 0) -> np.ndarray:
    """JSON text of every element of an output tensor (object array, same shape)."""
    array = np.asarray(array)
    numeric = _numeric_specs(array)
    if numeric is not None:
        return _fill(*numeric)
    if array.dtype.kind in "OSU":
        flat = array.reshape(-1).tolist()
        if name.endswith("_bytes"):
            pieces = [_b64_object(v, depth_for_b64) for v in flat]
        else:
            pieces = [json_string(_bytes_text(v)) for v in flat]
        out = np.empty(len(flat), dtype=object)
        out[:] = pieces
        return out.reshape(array.shape)
    from serving.servables.signature import numpy_type_name  # TensorFlow's protos, on error only

    raise invalid_argument(f"Failed to write JSON value for tensor type: {numpy_type_name(array)}")


def _single(array: np.ndarray, head: str, render: Callable[[Any], str], tail: str) -> bytes | None:
    """One numeric tensor: lay out the format pieces, then one `%` fills every number."""
    numeric = _numeric_specs(array)
    if numeric is None:
        return None
    specs, numbers = numeric
    fmt = head + render(specs.tolist()) + tail
    return _encode(fmt % tuple(numbers) if numbers else fmt)


def _b64_object(value: object, depth: int) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    encoded = base64.b64encode(raw).decode("ascii")
    # A PrettyWriter object is always multi-line, even inside a single-line array.
    return "{\n" + INDENT * (depth + 1) + f'"b64": "{encoded}"\n' + INDENT * depth + "}"


def layout(specs: object, depth: int, single: bool) -> str:
    """Nested lists of pieces → rapidjson PrettyWriter text.

    `depth` is the number of containers already open around this value;
    `single` is kFormatSingleLineArray (", " between items, no newlines).
    """
    if not isinstance(specs, list):
        return specs  # type: ignore[return-value]
    if not specs:
        return "[]"
    inner = depth + 1
    if single:
        if isinstance(specs[0], list):
            return "[" + ", ".join(layout(s, inner, True) for s in specs) + "]"
        return "[" + ", ".join(specs) + "]"
    pad = "\n" + INDENT * inner
    if isinstance(specs[0], list):
        body = ("," + pad).join(layout(s, inner, False) for s in specs)
    else:
        body = ("," + pad).join(specs)
    return "[" + pad + body + "\n" + INDENT * depth + "]"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def _check_batch(outputs: Mapping[str, np.ndarray]) -> int:
    batch = 0
    for name, array in outputs.items():
        if np.ndim(array) == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        size = np.shape(array)[0]
        if size < 1:
            raise invalid_argument(f"Tensor name: {name} has invalid batch size: {size}")
        if batch and size != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    return batch


def _rows_text(rows: list) -> str:
    return ", ".join([layout(row, 2, True) for row in rows])


def _single_rows(array: np.ndarray, head: str, tail: str) -> list[bytes] | None:
    """`_single` for a row-format answer, a slice of rows at a time, as pieces.

    A large tensor formatted in one go holds several Python objects per number
    at once (pieces, numbers, their tuple, the text) and keeps the GIL for the
    whole `%`; slices bound both, and the pieces are sent as they are (a joined
    copy would double the answer's memory).
    """
    per_row = max(1, math.prod(array.shape[1:]))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    if array.ndim == 0 or len(array) <= step or array.dtype.kind not in "fiub":
        whole = _single(array, head, _rows_text, tail)
        return None if whole is None else [whole]
    parts: list[bytes] = [head.encode()]
    for start in range(0, len(array), step):
        part = _single(array[start : start + step], "", _rows_text, "")
        if part is None:
            return None
        if start:
            parts.append(b", ")
        parts.append(part)
    parts.append(tail.encode())
    return parts


def predict_row(outputs: Mapping[str, np.ndarray]) -> bytes:
    """`{"predictions": [...]}`: one entry per batch row (an object if several outputs)."""
    return b"".join(predict_row_pieces(outputs))


def predict_row_pieces(outputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """`predict_row`'s answer in pieces, to be sent one after another."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    batch = _check_batch(outputs)
    head = "{\n" + INDENT + '"predictions": ['
    tail = "\n" + INDENT + "]\n}"
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        array = np.asarray(array)
        fast = _single_rows(array, head, tail)
        if fast is not None:
            return fast
        rows = tensor_texts(name, array, np.ndim(array) + 1).tolist()
        if np.ndim(array) == 1:
            return [_encode(head + ", ".join(rows) + tail)]
        return [_encode(head + ", ".join([layout(row, 2, True) for row in rows]) + tail)]
    columns = [
        (json_string(name), tensor_texts(name, array, np.ndim(array) + 2).tolist())
        for name, array in outputs.items()
    ]
    key_pad = "\n" + INDENT * 3
    items = []
    for row in range(batch):
        fields = [key_pad + key + ": " + layout(rows[row], 3, True) for key, rows in columns]
        items.append("{" + ",".join(fields) + "\n" + INDENT * 2 + "}")
    pad = "\n" + INDENT * 2
    return [_encode(head + pad + ("," + pad).join(items) + tail)]


def predict_columnar(outputs: Mapping[str, np.ndarray]) -> bytes:
    """`{"outputs": value}` or `{"outputs": {name: value, ...}}`, multi-line arrays."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        array = np.asarray(array)
        head = "{\n" + INDENT + '"outputs": '
        fast = _single(array, head, lambda specs: layout(specs, 1, False), "\n}")
        if fast is not None:
            return fast
        texts = tensor_texts(name, array, np.ndim(array) + 1)
        return _encode("{\n" + INDENT + '"outputs": ' + layout(texts.tolist(), 1, False) + "\n}")
    fields = []
    for name, array in outputs.items():
        texts = tensor_texts(name, array, np.ndim(array) + 2)
        fields.append(
            "\n" + INDENT * 2 + json_string(name) + ": " + layout(texts.tolist(), 2, False)
        )
    return _encode("{\n" + INDENT + '"outputs": {' + ",".join(fields) + "\n" + INDENT + "}\n}")


class Pieces:
    """A large answer as its exact length plus the means to write it a slice at a time.

    The columnar layout spends tens of bytes of indentation per number, so the
    written answer is several times its tensors; it is kept as the numbers' texts
    (NUL-joined, a few bytes each) and each slice's text is built from a template
    of the layout only when it is sent.
    """

    def __init__(self) -> None:
        self.nbytes = 0
        self._parts: list[tuple[bytes, bytes | None]] = []  # (literal or template, texts)

    def literal(self, text: str) -> None:
        data = _encode(text)
        self._parts.append((data, None))
        self.nbytes += len(data)

    def filled(self, template: bytes, texts: bytes, count: int) -> None:
        """`template` with `count` `%s` slots, filled by the NUL-separated `texts`."""
        self._parts.append((template, texts))
        self.nbytes += len(template) - 2 * count + len(texts) - (count - 1)

    def __iter__(self) -> Iterator[bytes]:
        """The answer's bytes in order; short literals between slices are sent together."""
        pending: list[bytes] = []
        for template, texts in self._parts:
            if texts is None:
                pending.append(template)
                continue
            if pending:
                yield b"".join(pending)
                pending = []
            yield template % tuple(texts.split(b"\x00"))
        if pending:
            yield b"".join(pending)


def _columnar_value(
    out: Pieces, name: str, array: np.ndarray, depth: int, chunk: int, templates: dict
) -> None:
    """`layout(tensor_texts(array), depth, False)` into `out`, `chunk` numbers per slice."""
    b64_depth = array.ndim + depth
    if array.ndim == 0 or array.size <= chunk:
        out.literal(layout(tensor_texts(name, array, b64_depth).tolist(), depth, False))
        return
    inner = depth + 1
    pad = "\n" + INDENT * inner
    out.literal("[" + pad)
    per_item = int(np.prod(array.shape[1:]))
    if per_item > chunk:
        for index in range(len(array)):
            if index:
                out.literal("," + pad)
            _columnar_value(out, name, array[index], inner, chunk, templates)
    else:
        step = max(1, chunk // per_item)
        for start in range(0, len(array), step):
            if start:
                out.literal("," + pad)
            part = array[start : start + step]
            key = (part.shape, inner)
            if key not in templates:
                slots = np.full(part.shape, "%s", dtype=object).tolist()
                text = ("," + pad).join([layout(item, inner, False) for item in slots])
                templates[key] = text.encode()
            numeric = _numeric_specs(part)
            if numeric is not None:
                texts = _joined(*numeric)
            else:
                texts = "\x00".join(tensor_texts(name, part, b64_depth).reshape(-1).tolist())
            out.filled(templates[key], _encode(texts), part.size)
    out.literal("\n" + INDENT * depth + "]")


def predict_columnar_pieces(
    outputs: Mapping[str, np.ndarray], chunk: int = _CHUNK_ELEMENTS
) -> Pieces:
    """`predict_columnar`'s answer, written `chunk` numbers at a time when sent."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    out = Pieces()
    templates: dict = {}
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        out.literal("{\n" + INDENT + '"outputs": ')
        _columnar_value(out, name, np.asarray(array), 1, chunk, templates)
        out.literal("\n}")
        return out
    out.literal("{\n" + INDENT + '"outputs": {')
    for index, (name, array) in enumerate(outputs.items()):
        key = "\n" + INDENT * 2 + json_string(name) + ": "
        out.literal(("," if index else "") + key)
        _columnar_value(out, name, np.asarray(array), 2, chunk, templates)
    out.literal("\n" + INDENT + "}\n}")
    return out


def classify_json(classes: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`; a missing output is "" / 0.0."""
    reference = classes if classes is not None else scores
    assert reference is not None
    batch, num = reference.shape
    if batch == 0:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    if scores is not None:
        score_rows = tensor_texts("scores", scores.astype(np.float32)).tolist()
    else:
        score_rows = [["0.0"] * num for _ in range(batch)]
    if classes is not None:
        label_rows = [[json_string(_bytes_text(v)) for v in row] for row in classes.tolist()]
    else:
        label_rows = [['""'] * num for _ in range(batch)]
    items = []
    for labels, row_scores in zip(label_rows, score_rows, strict=True):
        pairs = ", ".join(f"[{lab}, {sc}]" for lab, sc in zip(labels, row_scores, strict=True))
        items.append(f"[{pairs}]")
    return _encode("{\n" + INDENT + '"results": [' + ", ".join(items) + "\n" + INDENT + "]\n}")


def regress_json(values: np.ndarray) -> bytes:
    """`{"results": [v1, v2, ...]}` (one single-line array)."""
    if np.size(values) == 0:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    texts = tensor_texts("outputs", np.asarray(values, dtype=np.float32).reshape(-1))
    return _encode("{\n" + INDENT + '"results": [' + ", ".join(texts.tolist()) + "]\n}")
