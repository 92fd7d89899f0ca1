"""Large arrays of plain JSON numbers straight into NumPy, without a Python object per number.

A request like `{"instances": [[1], [2], ...]}` costs many times its size in
Python objects when parsed whole (an object and a list slot for a number of a
few bytes), and one parse of it holds the GIL long enough to stall every other
client. Here each large array of plain numbers in the body is cut out before
the parse (the rest, the "envelope", is parsed as usual with a placeholder
string in its place), checked at once (numbers, brackets, a regular shape),
and converted later to the signature's dtype a slice at a time, into one
preallocated array. Every case this path is not sure to decode exactly as the
general path does (an odd dtype, an integer a float cannot hold, anything not
a regular array of numbers) is handed back to it, so both give the same
tensors and the same errors.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2

from serving.api.rest import decode
from serving.errors import ServingError
from serving.servables.signature import TensorSpec

# Hand-written on purpose, from a measurement (docs/rest.md has the table): on a
# 24 MB body of `[[1], [2], ...]` the general path (orjson, then NumPy) took
# +24.9x the body in memory and held the GIL for about 4 s in one piece; this
# path takes +1.0x and holds it for a few ms at a time. No library parses JSON
# numbers into a typed array in bounded slices; orjson still reads every number.

# Only spans at least this long are cut out: below it the general path is cheap.
MIN_SPAN = 1 << 16
# The body is examined, and a span parsed, this many bytes at a time: each slice
# holds the GIL briefly and needs only a few times its size in temporaries.
CHUNK = 1 << 16
# A body with more than this many non-numeric bytes (strings, objects) is left
# to the general path: the positions of such bytes would cost memory to keep.
MAX_OTHER = 1 << 16


_WS, _OPEN, _CLOSE, _COMMA, _NUM, _OTHER = range(6)
_CLASS = np.full(256, _OTHER, dtype=np.uint8)
_CLASS[list(b" \t\r\n")] = _WS
_CLASS[ord("[")] = _OPEN
_CLASS[ord("]")] = _CLOSE
_CLASS[ord(",")] = _COMMA
_CLASS[list(b"0123456789.eE+-")] = _NUM
# Which token may follow which: "[" and "," are followed by a list or a number;
# a number and "]" by "," or "]" (so no empty lists, no missing commas).
_FOLLOWS = np.zeros((6, 6), dtype=bool)
for _a, _b in [(_OPEN, _OPEN), (_OPEN, _NUM), (_COMMA, _OPEN), (_COMMA, _NUM)]:
    _FOLLOWS[_a, _b] = True
for _a, _b in [(_NUM, _COMMA), (_NUM, _CLOSE), (_CLOSE, _COMMA), (_CLOSE, _CLOSE)]:
    _FOLLOWS[_a, _b] = True
# Brackets become spaces, so a slice of the array parses as a flat list of numbers
# (and "[1][2]" still fails, as "1 2").
_UNBRACKET = bytes.maketrans(b"[]", b"  ")

_FLOATS = (*decode.FLOATS, types_pb2.DT_DOUBLE)
# The integer range each dtype accepts from JSON, as the general path checks it.
_INT_RANGES = {
    **dict.fromkeys(decode.SMALL_INTS, decode.INT32),
    types_pb2.DT_INT64: decode.INT64,
    types_pb2.DT_UINT32: (0, (1 << 32) - 1),
    types_pb2.DT_UINT64: (0, (1 << 63) - 1),
}


class _NotPlain(Exception):
    """The text is not a regular array of plain numbers: the general path decides."""


@dataclass
class Span:
    """A checked array of numbers in the body, `body[start:end]`, and what it holds."""

    body: bytes | bytearray
    start: int
    end: int
    shape: tuple[int, ...] = ()
    count: int = 0
    has_float: bool = False  # any number written with a fraction or an exponent
    int_lo: int = 0  # the range of the integers (when there are no floats)
    int_hi: int = 0
    big: float = 0.0  # the largest magnitude of a number that may have been an integer
    top: float = 0.0  # the largest magnitude of any number
    # Between commas: (start, end, the integers already parsed when they take
    # less room than their text, else None: parsed again from the text).
    slices: list[tuple[int, int, np.ndarray | None]] = field(default_factory=list)

    def to_array(self, spec: TensorSpec) -> np.ndarray | None:
        """The values as the signature's dtype, or None when the general path must decide."""
        dtype = spec.dtype
        if dtype in _FLOATS:
            double = dtype == types_pb2.DT_DOUBLE
            if self.big > (decode.DOUBLE_MAX_INT if double else decode.FLOAT_MAX_INT):
                return None  # perhaps an integer a float cannot hold exactly: an error there
            if not double and self.top > decode.FLT_MAX:
                return None
            work: type = np.float64
        elif dtype in _INT_RANGES:
            lo, hi = _INT_RANGES[dtype]
            if self.has_float or self.int_lo < lo or self.int_hi > hi:
                return None
            work = np.int64
        else:
            return None  # strings, bools and the rest: numbers are an error there
        out = np.empty(self.count, dtype=spec.np_dtype)
        done = 0
        for start, end, kept in self.slices:
            values: np.ndarray = (
                kept if kept is not None else np.array(_numbers(self.body, start, end), work)
            )
            # Narrowing wraps as TF Serving's int_val does (300 becomes 44 in uint8).
            np.copyto(out[done : done + len(values)], values, casting="unsafe")
            done += len(values)
        return out.reshape(self.shape)


