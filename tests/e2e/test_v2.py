"""The Open Inference Protocol (V2) end to end, with the real V2 clients.

tritonclient's HTTP client (with and without binary data) and its gRPC client
against the real server: the example models, every datatype, the repository
extension, errors, and the metrics the calls leave.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import install
from tests.e2e.test_observability import write_slow_model
from tests.harness import ServerProcess, kserve_python, wait_for
from tests.v2_models import DTYPES, write_v2_dtypes_model

pytestmark = pytest.mark.slow

METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_store):
    root = tmp_path_factory.mktemp("v2_models")
    (root / "half_plus_two").mkdir()
    install(model_store, "hp2_a", root / "half_plus_two" / "1")
    install(model_store, "hp2_b", root / "half_plus_two" / "2")
    (root / "keras_classifier").mkdir()
    install(model_store, "keras", root / "keras_classifier" / "1")
    (root / "text_embedding").mkdir()
    install(model_store, "hub_text", root / "text_embedding" / "1")
    write_v2_dtypes_model(root / "dtypes" / "1")
    (root / "spare").mkdir()
    install(model_store, "hp2_c", root / "spare" / "7")
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: "half_plus_two" base_path: "{root / "half_plus_two"}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }}
           version_labels {{ key: "canary" value: 2 }} }}
  config {{ name: "keras_classifier" base_path: "{root / "keras_classifier"}" model_platform: "tensorflow" }}
  config {{ name: "text_embedding" base_path: "{root / "text_embedding"}" model_platform: "tensorflow" }}
  config {{ name: "dtypes" base_path: "{root / "dtypes"}" model_platform: "tensorflow" }}
}}
""")
    monitoring = root / "monitoring.txt"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    proc = ServerProcess(
        f"--model_config_file={config}",
        f"--monitoring_config_file={monitoring}",
        log_dir=tmp_path_factory.mktemp("v2_logs"),
    )
    with proc.running("half_plus_two", "keras_classifier", "text_embedding", "dtypes"):
        proc.root = root
        yield proc


@pytest.fixture(scope="module")
def http(server):
    client = thttp.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def _http_infer(client, model, arrays, *, binary=True, outputs=None, **kwargs):
    inputs = []
    for name, array in arrays.items():
        datatype = _datatype(array)
        tensor = thttp.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary or datatype == "BF16")
        inputs.append(tensor)
    requested = [thttp.InferRequestedOutput(o, binary_data=binary) for o in outputs or []]
    return client.infer(model, inputs, outputs=requested or None, **kwargs)


def _grpc_infer(client, model, arrays, *, outputs=None, **kwargs):
    inputs = []
    for name, array in arrays.items():
        tensor = tgrpc.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = [tgrpc.InferRequestedOutput(o) for o in outputs or []]
    return client.infer(model, inputs, outputs=requested or None, **kwargs)


def _datatype(array: np.ndarray) -> str:
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return "BF16"
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


# ------------------------------------------------------------ health, metadata


def test_health_and_server_metadata(server, http, grpc_client):
    for client in (http, grpc_client):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("half_plus_two")
        assert client.is_model_ready("half_plus_two", "1")
        assert client.is_model_ready("half_plus_two", "canary")
        assert not client.is_model_ready("half_plus_two", "9")
        assert not client.is_model_ready("nope")
    meta = http.get_server_metadata()
    assert meta["name"] == "model-server"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert list(grpc_client.get_server_metadata().extensions) == meta["extensions"]
    # Triton's clients read the status code, KServe's the JSON body.
    live = requests.get(f"{server.rest_url}/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = requests.get(f"{server.rest_url}/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    missing = requests.get(f"{server.rest_url}/v2/models/nope/ready")
    assert (missing.status_code, missing.json()) == (400, {"name": "nope", "ready": False})


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("half_plus_two", [("x", "FP32", [-1, 1])], [("y", "FP32", [-1, 1])]),
        ("keras_classifier", None, None),
        ("text_embedding", [("default", "BYTES", [-1])], [("default", "FP32", [-1, 4])]),
    ],
)
def test_model_metadata(http, grpc_client, model, inputs, outputs):
    meta = http.get_model_metadata(model)
    assert meta["name"] == model and meta["platform"] == "tensorflow_savedmodel"
    grpc_meta = grpc_client.get_model_metadata(model, as_json=True)
    for side in ("inputs", "outputs"):
        # gRPC's JSON prints int64 as strings.
        assert [
            (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in grpc_meta[side]
        ] == [(t["name"], t["datatype"], t["shape"]) for t in meta[side]]
    if inputs is not None:
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
            (n, d, s) for n, d, s in inputs
        ]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
            (n, d, s) for n, d, s in outputs
        ]
    else:  # Keras: one FP32 input of 4 features, 3 class probabilities, batch unknown
        (inp,) = meta["inputs"]
        (out,) = meta["outputs"]
        assert inp["datatype"] == "FP32" and inp["shape"] == [-1, 4]
        assert out["datatype"] == "FP32" and out["shape"] == [-1, 3]


