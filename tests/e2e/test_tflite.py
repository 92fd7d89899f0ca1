"""TFLite models end to end: --prefer_tflite_model, gRPC and REST, metadata, batching, pools."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_metadata_pb2

from loadtests.servers import models_config
from serving import examples
from tests.harness import END, ServerProcess, output
from tests.tflite_models import write_converted_model

BATCHING = """
max_batch_size { value: 1024 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
"""

SHARED = {
    "hp2_tflite": "saved_model_half_plus_two_tflite",
    "hp2_tflite_sigdef": "saved_model_half_plus_two_tflite_with_sigdef",
}


def _config(root: Path, models: dict[str, Path]) -> Path:
    config = root / "models.config"
    config.write_text(models_config(models))
    return config


@pytest.fixture(scope="module")
def repo(testdata: Path, tmp_path_factory) -> dict[str, Path]:
    """Model base paths: TF Serving's two TFLite models, a converted one, and mixed folders."""
    root = tmp_path_factory.mktemp("tflite_models")
    tfs = testdata / "tf_serving"
    models = {name: tfs / folder for name, folder in SHARED.items()}
    write_converted_model(root / "converted" / "1")
    models["converted"] = root / "converted"
    # A version holding both a SavedModel (y = x/2 + 3) and model.tflite (y = x/2 + 2).
    examples.write_half_plus_two(root / "both" / "1", 0.5, 3.0)
    shutil.copy(tfs / SHARED["hp2_tflite"] / "00000123" / "model.tflite", root / "both" / "1")
    models["both"] = root / "both"
    examples.write_half_plus_two(root / "saved_model_only" / "1", 0.5, 3.0)
    models["saved_model_only"] = root / "saved_model_only"
    return models


@pytest.fixture(scope="module")
def server(testdata: Path, repo: dict[str, Path], tmp_path_factory) -> ServerProcess:
    root = tmp_path_factory.mktemp("tflite_server")
    params = root / "batching.pbtxt"
    params.write_text(BATCHING)
    proc = ServerProcess(
        f"--model_config_file={_config(root, repo)}",
        "--prefer_tflite_model",
        "--num_tflite_pools=2",
        "--num_tflite_interpreters_per_pool=2",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        f"--monitoring_config_file={testdata / 'tf_serving/monitoring_config.txt'}",
        "--max_num_load_retries=0",
        log_dir=root,
    )
    with proc.running(*repo):
        yield proc


@pytest.mark.parametrize("model", list(SHARED))
def test_tf_serving_tflite_models_over_grpc(server: ServerProcess, model: str) -> None:
    x = np.array([1.0, 2.0, 5.0], np.float32)
    response = server.predict(model, {"x": x})
    np.testing.assert_array_equal(output(response, "y"), [2.5, 3.0, 4.5])
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    # TF Serving's own test: one value of shape [1].
    y = output(server.predict(model, {"x": np.array([2.0], np.float32)}), "y")
    np.testing.assert_array_equal(y, [3.0])


@pytest.mark.parametrize("model", list(SHARED))
def test_tf_serving_tflite_models_over_rest(server: ServerProcess, model: str) -> None:
    url = f"{server.rest_url}/v1/models/{model}"
    got = requests.post(f"{url}:predict", json={"instances": [1.0, 2.0, 5.0]}, timeout=10)
    assert got.status_code == 200, got.text
    assert got.json() == {"predictions": [2.5, 3.0, 4.5]}
    got = requests.post(f"{url}:predict", json={"inputs": {"x": [[1.0], [2.0]]}}, timeout=10)
    assert got.json() == {"outputs": [[2.5], [3.0]]}
    status = requests.get(url, timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def _metadata(server: ServerProcess, model: str) -> get_model_metadata_pb2.SignatureDefMap:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value in (1, 123)
    got = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(got)
    return got


def test_metadata_of_tf_serving_models(server: ServerProcess) -> None:
    # No signature in the model: TF Serving's generated one, keyed by tensor names.
    plain = _metadata(server, "hp2_tflite").signature_def
    assert list(plain) == ["serving_default"]
    assert plain["serving_default"].method_name == "tensorflow/serving/predict"
    assert plain["serving_default"].inputs["x"].name == "x"
    # Stored signature defs: alias x for the tensor "tflite_input".
    stored = _metadata(server, "hp2_tflite_sigdef").signature_def["serving_default"]
    assert stored.inputs["x"].name == "tflite_input"
    assert stored.outputs["y"].name == "y"
    meta = requests.get(f"{server.rest_url}/v1/models/hp2_tflite_sigdef/metadata", timeout=10)
    assert meta.status_code == 200, meta.text
    body = meta.json()
    assert body["model_spec"]["name"] == "hp2_tflite_sigdef"
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "1", "name": ""}, {"size": "1", "name": ""}],
            "unknown_rank": False,
        },
        "name": "tflite_input",
    }
    assert sig["method_name"] == "tensorflow/serving/predict"


