"""V2 tensor codecs (JSON, binary data, gRPC contents) on their own: no server."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import orjson
import pytest

from serving.api.v2 import codec
from serving.api.v2.servicer import decode_inputs, encode_response
from serving.errors import ServingError
from serving.protos import v2_pb2 as pb

NUMERIC = [
    ("BOOL", np.bool_, [True, False, True, True]),
    ("INT8", np.int8, [-128, 0, 1, 127]),
    ("INT16", np.int16, [-32768, 0, 1, 32767]),
    ("INT32", np.int32, [-(2**31), 0, 1, 2**31 - 1]),
    ("INT64", np.int64, [-(2**63), 0, 1, 2**63 - 1]),
    ("UINT8", np.uint8, [0, 1, 2, 255]),
    ("UINT16", np.uint16, [0, 1, 2, 65535]),
    ("UINT32", np.uint32, [0, 1, 2, 2**32 - 1]),
    ("UINT64", np.uint64, [0, 1, 2, 2**64 - 1]),
    ("FP16", np.float16, [0.5, -1.0, 2.0, 65504.0]),
    ("FP32", np.float32, [0.5, -1.0, 2.25, 2.0**100]),
    ("FP64", np.float64, [0.5, -1.0, 2.25, 1e300]),
]


def _bad(fn, *args, match: str) -> ServingError:
    with pytest.raises(ServingError, match=match) as info:
        fn(*args)
    assert info.value.http_status == 400
    return info.value


@pytest.mark.parametrize(("datatype", "dtype", "values"), NUMERIC)
def test_json_round_trip(datatype, dtype, values):
    nested = [values[:2], values[2:]]
    array = codec.from_json(nested, datatype, [2, 2], "t")
    assert array.dtype == np.dtype(dtype) and array.shape == (2, 2)
    assert array.reshape(-1).tolist() == values
    assert codec.datatype_of(array) == datatype
    assert codec.to_json_data(array, "t") == values


@pytest.mark.parametrize(("datatype", "dtype", "values"), NUMERIC)
def test_binary_round_trip(datatype, dtype, values):
    array = np.array(values, dtype=dtype).reshape(2, 2)
    raw = codec.raw_of(array)
    assert len(raw) == 4 * np.dtype(dtype).itemsize
    back = codec.from_raw(raw, datatype, [2, 2], "t")
    np.testing.assert_array_equal(back, array)


def test_bytes_binary_form_is_length_prefixed():
    array = np.array([b"ab", b"", "é".encode()], dtype=object)
    raw = codec.raw_of(array)
    assert (
        raw
        == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    )
    assert codec.from_raw(raw, "BYTES", [3], "s").tolist() == [b"ab", b"", "é".encode()]


def test_bf16_binary_only():
    array = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    back = codec.from_raw(codec.raw_of(array), "BF16", [2], "b")
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.astype(np.float32).tolist() == [1.5, -2.0]
    _bad(codec.from_json, [1.5, 2.0], "BF16", [2], "b", match="only accepted as binary")


def test_json_errors_name_the_input():
    _bad(codec.from_json, [1, 2, 3], "FP32", [2, 2], "x", match=r"input 'x': 3 elements")
    _bad(codec.from_json, ["a"], "FP32", [1], "x", match=r"'a' is not a valid FP32")
    _bad(codec.from_json, [1.5], "INT32", [1], "x", match=r"1.5 is not a valid INT32")
    _bad(codec.from_json, [1], "BOOL", [1], "x", match="not a valid BOOL")
    _bad(codec.from_json, [300], "UINT8", [1], "x", match="not UINT8")
    _bad(codec.from_json, [1], "COMPLEX", [1], "x", match="unsupported datatype 'COMPLEX'")
    _bad(codec.from_json, [1], "FP32", [-1], "x", match="invalid shape")


def test_binary_size_errors():
    _bad(codec.from_raw, b"\0" * 7, "FP32", [2], "x", match="7 bytes of FP32 data, expected 8")
    _bad(codec.from_raw, b"\x05\0\0\0ab", "BYTES", [1], "s", match="longer than its data")
    _bad(codec.from_raw, b"\x01\0", "BYTES", [1], "s", match="truncated")
    two = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    _bad(codec.from_raw, two, "BYTES", [3], "s", match="2 BYTES elements for shape")


def _body(doc: dict, *blobs: bytes) -> tuple[bytes, int | None]:
    head = orjson.dumps(doc)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def test_parse_request_mixed_json_and_binary():
    x = np.array([[1.0], [2.0]], dtype=np.float32)
    body, length = _body(
        {
            "id": "42",
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                },
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
            "parameters": {"signature_name": "sig"},
        },
        x.tobytes(),
    )
    request = codec.parse_infer_request(body, length, orjson.loads)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["s"].tolist() == [b"hi"]
    assert request.outputs == ["y", "z"]
    assert codec.binary_outputs(request, ["y", "z"]) == {"y"}
    assert request.id == "42" and request.parameters["signature_name"] == "sig"


def test_binary_data_output_default_and_per_output_override():
    body, _ = _body(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "z", "parameters": {"binary_data": False}}],
            "parameters": {"binary_data_output": True},
        }
    )
    request = codec.parse_infer_request(body, None, orjson.loads)
    assert codec.binary_outputs(request, ["y", "z"]) == {"y"}


@pytest.mark.parametrize(
    ("doc", "blob", "length", "match"),
    [
        ({"inputs": []}, b"", None, "non-empty 'inputs'"),
        ({"inputs": [{"name": "x"}]}, b"", None, "needs 'name', 'shape' and 'datatype'"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]},
            b"",
            None,
            "neither 'data' nor binary_data_size",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 4,
            0,
            "binary_data_size 8 exceeds the 4 bytes",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 6,
            0,
            "2 bytes of binary data follow",
        ),
    ],
)
def test_request_errors(doc, blob, length, match):
    head = orjson.dumps(doc)
    header_length = len(head) if length is not None else None
    _bad(codec.parse_infer_request, head + blob, header_length, orjson.loads, match=match)


def test_bad_json_and_header_length():
    _bad(codec.parse_infer_request, b"{nope", None, orjson.loads, match="malformed JSON")
    _bad(codec.parse_infer_request, b"{}", 99, orjson.loads, match="exceeds the body's 2 bytes")


def test_response_json_and_binary():
    outputs = {
        "y": np.array([[2.5], [3.0]], dtype=np.float32),
        "s": np.array([b"a", b"bc"], dtype=object),
        "b": np.array([1.0], dtype=ml_dtypes.bfloat16),
    }
    body, length = codec.infer_response("m", "3", outputs, {"y"}, orjson.dumps, "7")
    assert length is not None
    head = orjson.loads(body[:length])
    assert head["model_name"] == "m" and head["model_version"] == "3" and head["id"] == "7"
    y, s, b = head["outputs"]
    assert y == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 1],
        "parameters": {"binary_data_size": 8},
    }
    assert s == {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}
    assert b["datatype"] == "BF16" and b["parameters"] == {"binary_data_size": 2}  # BF16: binary
    assert body[length : length + 8] == outputs["y"].tobytes()


def test_non_utf8_bytes_output_needs_binary():
    outputs = {"s": np.array([b"\xff"], dtype=object)}
    _bad(codec.infer_response, "m", "1", outputs, set(), orjson.dumps, match="not UTF-8")
    body, length = codec.infer_response("m", "1", outputs, {"s"}, orjson.dumps)
    assert body[length:] == b"\x01\0\0\0\xff"


def test_metadata_types_and_shapes():
    assert codec.tf_datatype(1) == "FP32" and codec.tf_datatype(7) == "BYTES"
    assert codec.tf_datatype(14) == "BF16" and codec.tf_datatype(19) == "FP16"
    assert codec.metadata_shape((-1, 3)) == [-1, 3]
    assert codec.metadata_shape(None) == [-1]


# ---------------------------------------------------------------- gRPC side


def _grpc_request(**inputs) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, (datatype, shape, field, values) in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(("datatype", "dtype", "values"), [n for n in NUMERIC if n[0] != "FP16"])
def test_grpc_typed_contents(datatype, dtype, values):
    request = _grpc_request(t=(datatype, [4], codec.CONTENTS_FIELD[datatype], values))
    array = decode_inputs(request)["t"]
    assert array.dtype == np.dtype(dtype) and array.tolist() == values


def test_grpc_raw_contents_and_errors():
    x = np.arange(4, dtype=np.float16)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=[4])
    request.raw_input_contents.append(x.tobytes())
    np.testing.assert_array_equal(decode_inputs(request)["x"], x)
    request.inputs.add(name="y", datatype="FP32", shape=[1])
    _bad(decode_inputs, request, match="1 raw_input_contents for 2 inputs")
    typed_fp16 = _grpc_request(x=("FP16", [1], "fp32_contents", [1.0]))
    _bad(decode_inputs, typed_fp16, match="only accepted as raw contents")
    short = _grpc_request(x=("FP32", [2], "fp32_contents", [1.0]))
    _bad(decode_inputs, short, match="1 elements in fp32_contents for shape")
    wide = _grpc_request(x=("INT8", [1], "int_contents", [1000]))
    _bad(decode_inputs, wide, match="out of range for INT8")


def test_grpc_response_is_raw():
    outputs = {"y": np.array([1, 2], dtype=np.int64), "s": np.array([b"z"], dtype=object)}
    response = encode_response("m", "2", outputs, "id-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "INT64", [2]),
        ("s", "BYTES", [1]),
    ]
    assert response.raw_output_contents[0] == outputs["y"].tobytes()
    assert response.raw_output_contents[1] == b"\x01\0\0\0z"
    assert response.id == "id-1" and response.model_version == "2"