def test_metadata_versions(http):
    assert http.get_model_metadata("half_plus_two")["versions"] == ["1", "2"]
    assert http.get_model_metadata("half_plus_two", "1")["versions"] == ["1"]
    assert http.get_model_metadata("half_plus_two", "stable")["versions"] == ["1"]


# ------------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [True, False])
def test_half_plus_two_http(http, binary):
    x = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)
    result = _http_infer(http, "half_plus_two", {"x": x}, binary=binary, outputs=["y"])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 0.5 + 3.0)  # latest: version 2
    assert result.get_response()["model_version"] == "2"
    stable = _http_infer(http, "half_plus_two", {"x": x}, binary=binary, model_version="stable")
    np.testing.assert_array_equal(stable.as_numpy("y"), x * 0.5 + 2.0)
    one = _http_infer(http, "half_plus_two", {"x": x}, binary=binary, model_version="1")
    assert one.get_response()["model_version"] == "1"


def test_half_plus_two_grpc(grpc_client):
    x = np.array([[1.0], [2.0]], dtype=np.float32)
    result = _grpc_infer(grpc_client, "half_plus_two", {"x": x}, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 0.5 + 3.0)
    response = result.get_response()
    assert response.model_version == "2" and response.id == "r-1"
    canary = _grpc_infer(grpc_client, "half_plus_two", {"x": x}, model_version="stable")
    np.testing.assert_array_equal(canary.as_numpy("y"), x * 0.5 + 2.0)


def test_keras_classifier_matches_tf_serving_api(server, http, grpc_client):
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    (name,) = [t["name"] for t in http.get_model_metadata("keras_classifier")["inputs"]]
    (out,) = [t["name"] for t in http.get_model_metadata("keras_classifier")["outputs"]]
    v1 = server.predict("keras_classifier", {name: x})
    import tensorflow as tf

    expected = tf.make_ndarray(v1.outputs[out])
    for result in (
        _http_infer(http, "keras_classifier", {name: x}),
        _http_infer(http, "keras_classifier", {name: x}, binary=False),
        _grpc_infer(grpc_client, "keras_classifier", {name: x}),
    ):
        got = result.as_numpy(out)
        assert got.shape == (5, 3)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_text_embedding_bytes_and_signature_parameter(http, grpc_client):
    sentences = np.array([b"the cat sat", b"dog ran"], dtype=object)
    for result in (
        _http_infer(http, "text_embedding", {"default": sentences}),
        _http_infer(http, "text_embedding", {"default": sentences}, binary=False),
        _grpc_infer(grpc_client, "text_embedding", {"default": sentences}),
    ):
        embedding = result.as_numpy("default")
        assert embedding.shape == (2, 4) and embedding.dtype == np.float32
    # Another signature, named by the `signature_name` parameter.
    for client, infer in ((http, _http_infer), (grpc_client, _grpc_infer)):
        tokens = infer(
            client,
            "text_embedding",
            {"default": sentences},
            parameters={"signature_name": "tokens"},
        )
        np.testing.assert_array_equal(tokens.as_numpy("embedding"), embedding)
        assert tokens.as_numpy("token_count").ravel().tolist() == [3, 2]