def _numbers(body: bytes | bytearray, start: int, end: int) -> list:
    return orjson.loads(b"[" + body[start:end].translate(_UNBRACKET) + b"]")


def _check(span: Span) -> None:
    """Validate `span` as one JSON array of numbers of a regular shape; fill in its summary.

    Tokens are classified with a lookup table; the nesting is checked per level
    as a periodic pattern: every list at one level is "[", then the same number
    of commas, then "]".
    """
    body, pos, end = span.body, span.start, span.end
    view = np.frombuffer(body, dtype=np.uint8)
    depth = 0
    last = _COMMA  # "[" must come first, as after a comma
    rank = 0
    sizes: dict[int, int] = {}  # list size per level (from level 2), once known
    seen: dict[int, int] = {}  # events ("[", ",", "]") so far per level
    outer = 0  # commas at level 1
    ints = [1 << 64, -(1 << 64)]  # an empty range until integers are seen
    first = True
    while pos < end:
        cut = end if end - pos <= CHUNK else body.rfind(b",", pos, pos + CHUNK)
        if cut <= pos:
            raise _NotPlain
        stop = cut + 1 if cut < end else end  # tokens include the comma
        cls = _CLASS[view[pos:stop]]
        num = cls == _NUM
        starts = num.copy()
        starts[1:] &= ~num[:-1]
        tok = cls[(cls == _OPEN) | (cls == _CLOSE) | (cls == _COMMA) | starts]
        if (cls == _OTHER).any() or not tok.size:
            raise _NotPlain
        if not _FOLLOWS[last, tok[0]] or not _FOLLOWS[tok[:-1], tok[1:]].all():
            raise _NotPlain
        delta = (tok == _OPEN).astype(np.int32) - (tok == _CLOSE)
        after = depth + np.cumsum(delta, dtype=np.int32)
        level = after + (tok == _CLOSE)
        final = stop == end
        if (after[:-1] < 1).any() or (after[-1] < 1 and not final):
            raise _NotPlain
        if first:
            rank = int(np.argmax(tok == _NUM))
            if not 1 <= rank <= decode.MAX_RANK:
                raise _NotPlain
            first = False
        is_num = tok == _NUM
        if (level[is_num] != rank).any():
            raise _NotPlain
        events = ~is_num
        outer += int(((tok == _COMMA) & (level == 1)).sum())
        for lvl in range(2, rank + 1):
            _periodic(tok[events & (level == lvl)], lvl, sizes, seen)
        text = body[pos:cut]
        values = orjson.loads(b"[" + text.translate(_UNBRACKET) + b"]")
        if len(values) != int(is_num.sum()):
            raise _NotPlain
        kept = _summarize(span, values, ints, text)
        span.slices.append((pos, cut, kept))
        depth = int(after[-1])
        last = int(tok[-1])
        pos = stop
    if depth != 0 or last != _CLOSE:
        raise _NotPlain
    span.shape = (outer + 1, *(sizes[lvl] for lvl in range(2, rank + 1)))
    span.count = int(np.prod(span.shape))
    span.int_lo, span.int_hi = ints


