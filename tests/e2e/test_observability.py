"""Metrics, health, reflection, logs and the SIGTERM drain, against a real server.

One server process for the module (tests run in file order; the drain test
is last because it stops the server). Models:
- `hp2`: half_plus_two (TF1), available from the start;
- `slow`: a version folder that appears only after start-up (readiness goes
  NOT_SERVING → SERVING), whose `serving_default` busy-waits `delay` seconds
  inside TensorFlow (tf.timestamp loop, no Python op), so a request can be
  in flight when SIGTERM arrives.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving import examples
from tests.conftest import TESTDATA
from tests.harness import ServerProcess, wait_for

pytestmark = pytest.mark.slow

v1 = tf.compat.v1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
METRICS_PATH = "/monitoring/prometheus/metrics"
MONITORING_CONFIG = (
    'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
)


def write_slow_model(export_dir: Path) -> Path:
    """y = x, after spinning `max(delay)` seconds on tf.timestamp (TF1 graph)."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
        delay = v1.placeholder(tf.float32, shape=[None], name="delay")
        start = tf.timestamp()
        limit = tf.cast(tf.reduce_max(delay), tf.float64)
        _, end = tf.while_loop(
            lambda i, now: now - start < limit,
            lambda i, now: (i + 1, tf.timestamp()),
            [tf.constant(0), start],
        )
        with tf.control_dependencies([end]):
            y = tf.identity(x, name="y")
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {"x": info(x), "delay": info(delay)}, {"y": info(y)}, "tensorflow/serving/predict"
        )
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], {"serving_default": signature}
        )
        builder.save()
    return export_dir


# ---------------------------------------------------------------- helpers