def _dtype_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for name in DTYPES:
        if name == "BOOL":
            arrays[name] = np.array([[True, False], [False, True]])
        elif name == "BYTES":
            arrays[name] = np.array([[b"a", b""], ["é".encode(), b"\x00z"]], dtype=object)
        elif name == "BF16":
            arrays[name] = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=ml_dtypes.bfloat16)
        elif name.startswith(("INT", "UINT")):
            info = np.iinfo(np.dtype(name.lower()))
            arrays[name] = np.array([[info.min, info.max], [0, 1]], dtype=name.lower())
        else:
            dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[name]
            arrays[name] = rng.normal(size=(2, 2)).astype(dtype)
    return arrays


@pytest.mark.parametrize("client_kind", ["http-binary", "http-json", "grpc"])
def test_every_datatype(http, grpc_client, client_kind):
    arrays = _dtype_arrays()
    if client_kind == "http-json":
        # JSON carries no BF16 and only UTF-8 strings.
        arrays["BYTES"] = np.array([[b"a", b""], ["é".encode(), b"z"]], dtype=object)
    outputs = [f"{n}_out" for n in arrays]
    if client_kind == "grpc":
        result = _grpc_infer(grpc_client, "dtypes", arrays, outputs=outputs)
    else:
        result = _http_infer(
            http, "dtypes", arrays, binary=client_kind == "http-binary", outputs=outputs
        )
    for name, array in arrays.items():
        got = result.as_numpy(f"{name}_out")
        assert got.dtype == array.dtype, name
        if name == "BYTES":  # tritonclient gives JSON strings back as str
            as_bytes = [[v if isinstance(v, bytes) else v.encode() for v in row] for row in got]
            assert as_bytes == array.tolist()
        else:
            np.testing.assert_array_equal(got, array, err_msg=name)


# ---------------------------------------------------------------------- errors


def _post(server, path, body, headers=None):
    return requests.post(f"{server.rest_url}{path}", data=body, headers=headers or {})


def test_http_errors(server, http):
    x = np.array([[1.0]], dtype=np.float32)
    with pytest.raises(InferenceServerException, match="Servable not found") as info:
        _http_infer(http, "nope", {"x": x})
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException, match="Expected input x to be float") as info:
        _http_infer(http, "half_plus_two", {"x": x.astype(np.int32)})
    assert info.value.status() == "400"
    with pytest.raises(InferenceServerException, match="input tensor alias not found"):
        _http_infer(http, "half_plus_two", {"z": x})
    infer = "/v2/models/half_plus_two/infer"
    cases = [
        (b'{"inputs": [', {}, "malformed JSON"),
        (
            b'{"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1]}]}',
            {},
            "1 elements for shape [2, 1]",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": ["a"]}]}',
            {},
            "not a valid FP32",
        ),
    ]
    header = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}'
    cases += [
        (
            header + b"\0\0",
            {"Inference-Header-Content-Length": str(len(header))},
            "binary_data_size 4 exceeds the 2 bytes",
        ),
        (
            header + b"\0" * 8,
            {"Inference-Header-Content-Length": str(len(header))},
            "4 bytes of binary data follow",
        ),
        (header, {"Inference-Header-Content-Length": "oops"}, "not a number"),
    ]
    for body, headers, message in cases:
        response = _post(server, infer, body, headers)
        assert response.status_code == 400, (body, response.text)
        assert message in response.json()["error"], response.text
    assert (
        _post(
            server,
            "/v2/models/half_plus_two/versions/9/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}',
        ).status_code
        == 404
    )
    missing = requests.get(f"{server.rest_url}/v2/models/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    assert requests.get(f"{server.rest_url}/v2/nothing/here").status_code == 404


def test_grpc_errors(grpc_client):
    x = np.array([[1.0]], dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(grpc_client, "nope", {"x": x})
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="Expected input x to be float") as info:
        _grpc_infer(grpc_client, "half_plus_two", {"x": x.astype(np.float64)})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    bad = tgrpc.InferInput("x", [1, 1], "FP32")
    bad.set_data_from_numpy(x)
    bad.set_shape([2, 1])  # now 4 bytes of raw contents for a [2, 1] tensor
    with pytest.raises(InferenceServerException, match="4 bytes of FP32 data, expected 8"):
        grpc_client.infer("half_plus_two", [bad])
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc_client.get_model_metadata("nope")


# ----------------------------------------------------------------- repository


def test_repository_extension(server, http, grpc_client):
    index = {(m["name"], m.get("version")): m["state"] for m in http.get_model_repository_index()}
    assert index[("half_plus_two", "2")] == "READY"
    spare = str(server.root / "spare")
    # A model the config does not name: loaded from the base path given as a parameter.
    response = _post(
        server, "/v2/repository/models/spare/load", json.dumps({"parameters": {"base_path": spare}})
    )
    assert response.status_code == 200, response.text
    assert http.is_model_ready("spare")
    result = _http_infer(http, "spare", {"x": np.array([[2.0]], dtype=np.float32)})
    assert (
        result.as_numpy("y").tolist() == [[5.0]] and result.get_response()["model_version"] == "7"
    )
    grpc_client.unload_model("spare")
    assert not grpc_client.is_model_ready("spare")
    states = {m.name: m.state for m in grpc_client.get_model_repository_index().models}
    assert states["spare"] == "UNAVAILABLE"
    http.load_model("spare")  # remembered: loads again without a base path
    assert http.is_model_ready("spare")
    http.unload_model("spare")
    assert not http.is_model_ready("spare")
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'"):
        http.load_model("ghost")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc_client.load_model("ghost")


def test_repository_refused_when_config_file_is_polled(start_server, model_store, tmp_path):
    root = tmp_path / "models"
    (root / "hp").mkdir(parents=True)
    install(model_store, "hp2_a", root / "hp" / "1")
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "hp" base_path: "{root / "hp"}" '
        'model_platform: "tensorflow" } }\n'
    )
    server = start_server(
        f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=60"
    )
    server.wait_available("hp")
    response = _post(server, "/v2/repository/models/hp/unload", b"")
    assert response.status_code == 400
    assert (
        "read-only" in response.json()["error"] and "model_config_file" in response.json()["error"]
    )
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException, match="FAILED_PRECONDITION"):
        client.load_model("hp")
    client.close()
    assert _post(server, "/v2/repository/index", b"").status_code == 200  # reading is fine


