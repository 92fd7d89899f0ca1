"""The gRPC servicers in-process: protos in, protos or a status out, every call observed."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.api.grpc import codec
from serving.api.grpc.services import ModelServicer, PredictionServicer
from tests.unit.small_service import MODEL, RecordingObserver, small_service


class Aborted(Exception):
    pass


class Context:
    """What the servicers use of grpc.aio.ServicerContext: abort."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted


def _predict_request(x: list[list[float]], **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(codec.from_ndarray(np.array(x, np.float32)))
    return request


def _call(method, request):
    context = Context()
    try:
        response = asyncio.run(method(request, context))
    except Aborted:
        return None, context.status
    if isinstance(response, bytes):  # Predict answers its response serialized
        response = predict_pb2.PredictResponse.FromString(response)
    return response, None


@pytest.fixture
def servers():
    observer = RecordingObserver()
    applied = []

    async def reload(config) -> None:
        applied.append(config)

    with small_service(observer, reload_config=reload) as service:
        yield (
            PredictionServicer(service),
            PredictionServicer(service, tensor_content=True),
            ModelServicer(service),
            observer,
            applied,
        )


def test_predict_answers_typed_fields_or_tensor_content(servers) -> None:
    typed, raw, _model, observer, _ = servers
    response, status = _call(typed.Predict, _predict_request([[1.0], [2.0]]))
    assert status is None
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 1)
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs["y"].float_val) == [2.5, 3.0]
    response, _ = _call(raw.Predict, _predict_request([[1.0]]))
    assert response.outputs["y"].tensor_content == np.array([[2.5]], np.float32).tobytes()
    assert observer.finished == [("predict", "grpc", MODEL, "OK")] * 2


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: r.ClearField("model_spec"), "INVALID_ARGUMENT", "Missing ModelSpec"),
        (
            lambda r: r.model_spec.version.__setattr__("value", 9),
            "NOT_FOUND",
            f"Servable not found for request: Specific({MODEL}, 9)",
        ),
        (
            lambda r: r.inputs["x"].__setattr__("dtype", types_pb2.DT_DOUBLE),
            "INVALID_ARGUMENT",
            "Expected input x to be float but get double.",
        ),
        (
            lambda r: r.inputs["x"].tensor_shape.dim.pop(0),  # shape [1], two values
            "INVALID_ARGUMENT",
            "Tensor has 2 values but its shape [1] holds 1 for input 'x'",
        ),
        (
            lambda r: r.output_filter.append("nope"),
            "INVALID_ARGUMENT",
            "output tensor alias not found in signature: nope Outputs expected to be in the "
            "set {y}.",
        ),
        (
            lambda r: r.model_spec.__setattr__("signature_name", "nope"),
            "FAILED_PRECONDITION",
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_predict_errors_carry_their_canonical_code(servers, mutate, code, message) -> None:
    typed, _raw, _model, observer, _ = servers
    request = _predict_request([[1.0], [2.0]])
    mutate(request)
    if request.inputs["x"].dtype == types_pb2.DT_DOUBLE:  # keep the values decodable
        request.inputs["x"].ClearField("float_val")
        request.inputs["x"].double_val.extend([1.0, 2.0])
    _response, status = _call(typed.Predict, request)
    assert status == (getattr(grpc.StatusCode, code), message)
    model = MODEL if request.HasField("model_spec") else ""
    assert observer.finished == [("predict", "grpc", model, code)]


def test_long_messages_are_truncated_as_tf_serving_does(servers) -> None:
    typed, *_ = servers
    request = _predict_request([[1.0]])
    request.output_filter.append("z" * 2000)
    _response, (code, details) = _call(typed.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) == 1024 + len("...TRUNCATED") and details.endswith("...TRUNCATED")


def test_classify_regress_and_multi_inference(servers) -> None:
    typed, _raw, _model, observer, _ = servers
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = MODEL
    classify.model_spec.signature_name = "classify_x_to_y"
    example = classify.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    response, _ = _call(typed.Classify, classify)
    assert response.result.classifications[0].classes[0].score == 3.0

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = MODEL
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.CopyFrom(classify.input)
    response, _ = _call(typed.Regress, regress)
    assert [r.value for r in response.result.regressions] == [3.0]

    multi = inference_pb2.MultiInferenceRequest()
    multi.input.CopyFrom(classify.input)
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y", "tensorflow/serving/regress"),
    ):
        task = multi.tasks.add()
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
        task.method_name = method
    response, _ = _call(typed.MultiInference, multi)
    assert [r.model_spec.signature_name for r in response.results] == [
        "classify_x_to_y",
        "regress_x_to_y",
    ]
    _response, status = _call(typed.MultiInference, inference_pb2.MultiInferenceRequest())
    assert status == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    assert [f[0] for f in observer.finished] == [
        "classify",
        "regress",
        "multi_inference",
        "multi_inference",
    ]
    assert observer.finished[-1] == ("multi_inference", "grpc", None, "INVALID_ARGUMENT")