def _periodic(ev: np.ndarray, lvl: int, sizes: dict[int, int], seen: dict[int, int]) -> None:
    """Events of one level must repeat "[", size-1 commas, "]"."""
    done = seen.get(lvl, 0)
    seen[lvl] = done + len(ev)
    if not len(ev):
        return
    if lvl not in sizes:
        closes = np.flatnonzero(ev == _CLOSE)
        if not closes.size:
            # Still inside the first list of this level: "[" then commas only.
            rest = ev[1:] if done == 0 else ev
            if (done == 0 and ev[0] != _OPEN) or (rest != _COMMA).any():
                raise _NotPlain
            return
        sizes[lvl] = done + int(closes[0])  # "[" + commas before the first "]"
    period = sizes[lvl] + 1
    phase = (done + np.arange(len(ev))) % period
    expected = np.where(phase == 0, _OPEN, np.where(phase == period - 1, _CLOSE, _COMMA))
    if period == 1 or (ev != expected).any():
        raise _NotPlain


def _summarize(
    span: Span, values: list, ints: list[int], text: bytes | bytearray
) -> np.ndarray | None:
    """Fold one slice's numbers into the span's summary; return them as the narrowest
    integer array when that is smaller than half their text (kept, not parsed again)."""
    if b"." not in text and b"e" not in text and b"E" not in text:
        try:
            arr = np.array(values, dtype=np.int64)
        except OverflowError:
            raise _NotPlain from None  # past int64: the general path decides
        lo, hi = int(arr.min()), int(arr.max())
        if max(-lo, hi) >= 1 << 62:
            # Near int64's ends (or a number past uint64, which orjson reads as a
            # float): the exact range from the Python values.
            lo, hi = min(values), max(values)
            if not (isinstance(lo, int) and isinstance(hi, int)) or hi > decode.INT64[1]:
                raise _NotPlain
        ints[0], ints[1] = min(ints[0], lo), max(ints[1], hi)
        top = float(max(-lo, hi))
        span.big = max(span.big, top)
        span.top = max(span.top, top)
        for small in (np.int8, np.int16, np.int32):
            info = np.iinfo(small)
            if info.min <= lo and hi <= info.max:
                if len(arr) * np.dtype(small).itemsize * 2 <= len(text):
                    return arr.astype(small)
                break
        return None
    arr = np.array(values, dtype=np.float64)
    span.has_float = True
    magnitude = np.abs(arr)
    span.top = max(span.top, float(magnitude.max()))
    integral = magnitude[arr == np.floor(arr)]
    if integral.size:
        span.big = max(span.big, float(integral.max()))
    return None


# ------------------------------------------------------------------ the body


@dataclass
class Deferred:
    """A body whose large number arrays wait for the signature's dtypes."""

    body: bytes | bytearray
    spans: dict[str, Span]  # by placeholder


def split(body: bytes | bytearray) -> tuple[dict, Deferred] | None:
    """The envelope document (placeholders for the large number arrays), or None when
    the body has no such array or is anything but the plain case: the general path then
    parses it (and reports any error)."""
    if len(body) < MIN_SPAN:
        return None
    ranges = _candidates(body)
    if not ranges:
        return None
    nonce = secrets.token_hex(8)
    pieces: list[bytes | bytearray] = []
    spans: dict[str, Span] = {}
    pos = 0
    for index, (start, end) in enumerate(ranges):
        span = Span(body, start, end)
        try:
            _check(span)
        except (_NotPlain, orjson.JSONDecodeError):
            return None
        name = f"\x00{nonce}-{index}"
        spans[name] = span
        pieces += [body[pos:start], orjson.dumps(name)]
        pos = end
    pieces.append(body[pos:])
    try:
        doc = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not _placed(doc, spans):
        return None
    return doc, Deferred(body, spans)