# -------------------------------------------------------------------- metrics


def test_metrics_count_v2_calls_by_protocol(server, http, grpc_client):
    def count(protocol: str, code: str = "OK") -> float:
        page = requests.get(f"{server.rest_url}{METRICS_PATH}").text
        total = 0.0
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "model_server_requests_total"
                    and labels.get("model") == "half_plus_two"
                    and labels.get("protocol") == protocol
                    and labels.get("api") == "predict"
                    and labels.get("code") == code
                ):
                    total += sample.value
        return total

    before = {p: count(p) for p in ("v2-rest", "v2-grpc", "rest")}
    x = np.array([[1.0]], dtype=np.float32)
    for _ in range(3):
        _http_infer(http, "half_plus_two", {"x": x})
    _grpc_infer(grpc_client, "half_plus_two", {"x": x})
    wait_for(lambda: count("v2-rest") == before["v2-rest"] + 3, 5, "v2-rest count")
    assert count("v2-grpc") == before["v2-grpc"] + 1
    assert count("rest") == before["rest"]


# ---------------------------------------------------------------------- drain


def test_sigterm_drain_refuses_new_v2_calls_and_finishes_running_ones(start_server, tmp_path):
    write_slow_model(tmp_path / "slow" / "1")
    server = start_server(
        "--model_name=slow", f"--model_base_path={tmp_path / 'slow'}", "--drain_timeout_seconds=20"
    )
    server.wait_available("slow")
    slow = {"x": np.array([[4.0]], np.float32), "delay": np.array([3.0], np.float32)}
    quick = {"x": np.array([[1.0]], np.float32), "delay": np.array([0.0], np.float32)}
    results: dict = {}

    def run(kind: str) -> None:
        # A client per thread: tritonclient's clients are not shared across threads.
        if kind == "rest":
            client = thttp.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
            infer = _http_infer
        else:
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            infer = _grpc_infer
        started = time.monotonic()
        try:
            results[kind] = infer(client, "slow", slow).as_numpy("y").tolist()
        except InferenceServerException as exc:
            results[kind] = exc
        results[f"{kind}_seconds"] = time.monotonic() - started
        client.close()

    workers = [threading.Thread(target=run, args=(kind,)) for kind in ("rest", "grpc")]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # both are running the 3-second model now
    server.proc.send_signal(signal.SIGTERM)
    http = thttp.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    wait_for(lambda: not http.is_server_ready(), 5, "V2 readiness to drop")
    assert http.is_server_live()
    with pytest.raises(InferenceServerException) as rest_err:
        _http_infer(http, "slow", quick)
    assert rest_err.value.status() == "503"
    with pytest.raises(InferenceServerException) as grpc_err:
        _grpc_infer(grpc_client, "slow", quick)
    assert grpc_err.value.status() == "StatusCode.UNAVAILABLE"  # GOAWAY, then no new connections
    for worker in workers:
        worker.join(30)
    assert results["rest"] == [[4.0]] and results["grpc"] == [[4.0]], results
    assert results["rest_seconds"] >= 2.5 and results["grpc_seconds"] >= 2.5
    assert server.proc.wait(20) == 0
    http.close()
    grpc_client.close()


