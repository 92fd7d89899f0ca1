"""TF Serving's protos ↔ numpy, table-driven: every dtype, both encodings, bad input."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import input_pb2, predict_pb2

from serving.api.grpc import codec
from serving.errors import ServingError

# (DataType, numpy dtype, typed field, values as written to that field, decoded values)
TYPED = [
    (types_pb2.DT_FLOAT, np.float32, "float_val", [1.5, -2.0], [1.5, -2.0]),
    (types_pb2.DT_DOUBLE, np.float64, "double_val", [0.1, 1e300], [0.1, 1e300]),
    (types_pb2.DT_INT32, np.int32, "int_val", [-(2**31), 7], [-(2**31), 7]),
    (types_pb2.DT_INT16, np.int16, "int_val", [-3, 300], [-3, 300]),
    (types_pb2.DT_INT8, np.int8, "int_val", [-128, 127], [-128, 127]),
    (types_pb2.DT_UINT8, np.uint8, "int_val", [0, 255], [0, 255]),
    (types_pb2.DT_UINT16, np.uint16, "int_val", [0, 65535], [0, 65535]),
    (types_pb2.DT_INT64, np.int64, "int64_val", [-(2**63), 2**62], [-(2**63), 2**62]),
    (types_pb2.DT_UINT32, np.uint32, "uint32_val", [0, 2**32 - 1], [0, 2**32 - 1]),
    (types_pb2.DT_UINT64, np.uint64, "uint64_val", [0, 2**64 - 1], [0, 2**64 - 1]),
    (types_pb2.DT_BOOL, np.bool_, "bool_val", [True, False], [True, False]),
    (types_pb2.DT_STRING, object, "string_val", [b"a", b"\xff\x00"], [b"a", b"\xff\x00"]),
    # half and bfloat16 travel as their 16-bit patterns in half_val.
    (types_pb2.DT_HALF, np.float16, "half_val", [0x3C00, 0xC000], [1.0, -2.0]),
    (types_pb2.DT_BFLOAT16, ml_dtypes.bfloat16, "half_val", [0x3F80, 0x4040], [1.0, 3.0]),
    # complex values travel as (real, imaginary) pairs.
    (types_pb2.DT_COMPLEX64, np.complex64, "scomplex_val", [1, 2, 3, 4], [1 + 2j, 3 + 4j]),
    (types_pb2.DT_COMPLEX128, np.complex128, "dcomplex_val", [0, -1, 5, 0], [-1j, 5]),
]
IDS = [types_pb2.DataType.Name(row[0]) for row in TYPED]


def tensor(
    dtype: int, shape: list[int], field: str | None = None, values=()
) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    if field is not None:
        getattr(proto, field).extend(values)
    return proto


def _invalid(call, *args) -> str:
    with pytest.raises(ServingError) as err:
        call(*args)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize(("dtype", "np_dtype", "field", "raw", "decoded"), TYPED, ids=IDS)
def test_typed_fields_decode_to_the_dtype_and_shape(dtype, np_dtype, field, raw, decoded) -> None:
    array = codec.to_ndarray(tensor(dtype, [2, 1], field, raw), "x")
    assert array.dtype == np.dtype(np_dtype)
    assert array.shape == (2, 1)
    assert array.reshape(-1).tolist() == list(np.array(decoded, dtype=np_dtype))


@pytest.mark.parametrize(("dtype", "np_dtype", "field", "raw", "decoded"), TYPED, ids=IDS)
def test_encode_then_decode_round_trips(dtype, np_dtype, field, raw, decoded) -> None:
    array = np.array(decoded, dtype=np_dtype).reshape(1, 2)
    proto = codec.from_ndarray(array)
    assert proto.dtype == dtype
    assert [d.size for d in proto.tensor_shape.dim] == [1, 2]
    assert not proto.tensor_content  # typed fields, as TF Serving's Predict writes
    back = codec.to_ndarray(proto)
    assert back.dtype == array.dtype and back.tolist() == array.tolist()


@pytest.mark.parametrize(
    ("dtype", "np_dtype"),
    [(row[0], row[1]) for row in TYPED if row[0] != types_pb2.DT_STRING],
    ids=[i for i in IDS if i != "DT_STRING"],
)
def test_tensor_content_round_trips_without_copying_values(dtype, np_dtype) -> None:
    array = np.arange(6).astype(np_dtype).reshape(2, 3)
    proto = tensor_pb2.TensorProto()
    codec.to_tensor_content(array, proto)
    assert proto.dtype == dtype and proto.tensor_content == array.tobytes()
    back = codec.to_ndarray(proto)
    assert back.dtype == array.dtype and back.tolist() == array.tolist()


@pytest.mark.parametrize(
    ("shape", "values", "expected"),
    [
        ([], [3.0], 3.0),  # a scalar
        ([0], [], []),  # empty
        ([2, 3], [1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]),
        ([2, 2], [7.0], [[7, 7], [7, 7]]),  # one value fills the tensor
        ([4], [1.0, 2.0], [1, 2, 2, 2]),  # fewer values repeat the last one
        ([2], [], [0, 0]),  # none: zeros
    ],
)
def test_shapes_and_tensorflows_fill_rules(shape, values, expected) -> None:
    array = codec.to_ndarray(tensor(types_pb2.DT_FLOAT, shape, "float_val", values))
    assert array.shape == tuple(shape)
    assert array.tolist() == expected


def test_strings_missing_values_are_empty_bytes() -> None:
    array = codec.to_ndarray(tensor(types_pb2.DT_STRING, [2], "string_val", []))
    assert array.dtype == object and array.tolist() == [b"", b""]


def test_tensor_content_wins_over_typed_fields() -> None:
    proto = tensor(types_pb2.DT_FLOAT, [2], "float_val", [9.0])
    proto.tensor_content = np.array([1.0, 2.0], np.float32).tobytes()
    assert codec.to_ndarray(proto).tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (tensor(types_pb2.DT_RESOURCE, [1]), "Unsupported tensor dtype DT_RESOURCE for input 'x'"),
        (tensor(types_pb2.DT_INVALID, [1]), "Unsupported tensor dtype DT_INVALID for input 'x'"),
        (
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
            "Tensor shape must be known for input 'x'",
        ),
        (
            tensor(types_pb2.DT_FLOAT, [-1, 2]),
            "Tensor shape [-1, 2] has a negative dimension for input 'x'",
        ),
        (
            tensor(types_pb2.DT_FLOAT, [2], "float_val", [1, 2, 3]),
            "Tensor has 3 values but its shape [2] holds 2 for input 'x'",
        ),
        (
            tensor(types_pb2.DT_INT32, [3], "int_val", [1, 2, 3, 4]),
            "Tensor has 4 values but its shape [3] holds 3 for input 'x'",
        ),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape={"dim": [{"size": 3}]},
                tensor_content=b"\x00" * 8,
            ),
            "tensor_content holds 8 bytes but shape [3] of DT_FLOAT needs 12 for input 'x'",
        ),
        (
            tensor(types_pb2.DT_COMPLEX64, [1], "scomplex_val", [1.0, 2.0, 3.0]),
            "complex values need real and imaginary parts for input 'x'",
        ),
    ],
)
def test_bad_tensors_are_invalid_argument(proto, message) -> None:
    assert _invalid(codec.to_ndarray, proto, "x") == message


def test_request_inputs_decodes_every_alias_and_wraps_numpys_complaints() -> None:
    request = predict_pb2.PredictRequest()
    request.inputs["a"].CopyFrom(tensor(types_pb2.DT_FLOAT, [1], "float_val", [1.0]))
    request.inputs["b"].CopyFrom(tensor(types_pb2.DT_STRING, [1], "string_val", [b"s"]))
    arrays = codec.request_inputs(request.inputs)
    assert arrays["a"].tolist() == [1.0] and arrays["b"].tolist() == [b"s"]
    request.inputs["c"].CopyFrom(tensor(types_pb2.DT_FLOAT, [2**40, 2**40], "float_val", [1]))
    message = _invalid(codec.request_inputs, request.inputs)
    assert message.startswith("tensor parsing error: c (")


def test_encoding_a_type_tensorflow_lacks_is_invalid_argument() -> None:
    message = _invalid(codec.from_ndarray, np.array(["2020-01-01"], "datetime64[D]"))
    assert message == "cannot encode numpy dtype datetime64[D]"


def test_text_outputs_encode_as_utf8_strings() -> None:
    proto = codec.from_ndarray(np.array(["é", "b"]))
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == ["é".encode(), b"b"]


# ------------------------------------------------------------------ examples


def _example(x: float) -> example_pb2.Example:
    record = example_pb2.Example()
    record.features.feature["x"].float_list.value.append(x)
    return record


def test_example_list_becomes_serialized_bytes() -> None:
    request_input = input_pb2.Input()
    request_input.example_list.examples.extend([_example(1.0), _example(2.0)])
    out = codec.serialized_examples(request_input)
    assert out.dtype == object and out.shape == (2,)
    assert [example_pb2.Example.FromString(r) for r in out] == [_example(1.0), _example(2.0)]


def test_context_bytes_come_first_so_the_examples_own_features_win() -> None:
    request_input = input_pb2.Input()
    with_context = request_input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(9.0)
    with_context.context.features.feature["c"].int64_list.value.append(3)
    with_context.examples.append(_example(1.0))
    (record,) = codec.serialized_examples(request_input)
    merged = example_pb2.Example.FromString(record)
    assert list(merged.features.feature["x"].float_list.value) == [1.0]
    assert list(merged.features.feature["c"].int64_list.value) == [3]


@pytest.mark.parametrize("kind", [None, "example_list", "example_list_with_context"])
def test_no_examples_is_input_is_empty(kind: str | None) -> None:
    request_input = input_pb2.Input()
    if kind is not None:
        getattr(request_input, kind).SetInParent()
    assert _invalid(codec.serialized_examples, request_input) == "Input is empty."


# ----------------------------------------------------------------- model spec


def test_model_ref_reads_version_or_label_and_signature() -> None:
    request = predict_pb2.PredictRequest()
    assert _invalid(codec.model_ref, request) == "Missing ModelSpec"
    request.model_spec.signature_name = "sig"
    assert _invalid(codec.model_ref, request) == "ModelSpec has no name specified."
    request.model_spec.name = "m"
    ref = codec.model_ref(request)
    assert (ref.name, ref.version, ref.label, ref.signature_name) == ("m", None, None, "sig")
    request.model_spec.version.value = 3
    assert codec.model_ref(request).version == 3
    request.model_spec.version_label = "stable"  # the oneof: replaces the number
    ref = codec.model_ref(request)
    assert (ref.version, ref.label) == (None, "stable")


# ------------------------------------------------------------------ limits


def test_a_broadcast_past_the_element_limit_is_refused_before_allocating() -> None:
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tensor(types_pb2.DT_FLOAT, [100_000_000, 1], "float_val", [1]))
    message = _invalid(codec.request_inputs, request.inputs, 1000)
    assert message == (
        "tensor parsing error: x (shape [100000000, 1] has 100000000 elements, "
        "more than the limit of 1000 (--max_tensor_elements))"
    )
    # 0 lifts the limit; within it the single value fills the shape.
    small = tensor(types_pb2.DT_FLOAT, [3, 1], "float_val", [2.5])
    assert codec.to_ndarray(small, "x", 0).ravel().tolist() == [2.5] * 3


def test_outputs_past_the_element_limit_are_resource_exhausted() -> None:
    with pytest.raises(ServingError) as err:
        codec.check_output_sizes({"y": np.zeros((10, 10))}, 99)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.message.startswith("Output 'y' is too large to send: shape [10, 10]")
    codec.check_output_sizes({"y": np.zeros((10, 10))}, 0)


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(-1, 1, 3000, dtype=np.float32),
        np.linspace(-1, 1, 3000, dtype=np.float64),
        (np.arange(3000) % 3 == 0),
        np.arange(3000, dtype=np.float32).view(np.complex64),
        np.arange(-1500, 1500, dtype=np.int64),
    ],
    ids=lambda a: str(a.dtype),
)
def test_encoding_from_numpy_writes_the_same_bytes_as_value_by_value(values) -> None:
    fast = codec.from_ndarray(values.reshape(-1, 3))
    slow = tensor_pb2.TensorProto(dtype=fast.dtype)
    slow.tensor_shape.CopyFrom(fast.tensor_shape)
    field = codec._FIELD[fast.dtype]
    flat = values.view(values.real.dtype) if values.dtype.kind == "c" else values
    getattr(slow, field).extend(flat.tolist())
    assert fast.SerializeToString() == slow.SerializeToString()
    assert codec.to_ndarray(fast).ravel().tolist() == values.tolist()


def test_large_fields_go_through_in_chunks(monkeypatch) -> None:
    monkeypatch.setattr(codec, "_CHUNK", 4)
    values = np.arange(-5, 6, dtype=np.int64)
    proto = codec.from_ndarray(values)
    assert list(proto.int64_val) == values.tolist()
    assert codec.to_ndarray(proto).tolist() == values.tolist()
    half = np.linspace(-2, 2, 11).astype(np.float16)
    assert codec.to_ndarray(codec.from_ndarray(half)).tolist() == half.tolist()


# ----------------------------------------------------------------- responses


def _protobuf_response(outputs: dict[str, np.ndarray], tensor_content: bool) -> bytes:
    """What protobuf itself writes for the response: the reference."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 7
    response.model_spec.signature_name = "serving_default"
    for alias, array in outputs.items():
        if tensor_content and array.dtype != object:
            codec.to_tensor_content(array, response.outputs[alias])
        else:
            codec.from_ndarray(array, out=response.outputs[alias])
    return response.SerializeToString(deterministic=True)


