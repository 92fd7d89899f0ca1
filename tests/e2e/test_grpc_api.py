"""The gRPC surface on the project's own models: TF2 Keras, Hub tables, examples."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from loadtests.servers import models_config
from serving import examples
from tests.conftest import install
from tests.harness import ServerProcess, output


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("grpc_api")
    models = {"hp2": "hp2_a", "keras": "keras", "keras_module": "keras_module", "hub": "hub_text"}
    for name, kind in models.items():
        install(model_store, kind, tmp / name / "1")
    config = tmp / "models.config"
    config.write_text(models_config({name: tmp / name for name in models}))
    socket_path = tmp / "grpc.sock"
    proc = ServerProcess(
        f"--model_config_file={config}",
        f"--grpc_socket_path={socket_path}",
        "--max_request_bytes=1048576",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=60000,grpc.http2.max_pings_without_data=0",
        "--enable_serialization_as_tensor_content",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
        log_dir=tmp,
    )
    proc.socket_path = socket_path
    with proc.running(*models):
        yield proc


def test_tf2_keras_model_matches_in_process(server: ServerProcess) -> None:
    features = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    for model in ("keras", "keras_module"):
        got = output(server.predict(model, {"features": features}), "probabilities")
        np.testing.assert_allclose(got, examples.keras_reference(features), rtol=1e-5)
    assert "loaded with the TF2 object-graph loader" in server.logs


def test_outputs_as_tensor_content_when_asked(server: ServerProcess) -> None:
    response = server.predict("hp2", {"x": np.array([[1.0], [2.0]], np.float32)})
    assert response.outputs["y"].tensor_content
    assert not response.outputs["y"].float_val
    np.testing.assert_allclose(output(response, "y"), [[2.5], [3.0]])


def test_hub_module_tables_and_multi_output_signature(server: ServerProcess) -> None:
    sentences = np.array([b"the cat sat", b"zebra crossing", b""], object)
    response = server.predict("hub", {"default": sentences}, signature="tokens")
    assert set(response.outputs) == {"embedding", "token_count"}
    np.testing.assert_array_equal(output(response, "token_count"), [3, 2, 0])
    want = np.stack([examples.reference_embedding(s.decode()) for s in sentences])
    np.testing.assert_allclose(output(response, "embedding"), want, rtol=1e-6)
    only = server.predict(
        "hub", {"default": sentences}, signature="tokens", output_filter=["token_count"]
    )
    assert set(only.outputs) == {"token_count"}
    default = server.predict("hub", {"default": sentences[:1]})
    assert default.model_spec.signature_name == "default"


def _examples(request, xs, context_x=None) -> None:
    if context_x is None:
        target = request.input.example_list
    else:
        target = request.input.example_list_with_context
        target.context.features.feature["x"].float_list.value.append(context_x)
    for x in xs:
        example = target.examples.add()
        if x is not None:
            example.features.feature["x"].float_list.value.append(x)


def test_classify_regress_with_context(server: ServerProcess) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = "regress_x_to_y"
    # The first example has no x: it takes the context's; the second overrides it.
    _examples(request, [None, 4.0], context_x=10.0)
    response = server.predict_stub.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [7.0, 4.0]
    assert response.model_spec.signature_name == "regress_x_to_y"

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = "classify_x_to_y"
    _examples(request, [0.0, 2.0])
    response = server.predict_stub.Classify(request, timeout=10)
    assert [[(c.label, c.score) for c in r.classes] for r in response.result.classifications] == [
        [("", 2.0)],
        [("", 3.0)],
    ]


@pytest.mark.parametrize(
    ("method", "signature", "fill", "code", "message"),
    [
        ("Classify", "classify_x_to_y", False, grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
        (
            "Regress",
            "nope",
            True,
            grpc.StatusCode.INVALID_ARGUMENT,
            "No signature was found with the name: nope",
        ),
        (
            "Regress",
            "serving_default",
            True,
            grpc.StatusCode.INVALID_ARGUMENT,
            "No regression inputs found in SignatureDef: serving_default",
        ),
        (
            "Classify",
            "regress_x_to_y",
            True,
            grpc.StatusCode.INVALID_ARGUMENT,
            'Expected classification signature outputs to contain at least one of "classes" or "scores"',
        ),
    ],
)
def test_example_api_errors(server: ServerProcess, method, signature, fill, code, message) -> None:
    request = (
        classification_pb2.ClassificationRequest()
        if method == "Classify"
        else regression_pb2.RegressionRequest()
    )
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = signature
    if fill:
        _examples(request, [1.0])
    with pytest.raises(grpc.RpcError) as err:
        getattr(server.predict_stub, method)(request, timeout=10)
    assert err.value.code() == code
    assert message in err.value.details()


def test_multi_inference_rules(server: ServerProcess) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature in ("regress_x_to_y", "regress_x_to_y"):
        task = request.tasks.add()
        task.model_spec.name = "hp2"
        task.model_spec.signature_name = signature
        task.method_name = "tensorflow/serving/regress"
    _examples(request, [1.0])
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.MultiInference(request, timeout=10)
    assert err.value.details() == "Duplicate evaluation of signature: regress_x_to_y"
    request.tasks[1].model_spec.name = "keras"
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.MultiInference(request, timeout=10)
    assert "must access the same model name" in err.value.details()
    request.tasks[1].model_spec.name = "hp2"
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    request.tasks[1].method_name = "tensorflow/serving/predict"
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.MultiInference(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metadata_errors_and_tf2_signatures(server: ServerProcess) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "keras"
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.GetModelMetadata(request, timeout=10)
    assert err.value.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("signature_def")
    request.metadata_field.append("bogus")
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.GetModelMetadata(request, timeout=10)
    assert "Metadata field bogus is not supported" in err.value.details()
    del request.metadata_field[1]
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    sig = signatures.signature_def["serving_default"]
    assert sig.inputs["features"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.inputs["features"].tensor_shape.dim] == [-1, 4]
    missing = get_model_metadata_pb2.GetModelMetadataRequest()
    with pytest.raises(grpc.RpcError) as err:
        server.predict_stub.GetModelMetadata(missing, timeout=10)
    assert err.value.details() == "Missing ModelSpec"


def test_unix_socket(server: ServerProcess) -> None:
    assert os.path.exists(server.socket_path)
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp2"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        assert tf.make_ndarray(stub.Predict(request, timeout=10).outputs["y"])[0, 0] == 3.0


def test_oversized_request_is_refused(server: ServerProcess) -> None:
    big = np.zeros((300_000, 1), np.float32)  # 1.2 MB > --max_request_bytes=1 MiB
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hp2", {"x": big})
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert output(server.predict("hp2", {"x": big[:1000]}), "y").shape == (1000, 1)


def test_many_typed_values_decode(server: ServerProcess) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    tensor = request.inputs["x"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 3
    tensor.tensor_shape.dim.add().size = 1
    tensor.float_val.append(4.0)  # one value fills the tensor, as Tensor::FromProto does
    y = tf.make_ndarray(server.predict_stub.Predict(request, timeout=10).outputs["y"])
    np.testing.assert_allclose(y, [[4.0], [4.0], [4.0]])


def _write_warmup(version_dir: Path, signature: str, iterations_marker: int) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    extra = version_dir / "assets.extra"
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for _ in range(iterations_marker):
            entry = prediction_log_pb2.PredictionLog()
            entry.predict_log.request.model_spec.signature_name = signature
            writer.write(entry.SerializeToString())


def test_model_warmup_runs_before_available(start_server, testdata: Path, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "counter"
    shutil.copytree(testdata / "tf_serving/saved_model_counter", base)
    _write_warmup(base / "00000123", "incr_counter", iterations_marker=2)
    broken = tmp_path / "broken"
    shutil.copytree(testdata / "tf_serving/saved_model_counter", broken)
    _write_warmup(broken / "00000123", "no_such_signature", iterations_marker=1)
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "c" base_path: "{base}" }} '
        f'config {{ name: "broken" base_path: "{broken}" }} }}'
    )
    server = start_server(
        f"--model_config_file={config}",
        "--num_request_iterations_for_warmup=3",
        "--max_num_load_retries=0",
    )
    server.wait_available("c")
    # 2 warmup records x 3 iterations of incr_counter ran before the first request.
    got = output(server.predict("c", {}, signature="get_counter"), "output")
    assert float(got) == 6.0
    from tests.harness import END, wait_for

    wait_for(lambda: server.versions("broken", END) == {123}, 30, "broken warmup to fail")
    message = server.status("broken").model_version_status[0].status.error_message
    assert 'Warmup request names unknown signature "no_such_signature"' in message


def test_tls_from_ssl_config_file(start_server, model_store: Path, tmp_path: Path) -> None:
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    key, cert = (tmp_path / "key.pem").read_text(), (tmp_path / "cert.pem").read_text()
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f"server_key: {key!r}\nserver_cert: {cert!r}\n".replace("'", '"'))
    base = install(model_store, "hp2_a", tmp_path / "m" / "1").parent
    server = start_server(
        "--model_name=m", f"--model_base_path={base}", f"--ssl_config_file={ssl_config}", wait=False
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.encode())
    with grpc.secure_channel(f"localhost:{server.grpc_port}", credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        from tests.harness import wait_for

        wait_for(lambda: stub.Predict(request, timeout=5) is not None, 60, "TLS predict")
        assert tf.make_ndarray(stub.Predict(request, timeout=5).outputs["y"])[0, 0] == 3.0
    with pytest.raises(grpc.RpcError):  # plaintext is refused
        server.predict("m", {"x": np.array([[2.0]], np.float32)}, timeout=3)


def test_shape_the_graph_rejects_names_every_input(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.predict("keras", {"features": np.ones((1, 5), np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().endswith("(request inputs: features: float [1,5])")
    assert output(
        server.predict("keras", {"features": np.ones((1, 4), np.float32)}), "probabilities"
    ).shape == (1, 3)