# ------------------------------------------------------------------ kserve SDK
# The `kserve` SDK's own clients (InferenceRESTClient on protocol v2,
# InferenceGRPCClient) in their own virtualenv (see kserve_client.py): one
# script run per transport makes every call below; the tests assert on what it
# printed.

KSERVE_CLIENT = Path(__file__).with_name("kserve_client.py")
KSERVE_MODELS = ("half_plus_two", "keras_classifier", "text_embedding", "dtypes")


def _tensor_spec(name: str, array: np.ndarray, **extra) -> dict:
    spec = {"name": name, "datatype": _datatype(array), "shape": list(array.shape), **extra}
    if spec["datatype"] == "BYTES":
        spec["items"] = [base64.b64encode(v).decode() for v in array.ravel()]
    else:
        spec["raw"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return spec


def _spec_array(spec: dict) -> np.ndarray:
    if spec["datatype"] == "BYTES":
        items = [base64.b64decode(v) for v in spec["items"]]
        return np.array(items, dtype=object).reshape(spec["shape"])
    return np.frombuffer(base64.b64decode(spec["raw"]), dtype=spec["dtype"]).reshape(spec["shape"])


def _kserve_checks(keras_input: str) -> list[dict]:
    x = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)
    keras_x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    sentences = np.array([b"the cat sat", "é dog ran".encode()], dtype=object)
    dtypes = _dtype_arrays()
    checks: list[dict] = [
        {"id": "live", "op": "live"},
        {"id": "ready", "op": "ready"},
        {"id": "server_metadata", "op": "server_metadata"},
        {"id": "ready:nope", "op": "model_ready", "model": "nope"},
        {"id": "metadata:nope", "op": "model_metadata", "model": "nope"},
    ]
    for model in KSERVE_MODELS:
        checks.append({"id": f"ready:{model}", "op": "model_ready", "model": model})
        checks.append({"id": f"metadata:{model}", "op": "model_metadata", "model": model})
    for binary in (True, False):
        kind = "binary" if binary else "json"
        checks += [
            {
                "id": f"half_plus_two:{kind}",
                "op": "infer",
                "model": "half_plus_two",
                "inputs": [_tensor_spec("x", x)],
                "outputs": ["y"],
                "binary": binary,
            },
            {
                "id": f"keras_classifier:{kind}",
                "op": "infer",
                "model": "keras_classifier",
                "inputs": [_tensor_spec(keras_input, keras_x)],
                "binary": binary,
            },
            {
                "id": f"text_embedding:{kind}",
                "op": "infer",
                "model": "text_embedding",
                "inputs": [_tensor_spec("default", sentences)],
                "binary": binary,
            },
            {
                "id": f"text_embedding:tokens:{kind}",
                "op": "infer",
                "model": "text_embedding",
                "inputs": [_tensor_spec("default", sentences)],
                "parameters": {"signature_name": "tokens"},
                "binary": binary,
            },
        ]
    # Every datatype in one call. JSON carries no FP16 (the SDK refuses it) nor
    # BF16, and the model takes them all at once, so this one is binary only.
    # The SDK cannot decode BF16 outputs (no numpy type): BF16 goes in, and
    # every other output comes back.
    checks.append(
        {
            "id": "dtypes",
            "op": "infer",
            "model": "dtypes",
            "inputs": [_tensor_spec(name, array) for name, array in dtypes.items()],
            "outputs": [f"{name}_out" for name in dtypes if name != "BF16"],
        }
    )
    one = np.array([[1.0]], dtype=np.float32)
    checks += [
        {
            "id": "error:unknown_model",
            "op": "infer",
            "model": "nope",
            "inputs": [_tensor_spec("x", one)],
        },
        {
            "id": "error:datatype",
            "op": "infer",
            "model": "half_plus_two",
            "inputs": [_tensor_spec("x", one.astype(np.int32))],
        },
        {
            "id": "error:element_count",
            "op": "infer",
            "model": "half_plus_two",
            "inputs": [_tensor_spec("x", one, send_shape=[2, 1])],
            "binary": False,
        },
        {
            "id": "error:shape",
            "op": "infer",
            "model": "keras_classifier",
            "inputs": [_tensor_spec(keras_input, np.ones((2, 3), dtype=np.float32))],
        },
        {
            "id": "error:input_name",
            "op": "infer",
            "model": "half_plus_two",
            "inputs": [_tensor_spec("z", one)],
        },
    ]
    return checks