def _candidates(body: bytes | bytearray) -> list[tuple[int, int]]:
    """Runs of number-array bytes after a ':' long enough to cut out, trimmed to `[...]`."""
    view = np.frombuffer(body, dtype=np.uint8)
    others: list[np.ndarray] = []
    total = 0
    for pos in range(0, len(body), CHUNK):
        found = np.flatnonzero(_CLASS[view[pos : pos + CHUNK]] == _OTHER)
        total += found.size
        if total > MAX_OTHER:
            return []
        others.append(found + pos)
    bounds = np.concatenate([*others, [len(body)]])
    gaps = np.flatnonzero(np.diff(bounds) > MIN_SPAN)
    out = []
    for i in gaps.tolist():
        colon, stop = int(bounds[i]), int(bounds[i + 1])
        if body[colon] != ord(":"):
            continue
        start = _skip_space(view, colon + 1, stop, 1)
        end = _skip_space(view, stop - 1, start, -1)
        if end > start and body[end] == ord(","):
            end = _skip_space(view, end - 1, start, -1)
        end += 1
        if end - start >= MIN_SPAN and body[start] == ord("[") and body[end - 1] == ord("]"):
            out.append((start, end))
    return out


def _skip_space(view: np.ndarray, pos: int, limit: int, step: int) -> int:
    """The first position from `pos` towards `limit` that is not whitespace."""
    while (pos < limit) if step > 0 else (pos > limit):
        lo, hi = (pos, min(pos + 4096, limit)) if step > 0 else (max(pos - 4095, limit), pos + 1)
        found = np.flatnonzero(_CLASS[view[lo:hi]] != _WS)
        if found.size:
            return lo + int(found[0] if step > 0 else found[-1])
        pos = hi if step > 0 else lo - 1
    return pos


def _placed(doc: dict, spans: Mapping[str, Span]) -> bool:
    """Every placeholder stands where a tensor value goes, and nothing the general path
    would quote in an error (the whole document) can show one."""
    if decode.INSTANCES in doc and decode.INPUTS in doc:
        return False
    name = doc.get("signature_name")
    if name is not None and not isinstance(name, str):
        return False
    found = 0
    for key in (decode.INSTANCES, decode.INPUTS):
        value = doc.get(key)
        if isinstance(value, str) and value in spans:
            found += 1
        elif key == decode.INPUTS and isinstance(value, dict):
            if decode.B64 in value and len(value) == 1:
                return False
            found += sum(isinstance(v, str) and v in spans for v in value.values())
    return found == len(spans)


def is_placeholder(value: object, deferred: Deferred) -> bool:
    return isinstance(value, str) and value in deferred.spans


def predict_inputs(
    doc: dict, deferred: Deferred, specs: Mapping[str, TensorSpec], fast: bool
) -> tuple[dict[str, np.ndarray], str]:
    """`decode.predict_inputs` for a split body: the arrays straight from the text when
    every value converts plainly, else the general path over the whole body."""
    found = _plain_inputs(doc, deferred, specs, fast)
    if found is not None:
        return found
    return decode.predict_inputs(decode.parse_json(deferred.body), specs, fast)


def _plain_inputs(
    doc: dict, deferred: Deferred, specs: Mapping[str, TensorSpec], fast: bool
) -> tuple[dict[str, np.ndarray], str] | None:
    spans = deferred.spans
    if decode.INSTANCES in doc or not isinstance(doc.get(decode.INPUTS), dict):
        layout = decode.ROW if decode.INSTANCES in doc else decode.COLUMNAR
        value = doc.get(decode.INSTANCES, doc.get(decode.INPUTS))
        if len(specs) != 1 or not is_placeholder(value, deferred):
            return None
        ((name, spec),) = specs.items()
        arr = spans[value].to_array(spec)  # type: ignore[index]
        return ({name: arr}, layout) if arr is not None else None
    value = doc[decode.INPUTS]
    out = {}
    for name in sorted(specs):
        if name not in value:
            return None
        item = value[name]
        if is_placeholder(item, deferred):
            arr = spans[item].to_array(specs[name])
        else:
            try:
                arr = decode.value_tensor(item, specs[name], fast)
            except ServingError:
                return None  # the general path says it, in its own order
        if arr is None:
            return None
        out[name] = arr
    return out, decode.COLUMNAR
