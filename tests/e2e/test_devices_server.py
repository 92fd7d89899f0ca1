"""Device placement through a real server process (CPU split in two).

hp2 is pinned to /CPU:0, TF Serving's half_plus_three to /CPU:1, and its
GPU-pinned half_plus_two (unlisted) takes the default, /CPU:1. TensorFlow's
own placement log (log_device_placement, from --tensorflow_session_config_file)
shows where each model's nodes were put.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from loadtests.servers import models_config
from tests.harness import ServerProcess, output, wait_for

DEVICES = """
cpu_devices: 2
default { devices: "/CPU:1" }
models { name: "hp2" devices: "/CPU:0" }
models { name: "three" devices: "/CPU:1" }
"""
X = {"x": np.array([[1.0], [4.0]], np.float32)}


@pytest.fixture(scope="module")
def server(model_store: Path, testdata: Path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    shutil.copytree(model_store / "hp2_a", tmp / "hp2" / "1")
    bases = {
        "hp2": tmp / "hp2",
        "three": testdata / "tf_serving/saved_model_half_plus_three",
        "gpu": testdata / "tf_serving/saved_model_half_plus_two_gpu",
    }
    (tmp / "models.pbtxt").write_text(models_config(bases))
    (tmp / "devices.pbtxt").write_text(DEVICES)
    (tmp / "session.pbtxt").write_text("log_device_placement: true\n")
    server = ServerProcess(
        f"--model_config_file={tmp / 'models.pbtxt'}",
        f"--device_config_file={tmp / 'devices.pbtxt'}",
        f"--tensorflow_session_config_file={tmp / 'session.pbtxt'}",
        "--tensorflow_intra_op_parallelism=2",
        "--tensorflow_inter_op_parallelism=3",
        "--file_system_poll_wait_seconds=0",
        log_dir=tmp,
        env={"TF_CPP_MIN_LOG_LEVEL": "0"},  # TF's placement log is INFO
    )
    with server.running(*bases):
        yield server


def placed(logs: str, node: str) -> set[str]:
    """Devices TF's placer put `node` on, from its log lines."""
    pattern = re.compile(rf"(?:^|\] ){re.escape(node)}: \(\w+\): \S*device:(\w+:\d+)$", re.M)
    return {f"/{d}" for d in pattern.findall(logs)}


def test_each_model_serves_on_its_device(server: ServerProcess) -> None:
    expected = {"hp2": [2.5, 4.0], "three": [3.5, 5.0], "gpu": [2.5, 4.0]}
    for name, values in expected.items():
        result = output(server.predict(name, X), "y")
        np.testing.assert_allclose(result.ravel(), values)
    # Node names only one model has: hp2's resource reads, half_plus_three's c.
    wait_for(lambda: placed(server.logs, "Mul/ReadVariableOp"), 10, "placement log")
    logs = server.logs
    assert placed(logs, "Mul/ReadVariableOp") == {"/CPU:0"}
    assert placed(logs, "c/read") == {"/CPU:1"}  # three and gpu, both on /CPU:1
    assert placed(logs, "Mul") == {"/CPU:0", "/CPU:1"}


def test_logs_show_devices_and_session_config(server: ServerProcess) -> None:
    logs = server.logs
    assert "model hp2 version 1 AVAILABLE on /CPU:0" in logs
    assert "model three version 123 AVAILABLE on /CPU:1" in logs
    assert "model gpu version 123 AVAILABLE on /CPU:1" in logs
    assert "device placement: hp2 → /CPU:0; three → /CPU:1; gpu → /CPU:1; others → /CPU:1" in logs
    assert "pins ops to /device:GPU:0, not present here; placing the whole graph on /CPU:1" in logs
    [config] = re.findall(r"session config: (.*)", logs)
    assert 'device_count { key: "CPU" value: 2 }' in config
    assert "intra_op_parallelism_threads: 2" in config
    assert "inter_op_parallelism_threads: 3" in config
    assert "log_device_placement: true" in config


def test_unknown_device_fails_start_up(model_store: Path, tmp_path: Path) -> None:
    shutil.copytree(model_store / "hp2_a", tmp_path / "hp2" / "1")
    (tmp_path / "devices.pbtxt").write_text('models { name: "hp2" devices: "/GPU:1" }\n')
    server = ServerProcess(
        f"--model_base_path={tmp_path / 'hp2'}",
        "--model_name=hp2",
        f"--device_config_file={tmp_path / 'devices.pbtxt'}",
        log_dir=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": "0"},
    )
    try:
        assert server.proc.wait(60) != 0
    finally:
        server.stop()
    assert (
        "Failed to start server. Error: device /GPU:1 assigned to model 'hp2' does not exist "
        "on this host (devices here: /CPU:0; CUDA_VISIBLE_DEVICES='0')"
    ) in server.log_path.read_text()
