"""The plain-number path against the general one: same tensors, same errors.

Every body goes through both: `decode.parse_json` + `decode.predict_inputs`
(the reference) and `numeric.split` + `numeric.predict_inputs`. The span and
slice sizes are shrunk so that small bodies are cut out and parsed in many
slices, with slice boundaries at every kind of place in the nesting.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving.api.rest import decode, numeric
from serving.errors import ServingError
from serving.servables.signature import TensorSpec

F32, F64, F16, BF16 = (
    types_pb2.DT_FLOAT,
    types_pb2.DT_DOUBLE,
    types_pb2.DT_HALF,
    types_pb2.DT_BFLOAT16,
)
I8, U8, I16, I32, I64, U32, U64 = (
    types_pb2.DT_INT8,
    types_pb2.DT_UINT8,
    types_pb2.DT_INT16,
    types_pb2.DT_INT32,
    types_pb2.DT_INT64,
    types_pb2.DT_UINT32,
    types_pb2.DT_UINT64,
)
NUMERIC = [F32, F64, F16, BF16, I8, U8, I16, I32, I64, U32, U64]
ALL = [*NUMERIC, types_pb2.DT_BOOL, types_pb2.DT_STRING]


@pytest.fixture(autouse=True, params=[16, 64])
def small_slices(monkeypatch, request) -> None:
    monkeypatch.setattr(numeric, "MIN_SPAN", 16)
    monkeypatch.setattr(numeric, "CHUNK", request.param)


def specs(dtype: int, *names: str) -> dict[str, TensorSpec]:
    return {name: TensorSpec(name, f"{name}:0", dtype, None) for name in names or ("x",)}


def outcome(run) -> object:
    try:
        arrays, layout = run()
    except ServingError as exc:
        return ("error", exc.code, exc.message)
    return (
        layout,
        {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in sorted(arrays.items())},
    )


def both(body: bytes, wanted: dict[str, TensorSpec]) -> tuple[object, object, bool]:
    """(general outcome, plain-path outcome, whether the plain path decoded it itself)."""
    general = outcome(lambda: decode.predict_inputs(decode.parse_json(body), wanted, True))
    split = numeric.split(body)
    if split is None:
        return general, general, False
    doc, deferred = split
    assert decode.signature_name(doc) == decode.signature_name(decode.parse_json(body))
    taken = numeric._plain_inputs(doc, deferred, wanted, True) is not None
    return general, outcome(lambda: numeric.predict_inputs(doc, deferred, wanted, True)), taken


def same(body: bytes, wanted: dict[str, TensorSpec]) -> bool:
    general, plain, taken = both(body, wanted)
    assert plain == general, body[:200]
    return taken


def dumps(value: object, **kw) -> bytes:
    return json.dumps(value, **kw).encode()


# ----------------------------------------------------------------- accepted

SHAPES = [(40,), (20, 1), (7, 3), (2, 3, 4), (3, 1, 2, 1, 2), (1, 30)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", ["instances", "inputs"])
@pytest.mark.parametrize("dtype", ALL)
def test_regular_arrays_of_every_shape_and_dtype(shape, key, dtype) -> None:
    values = (np.arange(int(np.prod(shape))) % 23 - 11).reshape(shape).tolist()
    taken = same(dumps({key: values}), specs(dtype))
    assert taken == (dtype in NUMERIC and dtype not in (U32, U64))  # negatives: an error


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("indent", [None, 1, "\t"])
def test_numbers_in_every_spelling(dtype, indent) -> None:
    floats = [0.5, -2.25, 1e5, 1.5e-7, 3.4028234663852886e38, -0.0, 0.1, 123456.789]
    ints = [0, 1, -1, 16777215, -16777215, 300, -129, 2**31 - 1, -(2**31), 65535]
    for values in (floats, ints, [*ints, *floats], [[v] for v in floats + ints]):
        same(dumps({"instances": values * 3}, indent=indent), specs(dtype))
    text = b"[1E5, 1e+2, -2.5E-3, 0e0, -0, -0.0, 7.0e0, 1.25, 2, 3, 4, 5, 6, 7, 8]"
    assert same(b'{"inputs": ' + text + b"}", specs(dtype)) == (dtype in (F32, F64, F16, BF16))


@pytest.mark.parametrize("dtype", NUMERIC)
def test_limits_of_each_dtype(dtype) -> None:
    edges = [
        16777216,
        -16777216,
        2**53 - 1,
        2**53,
        16777216.0,
        3.5e38,
        1e300,
        2**31,
        -(2**31) - 1,
        2**32 - 1,
        2**32,
        2**63 - 1,
        -(2**63),
        2**63,
        2**64 - 1,
        2**64,
        -1,
        256,
    ]
    for edge in edges:
        same(dumps({"instances": [[1], [2], [edge], [3]] * 4}), specs(dtype))
        same(dumps({"instances": [edge, *range(40)]}), specs(dtype))


def test_named_inputs_columnar_with_small_and_large_values() -> None:
    large = list(range(40))
    assert same(dumps({"inputs": {"a": large, "b": [[1.5, 2]] * 20}}), specs(F32, "a", "b"))
    assert same(dumps({"inputs": {"a": large, "b": [1.5]}}), specs(F32, "a", "b"))
    same(dumps({"inputs": {"a": large, "b": ["s"]}}), specs(F32, "a", "b"))
    same(dumps({"inputs": {"a": large}}), specs(F32, "a", "b"))
    same(dumps({"inputs": {"a": large, "c": large}}), specs(F32, "a"))
    same(dumps({"inputs": {"b64": large}}), specs(F32, "b64"))
    same(dumps({"inputs": {"b64": large}}), specs(F32, "x"))
    same(dumps({"instances": large}), specs(F32, "a", "b"))
    same(dumps({"inputs": large}), specs(F32, "a", "b"))


def test_the_rest_of_the_document_is_as_parsed() -> None:
    values = list(range(40))
    for doc in (
        {"signature_name": "serving_default", "instances": values},
        {"instances": values, "signature_name": "s", "extra": {"k": [1, "x", None]}},
        {"signature_name": 5, "instances": values},
        {"signature_name": values, "instances": [1]},
        {"instances": values, "inputs": values},
        {"other": values, "instances": [1]},
        {"instances": values, "instances2": values},
    ):
        same(dumps(doc), specs(F32))
    # A repeated key: the last one counts, in both.
    same(b'{"instances": ' + dumps(values) + b', "instances": [1.5]}', specs(F32))
    same(b'{"instances": [1.5], "instances": ' + dumps(values) + b"}", specs(F32))


# ---------------------------------------------------------------- mistakes

RUN = ",".join(str(i % 10) for i in range(30)).encode()
MISTAKES = [
    b"[[1, 2], [3], [" + RUN + b"]]",  # ragged
    b"[[" + RUN + b"], [" + RUN + b", 1]]",  # ragged inner, the second row longer
    b"[[" + RUN + b"], 1]",  # a number where a list was
    b"[1, [" + RUN + b"]]",
    b"[[[1]], [" + RUN + b"]]",
    b"[" + RUN + b", null]",
    b"[" + RUN + b", true]",
    b"[" + RUN + b', "s"]',
    b"[" + RUN + b', {"b64": "AA=="}]',
    b"[[], [" + RUN + b"]]",
    b"[[" + RUN + b"], []]",
    b"[" + RUN + b",]",
    b"[" + RUN + b",, 1]",
    b"[" + RUN + b", 01]",
    b"[" + RUN + b", 1.]",
    b"[" + RUN + b", .5]",
    b"[" + RUN + b", +1]",
    b"[" + RUN + b", 1e]",
    b"[" + RUN + b", 1 2]",
    b"[" + RUN + b", -]",
    b"[[" + RUN + b"][" + RUN + b"]]",
    b"[[" + RUN + b"], [" + RUN + b"]",
    b"[[" + RUN + b"]]]",
    b"[" + RUN + b"], [1]",
    b"[" + RUN + b", 1e400]",
    b"[" + RUN + b", NaN]",
    b"[" + RUN + b", Infinity]",
    b"[" + RUN + b", " + b"9" * 30 + b"]",
    b"[" + RUN + b", 99999999999999999999]",
    b"[" * 65 + RUN + b"]" * 65,
    b"[" * 64 + RUN + b"]" * 64,
]


@pytest.mark.parametrize("value", MISTAKES)
@pytest.mark.parametrize("dtype", [F32, I32, U8, types_pb2.DT_STRING])
@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_mistakes_give_the_general_paths_errors(value, dtype, key) -> None:
    same(b'{"' + key.encode() + b'": ' + value + b"}", specs(dtype))
    same(b'{"' + key.encode() + b'": {"x": ' + value + b"}}", specs(dtype))


def test_unparsable_documents_give_the_general_paths_errors() -> None:
    big = dumps(list(range(40)))
    for body in (
        b'{"instances": ' + big,
        b'{"instances": ' + big + b"}}",
        b'{"instances" ' + big + b"}",
        b'{"instances": ' + big + b' "x": 1}',
        b'{"a": "x: ' + big + b'"}',
        b'["instances", ' + big + b"]",
        big,
    ):
        general, plain, taken = both(body, specs(F32))
        assert plain == general and general[0] == "error" and not taken  # type: ignore[index]
    # An array inside a string stays in the string.
    body = b'{"a": "x: ' + big + b'", "instances": [1]}'
    assert same(body, specs(F32)) is False


def test_a_small_body_or_one_of_strings_is_left_to_the_general_path() -> None:
    assert numeric.split(b'{"instances": [1, 2]}') is None
    assert numeric.split(dumps({"instances": ["a"] * 100})) is None
    assert numeric.split(dumps({"instances": [{"x": i} for i in range(40)]})) is None