@pytest.fixture(scope="module", params=["rest", "grpc"])
def kserve_run(request, server, http):
    """(transport, the checks sent, the script's results) for one transport."""
    transport = request.param
    url = f"{server.rest_url}" if transport == "rest" else f"127.0.0.1:{server.grpc_port}"
    (keras_input,) = [t["name"] for t in http.get_model_metadata("keras_classifier")["inputs"]]
    checks = _kserve_checks(keras_input)
    done = subprocess.run(
        [str(kserve_python()), str(KSERVE_CLIENT), transport, url],
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    return transport, {c["id"]: c for c in checks}, results


def _ok(results: dict, key: str):
    assert "ok" in results[key], (key, results[key])
    return results[key]["ok"]


def test_kserve_sdk_health_and_metadata(kserve_run, http):
    transport, _, results = kserve_run
    assert _ok(results, "live") is True and _ok(results, "ready") is True
    meta = _ok(results, "server_metadata")
    assert meta == {k: http.get_server_metadata()[k] for k in ("name", "version", "extensions")}
    for model in KSERVE_MODELS:
        assert _ok(results, f"ready:{model}") is True
        got = _ok(results, f"metadata:{model}")
        expected = http.get_model_metadata(model)
        assert got["name"] == model and got["platform"] == "tensorflow_savedmodel"
        for side in ("inputs", "outputs"):
            assert got[side] == expected[side], (model, side)
    assert _ok(results, "metadata:half_plus_two")["versions"] == ["1", "2"]
    assert _ok(results, "ready:nope") is False
    error = results["metadata:nope"]["error"]
    assert error["status"] == (404 if transport == "rest" else "NOT_FOUND"), error
    assert "nope" in error["message"]


def test_kserve_sdk_infer_example_models(kserve_run, server):
    transport, checks, results = kserve_run
    for kind in ("binary", "json"):
        half = _ok(results, f"half_plus_two:{kind}")
        x = _spec_array({**checks[f"half_plus_two:{kind}"]["inputs"][0], "dtype": "float32"})
        assert half["model_name"] == "half_plus_two"
        assert half["id"] == f"half_plus_two:{kind}"
        if transport == "grpc":  # the SDK's REST client drops model_version
            assert half["model_version"] == "2"
        y = half["outputs"]["y"]
        assert (y["datatype"], y["shape"], y["dtype"]) == ("FP32", [3, 1], "float32")
        np.testing.assert_array_equal(_spec_array(y), x * 0.5 + 3.0)

        keras = _ok(results, f"keras_classifier:{kind}")
        (spec,) = checks[f"keras_classifier:{kind}"]["inputs"]
        keras_x = _spec_array({**spec, "dtype": "float32"})
        v1 = server.predict("keras_classifier", {spec["name"]: keras_x})
        (out_name,) = v1.outputs
        import tensorflow as tf

        (got,) = keras["outputs"].values()
        assert got["shape"] == [5, 3]
        np.testing.assert_allclose(
            _spec_array(got), tf.make_ndarray(v1.outputs[out_name]), rtol=1e-6
        )

        embedding = _ok(results, f"text_embedding:{kind}")["outputs"]["default"]
        assert (embedding["datatype"], embedding["shape"]) == ("FP32", [2, 4])
        tokens = _ok(results, f"text_embedding:tokens:{kind}")["outputs"]
        np.testing.assert_array_equal(_spec_array(tokens["embedding"]), _spec_array(embedding))
        assert _spec_array(tokens["token_count"]).ravel().tolist() == [3, 3]


def test_kserve_sdk_every_datatype(kserve_run):
    _, checks, results = kserve_run
    outputs = _ok(results, "dtypes")["outputs"]
    sent = {spec["name"]: spec for spec in checks["dtypes"]["inputs"]}
    assert set(outputs) == {f"{name}_out" for name in sent if name != "BF16"}
    arrays = _dtype_arrays()
    for name, array in arrays.items():
        if name == "BF16":
            continue
        got = outputs[f"{name}_out"]
        assert (got["datatype"], got["shape"]) == (name, [2, 2]), got
        assert got["dtype"] == str(array.dtype), (name, got["dtype"])
        if name == "BYTES":
            assert _spec_array(got).tolist() == array.tolist()
        else:
            np.testing.assert_array_equal(_spec_array(got), array, err_msg=name)


def test_kserve_sdk_errors(kserve_run):
    transport, _, results = kserve_run
    rest = transport == "rest"
    expected = {
        "error:unknown_model": (404 if rest else "NOT_FOUND", "Servable not found"),
        "error:datatype": (400 if rest else "INVALID_ARGUMENT", "Expected input x to be float"),
        "error:element_count": (400 if rest else "INVALID_ARGUMENT", "for shape [2, 1]"),
        "error:shape": (400 if rest else "INVALID_ARGUMENT", "float [2,3]"),
        "error:input_name": (400 if rest else "INVALID_ARGUMENT", "input tensor alias not found"),
    }
    for key, (status, message) in expected.items():
        assert "error" in results[key], (key, results[key])
        error = results[key]["error"]
        assert error["type"] == ("HTTPStatusError" if rest else "AioRpcError"), error
        assert error["status"] == status, (key, error)
        assert message in error["message"], (key, error)


def test_sigterm_lets_every_accepted_v2_grpc_call_finish_or_answers_unavailable(
    start_server, tmp_path
):
    # SIGTERM right behind a burst of V2 gRPC calls: some are running the slow
    # model, some the server is still parsing (large ones, off the event loop)
    # or has received but not yet started. None may end CANCELLED.
    from serving.protos import v2_pb2, v2_pb2_grpc

    write_slow_model(tmp_path / "slow" / "1")
    server = start_server(
        "--model_name=slow", f"--model_base_path={tmp_path / 'slow'}", "--drain_timeout_seconds=15"
    )
    server.wait_available("slow")

    def request(rows: int) -> v2_pb2.ModelInferRequest:
        infer = v2_pb2.ModelInferRequest(model_name="slow")
        infer.inputs.add(name="x", datatype="FP32", shape=[rows, 1])
        infer.inputs.add(name="delay", datatype="FP32", shape=[1])
        infer.raw_input_contents.append(np.ones((rows, 1), np.float32).tobytes())
        infer.raw_input_contents.append(np.array([2.0], np.float32).tobytes())
        return infer

    limit = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=limit)
    stub = v2_pb2_grpc.GRPCInferenceServiceStub(channel)
    # Half of them past the size that is parsed and serialized on a worker thread.
    requests_ = [request(1 if i % 2 else 600_000) for i in range(16)]
    futures = [stub.ModelInfer.future(r, timeout=30) for r in requests_]
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    codes = []
    for sent, future in zip(requests_, futures, strict=True):
        try:
            response = future.result()
            assert list(response.outputs[0].shape) == list(sent.inputs[0].shape)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 15 + 3
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes.count(grpc.StatusCode.OK) >= 1, codes
    print("after SIGTERM:", {code.name: codes.count(code) for code in set(codes)})
    channel.close()
