"""TF Serving's float text and JSON layout, checked without a server (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.api.rest import decode, jsonfmt
from serving.api.rest.floatfmt import format_floats, format_scalar
from serving.errors import ServingError

# absl::StrCat (6 significant digits, %g) unless that does not round-trip, then
# %.9g (float) / %.17g (double); ".0" when neither "." nor "e" (json_tensor.cc).
KNOWN_FLOAT = {
    0.1: "0.1",
    1 / 3: "0.333333343",
    9e6: "9e+06",
    1234567.0: "1234567.0",
    1e-5: "1e-05",
    1e-4: "0.0001",
    123456.0: "123456.0",
    2.5: "2.5",
    3.0: "3.0",
    42.0: "42.0",
    -0.0: "-0.0",
    3.4028235e38: "3.40282347e+38",
    16777216.0: "16777216.0",
    float("nan"): "NaN",
    float("inf"): "Infinity",
    float("-inf"): "-Infinity",
}


def test_known_float_texts() -> None:
    values = np.array(list(KNOWN_FLOAT), dtype=np.float32)
    assert format_floats(values) == list(KNOWN_FLOAT.values())
    assert format_floats(np.array([0.1, 1 / 3, 1e22], np.float64), double=True) == [
        "0.1",
        "0.33333333333333331",
        "1e+22",
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorized_floats_match_the_scalar_rules(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pools = [
        rng.standard_normal(20000).astype(np.float32),
        (rng.integers(-(10**7), 10**7, 20000) / 10.0 ** rng.integers(0, 12, 20000)).astype(
            np.float32
        ),
        rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]
    for values in pools:
        expected = [format_scalar(float(v)) for v in values.tolist()]
        assert format_floats(values) == expected
    doubles = rng.standard_normal(20000) * 10.0 ** rng.integers(-30, 30, 20000)
    expected = [format_scalar(v, double=True) for v in doubles.tolist()]
    assert format_floats(doubles, double=True) == expected


def test_layouts() -> None:
    y = np.array([[1.5], [2.0]], np.float32)
    assert jsonfmt.predict_row({"y": y}) == b'{\n    "predictions": [[1.5], [2.0]\n    ]\n}'
    assert jsonfmt.predict_columnar({"y": np.array([1, 2])}) == (
        b'{\n    "outputs": [\n        1,\n        2\n    ]\n}'
    )
    two = jsonfmt.predict_row({"a": np.array([1.0], np.float32), "b": np.array([[True]])})
    assert two == (
        b'{\n    "predictions": [\n        {\n            "a": 1.0,\n'
        b'            "b": [true]\n        }\n    ]\n}'
    )
    assert jsonfmt.error_json('bad "x"\n') == '{\n    "error": "bad \\"x\\"\\n"\n}'
    assert json.loads(jsonfmt.regress_json(np.array([0.5], np.float32))) == {"results": [0.5]}


def test_parse_errors_use_rapidjson_wording() -> None:
    cases = {
        b"": "JSON Parse error: The document is empty",
        b"{": "JSON Parse error: Missing a name for object member. at offset: 1",
        b'{"a": 1,}': "JSON Parse error: Missing a name for object member. at offset: 8",
        b'{"a" 1}': "JSON Parse error: Missing a colon after a name of object member. at offset: 5",
        b"[1] 2": "JSON Parse error: The document root must not be followed by other values. "
        "at offset: 4",
        b'{"a": 1 "b": 2}': "JSON Parse error: Missing a comma or '}' after an object member. "
        "at offset: 8",
    }
    for body, message in cases.items():
        with pytest.raises(ServingError) as err:
            decode.parse_json(body)
        assert err.value.message == message
    assert decode.parse_json(b'{"x": [NaN, -Infinity]}')["x"][1] == float("-inf")


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint64]
)
def test_small_tensors_format_exactly_as_the_vectorised_path(dtype, monkeypatch) -> None:
    values = [0.1, 1 / 3, 2.5, -0.0, 1e-40, 3e38, 123456789.0, float("nan"), float("inf")]
    if np.dtype(dtype).kind in "iu":
        values = [0, 1, 127, 2**40, 2**63 - 1] if dtype is not np.int8 else [0, -1, 127, -128]
    with np.errstate(over="ignore", invalid="ignore"):
        arrays = [np.array(values, dtype=dtype), np.array(values[0], dtype=dtype)]
        arrays.append(np.array(values, dtype=dtype).reshape(1, -1))
    small = [jsonfmt.tensor_texts("y", a).tolist() for a in arrays]
    monkeypatch.setattr(jsonfmt, "_SMALL", -1)  # every size through the vectorised path
    assert small == [jsonfmt.tensor_texts("y", a).tolist() for a in arrays]


SHAPES = [(), (0,), (1,), (7,), (2, 0), (0, 3), (6, 1), (4, 3), (3, 2, 2), (2, 3, 4, 1), (1, 9)]


def columnar_cases(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """One output tensor of `shape` per dtype the JSON answer writes differently."""
    rng = np.random.default_rng(len(shape) * 31 + int(np.prod(shape)))
    size = int(np.prod(shape))
    floats = (rng.standard_normal(size) * 1e3).astype(np.float32)
    floats[::4] = np.nan
    floats[1::5] = -np.inf
    texts = [f'a\x00"é\\{i}\n'.encode() + b"\xff" for i in range(size)]
    cases = {
        "f32": floats,
        "f64": rng.standard_normal(size),
        "f16": rng.random(size).astype(np.float16),
        "i64": rng.integers(-(2**62), 2**62, size),
        "u8": rng.integers(0, 256, size).astype(np.uint8),
        "flag": rng.random(size) > 0.5,
        "text": np.array(texts, dtype=object),
        "raw_bytes": np.array([bytes([i % 256, 0, 10]) for i in range(size)], dtype=object),
    }
    return {name: array.reshape(shape) for name, array in cases.items()}


def pieces_bytes(outputs: dict[str, np.ndarray], chunk: int) -> bytes:
    pieces = jsonfmt.predict_columnar_pieces(outputs, chunk)
    joined = b"".join(pieces)
    assert pieces.nbytes == len(joined)
    return joined


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_columnar_pieces_are_the_one_go_answer(shape: tuple[int, ...]) -> None:
    cases = columnar_cases(shape)
    for name, array in cases.items():
        whole = jsonfmt.predict_columnar({name: array})
        for chunk in (1, 2, 3, 5, 64, 1 << 14):
            assert pieces_bytes({name: array}, chunk) == whole, (name, chunk)
    names = list(cases)
    for pair in zip(names, names[1:] + names[:1], strict=True):
        outputs = {name: cases[name] for name in pair}
        whole = jsonfmt.predict_columnar(outputs)
        for chunk in (1, 4, 1 << 14):
            assert pieces_bytes(outputs, chunk) == whole, (pair, chunk)
    whole = jsonfmt.predict_columnar(cases)
    assert pieces_bytes(cases, 3) == whole


def test_columnar_pieces_refuse_what_the_one_go_answer_refuses() -> None:
    with pytest.raises(ServingError, match="empty tensor map"):
        jsonfmt.predict_columnar_pieces({})
    with pytest.raises(ServingError, match="Failed to write JSON value"):
        jsonfmt.predict_columnar_pieces({"c": np.ones(10, np.complex64)}, 2)


def test_large_columnar_answer_is_written_a_bounded_slice_at_a_time() -> None:
    y = (np.arange(200_000) % 10 * 0.5 + 2).astype(np.float32).reshape(-1, 1)
    pieces = jsonfmt.predict_columnar_pieces({"y": y}, 1000)
    sizes = [len(piece) for piece in pieces]
    assert sum(sizes) == pieces.nbytes and len(sizes) > 100
    assert max(sizes) < 1000 * 64  # one slice's numbers and their indentation
    assert json.loads(b"".join(pieces))["outputs"][:3] == [[2.0], [2.5], [3.0]]
