"""The server against TensorFlow Serving's and TF Hub's own test artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    regression_pb2,
)

from loadtests.servers import models_config
from tests.harness import AVAILABLE, END, ServerProcess, output

MODELS = {
    "half_plus_two": ("tf_serving/saved_model_half_plus_two_cpu", ""),
    "half_plus_two_tf2": ("tf_serving/saved_model_half_plus_two_tf2_cpu", ""),
    "two_versions": ("tf_serving/saved_model_half_plus_two_2_versions", "all {}"),
    "half_plus_three": ("tf_serving/saved_model_half_plus_three", ""),
    "counter": ("tf_serving/saved_model_counter", ""),
    "half_plus_two_gpu": ("tf_serving/saved_model_half_plus_two_gpu", ""),
    "matrix": ("tf_serving/matrix_half_plus_two", ""),
    "bad": ("tf_serving/bad_half_plus_two", ""),
    "hub_half_plus_two": ("tf_hub/half_plus_two_v1", ""),
    "hub_text": ("tf_hub/text_embedding_v1", ""),
}


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("compat")
    config = tmp / "models.config"
    config.write_text(
        models_config(
            {name: testdata / path for name, (path, _) in MODELS.items()},
            {
                name: f"model_version_policy {{ {policy} }}"
                for name, (_, policy) in MODELS.items()
                if policy
            },
        )
    )
    proc = ServerProcess(f"--model_config_file={config}", "--max_num_load_retries=0", log_dir=tmp)
    with proc.running(*(name for name in MODELS if name != "bad")):
        yield proc


def predict_y(server: ServerProcess, model: str, x, **kwargs) -> np.ndarray:
    inputs = {kwargs.pop("input_name", "x"): np.asarray(x, np.float32)}
    return output(server.predict(model, inputs, **kwargs), kwargs.get("out", "y"))


@pytest.mark.parametrize(
    ("model", "offset"),
    [
        ("half_plus_two", 2.0),
        ("half_plus_two_tf2", 2.0),
        ("half_plus_three", 3.0),
        ("half_plus_two_gpu", 2.0),
    ],
)
def test_predict_half_plus_n(server: ServerProcess, model: str, offset: float) -> None:
    x = np.array([[1.0], [2.0], [5.0]], np.float32)
    np.testing.assert_allclose(predict_y(server, model, x), 0.5 * x + offset)


def test_shape_leniency_like_tf_serving(server: ServerProcess) -> None:
    # TF Serving's own clients send x of shape [1] to a [-1, 1] input.
    response = server.predict("half_plus_two", {"x": np.array([1.0], np.float32)})
    y = output(response, "y")
    assert y.shape == (1,)
    assert y[0] == 2.5
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    # Outputs travel in typed fields, as TF Serving writes them.
    assert list(response.outputs["y"].float_val) == [2.5]
    assert response.outputs["y"].tensor_content == b""


def test_tensor_content_inputs(server: ServerProcess) -> None:
    proto = tf.make_tensor_proto(np.array([[3.0], [4.0]], np.float32))
    assert proto.tensor_content  # make_tensor_proto packs numpy arrays as bytes
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(proto)
    y = tf.make_ndarray(server.predict_stub.Predict(request, timeout=10).outputs["y"])
    np.testing.assert_allclose(y, [[3.5], [4.0]])


def test_two_versions_by_number_and_latest(server: ServerProcess) -> None:
    assert server.versions("two_versions") == {123, 124}
    statuses = server.status("two_versions").model_version_status
    assert [s.version for s in statuses] == [124, 123]
    for version in (123, 124):
        response = server.predict(
            "two_versions", {"x": np.array([[1.0]], np.float32)}, version=version
        )
        assert response.model_spec.version.value == version
    assert (
        server.predict(
            "two_versions", {"x": np.array([[1.0]], np.float32)}
        ).model_spec.version.value
        == 124
    )


def test_regress_x2_to_y3_via_predict(server: ServerProcess) -> None:
    # y3 = 0.5 * x2 + 3 (TF Serving's saved_model_half_plus_two).
    y = output(
        server.predict(
            "half_plus_two", {"inputs": np.array([[2.0]], np.float32)}, signature="regress_x2_to_y3"
        ),
        "outputs",
    )
    np.testing.assert_allclose(y, [[4.0]])


def _example_input(request, xs: list[float]) -> None:
    for x in xs:
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)


def test_classify_and_regress(server: ServerProcess) -> None:
    # Values from TF Serving's tensorflow_model_server_test: x=2 → 3 (y), 4 (y2).
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    _example_input(request, [2.0, 4.0])
    response = server.predict_stub.Classify(request, timeout=10)
    scores = [[c.score for c in cls.classes] for cls in response.result.classifications]
    assert scores == [[3.0], [4.0]]
    assert response.model_spec.version.value == 123
    for signature, expected in (("regress_x_to_y", [3.0]), ("regress_x_to_y2", [4.0])):
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = signature
        _example_input(request, [2.0])
        response = server.predict_stub.Regress(request, timeout=10)
        assert [r.value for r in response.result.regressions] == expected


def test_multi_inference(server: ServerProcess) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y2", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
        task.method_name = method
    _example_input(request, [2.0])
    response = server.predict_stub.MultiInference(request, timeout=10)
    assert response.results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert response.results[1].regression_result.regressions[0].value == 4.0
    assert response.results[1].model_spec.signature_name == "regress_x_to_y2"


def test_multi_inference_across_input_tensors(server: ServerProcess) -> None:
    # TF2 exports give each signature its own input placeholder: all are fed
    # the same examples, in one run (TF Serving's MultiInference semantics).
    for model in ("half_plus_two_tf2", "half_plus_two"):
        request = inference_pb2.MultiInferenceRequest()
        for signature, method in (
            ("regress_x_to_y", "tensorflow/serving/regress"),
            ("classify_x_to_y", "tensorflow/serving/classify"),
        ):
            task = request.tasks.add()
            task.model_spec.name = model
            task.model_spec.signature_name = signature
            task.method_name = method
        _example_input(request, [2.0])
        response = server.predict_stub.MultiInference(request, timeout=10)
        assert response.results[0].regression_result.regressions[0].value == 3.0
        assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
        assert [r.model_spec.signature_name for r in response.results] == [
            "regress_x_to_y",
            "classify_x_to_y",
        ]
        assert response.results[0].model_spec.version.value == 123


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        (
            [
                ("half_plus_two_tf2", "regress_x_to_y", "regress"),
                ("half_plus_two", "regress_x_to_y", "regress"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            [("half_plus_two_tf2", "regress_x_to_y", "regress")] * 2,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("half_plus_two_tf2", "nope", "regress")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            [("half_plus_two_tf2", "regress_x_to_y", "predict")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
    ],
)
def test_multi_inference_errors(server: ServerProcess, tasks, code, message: str) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    _example_input(request, [2.0])
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.MultiInference(request, timeout=10)
    assert err.value.code() == code
    assert err.value.details() == message


def test_counter_with_reference_variables_and_no_inputs(server: ServerProcess) -> None:
    def call(signature: str, **inputs) -> float:
        arrays = {k: np.float32(v) for k, v in inputs.items()}
        return float(output(server.predict("counter", arrays, signature=signature), "output"))

    call("reset_counter")
    assert call("incr_counter") == 1.0
    assert call("incr_counter") == 2.0
    assert call("incr_counter_by", delta=3) == 5.0
    assert call("get_counter") == 5.0
    assert call("reset_counter") == 0.0


def test_matrix_half_plus_two(server: ServerProcess) -> None:
    x = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    np.testing.assert_allclose(predict_y(server, "matrix", x), 0.5 * x + 2)


def test_hub_half_plus_two_uses_default_signature(server: ServerProcess) -> None:
    response = server.predict("hub_half_plus_two", {"default": np.array([1.0, 4.0], np.float32)})
    assert response.model_spec.signature_name == "default"
    np.testing.assert_allclose(output(response, "default"), [2.5, 4.0])


def test_hub_text_embedding_runs_its_tables(server: ServerProcess, testdata: Path) -> None:
    sentences = np.array([b"the cat sat on the mat", b"unseen words only", b"cat"], object)
    got = output(server.predict("hub_text", {"default": sentences}), "default")
    # Ground truth from TensorFlow's own TF2 loader, in this process.
    module = tf.saved_model.load(str(testdata / "tf_hub/text_embedding_v1/1"), tags=[])
    want = module.signatures["default"](default=tf.constant(sentences))["default"].numpy()
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_model_reports_end_with_error_and_others_serve(server: ServerProcess) -> None:
    status = server.status("bad").model_version_status
    assert len(status) == 1
    assert status[0].version == 123
    assert status[0].state == END
    assert status[0].status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "SavedModel file does not exist" in status[0].status.error_message
    with pytest.raises(grpc.RpcError) as err:
        server.predict("bad", {"x": np.array([1.0], np.float32)})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Servable not found for request: Latest(bad)"
    assert server.versions("half_plus_two") == {123}


def test_gpu_model_loads_on_cpu_with_a_warning(server: ServerProcess) -> None:
    assert server.versions("half_plus_two_gpu", AVAILABLE) == {123}
    assert "pins ops to /device:GPU:0" in server.logs


def test_metadata_matches_tf_serving(server: ServerProcess, testdata: Path) -> None:
    expected = json.loads((testdata / "tf_serving/half_plus_two_model_metadata.json").read_text())
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    got = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(got)
    want = json_format.ParseDict(
        expected["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    assert got == want


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        (
            {"model": "nope"},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            {"version": 999},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(half_plus_two, 999)",
        ),
        (
            {"label": "missing"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: missing",
        ),
        (
            {"signature": "nope"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            {"inputs": {"z": np.array([1.0], np.float32)}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: z. Inputs expected to be in the set {x}.",
        ),
        (
            {"inputs": {"x": np.array([1], np.int64)}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected input x to be float but get int64.",
        ),
        (
            {"inputs": {"x": np.array([1.0], np.float32), "y": np.array([1.0], np.float32)}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1 len({x,y}) != len({x}). "
            "Sent extra: {y}. Missing but required: {}.",
        ),
        (
            {"output_filter": ["nope"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found in signature: nope Outputs expected to be in the set {y}.",
        ),
    ],
)
def test_predict_errors(server: ServerProcess, kwargs: dict, code, message: str) -> None:
    model = kwargs.pop("model", "half_plus_two")
    inputs = kwargs.pop("inputs", {"x": np.array([1.0], np.float32)})
    with pytest.raises(grpc.RpcError) as err:
        server.predict(model, inputs, **kwargs)
    assert err.value.code() == code
    assert message in err.value.details()
    # ... and the server keeps serving everyone else.
    assert (
        output(server.predict("half_plus_two", {"x": np.array([1.0], np.float32)}), "y")[0] == 2.5
    )


def test_shapes_as_lenient_as_tf_serving(server: ServerProcess) -> None:
    # TF Serving's REST handler test sends [[1, 2], ...] to the [-1, 1] x.
    y = predict_y(server, "half_plus_two", [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(y, [[2.5, 3.0], [3.5, 4.0]])


def test_dtype_mismatch_names_input(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hub_text", {"default": np.ones((2,), np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Expected input default to be string but get float."


def test_shape_the_graph_rejects_names_inputs(server: ServerProcess) -> None:
    # Rank 4 passes the signature check (other ranks are left to the graph,
    # as TF Serving does) and the graph's own shape check fails.
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hub_text", {"default": np.array([[b"a", b"b"]], object)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(request inputs: default: string [1,2])" in err.value.details()
