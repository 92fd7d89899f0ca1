"""--enable_batching end to end: a real server process and gRPC clients."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import classification_pb2, regression_pb2

from loadtests.servers import models_config
from tests.conftest import install
from tests.harness import ServerProcess, output

SERVER_WIDE = """
max_batch_size { value: 16 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 4
allowed_batch_sizes: 8
allowed_batch_sizes: 16
"""

PER_MODEL = {
    # A lone request waits for peers up to 100 ms.
    "slow": "max_batch_size { value: 4 } batch_timeout_micros { value: 100000 }",
    # One open batch of 2 rows, nothing queued behind it.
    "tiny": (
        "max_batch_size { value: 2 } batch_timeout_micros { value: 1000000 } "
        "max_enqueued_batches { value: 1 }"
    ),
    # Room for the split test's worst case (16 clients x 11 rows in batches of
    # 8): TF's default of 10 queued batches can fill on a slow machine, and a
    # full queue rightly answers UNAVAILABLE.
    "split": (
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8 "
        "max_enqueued_batches { value: 100 }"
    ),
    # Invalid: the last allowed size must equal max_batch_size.
    "badparams": "max_batch_size { value: 8 } allowed_batch_sizes: 4",
}


@pytest.fixture(scope="module")
def server(testdata: Path, tmp_path_factory) -> ServerProcess:
    root = tmp_path_factory.mktemp("batching")
    tfs = testdata / "tf_serving"
    models = {
        "hp2": tfs / "saved_model_half_plus_two_cpu",
        "matrix": tfs / "matrix_half_plus_two",
        "counter": tfs / "saved_model_counter",
    }
    for name, params in PER_MODEL.items():
        base = root / name
        shutil.copytree(tfs / "saved_model_half_plus_two_cpu", base)
        (base / "00000123" / "batching_params.pbtxt").write_text(params)
        models[name] = base
    config = root / "models.config"
    config.write_text(models_config(models))
    params = root / "batching.pbtxt"
    params.write_text(SERVER_WIDE)
    proc = ServerProcess(
        f"--model_config_file={config}",
        f"--monitoring_config_file={testdata / 'tf_serving/monitoring_config.txt'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--enable_per_model_batching_parameters",
        "--max_num_load_retries=0",
        log_dir=root,
    )
    with proc.running(*(name for name in models if name != "badparams")):
        yield proc


def _hp2(server: ServerProcess, model: str, x: np.ndarray, **kw) -> np.ndarray:
    return output(server.predict(model, {"x": x}, **kw), "y")


def test_concurrent_clients_get_their_own_answers(server):
    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = 1 + i % 3
        x = (np.arange(rows, dtype=np.float32) + 100 * i).reshape(rows, 1)
        return x, _hp2(server, "hp2", x)

    for _ in range(2):
        with ThreadPoolExecutor(48) as pool:
            results = list(pool.map(call, range(96)))
        for x, y in results:
            assert y.shape == x.shape  # padding rows never leak
            np.testing.assert_array_equal(y, x * 0.5 + 2)
    # The batching metrics saw those requests: every request waited in a
    # queue once, and the batches held all their rows.
    page = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    labels = (("model", "hp2"), ("signature", "serving_default"))
    assert samples[("model_server_batch_queue_wait_seconds_count", labels)] == 192
    rows = sum(1 + i % 3 for i in range(96)) * 2
    assert samples[("model_server_batch_size_sum", labels)] == rows
    assert samples[("model_server_batch_size_count", labels)] <= 192


def test_matrix_model_rows_stay_with_their_request(server):
    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = 1 + i % 4
        x = np.arange(rows * 9, dtype=np.float32).reshape(rows, 3, 3) + 1000 * i
        return x, _hp2(server, "matrix", x)

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(call, range(80)))
    for x, y in results:
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, x * 0.5 + 2)


def _examples(values) -> list:
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))}
            )
        )
        for v in values
    ]


def test_classify_and_regress_are_batched_correctly(server):
    def classify(i: int):
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "hp2"
        request.model_spec.signature_name = "classify_x_to_y"
        values = [float(i), float(i) + 0.5]
        request.input.example_list.examples.extend(_examples(values))
        response = server.predict_stub.Classify(request, timeout=10)
        scores = [c.classes[0].score for c in response.result.classifications]
        return values, scores

    def regress(i: int):
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "hp2"
        request.model_spec.signature_name = "regress_x_to_y"
        request.input.example_list.examples.extend(_examples([float(i)]))
        response = server.predict_stub.Regress(request, timeout=10)
        return [float(i)], [r.value for r in response.result.regressions]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(classify, range(32))) + list(pool.map(regress, range(32)))
    for values, got in results:
        assert got == pytest.approx([v * 0.5 + 2 for v in values])


def test_lone_request_waits_at_most_the_timeout(server):
    x = np.array([[1.0]], np.float32)
    _hp2(server, "slow", x)  # warm the callable
    took = []
    for _ in range(3):
        started = time.monotonic()
        np.testing.assert_array_equal(_hp2(server, "slow", x), [[2.5]])
        took.append(time.monotonic() - started)
    # The open batch waits its 100 ms for peers, then runs: not much longer.
    assert min(took) >= 0.09 and max(took) < 0.6, took


def test_full_queue_is_unavailable_at_once(server):
    lone = ThreadPoolExecutor(1).submit(_hp2, server, "tiny", np.array([[1.0]], np.float32))
    time.sleep(0.3)  # its batch stays open for a second, holding 1 of 2 rows
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        _hp2(server, "tiny", np.array([[1.0], [2.0]], np.float32))
    assert time.monotonic() - started < 0.5
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "max_enqueued_batches is 1" in info.value.details()
    np.testing.assert_array_equal(lone.result(5), [[2.5]])


def test_oversize_request_rejected_without_splitting(server):
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    with pytest.raises(grpc.RpcError) as info:
        _hp2(server, "hp2", x)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Task size 20 is larger than maximum input batch size 16"


def test_oversize_request_split_across_batches(server):
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    np.testing.assert_array_equal(_hp2(server, "split", x), x * 0.5 + 2)

    def call(i: int):
        xi = np.arange(3 + i % 9, dtype=np.float32).reshape(-1, 1) + 100 * i
        return xi, _hp2(server, "split", xi)

    with ThreadPoolExecutor(16) as pool:
        for xi, y in pool.map(call, range(32)):
            np.testing.assert_array_equal(y, xi * 0.5 + 2)


def test_stateful_counter_with_batching(server):
    def call(signature: str, inputs=None):
        return float(output(server.predict("counter", inputs or {}, signature=signature), "output"))

    call("reset_counter")
    with ThreadPoolExecutor(16) as pool:
        ones = list(pool.map(lambda _: call("incr_counter"), range(20)))
        twos = list(
            pool.map(lambda _: call("incr_counter_by", {"delta": np.float32(2.0)}), range(10))
        )
    # Each request ran on its own, never merged into a batch: a merged run
    # would add once for several requests. The model's AssignAdd ops have
    # use_locking=false, so TensorFlow itself may lose a rare concurrent
    # update (TF Serving's too); the exact count is checked one call at a time.
    assert all(0 < v <= 20 for v in ones) and all(0 < v <= 40 for v in twos)
    assert 36.0 <= call("get_counter") <= 40.0
    call("reset_counter")
    assert [call("incr_counter") for _ in range(3)] == [1.0, 2.0, 3.0]
    assert call("incr_counter_by", {"delta": np.float32(2.0)}) == 5.0
    assert call("get_counter") == 5.0


def test_invalid_per_model_params_fail_the_load(server):
    def failed() -> bool:
        statuses = server.status("badparams").model_version_status
        return any(s.status.error_message for s in statuses)

    deadline = time.monotonic() + 30
    while not failed():
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.2)
    message = server.status("badparams").model_version_status[0].status.error_message
    assert "Last entry in allowed_batch_sizes must match max_batch_size" in message


def test_bad_batching_parameters_file_stops_startup(tmp_path, testdata):
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 3")
    proc = ServerProcess(
        "--model_name=hp2",
        f"--model_base_path={testdata / 'tf_serving' / 'saved_model_half_plus_two_cpu'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        log_dir=tmp_path,
    )
    try:
        assert proc.proc.wait(60) != 0
        assert "Last entry in allowed_batch_sizes must match max_batch_size" in proc.logs
    finally:
        proc.stop()


def test_hot_swap_under_load_loses_nothing(tmp_path, model_store):
    base = tmp_path / "swap"
    base.mkdir()
    install(model_store, "hp2_a", base / "1")  # y = 0.5x + 2
    proc = ServerProcess(
        "--model_name=swap",
        f"--model_base_path={base}",
        "--enable_batching",
        "--file_system_poll_wait_seconds=1",
        log_dir=tmp_path,
    )
    failures: list[str] = []
    seen: set[float] = set()
    stop = threading.Event()

    def client(i: int) -> None:
        x = np.array([[float(i)]], np.float32)
        while not stop.is_set():
            try:
                y = float(_hp2(proc, "swap", x)[0, 0])
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            offset = y - 0.5 * i
            if offset not in (2.0, 3.0):
                failures.append(f"client {i} got {y}")
            seen.add(offset)

    try:
        proc.wait_serving()
        proc.wait_available("swap", {1})
        with ThreadPoolExecutor(32) as pool:
            for i in range(32):
                pool.submit(client, i)
            time.sleep(1.0)
            install(model_store, "hp2_b", base / "2")  # y = 0.5x + 3
            proc.wait_available("swap", {2}, timeout=60)
            time.sleep(1.0)
            stop.set()
        assert not failures, failures[:5]
        assert seen == {2.0, 3.0}
    finally:
        stop.set()
        proc.stop()