def _written_response(outputs: dict[str, np.ndarray], tensor_content: bool) -> bytes:
    """The hand-written path, whatever the responses' size."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 7
    response.model_spec.signature_name = "serving_default"
    limit = codec.WRITE_RESPONSE_ABOVE
    codec.WRITE_RESPONSE_ABOVE = 0
    try:
        return codec.predict_response_bytes(response, outputs, tensor_content)
    finally:
        codec.WRITE_RESPONSE_ABOVE = limit


@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "tensor_content"])
@pytest.mark.parametrize(("dtype", "np_dtype", "field", "raw", "decoded"), TYPED, ids=IDS)
def test_the_response_writer_writes_protobufs_bytes(
    dtype, np_dtype, field, raw, decoded, tensor_content
) -> None:
    array = np.array(decoded, dtype=np_dtype).reshape(2, 1)
    for shape in [(2, 1), (1, 2, 1)]:
        outputs = {"y": array.reshape(shape)}
        assert _written_response(outputs, tensor_content) == _protobuf_response(
            outputs, tensor_content
        )


@pytest.mark.parametrize("tensor_content", [False, True], ids=["typed", "tensor_content"])
def test_the_response_writer_handles_many_outputs_and_edge_shapes(tensor_content) -> None:
    big = np.linspace(-1, 1, 300_000, dtype=np.float32)  # multi-byte length varints
    outputs = {
        "z": big.reshape(-1, 3),
        "a": np.float64(2.5) * np.ones(()),  # a scalar
        "empty": np.zeros((0, 4), np.float32),
        "strided": big[::2],  # not contiguous
        "bytes": np.array([b"x", b"yz"], dtype=object),
        "ints": np.arange(-3, 3, dtype=np.int32),
        "naïve": np.array([np.nan, -0.0, np.inf], np.float32),  # bits kept, non-ASCII key
    }
    written = _written_response(outputs, tensor_content)
    assert written == _protobuf_response(outputs, tensor_content)
    parsed = predict_pb2.PredictResponse.FromString(written)
    assert sorted(parsed.outputs) == sorted(outputs)
    assert codec.to_ndarray(parsed.outputs["z"]).tolist() == big.reshape(-1, 3).tolist()
    assert codec.to_ndarray(parsed.outputs["a"]).shape == ()


def test_the_response_writer_copies_a_large_output_once() -> None:
    """Its only copy of the values is the one bytes object it returns."""
    import tracemalloc

    values = np.ones(2_000_000, np.float32)
    tracemalloc.start()
    try:
        data = _written_response({"y": values}, False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) > values.nbytes
    assert peak < values.nbytes * 1.1


def test_small_responses_go_through_protobuf() -> None:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    outputs = {"y": np.array([[2.5]], np.float32), "s": np.array([b"a"], dtype=object)}
    data = codec.predict_response_bytes(response, outputs)
    assert data == response.SerializeToString()  # filled in place, then serialized
    assert predict_pb2.PredictResponse.FromString(data).outputs["y"].float_val == [2.5]