def test_converted_model_signatures_and_metadata(server: ServerProcess) -> None:
    sigs = _metadata(server, "converted").signature_def
    assert set(sigs) == {"serving_default", "scale"}
    default = sigs["serving_default"]
    assert set(default.inputs) == {"a", "b"}
    assert set(default.outputs) == {"total", "doubled"}
    assert [d.size for d in default.inputs["a"].tensor_shape.dim] == [-1, 2]
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([10, 20], np.int32)
    response = server.predict("converted", {"a": a, "b": b})
    np.testing.assert_array_equal(output(response, "total"), [13.0, 27.0])
    np.testing.assert_array_equal(output(response, "doubled"), a * 2)
    only = server.predict("converted", {"a": a, "b": b}, output_filter=["total"])
    assert set(only.outputs) == {"total"}
    scaled = server.predict("converted", {"x": np.array([1.5], np.float32)}, signature="scale")
    np.testing.assert_array_equal(output(scaled, "scaled"), [15.0])
    # REST, columnar and row formats.
    url = f"{server.rest_url}/v1/models/converted"
    got = requests.post(
        f"{url}:predict", json={"inputs": {"a": [[1, 2], [3, 4]], "b": [10, 20]}}, timeout=10
    ).json()
    assert got == {"outputs": {"total": [13.0, 27.0], "doubled": [[2.0, 4.0], [6.0, 8.0]]}}
    got = requests.post(
        f"{url}:predict", json={"instances": [{"a": [1, 2], "b": 10}]}, timeout=10
    ).json()
    assert got == {"predictions": [{"total": 13.0, "doubled": [2.0, 4.0]}]}
    got = requests.post(
        f"{url}:predict", json={"signature_name": "scale", "instances": [1.0, 2.0]}, timeout=10
    ).json()
    assert got == {"predictions": [10.0, 20.0]}


def test_client_mistakes_are_client_errors(server: ServerProcess) -> None:
    a = np.ones((2, 2), np.float32)
    with pytest.raises(grpc.RpcError) as err:
        server.predict("converted", {"a": a, "b": np.ones(2, np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected input b to be int32 but get float." in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        server.predict("converted", {"a": a, "b": np.ones(3, np.int32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(request inputs: a: float [2,2], b: int32 [3])" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hp2_tflite", {"z": np.ones(1, np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    url = f"{server.rest_url}/v1/models/converted:predict"
    got = requests.post(url, json={"inputs": {"a": [[1, 2], [3, 4]], "b": [1, 2, 3]}}, timeout=10)
    assert got.status_code == 400, got.text
    # The model keeps serving after those.
    y = output(server.predict("hp2_tflite", {"x": np.array([1.0], np.float32)}), "y")
    np.testing.assert_array_equal(y, [2.5])


def test_prefer_tflite_model_picks_model_tflite_over_saved_model(server: ServerProcess) -> None:
    x = np.array([[1.0]], np.float32)
    np.testing.assert_array_equal(output(server.predict("both", {"x": x}), "y"), [[2.5]])
    # No model.tflite: the SavedModel serves, flag or not.
    np.testing.assert_array_equal(
        output(server.predict("saved_model_only", {"x": x}), "y"), [[3.5]]
    )


def _metrics(server: ServerProcess) -> dict[tuple, float]:
    page = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def test_concurrent_requests_are_batched_and_answered_each(server: ServerProcess) -> None:
    def call(i: int) -> None:
        rows = 1 + i % 3
        a = (np.arange(rows * 2, dtype=np.float32) + 100 * i).reshape(rows, 2)
        b = np.full(rows, i, np.int32)
        response = server.predict("converted", {"a": a, "b": b})
        np.testing.assert_array_equal(output(response, "total"), a.sum(axis=1) + b)
        np.testing.assert_array_equal(output(response, "doubled"), a * 2)

    def rest_call(i: int) -> None:
        x = [float(i), float(i + 1)]
        got = requests.post(
            f"{server.rest_url}/v1/models/hp2_tflite_sigdef:predict",
            json={"instances": x},
            timeout=10,
        ).json()
        assert got == {"predictions": [v * 0.5 + 2 for v in x]}

    labels = (("model", "converted"), ("signature", "serving_default"))
    before = _metrics(server).get(("model_server_batch_size_count", labels), 0.0)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(call, range(128)))
        list(pool.map(rest_call, range(64)))
    samples = _metrics(server)
    batches = samples[("model_server_batch_size_count", labels)] - before
    assert 0 < batches < 128  # concurrent requests shared batches


def test_big_request_split_across_interpreters(server: ServerProcess) -> None:
    # --num_tflite_interpreters_per_pool=2: 600 rows run as pieces of 250.
    rows = 600
    a = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    b = np.arange(rows, dtype=np.int32)
    response = server.predict("converted", {"a": a, "b": b})
    np.testing.assert_array_equal(output(response, "total"), a.sum(axis=1) + b)


def test_without_the_flag_tflite_only_folder_fails_like_tf_serving(
    tmp_path: Path, repo: dict[str, Path]
) -> None:
    models = {"hp2_tflite": repo["hp2_tflite"], "both": repo["both"]}
    proc = ServerProcess(
        f"--model_config_file={_config(tmp_path, models)}",
        "--max_num_load_retries=0",
        log_dir=tmp_path,
    )
    with proc.running("both"):
        # The SavedModel beside model.tflite serves (y = x/2 + 3).
        y = output(proc.predict("both", {"x": np.array([[1.0]], np.float32)}), "y")
        np.testing.assert_array_equal(y, [[3.5]])
        status = proc.status("hp2_tflite").model_version_status[0]
        assert status.state == END
        assert "--prefer_tflite_model" in status.status.error_message