def test_metadata_and_status(servers) -> None:
    typed, _raw, model, observer, _ = servers
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    _response, status = _call(typed.GetModelMetadata, request)
    assert status == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    request.metadata_field.append("signature_def")
    response, _ = _call(typed.GetModelMetadata, request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert response.model_spec.version.value == 1
    assert set(signature_map.signature_def) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
    }

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    response, _ = _call(model.GetModelStatus, status_request)
    (version,) = response.model_version_status
    assert (version.version, version.state, version.status.error_code) == (1, 30, 0)
    status_request.model_spec.name = "other"
    _response, status = _call(model.GetModelStatus, status_request)
    assert status == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model other")
    assert observer.finished[-1] == ("get_model_status", "grpc", "other", "NOT_FOUND")


def test_reload_config(servers) -> None:
    _typed, _raw, model, observer, applied = servers
    request = model_management_pb2.ReloadConfigRequest()
    _response, status = _call(model.HandleReloadConfigRequest, request)
    assert status[0] == grpc.StatusCode.INVALID_ARGUMENT
    request.config.model_config_list.config.add(name="a", base_path="/a")
    response, status = _call(model.HandleReloadConfigRequest, request)
    assert status is None and response.status.error_code == 0
    assert applied == [request.config]
    assert [f[-1] for f in observer.finished] == ["INVALID_ARGUMENT", "OK"]
    assert observer.finished[-1][:3] == ("reload_config", "grpc", None)


@pytest.mark.parametrize("data", [b"\xff" * 30, None], ids=["random", "cut"])
def test_bytes_that_do_not_parse_are_internal_without_a_class_name(servers, data) -> None:
    from serving.api.grpc.services import _raw_method

    typed = servers[0]
    if data is None:  # a valid request cut short
        data = _predict_request([[1.0, 2.0]]).SerializeToString()[:-3]
    call = _raw_method(PredictionServicer.Predict, predict_pb2.PredictRequest)
    context = Context()
    with pytest.raises(Aborted):
        asyncio.run(call(typed, data, context))
    assert context.status is not None
    code, message = context.status
    assert code == grpc.StatusCode.INTERNAL
    assert message == f"Failed to parse tensorflow.serving.PredictRequest ({len(data)} bytes)"
    # A request that parses answers with the serialized response.
    good = _predict_request([[1.0, 2.0]]).SerializeToString()
    answer = asyncio.run(call(typed, good, Context()))
    assert predict_pb2.PredictResponse.FromString(answer).outputs


def test_active_calls_count_a_call_from_its_first_byte_to_its_answer(servers) -> None:
    from serving.api.grpc.services import ActiveCalls, _raw_method

    typed = servers[0]
    active = ActiveCalls()
    call = _raw_method(PredictionServicer.Predict, predict_pb2.PredictRequest, active)
    seen: list[int] = []

    async def run() -> None:
        task = asyncio.ensure_future(
            call(typed, _predict_request([[1.0]]).SerializeToString(), Context())
        )
        await asyncio.sleep(0)
        seen.append(active.count)
        assert not await active.wait_idle(0)  # still running: not idle yet
        await task
        seen.append(active.count)
        assert await active.wait_idle(0)

    asyncio.run(run())
    assert seen == [1, 0]