def http_get(server: ServerProcess, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.rest_url + path, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def http_post(server: ServerProcess, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.rest_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """Every sample on the page (the whole page must parse)."""
    status, _ctype, text = http_get(server, METRICS_PATH)
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def health(server: ServerProcess, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def slow_predict(server: ServerProcess, delay: float, **kwargs):
    return server.predict(
        "slow",
        {"x": np.array([[1.0]], np.float32), "delay": np.array([delay], np.float32)},
        **kwargs,
    )


def examples_input(request, values) -> None:
    for value in values:
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(value)


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("observability")
    examples.write_half_plus_two(root / "hp2" / "1")
    write_slow_model(root / "slow_store")
    (root / "slow").mkdir()
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "hp2" base_path: "{root / "hp2"}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "slow" base_path: "{root / "slow"}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    monitoring = TESTDATA / "tf_serving" / "monitoring_config.txt"
    if not monitoring.exists():  # same content as TF Serving's test file
        monitoring = root / "monitoring_config.txt"
        monitoring.write_text(MONITORING_CONFIG)
    proc = ServerProcess(
        f"--model_config_file={config}",
        f"--monitoring_config_file={monitoring}",
        "--file_system_poll_wait_seconds=1",
        "--drain_timeout_seconds=20",
        "--log_format=json",
        log_dir=root,
    )
    proc.root = root
    with proc.running("hp2"):
        yield proc


def install_slow(server: ServerProcess) -> None:
    target = server.root / "slow" / "1"
    if not target.exists():
        staging = server.root / "slow" / ".staging"
        shutil.copytree(server.root / "slow_store", staging)
        staging.rename(target)
    server.wait_available("slow")


# ------------------------------------------------------------------ tests


def test_not_ready_until_every_model_is_available(server):
    # `slow` has no version yet: the server is up but must not take traffic.
    assert health(server, "hp2") == SERVING
    assert health(server, "slow") == NOT_SERVING
    assert health(server) == NOT_SERVING
    assert health(server, "tensorflow.serving.PredictionService") == NOT_SERVING
    status, _, body = http_get(server, "/v1/health/ready")
    assert status == 503
    assert json.loads(body) == {
        "status": "starting",
        "models": {"hp2": "AVAILABLE", "slow": "NOT_AVAILABLE"},
    }
    assert http_get(server, "/v1/health/live")[0] == 200

    install_slow(server)
    wait_for(lambda: health(server) == SERVING, 10, "overall SERVING")
    assert health(server, "slow") == SERVING
    status, _, body = http_get(server, "/v1/health/ready")
    assert status == 200
    assert json.loads(body)["status"] == "ready"
    with pytest.raises(grpc.RpcError) as err:
        health(server, "no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_requests_move_counts_and_histograms_exactly(server):
    x = np.array([[1.0], [2.0]], np.float32)
    before = scrape(server)
    for _ in range(3):
        server.predict("hp2", {"x": x})
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hp2", {"wrong": x})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        server.predict("hp2", {"x": x}, version=999)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "hp2"
    classify.model_spec.signature_name = "classify_x_to_y"
    examples_input(classify, [1.0, 2.0, 3.0])
    server.predict_stub.Classify(classify, timeout=10)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "hp2"
    regress.model_spec.signature_name = "regress_x_to_y"
    examples_input(regress, [1.0])
    server.predict_stub.Regress(regress, timeout=10)
    after = scrape(server)

    def requests(**labels):
        base = {"model": "hp2", "protocol": "grpc", "version": "1"}
        return delta(before, after, "model_server_requests_total", **{**base, **labels})

    assert requests(api="predict", signature="serving_default", code="OK") == 3
    # Rejected before a version was chosen: version and signature are unknown.
    assert requests(api="predict", version="", signature="", code="INVALID_ARGUMENT") == 1
    assert requests(api="predict", version="", signature="", code="NOT_FOUND") == 1
    assert requests(api="classify", signature="classify_x_to_y", code="OK") == 1
    assert requests(api="regress", signature="regress_x_to_y", code="OK") == 1

    # End-to-end latency: successful requests only; every observation in a bucket.
    duration = "model_server_request_duration_seconds"
    for api, n in (("predict", 3), ("classify", 1), ("regress", 1)):
        labels = {"model": "hp2", "api": api, "protocol": "grpc"}
        assert delta(before, after, f"{duration}_count", **labels) == n
        assert delta(before, after, f"{duration}_bucket", **labels, le="+Inf") == n
        assert delta(before, after, f"{duration}_sum", **labels) > 0
    run = "model_server_model_run_duration_seconds_count"
    assert delta(before, after, run, model="hp2", version="1", signature="serving_default") == 3

    # TF Serving's names and labels.
    tfs = ":tensorflow:serving:"
    count = f"{tfs}request_count_total"  # the parser's name for a counter sample
    assert delta(before, after, count, model_name="hp2", status="OK") == 5
    assert delta(before, after, count, model_name="hp2", status="INVALID_ARGUMENT") == 1
    assert delta(before, after, count, model_name="hp2", status="NOT_FOUND") == 1
    latency = f"{tfs}request_latency_count"
    for api, n in (("Predict", 3), ("Classify", 1), ("Regress", 1)):
        labels = {"model_name": "hp2", "API": api, "entrypoint": "GRPC"}
        assert delta(before, after, latency, **labels) == n
        assert delta(before, after, f"{tfs}request_latency_bucket", **labels, le="+Inf") == n
    runtime = f"{tfs}runtime_latency_count"
    assert delta(before, after, runtime, model_name="hp2", API="Predict", runtime="TF1") == 3
    assert delta(before, after, f"{tfs}request_example_count_total", model="hp2") == 4
    assert delta(before, after, f"{tfs}request_example_counts_count", model="hp2") == 2
    assert after[("model_server_inflight_requests", frozenset({("protocol", "grpc")}))] == 0


def test_rest_requests_move_counts_and_histograms_exactly(server):
    before = scrape(server)
    for _ in range(2):
        status, body = http_post(server, "/v1/models/hp2:predict", {"instances": [[1.0], [2.0]]})
        assert status == 200 and body == {"predictions": [[2.5], [3.0]]}
    status, _ = http_post(server, "/v1/models/hp2:predict", {"inputs": {"wrong": [[1.0]]}})
    assert status == 400
    status, _ = http_post(server, "/v1/models/hp2/versions/999:predict", {"instances": [[1.0]]})
    assert status == 404
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert http_post(server, "/v1/models/hp2:classify", classify)[0] == 200
    assert http_get(server, "/v1/models/hp2")[0] == 200
    after = scrape(server)

    def requests(**labels):
        base = {"model": "hp2", "protocol": "rest", "version": "1"}
        return delta(before, after, "model_server_requests_total", **{**base, **labels})

    assert requests(api="predict", signature="serving_default", code="OK") == 2
    assert requests(api="predict", version="", signature="", code="INVALID_ARGUMENT") == 1
    assert requests(api="predict", version="", signature="", code="NOT_FOUND") == 1
    assert requests(api="classify", signature="classify_x_to_y", code="OK") == 1
    assert requests(api="get_model_status", version="", signature="", code="OK") == 1
    duration = "model_server_request_duration_seconds_count"
    assert delta(before, after, duration, model="hp2", api="predict", protocol="rest") == 2
    assert delta(before, after, duration, model="hp2", api="classify", protocol="rest") == 1
    grpc_duration = delta(before, after, duration, model="hp2", api="predict", protocol="grpc")
    assert grpc_duration == 0

    tfs = ":tensorflow:serving:"
    count = f"{tfs}request_count_total"
    assert delta(before, after, count, model_name="hp2", status="OK") == 3
    assert delta(before, after, count, model_name="hp2", status="INVALID_ARGUMENT") == 1
    assert delta(before, after, count, model_name="hp2", status="NOT_FOUND") == 1
    latency = f"{tfs}request_latency_count"
    rest = {"model_name": "hp2", "entrypoint": "REST"}
    assert delta(before, after, latency, API="Predict", **rest) == 2
    assert delta(before, after, latency, API="Classify", **rest) == 1
    assert delta(before, after, latency, API="Predict", model_name="hp2", entrypoint="GRPC") == 0
    assert after[("model_server_inflight_requests", frozenset({("protocol", "rest")}))] == 0


def test_unknown_model_names_add_no_series(server):
    before = scrape(server)
    for name in ("no-such-model", "x" * 200):
        with pytest.raises(grpc.RpcError) as err:
            server.predict(name, {"x": np.array([[1.0]], np.float32)})
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError):
        server.status("another-unknown")
    assert http_post(server, "/v1/models/rest-unknown:predict", {"instances": [[1.0]]})[0] == 404
    assert http_get(server, "/v1/models/rest-unknown-2")[0] == 404
    after = scrape(server)
    assert set(after) == set(before)
    assert delta(before, after, "model_server_unknown_model_requests_total", protocol="grpc") == 3
    assert delta(before, after, "model_server_unknown_model_requests_total", protocol="rest") == 2
    page = http_get(server, METRICS_PATH)[2]
    for name in ("no-such-model", "another-unknown", "rest-unknown"):
        assert name not in page


def test_page_uses_tf_serving_names_and_format(server):
    status, ctype, page = http_get(server, METRICS_PATH)
    assert status == 200 and ctype.startswith("text/plain")
    lines = page.splitlines()
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert any(
        line.startswith(':tensorflow:serving:request_count{model_name="hp2",status="OK"} ')
        for line in lines
    )
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines
    # Exponential(10, 1.8, 33) in microseconds, six significant digits, then +Inf.
    prefix = (
        ":tensorflow:serving:request_latency_bucket"
        '{model_name="hp2",API="Predict",entrypoint="GRPC",'
    )
    limits = [line[len(prefix) :].split('"')[1] for line in lines if line.startswith(prefix)]
    assert limits[:5] == ["10", "18", "32.4", "58.32", "104.976"]
    assert len(limits) == 34 and limits[-1] == "+Inf"
    assert any(
        line.startswith(":tensorflow:cc:saved_model:load_latency{model_path=") for line in lines
    )
    assert any(
        line.startswith(":tensorflow:cc:saved_model:load_attempt_count{")
        and 'status="success"' in line
        for line in lines
    )
    samples = scrape(server)
    versions = (
        "model_server_model_versions",
        frozenset({("model", "hp2"), ("state", "AVAILABLE")}),
    )
    assert samples[versions] == 1
    loads = (
        "model_server_model_load_attempts_total",
        frozenset({("model", "hp2"), ("outcome", "success")}),
    )
    assert samples[loads] == 1
    assert (
        "model_server_model_load_duration_seconds_count",
        frozenset({("model", "slow")}),
    ) in samples
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_reflection_lists_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    services = set(ProtoReflectionDescriptorDatabase(server.channel).get_services())
    assert {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_json_logs_one_line_per_event_and_none_per_request(server):
    def records():
        return [json.loads(line) for line in server.logs.splitlines() if line.startswith("{")]

    logged = records()
    for entry in logged:
        assert {"ts", "level", "logger", "message"} <= set(entry)
    events = [e for e in logged if "event" in e]
    started = next(e for e in events if e["event"] == "started")
    assert started["grpc"] == [f"0.0.0.0:{server.grpc_port}"]
    assert started["rest_port"] == server.rest_port
    assert set(started["models"]) == {"hp2", "slow"}
    assert started["devices"] and started["batching"] == "off"
    assert any(e["event"] == "config_applied" and e["added"] == ["hp2", "slow"] for e in events)
    states = [
        (e["model"], e["version"], e["state"]) for e in events if e["event"] == "version_state"
    ]
    assert states.count(("hp2", 1, "LOADING")) == 1
    assert states.count(("hp2", 1, "AVAILABLE")) == 1
    available = next(e for e in events if e.get("state") == "AVAILABLE" and e["model"] == "slow")
    assert available["seconds"] >= 0
    assert any(e["event"] == "ready" for e in events)

    count = len(records())
    for _ in range(5):
        server.predict("hp2", {"x": np.array([[1.0]], np.float32)})
    assert len(records()) == count


def test_sigterm_drains_in_flight_requests_then_exits_zero(server):
    install_slow(server)
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    assert next(watch).status == SERVING

    result: dict = {}

    def call():
        started = time.monotonic()
        try:
            result["response"] = slow_predict(server, 3.0, timeout=30)
        except grpc.RpcError as exc:
            result["error"] = exc
        result["seconds"] = time.monotonic() - started

    def rest_call():
        body = {"inputs": {"x": [[4.0]], "delay": [3.0]}}
        result["rest"] = http_post(server, "/v1/models/slow:predict", body)

    workers = [threading.Thread(target=call), threading.Thread(target=rest_call)]
    for worker in workers:
        worker.start()

    def both_in_flight() -> bool:
        page = scrape(server)
        return all(
            page[("model_server_inflight_requests", frozenset({("protocol", p)}))] == 1
            for p in ("grpc", "rest")
        )

    wait_for(both_in_flight, 5, "a slow gRPC and a slow REST request in flight")

    server.proc.send_signal(signal.SIGTERM)
    assert next(watch).status == NOT_SERVING
    status, _, body = http_get(server, "/v1/health/ready")
    assert status == 503 and json.loads(body)["status"] == "draining"
    with pytest.raises(grpc.RpcError) as err:  # no new work while draining
        server.predict("hp2", {"x": np.array([[1.0]], np.float32)}, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    status, body = http_post(server, "/v1/models/hp2:predict", {"instances": [[1.0]]})
    assert status == 503, body
    assert http_get(server, "/v1/health/live")[0] == 200

    for worker in workers:
        worker.join(30)
    assert result["rest"] == (200, {"outputs": [[4.0]]})
    assert "error" not in result, result.get("error")
    assert result["seconds"] >= 2.5
    np.testing.assert_allclose(tf.make_ndarray(result["response"].outputs["y"]), [[1.0]])
    assert server.proc.wait(20) == 0
    drained = [
        json.loads(line)
        for line in server.logs.splitlines()
        if line.startswith("{") and '"drained"' in line
    ]
    assert drained and drained[0]["complete"] is True
